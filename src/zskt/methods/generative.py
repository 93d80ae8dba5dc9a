"""The generator family of data-free distillation — DAFL, DFAD, DFQ — as the zju-vipa DataFree benchmark runs
them: one generative synthesizer whose loss weights make the method (docs/data_free.md).

Per round (their `datafree_kd.py` main loop, `GenerativeSynthesizer` of `datafree/synthesis/generative.py`):

1. `generator_steps` generator steps, each on a fresh z (generator in train mode, student in eval mode):
   L_G = bn·Σ_l BN-statistics + oh·CE(t, argmax t) + adv·(−D(s, t)) + balance·Σ p̄ log p̄ + act·(−mean|f_T|),
   D the method's discrepancy (KLDiv, or L1 for DFAD); Adam with betas (0.5, 0.999).
2. `student_steps` student steps, each on a fresh batch x = G(z) made without a graph (generator in eval
mode):
   L_S = D(S(x), T(x)); SGD with momentum 0.9, weight decay 1e-4, cosine over epochs.

Each method file (`dafl.py`, `dfad.py`, `dfq.py`) is a config of this loop: its weights, discrepancy and the
reference scripts' settings. Against the reference code nothing changes a number (tests/test_data_free.py
checks parameters after a round in float64), but nothing is computed that is not used: BN statistics only in
the generator step and only when bn > 0; a zero-weight term is not computed; the generator step computes no
student parameter gradients; the teacher that only answers the student runs with its batch norms folded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from zskt.config import check, field
from zskt.data import ImageSplit, get_info, load_dataset
from zskt.errors import ZsktError
from zskt.images import save_image_grid
from zskt.losses import (
    activation_loss,
    information_entropy_loss,
    kd_kl_loss,
    l1_logit_loss,
    one_hot_loss,
)
from zskt.methods.bn_hooks import BNStatisticHook
from zskt.methods.common import (
    TeacherStudentConfig,
    build_student,
    frozen_logits,
    load_teacher,
    save_student,
)
from zskt.methods.scaffold import Scaffold
from zskt.models import network_label
from zskt.models.dfkd_generator import DataFreeGenerator
from zskt.models.frozen import frozen_copy
from zskt.runlog import RunLog
from zskt.runtime import Precision, seed_everything

# The reference scripts' run length (CMI `scripts/*_cifar10.sh`: --epochs 200 --ep_steps 400) for the data
# sets of the benchmark; digits is ours, per method (each config's DIGITS preset), measured in
# docs/data_free.md.
REFERENCE_EPOCHS, REFERENCE_EPOCH_STEPS = 200, 400


@dataclass(frozen=True)
class GenerativeConfig(TeacherStudentConfig):
    """The settings the family shares. Defaults are the DataFree code's (`datafree_kd.py`, CMI commit acbbea6,
    and its scripts for WRN-40-2 → WRN-16-1 on CIFAR-10); each method's config overrides its own."""

    iterations: int | None = field(
        None, "rounds (generator steps, then student steps); default: epochs x epoch_steps / student_steps"
    )
    epochs: int | None = field(
        None, "epochs of the cosine schedule (reference scripts: 200; digits: the method's preset)"
    )
    epoch_steps: int | None = field(
        None, "student steps per epoch (reference --ep_steps 400; digits: the method's preset)"
    )
    batch_size: int | None = field(
        None,
        "pseudo images per step, generator and student (reference scripts: 256; digits: the method's preset)",
    )
    z_dim: int = field(256, "generator noise dimension (reference: 256; 512 for --method dafl)")
    ngf: int | None = field(
        None, "generator width (reference LargeGenerator: ngf 64; digits: the method's preset)"
    )
    generator_steps: int = field(1, "generator steps per round (reference --g_steps 1)")
    student_steps: int = field(5, "student steps per round (reference --kd_steps)")
    generator_lr: float = field(1e-3, "generator Adam learning rate, betas (0.5, 0.999) (reference --lr_g)")
    student_lr: float = field(0.1, "student SGD learning rate (reference --lr 0.1)")
    momentum: float = field(0.9, "student SGD momentum (reference: 0.9)")
    weight_decay: float = field(1e-4, "student SGD weight decay (reference --wd default: 1e-4)")
    adv: float = field(0.0, "weight of the adversarial term −D(S(x), T(x)) in the generator loss (--adv)")
    bn: float = field(0.0, "weight of the teacher BN-statistic matching term (--bn)")
    oh: float = field(0.0, "weight of the one-hot term CE(t, argmax t) (--oh)")
    act: float = field(0.0, "weight of the activation term −mean|f_T| (--act)")
    balance: float = field(0.0, "weight of the information-entropy term Σ p̄ log p̄ (--balance)")
    discrepancy: Literal["kl", "l1"] = field(
        "kl",
        "D, the student's loss and the adversarial term: kl (KLDiv, batchmean) or l1 (mean |s − t|, DFAD)",
    )
    temperature: float = field(
        1.0, "temperature of D = kl (reference code: 1; the scripts' --T is overwritten, docs/decisions.md)"
    )
    sample_mode: Literal["eval", "train"] = field(
        "eval",
        "generator BN mode when making the student's batches: "
        "eval (reference since acbbea6) or train (before)",
    )
    eval_every: int | None = field(
        None, "test, log and checkpoint every this many rounds; default: once per epoch (reference)"
    )
    seed: int = field(0, "seed for the student, the generator and the z draws")

    # The digits preset of each method (ours, measured: docs/data_free.md), for the fields left at None.
    DIGITS: ClassVar[dict] = {"epochs": 12, "epoch_steps": 50, "batch_size": 64, "ngf": 32}

    def __post_init__(self):
        super().__post_init__()
        for name in ("iterations", "epochs", "epoch_steps"):
            value = getattr(self, name)
            check(value is None or value > 0, f"{name} must be positive, got {value}")
        check(
            self.batch_size is None or self.batch_size >= 2,
            f"batch_size must be at least 2 (batch-norm statistics), got {self.batch_size}",
        )
        check(self.z_dim > 0 and (self.ngf is None or self.ngf > 0), "z_dim and ngf must be positive")
        check(self.generator_steps >= 0, f"generator_steps must be >= 0, got {self.generator_steps}")
        check(self.student_steps >= 1, f"student_steps must be >= 1, got {self.student_steps}")
        check(self.generator_lr > 0 and self.student_lr > 0, "learning rates must be positive")
        for name in ("adv", "bn", "oh", "act", "balance", "momentum", "weight_decay"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        check(self.discrepancy in ("kl", "l1"), f"discrepancy must be kl or l1, got {self.discrepancy!r}")
        check(
            self.sample_mode in ("eval", "train"),
            f"sample_mode must be eval or train, got {self.sample_mode!r}",
        )
        check(self.temperature > 0, f"temperature must be positive, got {self.temperature}")
        check(
            self.eval_every is None or self.eval_every > 0,
            f"eval_every must be positive, got {self.eval_every}",
        )
        check(
            self.epoch_steps_resolved >= self.student_steps,
            f"epoch_steps ({self.epoch_steps_resolved}) must be at least student_steps "
            f"({self.student_steps})",
        )

    def _preset(self, name: str, reference: int) -> int:
        value = getattr(self, name)
        if value is not None:
            return value
        return self.DIGITS[name] if self.dataset == "digits" else reference

    @property
    def epochs_resolved(self) -> int:
        return self._preset("epochs", REFERENCE_EPOCHS)

    @property
    def epoch_steps_resolved(self) -> int:
        return self._preset("epoch_steps", REFERENCE_EPOCH_STEPS)

    @property
    def batch(self) -> int:
        """Pseudo images per step: `batch_size`, or the preset (256, the reference scripts')."""
        return self._preset("batch_size", 256)

    @property
    def generator_width(self) -> int:
        return self._preset("ngf", 64)

    @property
    def rounds_per_epoch(self) -> int:
        """The reference's `ep_steps // kd_steps` rounds between two evaluations and schedule steps."""
        return self.epoch_steps_resolved // self.student_steps

    @property
    def total_iterations(self) -> int:
        """Rounds in the run: `iterations`, or epochs × rounds per epoch."""
        return (
            self.iterations if self.iterations is not None else self.epochs_resolved * self.rounds_per_epoch
        )

    @property
    def eval_interval(self) -> int:
        return self.eval_every or self.rounds_per_epoch


# ------------------------------------------------------------------------------------- state


class EpochCosine:
    """The student's learning-rate factor in round r: `CosineAnnealingLR(T_max=epochs)` stepped once per epoch
    (the reference), (1 + cos(π·e/E)) / 2 with e = r // rounds_per_epoch and E the run's epochs."""

    def __init__(self, rounds_per_epoch: int, total_rounds: int):
        self.rounds_per_epoch = rounds_per_epoch
        self.epochs = max(1, math.ceil(total_rounds / rounds_per_epoch))

    def __call__(self, r: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * (r // self.rounds_per_epoch) / self.epochs))


@dataclass
class GenerativeState:
    """What the loop trains and draws from; everything here is checkpointed."""

    student: nn.Module
    generator: DataFreeGenerator
    student_optimiser: torch.optim.SGD
    generator_optimiser: torch.optim.Adam
    student_schedule: torch.optim.lr_scheduler.LambdaLR
    z_source: torch.Generator

    @classmethod
    def build(
        cls,
        student: nn.Module,
        generator: DataFreeGenerator,
        cfg: GenerativeConfig,
        device: torch.device | str = "cpu",
    ) -> GenerativeState:
        sgd = torch.optim.SGD(
            student.parameters(), lr=cfg.student_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        adam = torch.optim.Adam(generator.parameters(), lr=cfg.generator_lr, betas=(0.5, 0.999))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            sgd, EpochCosine(cfg.rounds_per_epoch, cfg.total_iterations)
        )
        return cls(
            student, generator, sgd, adam, schedule, torch.Generator(device=device).manual_seed(cfg.seed)
        )

    def checkpointed(self) -> dict:
        return {
            "student": self.student,
            "generator": self.generator,
            "student_optimiser": self.student_optimiser,
            "generator_optimiser": self.generator_optimiser,
            "student_schedule": self.student_schedule,
            "z_rng": self.z_source,
        }


class PenultimateFeatures:
    """The teacher's penultimate features (the input of its last `nn.Linear`, the pooled features the
    reference reads with `return_features=True`), captured by a forward pre-hook while `active`."""

    def __init__(self, model: nn.Module):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ZsktError(
                f"the teacher ({type(model).__name__}) has no nn.Linear classifier whose input could "
                "serve as its features; set the activation weight to 0"
            )
        self.active, self.features = False, None
        self.handle = linears[-1].register_forward_pre_hook(self._hook)

    def _hook(self, module, inputs) -> None:
        if self.active:
            self.features = inputs[0]


@dataclass
class Teacher:
    """The frozen teacher, as each phase needs it: `synthesis` for the generator step (its BN layers kept and
    hooked when bn > 0, else the folded copy), `answer` (BNs folded) for the student's targets."""

    synthesis: nn.Module
    answer: nn.Module
    bn_hook: BNStatisticHook | None
    features: PenultimateFeatures | None

    @classmethod
    def build(cls, teacher: nn.Module, cfg: GenerativeConfig) -> Teacher:
        """`teacher` frozen in eval mode with its BN layers (Scaffold.frozen_module(fold_bn=False))."""
        answer = frozen_copy(teacher)
        synthesis = teacher if cfg.bn > 0 else answer
        return cls(
            synthesis,
            answer,
            BNStatisticHook(synthesis) if cfg.bn > 0 else None,
            PenultimateFeatures(synthesis) if cfg.act > 0 else None,
        )


# ------------------------------------------------------------------------------------- the loop


def discrepancy(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, cfg: GenerativeConfig
) -> torch.Tensor:
    """D(s, t): the reference's `criterion`, both the student's loss and (negated) the adversarial term."""
    if cfg.discrepancy == "l1":
        return l1_logit_loss(student_logits, teacher_logits)
    return kd_kl_loss(student_logits, teacher_logits, cfg.temperature)


def generator_loss(
    teacher_logits: torch.Tensor, cfg: GenerativeConfig, *, student_logits=None, bn=None, features=None
) -> torch.Tensor:
    """L_G, the weighted sum of the terms whose weight is not zero (the reference computes all five)."""
    terms = []
    if cfg.bn:
        terms.append(cfg.bn * bn)
    if cfg.oh:
        terms.append(cfg.oh * one_hot_loss(teacher_logits))
    if cfg.adv:
        terms.append(cfg.adv * -discrepancy(student_logits, teacher_logits, cfg))
    if cfg.balance:
        terms.append(cfg.balance * information_entropy_loss(teacher_logits))
    if cfg.act:
        terms.append(cfg.act * activation_loss(features))
    if not terms:
        raise ZsktError(
            "every generator loss weight is 0: set at least one of --adv, --bn, --oh, --act, --balance"
        )
    return torch.stack(terms).sum()


def logits_of(output) -> torch.Tensor:
    """A network's logits: zskt's Wide ResNets return (logits, activations), plain classifiers logits."""
    return output[0] if isinstance(output, tuple) else output


def generator_step(
    teacher: Teacher,
    student: nn.Module,
    generator: DataFreeGenerator,
    optimiser: torch.optim.Optimizer,
    z: torch.Tensor,
    cfg: GenerativeConfig,
    precision: Precision,
) -> torch.Tensor:
    """One step of the generator on x = G(z) (the reference's `synthesize`); returns L_G (graph freed).

    The student answers in eval mode (running BN statistics, not updated), as in the reference since acbbea6;
    it runs only when adv > 0. Gradients reach only the generator's parameters (`backward(inputs=...)`): the
    reference's `loss.backward()` also fills the student's parameter gradients, which its next step zeroes.
    """
    params = [p for p in generator.parameters() if p.requires_grad]
    generator.train()
    was_training = student.training
    student.eval()
    try:
        with precision.autocast():
            x = precision.layout(generator(z))
            if teacher.features is not None:
                teacher.features.active = True
            if teacher.bn_hook is not None:
                with teacher.bn_hook.recording():
                    teacher_logits = logits_of(teacher.synthesis(x))
                bn = teacher.bn_hook.loss()
            else:
                teacher_logits, bn = logits_of(teacher.synthesis(x)), None
            features = teacher.features.features if teacher.features is not None else None
            student_logits = logits_of(student(x)) if cfg.adv else None
        loss = generator_loss(teacher_logits, cfg, student_logits=student_logits, bn=bn, features=features)
        optimiser.zero_grad(set_to_none=True)
        loss.backward(inputs=params)
        optimiser.step()
    finally:
        if teacher.features is not None:
            teacher.features.active, teacher.features.features = False, None
        student.train(was_training)
    return loss.detach()


def sample(
    teacher: Teacher,
    generator: DataFreeGenerator,
    z: torch.Tensor,
    cfg: GenerativeConfig,
    precision: Precision,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A student batch and its targets without a graph (the reference's `sample` and teacher call); the
    generator makes the whole batch at once (its batch norms may use the batch's statistics), the teacher
    answers in parts (common.frozen_logits)."""
    generator.train(cfg.sample_mode == "train")
    with torch.no_grad(), precision.autocast():
        x = precision.layout(generator(z))
    return x, frozen_logits(teacher.answer, x, precision)


def student_step(
    student: nn.Module,
    optimiser: torch.optim.Optimizer,
    x: torch.Tensor,
    teacher_logits: torch.Tensor,
    cfg: GenerativeConfig,
    precision: Precision,
) -> torch.Tensor:
    """One student step: L_S = D(S(x), T(x)), SGD; returns L_S."""
    with precision.autocast():
        student_logits = logits_of(student(x))
    loss = discrepancy(student_logits, teacher_logits, cfg)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss.detach()


def generative_round(
    teacher: Teacher, state: GenerativeState, cfg: GenerativeConfig, precision: Precision, record=None
) -> torch.Tensor:
    """One round: generator steps, then student steps, each on fresh z; the student schedule steps. Returns
    the last student batch."""
    record = record or (lambda **values: None)
    student, generator = state.student, state.generator
    for _ in range(cfg.generator_steps):
        z = generator.sample_z(cfg.batch, generator=state.z_source)
        record(
            generator_loss=generator_step(
                teacher, student, generator, state.generator_optimiser, z, cfg, precision
            )
        )
    x = None
    for _ in range(cfg.student_steps):
        z = generator.sample_z(cfg.batch, generator=state.z_source)
        x, teacher_logits = sample(teacher, generator, z, cfg, precision)
        record(student_loss=student_step(student, state.student_optimiser, x, teacher_logits, cfg, precision))
    state.student_schedule.step()
    return x


# ------------------------------------------------------------------------------------- the run


def train_generative(
    cfg: GenerativeConfig,
    log: RunLog,
    teacher: nn.Module,
    student: nn.Module,
    test_split: ImageSplit,
    mean,
    std,
    *,
    name: str,
) -> dict:
    """Train `student` from `teacher` alone with the generative loop; evaluate on `test_split` only."""
    n = cfg.total_iterations
    run = Scaffold(
        cfg, log, total=n, interval=cfg.eval_interval, unit="round", desc=name, batch_size=cfg.batch
    )
    if run.part is not None and run.part.world_size > 1:
        raise ZsktError(
            f"{name} runs in one process (its batch statistics and class balance are over the whole "
            "batch); start it without torchrun"
        )
    channels, size = int(test_split.images.shape[1]), int(test_split.images.shape[-1])
    generator = DataFreeGenerator(
        cfg.z_dim, image_size=size, out_channels=channels, ngf=cfg.generator_width, mean=mean, std=std
    )
    frozen = Teacher.build(run.frozen_module(teacher, fold_bn=False), cfg)
    state = GenerativeState.build(run.train_module(student), run.train_module(generator), cfg, run.device)
    run.track(**state.checkpointed())
    run.evaluate_on(state.student, test_split, mean, std, cfg.eval_batch_size)
    teacher_accuracy = run.evaluate(frozen.answer)
    log.print(
        f"{name}: {n} rounds of {cfg.generator_steps} generator + {cfg.student_steps} student steps at "
        f"batch {cfg.batch} ({cfg.rounds_per_epoch} rounds per epoch), {run.device}, "
        f"{run.precision.name}; teacher test accuracy {teacher_accuracy:.2f}%"
    )
    last = {}

    def at_log_point(step: int) -> dict:
        if log.enabled and last.get("x") is not None:
            save_image_grid(last["x"], mean, std, log.out / "pseudo" / f"round_{step:06d}.png")
        return {"student_lr": cfg.student_lr * EpochCosine(cfg.rounds_per_epoch, n)(step - 1)}

    run.on_log(at_log_point)
    for _ in run.steps():
        last["x"] = generative_round(frozen, state, cfg, run.precision, record=run.add)
    if log.enabled:
        save_student(log, state.student, cfg, size, run.accuracy)
    return run.finish(
        method=name,
        teacher_test_accuracy=teacher_accuracy,
        iterations=n,
        teacher=cfg.teacher,
        teacher_arch=network_label(teacher, cfg.teacher),
        student=cfg.student,
        dataset=cfg.dataset,
        seed=cfg.seed,
        batch_size=cfg.batch,
    )


def run_generative(cfg: GenerativeConfig, log: RunLog, name: str) -> dict:
    """`zskt dafl|dfad|dfq`: load the teacher, build the student and generator, read only the test split."""
    if not cfg.teacher:
        raise ZsktError("no teacher given; pass --teacher PATH (a model.pt from `zskt train`)")
    info = get_info(cfg.dataset)
    data = load_dataset(
        cfg.dataset, cfg.data_dir, download=cfg.download, image_size=cfg.image_size, splits=("test",)
    )  # never the training images
    test, mean, std = data.test, data.mean, data.std
    size = int(test.images.shape[-1])
    teacher = load_teacher(cfg, info, size)
    seed_everything(cfg.seed)
    student = build_student(cfg, info, size)
    return train_generative(cfg, log, teacher, student, test, mean, std, name=name)
