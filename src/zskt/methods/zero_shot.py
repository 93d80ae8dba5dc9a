"""Zero-shot knowledge transfer: the paper's Algorithm 1 as the authors ran it (docs/zero_shot.md).

Per pseudo batch, the generator takes `n_generator_steps` Adam steps maximising KL(teacher ‖ student) on G(z),
then the student takes `n_student_steps` steps minimising KL + β·attention on that one pseudo batch, which is
made once, without a graph: the authors re-ran the generator with a graph for every student step, work whose
gradient is never used (docs/zero_shot.md lists each difference from their loop and why none changes a
number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from zskt.config import check, field
from zskt.data import ImageSplit, get_info, load_dataset, preset
from zskt.distributed import Shard
from zskt.errors import ZsktError
from zskt.images import save_image_grid
from zskt.losses import attention_map, zero_shot_generator_loss, zero_shot_student_loss
from zskt.methods.common import TeacherStudentConfig, build_student, load_teacher, save_student
from zskt.methods.optim import adam, clip
from zskt.methods.scaffold import Scaffold
from zskt.models import Generator, network_label, save_generator
from zskt.runlog import RunLog
from zskt.runtime import Precision, seed_everything


@dataclass(frozen=True)
class ZeroShotConfig(TeacherStudentConfig):
    """Zero-shot transfer from a teacher file into a fresh student; defaults are the authors' scripts'
    values."""

    teacher_layers: str | None = field(
        None,
        "teacher layers whose outputs are the attention maps, e.g. "
        "layer2,layer3,layer4; unset: the family's defaults",
    )
    student_layers: str | None = field(
        None, "student layers for the attention maps; unset: the family's defaults"
    )
    iterations: int | None = field(
        None,
        "N, pseudo batches; default: the data set's preset (cifar10 80000, "
        "svhn 50000, fashion-mnist 80000, digits 200)",
    )
    batch_size: int = field(128, "pseudo images per batch (authors' scripts: 128)")
    z_dim: int = field(100, "dimension of the generator's noise z ~ N(0, I) (authors: 100)")
    n_generator_steps: int = field(1, "n_G: generator steps per pseudo batch (authors' scripts: 1)")
    n_student_steps: int = field(10, "n_S: student steps per pseudo batch (authors' scripts: 10)")
    generator_lr: float = field(1e-3, "generator Adam learning rate (authors' code: 1e-3)")
    student_lr: float = field(2e-3, "student Adam learning rate (authors' code and paper: 2e-3)")
    beta: float | None = field(
        None,
        "attention weight per layer, 3 layers; 0 = KL only; default: the data "
        "set's preset (250, the authors', at 32x32; 0 for digits, measured)",
    )
    temperature: float = field(1.0, "softmax temperature of the KL (authors: 1)")
    kl_reduction: Literal["mean", "batchmean"] = field(
        "mean", "KL reduction: mean (authors' code: ÷ B·C) or batchmean (÷ B, the paper's)"
    )
    grad_clip: float = field(
        5.0, "global grad-norm clip before every step, both networks; 0 = off (authors: 5)"
    )
    final_bn_affine: bool = field(
        True,
        "generator's last BN has scale and shift (authors since fab3b92; "
        "--no-final-bn-affine is the initial commit's)",
    )
    fresh_batch_per_student_step: bool = field(
        False, "draw a new pseudo batch for every student step (the Ferles reproduction's 'modified' variant)"
    )
    eval_every: int | None = field(
        None,
        "test, log, save a pseudo-image grid and checkpoint every this many "
        "pseudo batches; default N/100 (the authors' log_freq)",
    )
    seed: int = field(0, "seed for the student, the generator and the z draws (authors: 0, 1, 2)")
    sync_bn: bool = field(
        False,
        "under torchrun: BatchNorm statistics of student and generator over the "
        "global batch (SyncBatchNorm, CUDA only); off: each rank's own shard",
    )
    compile: bool = field(
        False,
        "torch.compile the student in the training loop (CUDA: CUDA graphs); off: no "
        "gain measured on CPU (docs/benchmarks.md)",
    )

    def __post_init__(self):
        super().__post_init__()
        check(
            self.iterations is None or self.iterations > 0,
            f"iterations must be positive, got {self.iterations}",
        )
        # Train-mode BN needs more than one value per channel; the generator's BNs see the whole batch.
        check(
            self.batch_size >= 2,
            f"batch_size must be at least 2 (batch-norm statistics), got {self.batch_size}",
        )
        check(self.z_dim > 0, f"z_dim must be positive, got {self.z_dim}")
        check(self.n_generator_steps >= 0, f"n_generator_steps must be >= 0, got {self.n_generator_steps}")
        check(self.n_student_steps >= 1, f"n_student_steps must be >= 1, got {self.n_student_steps}")
        check(self.generator_lr > 0 and self.student_lr > 0, "learning rates must be positive")
        check(self.beta is None or self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        check(self.temperature > 0, f"temperature must be positive, got {self.temperature}")
        check(
            self.kl_reduction in ("mean", "batchmean"),
            f"kl_reduction must be mean or batchmean, got {self.kl_reduction!r}",
        )
        check(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        check(
            self.eval_every is None or self.eval_every > 0,
            f"eval_every must be positive, got {self.eval_every}",
        )

    @property
    def total_iterations(self) -> int:
        """N: `iterations`, or the data set's preset."""
        if self.iterations is not None:
            return self.iterations
        return preset(self.dataset, "zero-shot", "iterations", "--iterations")

    @property
    def attention_beta(self) -> float:
        """β: `beta`, or the data set's preset."""
        return self.beta if self.beta is not None else preset(self.dataset, "zero-shot", "beta", "--beta")

    @property
    def eval_interval(self) -> int:
        return self.eval_every or max(1, self.total_iterations // 100)


@dataclass
class ZeroShotState:
    """What Algorithm 1 trains and draws from: the two networks, an Adam optimiser for each (default betas, no
    weight decay) with its cosine schedule stepped once per pseudo batch, and the z stream."""

    student: torch.nn.Module
    generator: Generator
    student_optimiser: torch.optim.Adam
    generator_optimiser: torch.optim.Adam
    student_schedule: torch.optim.lr_scheduler.LambdaLR
    generator_schedule: torch.optim.lr_scheduler.LambdaLR
    z_source: torch.Generator

    @classmethod
    def build(
        cls,
        student: torch.nn.Module,
        generator: Generator,
        cfg: ZeroShotConfig,
        device: torch.device | str = "cpu",
    ) -> ZeroShotState:
        n = cfg.total_iterations

        def cosine(b: int) -> float:  # CosineAnnealingLR(T_max=N), eta_min 0, in closed form
            return 0.5 * (1.0 + math.cos(math.pi * b / n))

        stu, gen = adam(student.parameters(), cfg.student_lr), adam(generator.parameters(), cfg.generator_lr)
        lam = torch.optim.lr_scheduler.LambdaLR
        return cls(
            student,
            generator,
            stu,
            gen,
            lam(stu, cosine),
            lam(gen, cosine),
            torch.Generator(device=device).manual_seed(cfg.seed),
        )

    def checkpointed(self) -> dict:
        return {
            "student": self.student,
            "generator": self.generator,
            "student_optimiser": self.student_optimiser,
            "generator_optimiser": self.generator_optimiser,
            "student_schedule": self.student_schedule,
            "generator_schedule": self.generator_schedule,
            "z_rng": self.z_source,
        }


# ------------------------------------------------------------------------------------------- Algorithm 1


def zero_shot_steps(
    teacher: torch.nn.Module,
    state: ZeroShotState,
    cfg: ZeroShotConfig,
    steps,
    *,
    precision: Precision | None = None,
    part: Shard | None = None,
    record=None,
) -> torch.Tensor:
    """Algorithm 1 over the pseudo batches `steps` yields (`Scaffold.steps()`, or `range(n)` in tests);
    returns the last pseudo batch. The teacher is frozen, the student and generator in train mode. Per pseudo
    batch:

    1. z ~ N(0, I), (batch, z_dim), from the state's z stream.
    2. n_G generator steps on G(z) (`generator_step`).
    3. x = G(z) once more, without a graph: the pseudo batch. The teacher's logits and attention maps on it
    are
       computed once and reused by every student step.
    4. n_S student steps on x (`student_step`). No gradient reaches the generator.
    5. Both cosine schedules step.

    With `fresh_batch_per_student_step` every student step draws a new z and pseudo batch (Ferles' variant).
    Under torchrun each rank draws the same global z and keeps its shard (`part`); losses are scaled by the
    shard's share and gradients summed over ranks before clipping (docs/distributed.md). `record(**values)`
    receives the losses and beliefs for the metrics rows.
    """
    precision = precision or Precision("fp32", "cpu", False)
    part = part or Shard.of(cfg.batch_size)
    record = record or (lambda **values: None)
    student, generator = state.student, state.generator
    pseudo = None
    for _ in steps:
        z = part.take(generator.sample_z(cfg.batch_size, generator=state.z_source))
        for _ in range(cfg.n_generator_steps):
            record(
                generator_loss=generator_step(
                    teacher, student, generator, state.generator_optimiser, z, cfg, precision, part
                )
            )
        for k in range(cfg.n_student_steps):
            if k == 0 or cfg.fresh_batch_per_student_step:
                if cfg.fresh_batch_per_student_step:
                    z = part.take(generator.sample_z(cfg.batch_size, generator=state.z_source))
                pseudo, teacher_logits, teacher_maps = pseudo_batch(teacher, generator, z, cfg, precision)
            student_logits, loss = student_step(
                student, state.student_optimiser, pseudo, teacher_logits, teacher_maps, cfg, precision, part
            )
            record(student_loss=loss)
        record(**beliefs(teacher_logits, student_logits, part.share))
        state.generator_schedule.step()
        state.student_schedule.step()
    return pseudo


def generator_step(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    generator: Generator,
    optimiser: torch.optim.Optimizer,
    z: torch.Tensor,
    cfg: ZeroShotConfig,
    precision: Precision,
    part: Shard | None = None,
) -> torch.Tensor:
    """One generator step on x = G(z): L_G = −KL(T(x) ‖ S(x)), clip, Adam; returns L_G (graph freed).

    Gradients go only to the generator's parameters (`backward(inputs=...)`), but through both the student's
    log-softmax and the teacher's softmax, as the authors' loss has it. The student is in train mode, so this
    forward updates its BN running statistics, as in the authors' code.
    """
    part = part or Shard.of(len(z))
    params = [p for p in generator.parameters() if p.requires_grad]
    with precision.autocast():
        x = precision.layout(generator(z))
        student_logits, _ = student(x)
        teacher_logits, _ = teacher(x)
    loss = (
        zero_shot_generator_loss(
            student_logits, teacher_logits, temperature=cfg.temperature, reduction=cfg.kl_reduction
        )
        * part.share
    )
    optimiser.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    part.reduce(params)
    clip(params, cfg.grad_clip)
    optimiser.step()
    return loss.detach()


def pseudo_batch(
    teacher: torch.nn.Module, generator: Generator, z: torch.Tensor, cfg: ZeroShotConfig, precision: Precision
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """x = G(z) without a graph, the teacher's logits on it and (for β > 0) its attention maps."""
    with torch.no_grad(), precision.autocast():
        pseudo = precision.layout(generator(z))
        teacher_logits, teacher_acts = teacher(pseudo)
        teacher_maps = [attention_map(a) for a in teacher_acts] if cfg.attention_beta else teacher_acts
    return pseudo, teacher_logits, teacher_maps


def student_step(
    student: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    pseudo: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_maps,
    cfg: ZeroShotConfig,
    precision: Precision,
    part: Shard,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One student step: L_S = KL(T(x) ‖ S(x)) + β·Σ attention_diff, clip, Adam; returns (logits, L_S)."""
    with precision.autocast():
        student_logits, student_acts = student(pseudo)
    loss = (
        zero_shot_student_loss(
            student_logits,
            student_acts,
            teacher_logits,
            teacher_maps,
            beta=cfg.attention_beta,
            temperature=cfg.temperature,
            reduction=cfg.kl_reduction,
        )
        * part.share
    )
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    part.reduce(student.parameters())
    clip(student.parameters(), cfg.grad_clip)
    optimiser.step()
    return student_logits, loss.detach()


def beliefs(teacher_logits: torch.Tensor, student_logits: torch.Tensor, share: float = 1.0) -> dict:
    """Both networks' mean max-probability on the last student step's pseudo batch, as the authors log it
    (about 0.8 for the teacher and 0.3 for the student on CIFAR-10)."""
    with torch.no_grad():
        return {
            "teacher_max_prob": torch.softmax(teacher_logits.float(), 1).amax(1).mean() * share,
            "student_max_prob": torch.softmax(student_logits.detach().float(), 1).amax(1).mean() * share,
        }


# ------------------------------------------------------------------------------------------- the run


def zero_shot(
    cfg: ZeroShotConfig,
    log: RunLog,
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    test_split: ImageSplit,
    mean,
    std,
    *,
    generator: Generator | None = None,
) -> dict:
    """Train `student` from `teacher` alone; evaluate on `test_split` only (never a training split).

    Without a `generator`, one is built for the test images' shape (its init draws from the global RNG: seed
    first). Every `cfg.eval_interval` pseudo batches: test, metrics row, pseudo-image grid, checkpoint. Writes
    `model.pt` and `generator.pt`; the result's `test_accuracy` is the final one (the paper's number).
    """
    n = cfg.total_iterations
    run = Scaffold(
        cfg,
        log,
        total=n,
        interval=cfg.eval_interval,
        unit="pseudo batch",
        desc="zero-shot",
        batch_size=cfg.batch_size,
    )
    channels, size = int(test_split.images.shape[1]), int(test_split.images.shape[-1])
    generator = generator or Generator(
        cfg.z_dim, image_size=size, out_channels=channels, final_bn_affine=cfg.final_bn_affine
    )
    if (generator.out_channels, generator.image_size) != (channels, size):
        raise ZsktError(
            f"the generator makes {generator.out_channels}x{generator.image_size}x{generator.image_size}"
            f" images, the test images are {channels}x{size}x{size}"
        )
    teacher = run.frozen_module(teacher)
    # The generator is always in train mode (batch statistics), as the authors'.
    state = ZeroShotState.build(run.train_module(student), run.train_module(generator), cfg, run.device)
    run.track(**state.checkpointed())
    run.learning_rate("student_lr", state.student_optimiser, state.student_schedule)
    run.learning_rate("generator_lr", state.generator_optimiser, state.generator_schedule)
    run.evaluate_on(state.student, test_split, mean, std, cfg.eval_batch_size)
    teacher_accuracy = run.evaluate(teacher)
    log.print(
        f"zero-shot {n} pseudo batches of {cfg.batch_size} ({cfg.n_generator_steps} generator + "
        f"{cfg.n_student_steps} student steps each), {run.device}, {run.precision.name}; teacher test "
        f"accuracy {teacher_accuracy:.2f}%"
    )
    last = {}

    def at_log_point(step: int) -> dict:
        if log.enabled and last.get("pseudo") is not None:
            grid = save_image_grid(last["pseudo"], mean, std, log.out / "pseudo" / f"iter_{step:06d}.png")
            log.image("pseudo", grid, step)
        factor = 0.5 * (1.0 + math.cos(math.pi * (step - 1) / n))  # the rates used during this pseudo batch
        return {"generator_lr": cfg.generator_lr * factor, "student_lr": cfg.student_lr * factor}

    run.on_log(at_log_point)
    loop_state = state
    if cfg.compile:  # only the loop's calls go through the compiled wrapper (same parameters and buffers)
        compiled = torch.compile(state.student, mode="reduce-overhead" if run.device.type == "cuda" else None)
        loop_state = ZeroShotState(**{**state.__dict__, "student": compiled})
    for step in run.steps():
        last["pseudo"] = zero_shot_steps(
            teacher, loop_state, cfg, (step,), precision=run.precision, part=run.part, record=run.add
        )
    if log.enabled:
        save_student(log, state.student, cfg, size, run.accuracy)
        save_generator(
            state.generator,
            log.out / "generator.pt",
            dataset=cfg.dataset,
            image_size=size,
            command=log.command,
        )
    return run.finish(
        teacher_test_accuracy=teacher_accuracy,
        iterations=n,
        teacher=cfg.teacher,
        teacher_arch=network_label(teacher, cfg.teacher),
        student=cfg.student,
        dataset=cfg.dataset,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        beta=cfg.attention_beta,
        fresh_batch_per_student_step=cfg.fresh_batch_per_student_step,
        compile=cfg.compile,
    )


def run_zero_shot(cfg: ZeroShotConfig, log: RunLog) -> dict:
    """`zskt zero-shot`: load the teacher, build the student and generator, read only the test split,
    transfer."""
    if not cfg.teacher:
        raise ZsktError(
            "no teacher given; pass --teacher PATH (a model.pt from `zskt train` or an authors' file)"
        )
    info = get_info(cfg.dataset)
    data = load_dataset(
        cfg.dataset, cfg.data_dir, download=cfg.download, image_size=cfg.image_size, splits=("test",)
    )  # never the training images
    test, mean, std = data.test, data.mean, data.std
    size = int(test.images.shape[-1])
    teacher = load_teacher(cfg, info, size)
    seed_everything(cfg.seed)
    student = build_student(cfg, info, size, teacher, cfg.attention_beta)
    generator = Generator(
        cfg.z_dim, image_size=size, out_channels=info.in_channels, final_bn_affine=cfg.final_bn_affine
    )
    return zero_shot(cfg, log, teacher, student, test, mean, std, generator=generator)
