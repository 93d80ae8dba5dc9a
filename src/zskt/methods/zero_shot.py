"""Zero-shot knowledge transfer: the paper's Algorithm 1 as the authors ran it (SPEC §2, §3).

Per pseudo batch, the generator takes `n_generator_steps` Adam steps maximising KL(teacher ‖ student) on
G(z), then the student takes `n_student_steps` steps minimising KL + β·attention on the same pseudo batch.
`zero_shot` is that loop without the reference's wasted work (docs/zero_shot.md lists each difference and
why it cannot change the result); `reference_zero_shot_steps` is the authors' loop kept literally, as the
slow baseline that tests and benchmarks compare against.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Literal

import torch

from zskt.config import check, field
from zskt.data import DATASETS, ImageSplit, get_info, load_dataset
from zskt.distributed import (
    Shard,
    all_sum,
    average_buffers,
    broadcast_module,
    check_in_sync,
    use_sync_batchnorm,
)
from zskt.errors import ZsktError
from zskt.evaluate import evaluate_accuracy
from zskt.io import atomic_write_bytes
from zskt.losses import attention_map, zero_shot_generator_loss, zero_shot_student_loss
from zskt.models import (
    Generator,
    build_model,
    canonical_name,
    check_image_size,
    is_model_name,
    load_model_for,
    save_generator,
    save_model,
)
from zskt.models.frozen import frozen_copy
from zskt.runlog import RunLog, Timer
from zskt.runtime import PRECISIONS, Precision, resolve_device, resolve_precision, seed_everything

# Pseudo batches per run (SPEC §3): the paper matched N to the teachers' own training iterations, 80k for
# CIFAR-10 (200 epochs x 391) and 50k for SVHN. Fashion-MNIST is not in the paper: its 170-epoch teacher
# recipe is 170 x 469 ≈ 80k iterations, so it gets CIFAR-10's N. digits is ours: 200 pseudo batches reach
# ≥ 97 % with a WRN-16-2 → WRN-16-1 pair in a few minutes on 2 CPU cores (SPEC §11, docs/zero_shot.md).
ITERATIONS = {"cifar10": 80_000, "svhn": 50_000, "fashion-mnist": 80_000, "digits": 200}
# Attention weight per layer: the authors' 250 (SPEC §3) wherever the paper's 32x32 geometry holds. digits is
# ours, by measurement (docs/zero_shot.md): with a `zskt train` WRN-16-2 teacher, 200 pseudo batches reach
# 85-87 % at β = 250 or 62.5 (the 16x16 maps' equal-scale value, SPEC §11) and 98 % at β = 0.
BETAS = {"cifar10": 250.0, "svhn": 250.0, "fashion-mnist": 250.0, "digits": 0.0}


@dataclass(frozen=True)
class ZeroShotConfig:
    """Zero-shot transfer from a teacher file into a fresh student (the authors' scripts' values, SPEC §3)."""

    teacher: str = field("", "teacher checkpoint: a project model.pt, an authors' last.pth.tar, a Ferles *-dict.pth")
    student: str = field("wrn-16-1", "student network: wrn-16-1, wrn-16-2, wrn-40-1 or wrn-40-2")
    dataset: str = field("digits", "data set the teacher was trained on (for test images and image shape): "
                                   "cifar10, svhn, fashion-mnist or digits")
    iterations: int | None = field(None, "N, pseudo batches; default: cifar10 80000, svhn 50000 (paper), "
                                         "fashion-mnist 80000, digits 200 (ours)")
    batch_size: int = field(128, "pseudo images per batch (authors' scripts: 128)")
    z_dim: int = field(100, "dimension of the generator's noise z ~ N(0, I) (authors: 100)")
    n_generator_steps: int = field(1, "n_G: generator steps per pseudo batch (authors' scripts: 1)")
    n_student_steps: int = field(10, "n_S: student steps per pseudo batch (authors' scripts: 10)")
    generator_lr: float = field(1e-3, "generator Adam learning rate (authors' code: 1e-3)")
    student_lr: float = field(2e-3, "student Adam learning rate (authors' code and paper: 2e-3)")
    beta: float | None = field(None, "attention weight per layer, 3 layers; 0 = KL only; default: 250 (authors) "
                                     "for cifar10, svhn, fashion-mnist; 0 for digits (ours, measured)")
    temperature: float = field(1.0, "softmax temperature of the KL (authors: 1)")
    kl_reduction: Literal["mean", "batchmean"] = field("mean", "KL reduction: mean (authors' code: ÷ B·C) or "
                                                               "batchmean (÷ B, the paper's)")
    grad_clip: float = field(5.0, "global grad-norm clip before every step, both networks; 0 = off (authors: 5)")
    final_bn_affine: bool = field(True, "generator's last BN has scale and shift (authors since fab3b92; "
                                        "--no-final-bn-affine is the initial commit's)")
    fresh_batch_per_student_step: bool = field(False, "draw a new pseudo batch for every student step (the "
                                                      "Ferles reproduction's 'modified' variant, SPEC §8)")
    eval_every: int | None = field(None, "test, log, save a pseudo-image grid and checkpoint every this many "
                                         "pseudo batches; default N/100 (authors' log_freq)")
    eval_batch_size: int = field(500, "test batch size (eval mode: any size gives the same accuracy)")
    seed: int = field(0, "seed for the student, the generator and the z draws (authors: 0, 1, 2)")
    device: str = field("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    precision: str = field("auto", "fp32, bf16 (autocast), or auto: fp32 on CPU, bf16 on CUDA")
    sync_bn: bool = field(False, "under torchrun: BatchNorm statistics of student and generator over the "
                                 "global batch (SyncBatchNorm, CUDA only); default: each rank's own shard")
    compile: bool = field(False, "torch.compile the student in the training loop (CUDA: mode reduce-overhead, "
                                 "CUDA graphs); off: not yet measured on a GPU, no gain on CPU (docs/benchmarks.md)")
    image_size: int | None = field(None, "digits only: side of the resized images (default 16); must be the "
                                         "size the teacher was trained at")
    data_dir: str | None = field(None, "data root for the test split (default: $ZSKT_DATA or ~/.cache/zskt/data)")
    download: bool = field(False, "download missing data files (CIFAR-10, SVHN, Fashion-MNIST)")

    def __post_init__(self):
        check(self.dataset in DATASETS, f"unknown data set {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        check(is_model_name(self.student) and canonical_name(self.student).startswith("wrn-"),
              f"unknown student {self.student!r}; choose a Wide ResNet: wrn-DEPTH-WIDTH (e.g. wrn-16-1)")
        check(self.iterations is None or self.iterations > 0, f"iterations must be positive, got {self.iterations}")
        # Train-mode BN needs more than one value per channel; the generator's BNs see the whole batch.
        check(self.batch_size >= 2, f"batch_size must be at least 2 (batch-norm statistics), got {self.batch_size}")
        check(self.z_dim > 0, f"z_dim must be positive, got {self.z_dim}")
        check(self.n_generator_steps >= 0, f"n_generator_steps must be >= 0, got {self.n_generator_steps}")
        check(self.n_student_steps >= 1, f"n_student_steps must be >= 1, got {self.n_student_steps}")
        check(self.generator_lr > 0 and self.student_lr > 0, "learning rates must be positive")
        check(self.beta is None or self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        check(self.temperature > 0, f"temperature must be positive, got {self.temperature}")
        check(self.kl_reduction in ("mean", "batchmean"),
              f"kl_reduction must be mean or batchmean, got {self.kl_reduction!r}")
        check(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        check(self.eval_every is None or self.eval_every > 0, f"eval_every must be positive, got {self.eval_every}")
        check(self.eval_batch_size > 0, f"eval_batch_size must be positive, got {self.eval_batch_size}")
        check(self.precision in PRECISIONS, f"unknown precision {self.precision!r}; choose {', '.join(PRECISIONS)}")

    @property
    def total_iterations(self) -> int:
        """N: `iterations`, or the data set's preset."""
        return self.iterations if self.iterations is not None else ITERATIONS[self.dataset]

    @property
    def attention_beta(self) -> float:
        """β: `beta`, or the data set's preset."""
        return self.beta if self.beta is not None else BETAS[self.dataset]

    @property
    def eval_interval(self) -> int:
        return self.eval_every or max(1, self.total_iterations // 100)


# ------------------------------------------------------------------------------------- optimisers


class CosineFactor:
    """The learning-rate factor of pseudo batch b under `CosineAnnealingLR(T_max=N)` with eta_min 0, no restarts:
    (1 + cos(π·b/N)) / 2, written in closed form (PyTorch 1.0's form; newer versions recur step by step)."""

    def __init__(self, total: int):
        self.total = total

    def __call__(self, b: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * b / self.total))


@dataclass
class Optimisers:
    """Adam for each network (default betas, no weight decay) and a cosine schedule stepped per pseudo batch."""

    generator: torch.optim.Adam
    student: torch.optim.Adam
    generator_schedule: torch.optim.lr_scheduler.LambdaLR
    student_schedule: torch.optim.lr_scheduler.LambdaLR

    @classmethod
    def build(cls, student: torch.nn.Module, generator: torch.nn.Module, cfg: ZeroShotConfig) -> Optimisers:
        total = cfg.total_iterations
        gen = _adam(generator.parameters(), cfg.generator_lr)
        stu = _adam(student.parameters(), cfg.student_lr)
        lam = torch.optim.lr_scheduler.LambdaLR
        return cls(gen, stu, lam(gen, CosineFactor(total)), lam(stu, CosineFactor(total)))

    def step_schedules(self) -> None:
        self.generator_schedule.step()
        self.student_schedule.step()

    def lrs(self) -> dict:
        return {"generator_lr": self.generator.param_groups[0]["lr"], "student_lr": self.student.param_groups[0]["lr"]}

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict(), "student": self.student.state_dict(),
                "generator_schedule": self.generator_schedule.state_dict(),
                "student_schedule": self.student_schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.student.load_state_dict(state["student"])
        self.generator_schedule.load_state_dict(state["generator_schedule"])
        self.student_schedule.load_state_dict(state["student_schedule"])


def _adam(params, lr: float) -> torch.optim.Adam:
    """Adam with PyTorch's defaults, as a fused kernel where this PyTorch has one for the device (CPU since 2.4,
    CUDA): the same update in one pass per tensor instead of ~10 small ops, 11 optimiser steps per pseudo batch
    (docs/benchmarks.md: student step 1.7 -> 0.2 ms, generator step 11.8 -> 0.9 ms on one CPU core; rounding-level
    differences only). Elsewhere the default implementation."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def _clip(parameters, max_norm: float) -> None:
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)


# ------------------------------------------------------------------------------------- statistics


class PseudoStats:
    """Sums kept on the device between log points, so the loop never waits for the device (no .item())."""

    def __init__(self, device: torch.device, share: float = 1.0):
        self.device = device
        self.share = share  # this rank's share of the batch: per-rank means x share sum to the global mean
        self.reset()

    def reset(self) -> None:
        # [generator loss, student loss, teacher max-prob, student max-prob]
        self.sums = torch.zeros(4, device=self.device)
        self.counts = [0, 0, 0]  # generator steps, student steps, pseudo batches

    def add_generator(self, loss: torch.Tensor) -> None:
        self.sums[0] += loss.detach()
        self.counts[0] += 1

    def add_student(self, loss: torch.Tensor) -> None:
        self.sums[1] += loss.detach()
        self.counts[1] += 1

    def add_beliefs(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> None:
        # The authors log both networks' mean max-probability on the last student step's pseudo batch
        # (SPEC §8: about 0.8 for the teacher and 0.3 for the student on CIFAR-10).
        with torch.no_grad():
            self.sums[2] += torch.softmax(teacher_logits.float(), 1).amax(1).mean() * self.share
            self.sums[3] += torch.softmax(student_logits.detach().float(), 1).amax(1).mean() * self.share
        self.counts[2] += 1

    def read(self) -> dict:
        """Means since the last read (one host sync; over all ranks under torchrun), then reset."""
        values = all_sum(self.sums).tolist()
        g, s, b = (max(1, n) for n in self.counts)
        out = {"generator_loss": values[0] / g if self.counts[0] else float("nan"),
               "student_loss": values[1] / s, "teacher_max_prob": values[2] / b, "student_max_prob": values[3] / b}
        self.reset()
        return out


# ------------------------------------------------------------------------------------- the loop


def generator_step(teacher: torch.nn.Module, student: torch.nn.Module, generator: Generator, opt: Optimisers,
                   z: torch.Tensor, cfg: ZeroShotConfig, precision: Precision,
                   part: Shard | None = None) -> torch.Tensor:
    """One generator step on x = G(z): L_G = −KL(T(x) ‖ S(x)), clip, Adam; returns L_G (with its graph freed).

    Gradients go only to the generator's parameters (`backward(inputs=...)`: the student's parameter gradients
    are not computed), but through both the student's log-softmax and the teacher's softmax, as the authors'
    loss has it: the frozen teacher still runs with a graph with respect to its input. The student is in train
    mode, so this forward updates its BN running statistics, as in the authors' code. Under torchrun, `z` is
    this rank's shard and `part` scales the loss and sums the gradients over ranks before clipping.
    """
    part = part or Shard.of(len(z))
    gen_params = [p for p in generator.parameters() if p.requires_grad]
    with precision.autocast():
        x = precision.layout(generator(z))
        student_logits, _ = student(x)
        teacher_logits, _ = teacher(x)
    loss = zero_shot_generator_loss(student_logits, teacher_logits, temperature=cfg.temperature,
                                    reduction=cfg.kl_reduction) * part.share
    opt.generator.zero_grad(set_to_none=True)
    loss.backward(inputs=gen_params)
    part.reduce(gen_params)
    _clip(gen_params, cfg.grad_clip)
    opt.generator.step()
    return loss.detach()


def zero_shot_steps(teacher: torch.nn.Module, student: torch.nn.Module, generator: Generator, opt: Optimisers,
                    z_source: torch.Generator, n_pseudo_batches: int, cfg: ZeroShotConfig, *,
                    precision: Precision | None = None, stats: PseudoStats | None = None) -> torch.Tensor:
    """Run `n_pseudo_batches` of Algorithm 1 and return the last pseudo batch (detached).

    Expects the teacher in eval mode with frozen parameters, the student and generator in train mode (as
    `zero_shot` sets them). One pseudo batch:

    1. z ~ N(0, I) of shape (batch, z_dim), drawn from `z_source`.
    2. n_G generator steps on G(z) (`generator_step`).
    3. x = G(z) once more with the updated generator, without a graph: the pseudo batch. The teacher's logits
       and attention maps on it are computed once, without a graph, and reused by every student step.
    4. n_S student steps on x: L_S = KL + β·Σ attention_diff, clip, Adam. No gradient reaches the generator.
    5. Both cosine schedules step.

    With `fresh_batch_per_student_step`, each student step instead draws a new z, a new pseudo batch and new
    teacher outputs (Ferles' "modified" variant): 1 + n_S draws of z per pseudo batch.

    Under torchrun every rank draws the same global z (the same stream as a single process) and keeps its
    shard; losses are scaled by the shard's share and gradients summed over ranks before clipping, so each
    step uses the global batch's gradient (docs/distributed.md).
    """
    precision = precision or Precision("fp32", "cpu", False)
    part = Shard.of(cfg.batch_size)
    pseudo = None
    for _ in range(n_pseudo_batches):
        z = part.take(generator.sample_z(cfg.batch_size, generator=z_source))
        for _ in range(cfg.n_generator_steps):
            loss = generator_step(teacher, student, generator, opt, z, cfg, precision, part)
            if stats is not None:
                stats.add_generator(loss)
        for k in range(cfg.n_student_steps):
            if k == 0 or cfg.fresh_batch_per_student_step:
                if cfg.fresh_batch_per_student_step:
                    z = part.take(generator.sample_z(cfg.batch_size, generator=z_source))
                with torch.no_grad(), precision.autocast():
                    pseudo = precision.layout(generator(z))
                    teacher_logits, teacher_acts = teacher(pseudo)
                    if cfg.attention_beta:  # the teacher's attention maps, once for the n_S student steps
                        teacher_acts = [attention_map(a) for a in teacher_acts]
            with precision.autocast():
                student_logits, student_acts = student(pseudo)
            loss = zero_shot_student_loss(student_logits, student_acts, teacher_logits, teacher_acts,
                                          beta=cfg.attention_beta, temperature=cfg.temperature,
                                          reduction=cfg.kl_reduction) * part.share
            opt.student.zero_grad(set_to_none=True)
            loss.backward()
            part.reduce(student.parameters())
            _clip(student.parameters(), cfg.grad_clip)
            opt.student.step()
            if stats is not None:
                stats.add_student(loss)
        if stats is not None:
            stats.add_beliefs(teacher_logits, student_logits)
        opt.step_schedules()
    return pseudo


def reference_zero_shot_steps(teacher: torch.nn.Module, student: torch.nn.Module, generator: Generator,
                              opt: Optimisers, z_source: torch.Generator, n_pseudo_batches: int,
                              cfg: ZeroShotConfig, *, precision: Precision | None = None) -> torch.Tensor:
    """SLOW REFERENCE: the authors' `ZeroShotKTSolver` loop kept literally (SPEC §3), for tests and benchmarks.

    Every one of the n_G + n_S calls per pseudo batch re-runs the generator on the same z with a graph (the
    `LearnableLoader`); the teacher keeps `requires_grad=True` and runs with a graph in the generator step
    (its parameter gradients accumulate, unused); the student steps back-propagate through the generator;
    the teacher's outputs for the student phase come from the first student call. Produces the same
    parameters as `zero_shot_steps` (tests/test_zero_shot.py), at about twice the cost. Default options only
    (no fresh batch per student step). The teacher's requires_grad flags are restored afterwards.
    """
    if cfg.fresh_batch_per_student_step:
        raise ValueError("the reference loop is the authors' default loop; it has no fresh-batch variant")
    precision = precision or Precision("fp32", "cpu", False)
    kl = {"temperature": cfg.temperature, "reduction": cfg.kl_reduction}
    flags = [p.requires_grad for p in teacher.parameters()]
    teacher.requires_grad_(True)
    n_repeat = cfg.n_generator_steps + cfg.n_student_steps
    x = None
    try:
        for _ in range(n_pseudo_batches):
            z = generator.sample_z(cfg.batch_size, generator=z_source)
            for call in range(n_repeat):
                with precision.autocast():
                    x = precision.layout(generator(z))
                if call < cfg.n_generator_steps:
                    with precision.autocast():
                        student_logits, _ = student(x)
                        teacher_logits, _ = teacher(x)
                    loss = zero_shot_generator_loss(student_logits, teacher_logits, **kl)
                    opt.generator.zero_grad()
                    loss.backward()
                    _clip(generator.parameters(), cfg.grad_clip)
                    opt.generator.step()
                else:
                    if call == cfg.n_generator_steps:
                        with torch.no_grad(), precision.autocast():
                            teacher_logits, teacher_acts = teacher(x)
                    with precision.autocast():
                        student_logits, student_acts = student(x)
                    loss = zero_shot_student_loss(student_logits, student_acts, teacher_logits, teacher_acts,
                                                  beta=cfg.attention_beta, **kl)
                    opt.student.zero_grad()
                    loss.backward()
                    _clip(student.parameters(), cfg.grad_clip)
                    opt.student.step()
            opt.step_schedules()
    finally:
        for p, flag in zip(teacher.parameters(), flags):
            p.requires_grad_(flag)
            p.grad = None
    return x.detach() if x is not None else None


# ------------------------------------------------------------------------------------- the run


def zero_shot(cfg: ZeroShotConfig, log: RunLog, teacher: torch.nn.Module, student: torch.nn.Module,
              test_split: ImageSplit, mean, std, *, generator: Generator | None = None) -> dict:
    """Train `student` from `teacher` alone (Algorithm 1); evaluate on `test_split` only.

    Never sees a training split. The teacher is frozen in place (requires_grad False, eval mode). Without a
    `generator`, one is built for the test images' shape (its init draws from the global RNG: seed first).
    Evaluates, logs, saves a pseudo-image grid and checkpoints every `cfg.eval_interval` pseudo batches; resumes
    from `log`'s checkpoint when there is one. Writes `model.pt` and `generator.pt`; the result holds the final
    `test_accuracy` (percent; the paper's number), `best_test_accuracy` and `seconds_per_iteration`.
    """
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    total, interval = cfg.total_iterations, cfg.eval_interval
    channels, size = int(test_split.images.shape[1]), int(test_split.images.shape[-1])
    if generator is None:
        generator = Generator(cfg.z_dim, image_size=size, out_channels=channels, final_bn_affine=cfg.final_bn_affine)
    if (generator.out_channels, generator.image_size) != (channels, size):
        raise ZsktError(f"the generator makes {generator.out_channels}x{generator.image_size}x{generator.image_size}"
                        f" images, the test images are {channels}x{size}x{size}")
    part = Shard.of(cfg.batch_size)
    if part.local == 0:
        raise ZsktError(f"batch_size {cfg.batch_size} is smaller than the {part.world_size} ranks; "
                        "pass a larger --batch-size or start fewer processes")
    teacher = precision.prepare(teacher.to(device)).eval().requires_grad_(False)
    teacher = frozen_copy(teacher)  # batch norms folded: the same function, less memory traffic (models/frozen.py)
    student = precision.prepare(use_sync_batchnorm(student.to(device), cfg.sync_bn, device)).train()
    # The generator is always in train mode (batch statistics), as the authors'.
    generator = precision.prepare(use_sync_batchnorm(generator.to(device), cfg.sync_bn, device)).train()
    broadcast_module(student)
    broadcast_module(generator)
    opt = Optimisers.build(student, generator, cfg)
    z_source = torch.Generator(device=device).manual_seed(cfg.seed)
    test = test_split.to(device)
    # --compile: only the loop's calls go through the compiled wrapper (same parameters and buffers); evaluation,
    # checkpoints and model.pt use `student` itself. On CUDA, reduce-overhead replays the WRN-16-1 step as CUDA
    # graphs (launch-bound in eager mode at batch 128); unmeasured so far, hence off by default.
    loop_student = torch.compile(student, mode="reduce-overhead" if device.type == "cuda" else None) \
        if cfg.compile else student

    start, best, accuracy, history, first_seconds = 0, -1.0, float("nan"), [], None
    state = log.load_checkpoint(map_location=device)
    if state is not None:
        student.load_state_dict(state["student"])
        generator.load_state_dict(state["generator"])
        opt.load_state_dict(state["optimisers"])
        z_source.set_state(state["z_rng"].cpu())
        torch.set_rng_state(state["rng"].cpu())
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        start, best, accuracy = state["step"], state["best"], state["test_accuracy"]
        history, first_seconds = state["interval_seconds"], state["first_seconds"]
        log.print(f"resumed from pseudo batch {start}")

    teacher_accuracy = evaluate_accuracy(teacher, test, mean, std, batch_size=cfg.eval_batch_size,
                                         precision=precision)
    log.print(f"zero-shot {total} pseudo batches of {cfg.batch_size} ({cfg.n_generator_steps} generator + "
              f"{cfg.n_student_steps} student steps each), {device}, {precision.name}; teacher test accuracy "
              f"{teacher_accuracy:.2f}%")
    stats = PseudoStats(device, part.share)
    timer = Timer(device)
    bar = log.progress(total, initial=start, desc="zero-shot", unit="batch")
    t0 = time.perf_counter()
    step, warm = start, False
    while step < total:
        # Time whole stretches between log points with one sync at each end (none per step). The first pseudo
        # batch of a process (warm-up: allocator, kernel selection) is timed alone and left out of the median.
        n = 1 if not warm else min(total, (step // interval + 1) * interval) - step
        tick = timer.now()
        pseudo = zero_shot_steps(teacher, loop_student, generator, opt, z_source, n, cfg, precision=precision,
                                 stats=stats)
        seconds = timer.now() - tick
        step += n
        bar.update(n)
        if warm:
            history.append(seconds / n)
        elif first_seconds is None:
            first_seconds = seconds
        warm = True
        if step % interval and step != total:
            continue

        last = step == total
        average_buffers(student)  # under torchrun: every rank evaluates and saves the same BN statistics
        average_buffers(generator)
        accuracy = evaluate_accuracy(student, test, mean, std, batch_size=cfg.eval_batch_size, precision=precision)
        best = max(best, accuracy)
        row = {"step": step, **stats.read(), "test_accuracy": accuracy, "best_test_accuracy": best,
               **_lrs_of_batch(cfg, step - 1), "seconds_per_iteration": seconds / n}
        log.metrics(row)
        bar.set_postfix_str(f"G {row['generator_loss']:.4f} S {row['student_loss']:.4f} "
                            f"p_T {row['teacher_max_prob']:.2f} p_S {row['student_max_prob']:.2f} acc {accuracy:.2f}%")
        log.print(f"batch {step:>7}/{total}  G {row['generator_loss']:9.5f}  S {row['student_loss']:8.5f}  "
                  f"p_T {row['teacher_max_prob']:.3f}  p_S {row['student_max_prob']:.3f}  "
                  f"test {accuracy:6.2f}%  (best {best:.2f}%)")
        if log.enabled:
            save_pseudo_grid(pseudo, mean, std, log.out / "pseudo" / f"iter_{step:06d}.png")
        if not last:
            log.save_checkpoint({
                "step": step, "student": student.state_dict(), "generator": generator.state_dict(),
                "optimisers": opt.state_dict(), "z_rng": z_source.get_state(), "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "best": best, "test_accuracy": accuracy, "interval_seconds": history,
                "first_seconds": first_seconds})
    log.close_progress()
    in_sync = check_in_sync(student, generator)
    seconds = median(history) if history else first_seconds
    if log.enabled:
        save_model(student, log.out / "model.pt", dataset=cfg.dataset, image_size=size, test_accuracy=accuracy,
                   command=log.command, teacher=cfg.teacher)
        save_generator(generator, log.out / "generator.pt", dataset=cfg.dataset, image_size=size,
                       command=log.command)
    return log.finish({
        "test_accuracy": accuracy, "best_test_accuracy": best, "seconds_per_iteration": seconds,
        "teacher_test_accuracy": teacher_accuracy, "iterations": total, "train_seconds": time.perf_counter() - t0,
        "teacher": cfg.teacher, "teacher_arch": getattr(teacher, "arch", dict)().get("name"),
        "student": cfg.student, "dataset": cfg.dataset, "seed": cfg.seed, "batch_size": cfg.batch_size,
        "beta": cfg.attention_beta, "fresh_batch_per_student_step": cfg.fresh_batch_per_student_step,
        "compile": cfg.compile, **({"distributed": in_sync} if in_sync else {}),
        **precision.describe()})


def _lrs_of_batch(cfg: ZeroShotConfig, b: int) -> dict:
    """The learning rates used during 0-based pseudo batch b."""
    factor = CosineFactor(cfg.total_iterations)(b)
    return {"generator_lr": cfg.generator_lr * factor, "student_lr": cfg.student_lr * factor}


def save_pseudo_grid(images: torch.Tensor, mean, std, path: Path, n: int = 64) -> None:
    """A PNG of up to n pseudo images, un-normalised with the data set's mean/std and clipped to [0, 1]."""
    import matplotlib.image

    x = images[:n].detach().float().cpu()
    c = x.shape[1]
    x = x * torch.tensor(std).view(1, c, 1, 1) + torch.tensor(mean).view(1, c, 1, 1)
    x = x.clamp(0, 1)
    scale = max(1, 32 // x.shape[-1])  # small images (digits) are enlarged by pixel repetition to be visible
    x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    cols = math.ceil(math.sqrt(len(x)))
    rows = math.ceil(len(x) / cols)
    h, w = x.shape[-2:]
    grid = torch.ones(c, rows * (h + 1) + 1, cols * (w + 1) + 1)  # 1-pixel white lines between images
    for i, image in enumerate(x):
        r, q = divmod(i, cols)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = image
    array = grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, array, cmap="gray" if c == 1 else None, vmin=0, vmax=1, format="png")
    atomic_write_bytes(path, buffer.getvalue())


# ------------------------------------------------------------------------------------- from files


def run_zero_shot(cfg: ZeroShotConfig, log: RunLog) -> dict:
    """`zskt zero-shot`: load the teacher, build the student and generator, read only the test split, transfer."""
    if not cfg.teacher:
        raise ZsktError("no teacher given; pass --teacher PATH (a model.pt from `zskt train` or an authors' file)")
    device = resolve_device(cfg.device)
    info = get_info(cfg.dataset)
    # The teacher first: a wrong file is reported before any data is read or downloaded.
    teacher = load_model_for(cfg.teacher, role="--teacher", dataset=cfg.dataset, num_classes=info.num_classes,
                             in_channels=info.in_channels, image_size=None, map_location=device)
    data = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download, image_size=cfg.image_size)
    # Only the test split and the normalisation constants go on; the train split is dropped here.
    test, mean, std = data.test, data.mean, data.std
    del data
    size = int(test.images.shape[-1])
    check_image_size(teacher, "--teacher", cfg.teacher, size)
    seed_everything(cfg.seed)
    student = build_model(cfg.student, info.num_classes, info.in_channels)
    generator = Generator(cfg.z_dim, image_size=size, out_channels=info.in_channels,
                          final_bn_affine=cfg.final_bn_affine)
    return zero_shot(cfg, log, teacher, student, test, mean, std, generator=generator)
