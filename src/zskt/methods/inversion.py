"""What DeepInversion, CMI and Fast share (docs/data_free.md): the config fields and presets of the zju-vipa
`datafree_kd.py` driver, the differentiable augmentations of their synthesisers, the student's distillation
step on banked images, and the loop that alternates them on the run scaffold.

One scaffold step is one of the reference's "epochs" with `ep_steps == kd_steps` (every benchmark script): one
synthesised batch added to the image bank, then `kd_steps` student steps on batches drawn from the bank, then
one step of the student's learning-rate schedule. Each method file supplies a synthesiser: an object with
`synthesize(round) -> images in [0, 1]`, `losses` (the last round's terms, for the metrics rows), and
`state_dict`/`load_state_dict`.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from zskt.config import check, field
from zskt.data import dataset_name, get_info, load_dataset, nearest_builtin
from zskt.data.loader import normalize, pad_crop_flip
from zskt.distributed import world
from zskt.errors import ZsktError
from zskt.losses import agreement_adversarial_loss, kd_kl_loss
from zskt.methods.common import (
    TeacherStudentConfig,
    build_student,
    frozen_logits,
    load_teacher,
    save_student,
)
from zskt.methods.image_bank import ImageBank, to_uint8
from zskt.methods.scaffold import Scaffold
from zskt.models.frozen import CompiledInference
from zskt.runlog import RunLog
from zskt.runtime import Precision, seed_everything

log = logging.getLogger("zskt.methods")
_NOTED: set[tuple[str, str]] = set()  # (data set, config) pairs whose preset fallback has been logged

# Fields every inversion method resolves from its PRESETS when left at None on the command line.
PRESET_FIELDS = (
    "iterations",
    "batch_size",
    "synthesis_batch_size",
    "kd_steps",
    "g_steps",
    "bank_size",
    "eval_every",
    "warmup",
)


@dataclass(frozen=True)
class InversionConfig(TeacherStudentConfig):
    """Fields shared by `deepinversion`, `cmi` and `fast`; defaults are the zju-vipa benchmark scripts' values
    (scripts/*_cifar*.sh of CMI and Fast-Datafree, `datafree_kd.py`), per data set where marked "preset"."""

    iterations: int | None = field(
        None,
        "synthesis rounds (the reference's epochs: one synthesised batch and "
        "kd_steps student steps each); preset",
    )
    batch_size: int | None = field(
        None, "student batch from the image bank (reference --batch_size 256); preset"
    )
    synthesis_batch_size: int | None = field(
        None, "images synthesised per round (reference: --batch_size); preset"
    )
    kd_steps: int | None = field(None, "student steps per round (reference --kd_steps 400); preset")
    g_steps: int | None = field(None, "synthesis iterations per round (reference --g_steps); preset")
    warmup: int | None = field(
        None, "rounds that only synthesise before the student trains (Fast's --warmup); preset"
    )
    student_lr: float = field(0.1, "student SGD learning rate (reference --lr 0.1)")
    momentum: float = field(0.9, "student SGD momentum (reference datafree_kd.py: 0.9)")
    weight_decay: float = field(1e-4, "student SGD weight decay (reference datafree_kd.py: 1e-4)")
    lr_schedule: Literal["multistep", "cosine"] = field(
        "multistep",
        "student schedule per round: multistep (CMI datafree_kd.py: x0.1 at lr_milestones) or cosine "
        "(Fast-Datafree datafree_kd.py: cosine to 2e-4 over the rounds after warmup)",
    )
    lr_milestones: tuple[float, ...] = field(
        (0.6, 0.75, 0.9), "multistep milestones as fractions of the rounds (CMI: epochs 120,150,180 of 200)"
    )
    temperature: float = field(
        20.0, "distillation temperature T; the loss is T^2 KL, batchmean (reference --T 20)"
    )
    bank_size: int | None = field(
        None,
        "most images kept in the image bank (oldest dropped first); preset: "
        "every image the run synthesises, as the reference keeps",
    )
    eval_every: int | None = field(
        None, "test, log and checkpoint every this many rounds (reference: every epoch); preset"
    )
    seed: int = field(0, "seed for the student, the synthesis draws and the bank's sampling (reference: 0)")

    compile_teacher: bool = field(
        False,
        "torch.compile the BN-folded teacher that answers the student steps (inductor, weights frozen): the "
        "same logits, its forward about 15 % faster on a CPU after seconds of compiling per batch shape; "
        "for long runs (docs/benchmarks.md)",
    )

    PRESETS: ClassVar[dict] = {}  # {dataset: {field: value}}, set by each method's config

    def __post_init__(self):
        super().__post_init__()
        for name in PRESET_FIELDS:
            value = getattr(self, name)
            low = 0 if name == "warmup" else 1
            check(value is None or value >= low, f"{name} must be >= {low}, got {value}")
        check(self.student_lr > 0 and self.temperature > 0, "student_lr and temperature must be positive")
        check(self.momentum >= 0 and self.weight_decay >= 0, "momentum and weight_decay must be >= 0")
        check(
            all(0 < m < 1 for m in self.lr_milestones), "lr_milestones are fractions of the rounds, in (0, 1)"
        )
        check(self.lr_schedule in ("multistep", "cosine"), f"unknown lr_schedule {self.lr_schedule!r}")
        check(
            self.warmup is None or self.iterations is None or self.warmup < self.iterations,
            "warmup must be smaller than iterations",
        )

    def value(self, name: str) -> Any:
        """A field, or its preset for this data set: a built-in set's own, else (npz:/folder: data) the
        nearest built-in set's (data.nearest_builtin: 1x16x16 images take digits'), noted once in the log,
        else cifar10's, the reference scripts'."""
        value = getattr(self, name)
        if value is not None:
            return value
        return type(self).PRESETS[self.preset_source][name]

    @functools.cached_property  # value() runs every round: an own set's files are scanned once
    def preset_source(self) -> str:
        presets = type(self).PRESETS
        key = dataset_name(self.dataset)
        if key in presets:
            return key
        info = get_info(self.dataset)
        near = nearest_builtin(info).name if info.source != "built-in" else "cifar10"
        source = near if near in presets else "cifar10"
        if info.source != "built-in" and (self.dataset, type(self).__name__) not in _NOTED:
            _NOTED.add((self.dataset, type(self).__name__))
            log.warning(
                f"{info.title} has no presets of its own: the {source} preset of {type(self).__name__} is "
                "used for the fields not given (--iterations, --g-steps, --kd-steps, ...)"
            )
        return source

    @property
    def rounds(self) -> int:
        return self.value("iterations")

    @property
    def total_iterations(self) -> int:
        """Rounds in the run, the name every method's config gives its length (the grids scale it)."""
        return self.rounds

    @property
    def eval_interval(self) -> int:
        return self.value("eval_every")


# ------------------------------------------------------------------------------------- augmentations


def crop_flip_params(
    n: int, pad: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (offsets (n, 2) in [0, 2·pad], flips (n,) bool) for `pad_crop_flip`: kornia's
    RandomCrop(size, padding=pad) + RandomHorizontalFlip(p=0.5) as the synthesisers use them."""
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return offsets, flips


def resized_crop_params(
    n: int,
    size: int,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample boxes (n, 4) as (x0, y0, w, h) in pixels and flips (n,): CMI's local view, kornia's
    RandomResizedCrop(size, scale=(0.25, 1)) + RandomHorizontalFlip. Area fraction ~ U(scale), aspect ratio
    log-uniform in `ratio`, the box clipped to the image, its corner uniform over the positions that fit."""
    area = torch.empty(n).uniform_(*scale, generator=generator) * size * size
    log_ratio = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    w = (area * aspect).sqrt().round().clamp(1, size)
    h = (area / aspect).sqrt().round().clamp(1, size)
    x0 = (torch.rand(n, generator=generator) * (size - w + 1)).floor()
    y0 = (torch.rand(n, generator=generator) * (size - h + 1)).floor()
    flips = torch.rand(n, generator=generator) < 0.5
    return torch.stack([x0, y0, w, h], dim=1), flips


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Each image's box resampled bilinearly to the full size (then flipped where asked), differentiably."""
    n, _, height, width = images.shape
    boxes = boxes.to(images.device, images.dtype)
    x0, y0, w, h = boxes.unbind(1)
    sign = 1 - 2 * flips.to(images.device, images.dtype)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = w / width * sign
    theta[:, 0, 2] = (2 * x0 + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * y0 + h) / height - 1
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def standardize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """[0, 1] float images -> (x − mean) / std per channel, in the images' dtype (the reference's
    Normalizer)."""
    c = images.shape[1]
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    return (images - mean) / std


def crop_padding(image_size: int) -> int:
    """The synthesisers' crop padding: 4 at 32x32 (the reference), scaled with the image side (2 on
    digits)."""
    return max(1, image_size // 8)


# ------------------------------------------------------------------------------------- student step


def student_images(
    bank: ImageBank, batch_size: int, augment: bool, mean, std, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A student batch from the bank, as the reference's `ori_dataset.transform` makes it: (CIFAR-10's pad-4
    crop and flip where the data set trains with augmentation), scale to [0, 1], normalise."""
    images = bank.sample(batch_size)
    if augment:
        offsets, flips = crop_flip_params(len(images), 4, generator)
        images = pad_crop_flip(images, offsets.to(images.device), flips.to(images.device), pad=4)
    return normalize(images, mean, std)


def student_step(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    temperature: float,
    precision: Precision | None = None,
) -> torch.Tensor:
    """One distillation step (reference `train()` of datafree_kd.py): teacher logits without a graph (in
    `precision.inference_chunk` parts), the loss T²·KL(teacher ‖ student) batchmean on the same images, SGD
    step. Returns the loss, detached."""
    precision = precision or Precision("fp32", "cpu", False)
    teacher_logits = frozen_logits(teacher, x, precision)
    with precision.autocast():
        student_logits, _ = student(x)
    loss = kd_kl_loss(student_logits, teacher_logits, temperature)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def generator_synthesis_step(
    generator: torch.nn.Module,
    generator_input: torch.Tensor,
    opt: torch.optim.Optimizer,
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    hooks,
    targets: torch.Tensor,
    aug: tuple,
    cfg: InversionConfig,
    mean,
    std,
    pad: int,
    adversarial: bool,
    precision: Precision | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One synthesis iteration of a generator (Fast's fast generator on z, NAYER's on the class targets): x =
    G(input) ∈ [0, 1] seen through a pad-crop-flip (`aug` = (offsets, flips)) and normalised; the loss
    bn · BN statistics (`hooks`) + oh · CE(T(x̃), y) + adv · the agreement-masked adversarial term (when
    `adversarial`, the student in whatever mode it is in); gradients to the optimiser's tensors only (left in
    their .grad: Fast's meta update reads them), one step. Returns the loss terms (detached) and the images
    before the step."""
    precision = precision or Precision("fp32", "cpu", False)
    x = generator(generator_input)
    offsets, flips = aug
    view = precision.layout(
        standardize(pad_crop_flip(x, offsets.to(x.device), flips.to(x.device), pad=pad), mean, std)
    )
    with precision.autocast():
        teacher_logits, _ = teacher(view)
    loss_bn = hooks.loss()
    loss_oh = F.cross_entropy(teacher_logits, targets)
    terms = {"bn_loss": loss_bn, "oh_loss": loss_oh}
    loss = cfg.bn * loss_bn + cfg.oh * loss_oh
    if cfg.adv > 0 and adversarial:
        with precision.autocast():
            student_logits, _ = student(view)
        loss_adv = agreement_adversarial_loss(student_logits, teacher_logits)
        loss = loss + cfg.adv * loss_adv
        terms["adv_loss"] = loss_adv
    opt.zero_grad(set_to_none=True)
    loss.backward(inputs=[p for group in opt.param_groups for p in group["params"]])
    opt.step()
    return {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}, x.detach()


def lr_factor(cfg: InversionConfig) -> Callable[[int], float]:
    """The schedule's factor after `k` schedule steps (one per round that trained the student)."""
    rounds = cfg.rounds - cfg.value("warmup")
    if cfg.lr_schedule == "cosine":
        floor = (
            2e-4 / cfg.student_lr
        )  # Fast-Datafree: CosineAnnealingLR(T_max=200 of 200 trained epochs, 2e-4)
        return lambda k: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(k, rounds) / rounds))
    milestones = [round(m * rounds) for m in cfg.lr_milestones]
    return lambda k: 0.1 ** sum(k >= m for m in milestones)


# ------------------------------------------------------------------------------------- the command


def run_inversion(
    cfg: InversionConfig,
    log: RunLog,
    name: str,
    make_synthesizer: Callable[[torch.nn.Module, torch.nn.Module, Scaffold, dict], Any],
) -> dict:
    """Load the teacher, read only the test split, build the student, and run the rounds on the scaffold."""
    if not cfg.teacher:
        raise ZsktError(
            "no teacher given; pass --teacher PATH (a model.pt from `zskt train` or an authors' file)"
        )
    if world()[1] > 1:
        raise ZsktError(f"{name} runs in one process; start it without torchrun")
    info = get_info(cfg.dataset)
    data = load_dataset(
        cfg.dataset, cfg.data_dir, download=cfg.download, image_size=cfg.image_size, splits=("test",)
    )  # never the training images
    test, mean, std = data.test, data.mean, data.std
    size = int(test.images.shape[-1])
    teacher = load_teacher(cfg, info, size)
    seed_everything(cfg.seed)
    student = build_student(cfg, info, size)
    shape = {
        "channels": info.in_channels,
        "size": size,
        "num_classes": info.num_classes,
        "mean": mean,
        "std": std,
        "augment": info.augment,
    }
    return inversion_loop(cfg, log, name, teacher, student, test, shape, make_synthesizer)


def inversion_loop(
    cfg: InversionConfig,
    log: RunLog,
    name: str,
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    test,
    shape: dict,
    make_synthesizer,
) -> dict:
    rounds, warmup = cfg.rounds, cfg.value("warmup")
    batch_size, kd_steps = cfg.value("batch_size"), cfg.value("kd_steps")
    run = Scaffold(cfg, log, total=rounds, interval=cfg.eval_interval, unit="round", desc=name)
    student = run.train_module(student)
    hooked_teacher = run.frozen_module(teacher, fold_bn=False)  # BN layers kept for the statistic hooks
    kd_teacher = run.frozen_module(copy.deepcopy(teacher), fold_bn=True)  # the same function, faster
    answer = CompiledInference(kd_teacher) if cfg.compile_teacher else kd_teacher
    synthesizer = make_synthesizer(hooked_teacher, student, run, shape)
    opt = torch.optim.SGD(
        student.parameters(), lr=cfg.student_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg))
    capacity = cfg.value("bank_size")
    bank = ImageBank(
        capacity, root=log.out / "bank" if log.enabled else None, device=run.device, seed=cfg.seed
    )
    run.track(student=student, opt=opt, schedule=schedule, bank=bank, synthesizer=synthesizer)
    run.evaluate_on(student, test, shape["mean"], shape["std"], cfg.eval_batch_size)
    run.on_log(lambda step: {**bank.counts(), "student_lr": opt.param_groups[0]["lr"]})
    log.print(
        f"{name}: {rounds} rounds of {cfg.value('synthesis_batch_size')} images ({cfg.value('g_steps')} "
        f"synthesis iterations) and {kd_steps} student steps of {batch_size}; {run.device}, "
        f"{run.precision.name}; teacher test accuracy {run.evaluate(kd_teacher):.2f}%"
    )
    mean, std = shape["mean"], shape["std"]
    images = None
    for step in run.steps():
        images = synthesizer.synthesize(step)
        bank.add(to_uint8(images))
        run.add(**synthesizer.losses)
        if step >= warmup:
            for _ in range(kd_steps):
                x = run.precision.layout(student_images(bank, batch_size, shape["augment"], mean, std))
                run.add(student_loss=student_step(student, answer, opt, x, cfg.temperature, run.precision))
            schedule.step()
    bank.state_dict()  # deletes the files of dropped shards, writes bank/index.json
    if log.enabled and images is not None:
        from zskt.images import save_image_grid

        save_image_grid(images, (0.0,) * images.shape[1], (1.0,) * images.shape[1], log.out / "synthetic.png")
    if log.enabled:
        save_student(log, student, cfg, shape["size"], run.accuracy)
    return run.finish(
        method=name,
        **bank.counts(),
        teacher=cfg.teacher,
        student=cfg.student,
        dataset=cfg.dataset,
        seed=cfg.seed,
        iterations=rounds,
    )
