"""Adversarial belief matching (paper §4.3, Algorithm 2; SPEC §6): transition curves and the mean transition
error (MTE). The attacked network (the student) is pushed by plain gradient steps towards each other class and
both networks' probability of that class is recorded; MTE is the mean gap between the two over the curves.

`transition_curves` gets the numbers of the authors' `utils/transition_curves.py` loop (one image and one
target at a time; kept literally in tests/reference_transition_curves.py) with the (image, target) pairs of a
chunk stepped together.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zskt.config import check, field
from zskt.data import ImageData, dataset_name, load_dataset, normalize
from zskt.distributed import shard, world
from zskt.errors import ZsktError
from zskt.evaluate.accuracy import predict
from zskt.io import atomic_write_bytes
from zskt.models.frozen import frozen_copy
from zskt.runlog import RunLog, Timer
from zskt.runtime import PRECISIONS, Precision, resolve_device, resolve_precision

logger = logging.getLogger(__name__)

# Pairs stepped together when --chunk-size is not given. Memory is set by what the student's backward keeps
# per pair (its saved activations; the teacher runs under no_grad and keeps nothing): about 1.2 MB for a
# WRN-16-1 at 32x32, 7 MB for a WRN-40-2. CPU: small chunks stay in the caches, and 128 pairs (~150 MB) were
# as fast as any (docs/benchmarks.md). CUDA: 16384 pairs (~19 GB for a WRN-16-1; lower it for a bigger
# student) hold the paper's 1000 x 9 = 9000 pairs at once.
DEFAULT_CHUNK = {"cpu": 128, "cuda": 16384}


# ---------------------------------------------------------------------------------------------- procedure


@contextlib.contextmanager
def _frozen_eval(*models: nn.Module):
    """Eval mode (BN running statistics, no dropout) and requires_grad False on all parameters, then restored.

    Eval mode is what the authors use and what makes batching exact (see `transition_curves`); frozen
    parameters mean the backward computes the input's gradient only, not weight gradients nobody reads.
    """
    unique = list({id(m): m for m in models}.values())
    modes = [m.training for m in unique]
    flags = [[p.requires_grad for p in m.parameters()] for m in unique]
    try:
        for m in unique:
            m.eval()
            m.requires_grad_(False)
        yield
    finally:
        for m, mode, saved in zip(unique, modes, flags, strict=True):
            m.train(mode)
            for p, flag in zip(m.parameters(), saved, strict=True):
                p.requires_grad_(flag)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _autocast(precision: Precision | None):
    return precision.autocast() if precision is not None else contextlib.nullcontext()


def _layout(precision: Precision | None, images: torch.Tensor) -> torch.Tensor:
    return precision.layout(images) if precision is not None else images


def shuffle_and_collect(agree: torch.Tensor, n_images: int, seed: int) -> torch.Tensor:
    """Indices into the test split of `n_images` images on which both networks predict the same class (SPEC
    §6): the first `n_images` indices i with agree[i] ((N,) bool) along a permutation seeded by `seed`.

    The authors shuffle the test set and walk it one image at a time, keeping agreeing images until n are
    collected; here the predictions are computed in batches beforehand and the same walk is taken over a
    permutation seeded by `seed`. Agreement is all that counts: both may be wrong. If fewer than n agree, all
    that do are used (the authors stop with an error) and a warning is logged.
    """
    order = torch.randperm(len(agree), generator=torch.Generator().manual_seed(seed))
    chosen = order[agree[order]]
    if len(chosen) < n_images:
        logger.warning(
            "only %d of %d test images have the same prediction from both networks; using all %d "
            "(asked for %d)",
            len(chosen),
            len(agree),
            len(chosen),
            n_images,
        )
    return chosen[:n_images]


def targets_for(sources: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(n,) source classes -> (n, C-1) targets j = (y + c + 1) mod C for c = 0..C-2: every other class once.

    The authors' code passes the data set label as y; the paper's Algorithm 2 uses the agreed prediction i
    (`BeliefConfig.targets` chooses which `run_belief` passes).
    """
    offsets = torch.arange(1, num_classes, device=sources.device)
    return (sources.long()[:, None] + offsets) % num_classes


def transition_curves(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    steps: int = 200,
    step_size: float = 1.0,
    chunk_size: int | None = None,
    *,
    precision: Precision | None = None,
    progress=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transition curves of every (image, target) pair: (p_student, p_teacher), each float32 (n, T, steps).

    `images` are normalised (n, C, H, W), `targets` (n, T) int64. For each pair, x starts at the image and
    takes `steps` plain gradient steps x <- x - step_size * d CE(student(x), j) / dx in normalised-input space
    (no sign, no projection, no clamping); entry s holds softmax(.)[j] of both networks *before* step s's
    update, so entry 0 is the clean image. This is the authors' loop (tests/reference_transition_curves.py),
    with the pairs of a chunk of `chunk_size` advancing together on the networks' device.
    """
    n, n_targets = targets.shape
    device = _device_of(student)
    chunk_size = chunk_size or DEFAULT_CHUNK.get(device.type, DEFAULT_CHUNK["cpu"])
    images = images.to(device)
    images = images if images.is_floating_point() else images.float()  # float64 networks (tests) stay exact
    # Pairs in row-major order: pair p is image p // T with target column p % T.
    pair_targets = targets.to(device, torch.long).reshape(-1)  # (n*T,)
    pair_images = torch.arange(n, device=device).repeat_interleave(n_targets)
    p_student = torch.empty(n * n_targets, steps)
    p_teacher = torch.empty(n * n_targets, steps)
    with _frozen_eval(student, teacher):
        for start in range(0, n * n_targets, chunk_size):
            stop = min(start + chunk_size, n * n_targets)
            target = pair_targets[start:stop, None]  # (B, 1)
            x = _layout(precision, images[pair_images[start:stop]].clone())  # (B, C, H, W)
            # Recorded on the device, copied to the host once per chunk: no host sync inside the step loop.
            chunk_student = torch.empty(stop - start, steps, device=device)
            chunk_teacher = torch.empty(stop - start, steps, device=device)
            for step in range(steps):
                x.requires_grad_(True)
                with _autocast(precision):
                    logits_student, _ = student(x)
                    with torch.no_grad():
                        logits_teacher, _ = teacher(x)
                logits_student = _at_least_fp32(logits_student)
                # Summed, not averaged: in eval mode nothing couples the samples of a batch (BN uses its
                # running statistics, there is no dropout), so d(sum_b CE_b)/dx_b = dCE_b/dx_b, exactly the
                # gradient the authors take with a batch of one. The mean would scale every step by 1/B.
                loss = F.cross_entropy(logits_student, target[:, 0], reduction="sum")
                (grad,) = torch.autograd.grad(loss, x)
                with torch.no_grad():
                    chunk_student[:, step] = logits_student.softmax(1).gather(1, target)[:, 0]
                    chunk_teacher[:, step] = _at_least_fp32(logits_teacher).softmax(1).gather(1, target)[:, 0]
                    x = x.detach() - step_size * grad
                if progress is not None:
                    progress.update(1)
            p_student[start:stop] = chunk_student.cpu()
            p_teacher[start:stop] = chunk_teacher.cpu()
    return p_student.view(n, n_targets, steps), p_teacher.view(n, n_targets, steps)


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    # Softmax and cross-entropy of bf16-autocast logits in fp32; float64 logits keep their precision.
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


# ---------------------------------------------------------------------------------------------- the error


def mean_transition_error(p_student: torch.Tensor, p_teacher: torch.Tensor, k: int = 100) -> float:
    """MTE = mean |p_teacher - p_student| over all curves and their first k steps (NB-MTE; Table 2: K = 100).

    (n, T, steps) each, steps >= k; computed in float64.
    """
    if p_student.shape != p_teacher.shape:
        raise ValueError(f"curve shapes differ: {tuple(p_student.shape)} vs {tuple(p_teacher.shape)}")
    if not 0 < k <= p_student.shape[-1]:
        raise ValueError(
            f"MTE over the first {k} steps needs at least {k} recorded steps, got {p_student.shape[-1]}"
        )
    diff = (p_teacher[..., :k].double() - p_student[..., :k].double()).abs()
    return diff.mean().item()


@dataclass(frozen=True)
class MTEBreakdown:
    per_step: np.ndarray  # (steps,) mean |diff| over all curves at each recorded step
    per_pair: np.ndarray  # (C, C) mean |diff| over the first k steps by (source, target) class; NaN if none
    pair_counts: np.ndarray  # (C, C) curves behind each per_pair entry


def mte_breakdown(
    p_student: torch.Tensor,
    p_teacher: torch.Tensor,
    sources: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    k: int = 100,
) -> MTEBreakdown:
    """Per-step and per-class-pair means of |p_teacher - p_student|, for plots; they average to the MTE."""
    diff = (p_teacher.double() - p_student.double()).abs()  # (n, T, steps)
    per_curve = diff[..., :k].mean(-1).reshape(-1)  # (n*T,)
    pair = (sources.long()[:, None] * num_classes + targets.long()).reshape(-1)  # (n*T,) source * C + target
    sums = torch.zeros(num_classes * num_classes, dtype=torch.float64).index_add_(0, pair, per_curve)
    counts = torch.zeros(num_classes * num_classes, dtype=torch.float64).index_add_(
        0, pair, torch.ones_like(per_curve)
    )
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    per_pair = torch.where(counts > 0, sums / counts.clamp(min=1), nan)
    return MTEBreakdown(
        per_step=diff.mean((0, 1)).numpy(),
        per_pair=per_pair.view(num_classes, num_classes).numpy(),
        pair_counts=counts.view(num_classes, num_classes).long().numpy(),
    )


# ---------------------------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class BeliefConfig:
    """Transition curves and MTE of a student against its teacher (paper §4.3, Table 2, Figure 4; SPEC §6)."""

    student: str = field("", "checkpoint of the attacked network (netA in the authors' code: the student)")
    teacher: str = field("", "checkpoint of the reference network (netB: the teacher)")
    dataset: str = field(
        "digits", "data set whose test split supplies the images: cifar10, svhn, fashion-mnist or digits"
    )
    images: int = field(1000, "N: test images on which both networks agree (authors: 1000)")
    steps: int = field(200, "adversarial steps recorded per curve (authors: 200)")
    mte_steps: int = field(100, "K: first steps the MTE averages over (paper Table 2 and NB-MTE: 100)")
    step_size: float = field(1.0, "xi: gradient step in normalised-input space (paper and authors: 1)")
    targets: Literal["label", "prediction"] = field(
        "label", "targets relative to the test label (authors' code) or the agreed prediction (Algorithm 2)"
    )
    chunk_size: int | None = field(
        None,
        "(image, target) pairs stepped together; default 128 on CPU, "
        "16384 on CUDA (memory ~1.2 MB per pair for WRN-16-1 at 32x32)",
    )
    seed: int = field(0, "seed of the shuffle that picks the images (authors: 0)")
    device: str = field("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    precision: str = field(
        "fp32", "fp32 (the curves are a measurement), bf16 autocast, or auto (fp32; docs/decisions.md)"
    )
    image_size: int | None = field(
        None,
        "digits only: side of the resized images (default 16); must match what the networks were trained on",
    )
    data_dir: str | None = field(None, "data root (default: $ZSKT_DATA or ~/.cache/zskt/data)")
    download: bool = field(False, "download missing data files (CIFAR-10, SVHN, Fashion-MNIST)")

    def __post_init__(self):
        check(bool(self.student), "give the attacked network's checkpoint with --student PATH")
        check(bool(self.teacher), "give the reference network's checkpoint with --teacher PATH")
        dataset_name(self.dataset)  # a one-line error for an unknown name, before any file is read
        check(self.images > 0, f"images must be positive, got {self.images}")
        check(self.steps > 0, f"steps must be positive, got {self.steps}")
        check(
            0 < self.mte_steps <= self.steps,
            f"mte_steps must be in 1..steps ({self.steps}), got {self.mte_steps}",
        )
        check(
            math.isfinite(self.step_size) and self.step_size > 0,
            f"step_size must be positive, got {self.step_size}",
        )
        check(
            self.targets in ("label", "prediction"),
            f"targets must be label or prediction, got {self.targets!r}",
        )
        check(
            self.chunk_size is None or self.chunk_size > 0,
            f"chunk_size must be positive, got {self.chunk_size}",
        )
        check(
            self.precision in PRECISIONS,
            f"unknown precision {self.precision!r}; choose {', '.join(PRECISIONS)}",
        )


def _load_network(
    role: str, path: str, cfg: BeliefConfig, data: ImageData, device: torch.device
) -> nn.Module:
    from zskt.models import load_model_for

    info = data.info
    return load_model_for(
        path,
        role=role,
        dataset=cfg.dataset,
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        image_size=int(data.test.images.shape[-1]),
        map_location=device,
    )


def run_belief(cfg: BeliefConfig, log: RunLog, data: ImageData | None = None) -> dict:
    """Select agreeing test images, compute the transition curves, write curves.npz, transition_curves.png
    and result.json (with `mte`)."""
    data = data or load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download, image_size=cfg.image_size)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    # Both networks only evaluate here: batch norms folded, the same functions (models/frozen.py).
    student = frozen_copy(precision.prepare(_load_network("--student", cfg.student, cfg, data, device)))
    teacher = frozen_copy(precision.prepare(_load_network("--teacher", cfg.teacher, cfg, data, device)))
    num_classes = data.info.num_classes
    test = data.test

    # Predictions on the whole test split: they choose the images and give both accuracies.
    student_pred = predict(student, test, data.mean, data.std, precision=precision).cpu()
    teacher_pred = predict(teacher, test, data.mean, data.std, precision=precision).cpu()
    indices = shuffle_and_collect(student_pred == teacher_pred, cfg.images, cfg.seed)
    if len(indices) == 0:
        raise ZsktError(
            f"the two networks agree on none of the {len(test)} {data.info.title} test images; "
            "check that --student and --teacher were trained on this data set"
        )
    labels = test.labels[indices]
    predictions = teacher_pred[indices]
    sources = labels if cfg.targets == "label" else predictions
    targets = targets_for(sources, num_classes)
    n = len(indices)
    chunk = cfg.chunk_size or DEFAULT_CHUNK.get(device.type, DEFAULT_CHUNK["cpu"])
    # Under torchrun each rank takes a contiguous part of the images (all targets of each); every curve is
    # independent of the others, so the gathered curves are exactly the single-process ones.
    first, last = shard(n)
    world_size = world()[1]
    n_chunks = math.ceil((last - first) * (num_classes - 1) / chunk)
    ranks = f", {world_size} ranks" if world_size > 1 else ""
    log.print(
        f"belief matching on {data.info.title}: {n} agreeing test images x {num_classes - 1} targets, "
        f"{cfg.steps} steps of xi = {cfg.step_size}, {n_chunks} chunk(s) of <= {chunk} pairs, "
        f"{device}, {precision.name}{ranks}"
    )

    images = normalize(test.images[indices[first:last]].to(device), data.mean, data.std)
    timer = Timer(device)
    t0 = timer.now()
    progress = _ChunkRows(
        log,
        log.progress(n_chunks * cfg.steps, desc="transition curves", unit="step"),
        cfg.steps,
        n_chunks,
        t0,
    )
    p_student, p_teacher = transition_curves(
        student,
        teacher,
        images,
        targets[first:last],
        cfg.steps,
        cfg.step_size,
        chunk,
        precision=precision,
        progress=progress,
    )
    if world_size > 1:
        p_student, p_teacher = _gather_curves(p_student, p_teacher, world_size)
    seconds = timer.now() - t0
    log.close_progress()

    mte = mean_transition_error(p_student, p_teacher, cfg.mte_steps)
    parts = mte_breakdown(p_student, p_teacher, sources, targets, num_classes, cfg.mte_steps)
    if log.enabled:
        _save_curves(
            log,
            p_student=p_student.numpy(),
            p_teacher=p_teacher.numpy(),
            indices=indices.numpy(),
            labels=labels.numpy(),
            predictions=predictions.numpy(),
            sources=sources.numpy(),
            targets=targets.numpy(),
            mte_per_step=parts.per_step,
            mte_per_pair=parts.per_pair,
            pair_counts=parts.pair_counts,
        )
    curves = n * (num_classes - 1)
    result = {
        "mte": mte,
        "images": n,
        "images_asked": cfg.images,
        "targets_per_image": num_classes - 1,
        "steps": cfg.steps,
        "mte_steps": cfg.mte_steps,
        "step_size": cfg.step_size,
        "targets": cfg.targets,
        "seed": cfg.seed,
        "dataset": cfg.dataset,
        "student": cfg.student,
        "teacher": cfg.teacher,
        "student_test_accuracy_percent": 100.0 * (student_pred == test.labels).double().mean().item(),
        "teacher_test_accuracy_percent": 100.0 * (teacher_pred == test.labels).double().mean().item(),
        "agreement_percent": 100.0 * (student_pred == teacher_pred).double().mean().item(),
        # Figure 4's numbers, so reports need only this file: mean curves and their standard errors per step.
        "mean_p_student": p_student.double().mean((0, 1)).tolist(),
        "mean_p_teacher": p_teacher.double().mean((0, 1)).tolist(),
        "sem_p_student": _sem(p_student).tolist(),
        "sem_p_teacher": _sem(p_teacher).tolist(),
        "mte_per_step": parts.per_step.tolist(),
        "mte_per_pair": [[None if math.isnan(v) else v for v in row] for row in parts.per_pair.tolist()],
        "chunk_size": chunk,
        "seconds": seconds,
        "pair_steps_per_second": curves * cfg.steps / max(seconds, 1e-9),
        **precision.describe(),
    }
    if log.enabled:
        _plot(log, result, cfg, data.info.title)
    log.print(f"MTE (first {cfg.mte_steps} steps) {mte:.4f} over {curves} curves; {seconds:.1f} s")
    return log.finish(result)


def _gather_curves(
    p_student: torch.Tensor, p_teacher: torch.Tensor, world_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's curves, concatenated in rank order (= image order), on every rank."""
    import torch.distributed as dist

    parts: list = [None] * world_size
    dist.all_gather_object(parts, (p_student.cpu(), p_teacher.cpu()))
    return torch.cat([s for s, _ in parts]), torch.cat([t for _, t in parts])


class _ChunkRows:
    """The progress bar, plus one line per finished chunk (what a log shows when stderr is not a terminal)."""

    def __init__(self, log: RunLog, bar, steps: int, n_chunks: int, start: float):
        self.log, self.bar, self.steps, self.n_chunks, self.start = log, bar, steps, n_chunks, start
        self.done = 0

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.done += n
        if self.done % self.steps == 0:
            chunks = self.done // self.steps
            elapsed = time.perf_counter() - self.start
            eta = elapsed / chunks * (self.n_chunks - chunks)
            self.log.print(f"chunk {chunks:>4}/{self.n_chunks}  {elapsed:7.0f} s  eta {eta:6.0f} s")


def _sem(curves: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean curve at each step over all n*T curves: std / sqrt(n*T), as the notebook."""
    flat = curves.double().reshape(-1, curves.shape[-1])
    return flat.std(0, correction=0) / math.sqrt(flat.shape[0])


def _save_curves(log: RunLog, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(log.out / "curves.npz", buffer.getvalue())


def _plot(log: RunLog, result: dict, cfg: BeliefConfig, title: str) -> None:
    """The report's Figure 4 panel for this run (`reports.plots.draw_transition_curves`) and the per-step
    |difference| whose first K steps average to the MTE."""
    from zskt.reports.plots import _pyplot, draw_transition_curves

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    draw_transition_curves(left, [result], "", "")
    left.set_title(f"{title}: transition curves ({result['images']}x{result['targets_per_image']})")
    per_step = result["mte_per_step"]
    right.plot(np.arange(len(per_step)), per_step, color="black")
    right.axvline(cfg.mte_steps - 1, color="grey", linestyle="--", linewidth=1)
    right.set(
        xlabel="adversarial step",
        ylabel="mean $|p_j^T - p_j^S|$",
        ylim=(0, 1),
        title=f"MTE over first {cfg.mte_steps} steps = {result['mte']:.3f}",
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(log.out / "transition_curves.png", buffer.getvalue())
