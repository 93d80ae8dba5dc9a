"""Few-shot KD+AT (SPEC §4): a student learns from M images per class, matching the teacher's softened outputs
and attention maps as the authors' FewShotKnowledgeTransfer code does; and the fine-tuning of a zero-shot
student on M images per class (the paper's "Ours" at M > 0, which the paper leaves unspecified, SPEC §9.9).

The training loop is `fit_supervised`, shared with the no-teacher baseline (`zskt train --images-per-class
M`): same subsets, same student initialisation, same schedule, same data order, only the loss differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from zskt.config import check, field
from zskt.data import ImageData, get_info, preset
from zskt.errors import ZsktError
from zskt.losses import kd_at_loss
from zskt.methods.common import build_student, check_network_spec, load_teacher
from zskt.methods.schedule import Schedule, milestones_at
from zskt.methods.train import (
    SupervisedRecipe,
    choose_subset,
    fit_supervised,
    load_data,
    schedule_record,
    supervised_scaffold,
)
from zskt.models import load_model_for, network_label, save_model
from zskt.runlog import RunLog
from zskt.runtime import seed_everything


@dataclass(frozen=True)
class KDATConfig(SupervisedRecipe):
    """A student distilled with KD+AT on M images per class (the authors' FSKT scripts' values, SPEC §4); with
    `init` a zero-shot student fine-tuned the same way. The SGD recipe and schedule fields are `train`'s."""

    images_per_class: int = field(
        -1,
        "M (required): train on M images per class, chosen per seed (docs/kd_at.md); "
        "-1 = the full train split",
    )
    teacher: str = field(
        "",
        "teacher file (required): a model.pt from `zskt train`, an authors' last.pth.tar, "
        "a Ferles *-dict.pth or a zju-vipa DataFree teacher",
    )
    student: str = field(
        "wrn-16-1",
        "student network: a name (`zskt list`; paper: wrn-16-1), module:callable, "
        "file.py:callable or timm:NAME",
    )
    teacher_layers: str | None = field(
        None, "teacher layers whose outputs are the attention maps; unset: the family's defaults"
    )
    student_layers: str | None = field(
        None, "student layers for the attention maps; unset: the family's defaults"
    )
    trust_checkpoint: bool = field(False, "allow network files that need a full unpickle (they can run code)")
    alpha: float = field(0.9, "α: loss = (1 - α)·CE + 2·α·T²·KL + β·Σ attention (FSKT scripts: 0.9)")
    temperature: float = field(4.0, "T, softmax temperature of the KD term (FSKT scripts: 4)")
    beta: float | None = field(
        None,
        "attention weight per layer, 3 layers; 0 = KD only; default: the data set's "
        "preset, FSKT's 1000 rescaled by (image side/32)²: 1000 at 32x32, 250 for 16x16 "
        "digits (docs/kd_at.md)",
    )
    kl_reduction: str = field("mean", "KL reduction: mean (authors' code: ÷ B·C) or batchmean (÷ B)")
    kd_factor: float = field(
        2.0,
        "the KL weight's leading factor (FSKT keeps the older AT code's 2: 2·α·T² = "
        "28.8; the current AT code uses 1 with batchmean)",
    )
    init: str | None = field(
        None,
        "fine-tune this student (a zero-shot model.pt) instead of a fresh one; "
        "must be the --student architecture",
    )
    finetune_epochs: int | None = field(
        None,
        "with --init: epochs of fine-tuning on the M-per-class subset, lr "
        "÷5 at 30/60/80 percent; default: the whole KD+AT schedule for "
        "this M (ours, docs/kd_at.md); the Ferles reproduction's is 200",
    )

    def __post_init__(self):
        super().__post_init__()
        check_network_spec(self.student, "--student")
        check(0 <= self.alpha <= 1, f"alpha must be in [0, 1], got {self.alpha}")
        check(self.temperature > 0, f"temperature must be positive, got {self.temperature}")
        check(self.beta is None or self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        check(
            self.kl_reduction in ("mean", "batchmean"),
            f"kl_reduction must be mean or batchmean, got {self.kl_reduction!r}",
        )
        check(self.kd_factor > 0, f"kd_factor must be positive, got {self.kd_factor}")
        check(
            self.finetune_epochs is None or self.finetune_epochs > 0,
            f"finetune_epochs must be positive, got {self.finetune_epochs}",
        )

    @property
    def attention_beta(self) -> float:
        """β per layer: `beta`, or the preset 1000·(side/32)² for this data set's image side."""
        if self.beta is not None:
            return self.beta
        record_side = get_info(self.dataset).image_size
        return (
            preset(self.dataset, "kd-at", "beta", "--beta")
            * ((self.image_size or record_side) / record_side) ** 2
        )

    def schedule(self, n_train: int, num_classes: int = 10) -> Schedule:
        """The authors' KD+AT schedule (SPEC §4); with `init` and `finetune_epochs`, that many epochs of the
        same batches with milestones at 30/60/80 % of them."""
        full = super().schedule(n_train, num_classes)
        if not (self.init and self.finetune_epochs):
            return full
        return Schedule(
            epochs=self.finetune_epochs,
            milestones=milestones_at(self.finetune_epochs),
            batches_per_epoch=full.batches_per_epoch,
        )


def check_files(cfg: KDATConfig) -> None:
    """Fail before the run folder is made when a named file is not there."""
    for role, path in (("teacher", cfg.teacher), ("init", cfg.init)):
        if path and not Path(path).is_file():
            raise ZsktError(
                f"--{role} {path} not found; expected a model file (e.g. a run folder's model.pt)"
            )


def load_network(
    path: str, role: str, data: ImageData, dataset: str, device: torch.device, arch: str | None = None
) -> torch.nn.Module:
    """`--teacher` / `--init`: a Wide ResNet file checked against the data (`load_model_for`)."""
    info = data.info
    return load_model_for(
        path,
        role=f"--{role}",
        dataset=dataset,
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        image_size=int(data.train.images.shape[-1]),
        map_location=device,
        arch=arch,
    )


def kd_at_loss_fn(teacher: torch.nn.Module, cfg: KDATConfig):
    """`fit_supervised`'s loss: the teacher runs once per batch, in eval mode without gradients (FSKT runs it
    with grad enabled and discards the gradient: the same numbers), then the KD+AT loss of the student."""
    beta = cfg.attention_beta

    def loss_fn(student: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits, teacher_acts = teacher(images)
        student_logits, student_acts = student(images)
        return kd_at_loss(
            student_logits,
            student_acts,
            labels,
            teacher_logits,
            teacher_acts,
            alpha=cfg.alpha,
            temperature=cfg.temperature,
            beta=beta,
            kl_reduction=cfg.kl_reduction,
            kd_factor=cfg.kd_factor,
        )

    return loss_fn


def kd_at(cfg: KDATConfig, log: RunLog, data: ImageData | None = None) -> dict:
    """Distil `cfg.teacher` into `cfg.student` (fresh, or `cfg.init` fine-tuned) with KD+AT on M images per
    class; writes `model.pt` (the student), `subset.json` (the images used) and returns the result."""
    if not cfg.teacher:
        raise ZsktError(
            "no teacher given; pass --teacher PATH (a model.pt from `zskt train` or an authors' file)"
        )
    data = data or load_data(cfg)
    info = data.info
    schedule = cfg.schedule(len(data.train.labels), info.num_classes)
    run = supervised_scaffold(cfg, log, schedule, f"kd-at {cfg.dataset}")
    beta = cfg.attention_beta

    size = int(data.train.images.shape[-1])
    teacher = run.frozen_module(load_teacher(cfg, info, size))
    teacher_name = network_label(teacher, cfg.teacher)
    what = f"{cfg.student} from {cfg.init}" if cfg.init else cfg.student
    images = "all" if cfg.images_per_class < 0 else f"M = {cfg.images_per_class}"
    log.print(
        f"kd-at {teacher_name} -> {what} on {info.title}, {images}, seed {cfg.seed}: α {cfg.alpha}, "
        f"T {cfg.temperature}, β {beta:g}/layer; {run.device}, {run.precision.name}"
    )
    log.print(f"schedule: {schedule.describe()}")
    log.record_resolved(schedule=schedule_record(schedule), beta=beta)

    # The same order of seeded steps as `train`, so the no-teacher baseline of a seed starts from the same
    # student.
    seed_everything(cfg.seed)
    indices = choose_subset(cfg, data, log)
    student = build_student(cfg, info, size, teacher, beta)
    run.evaluate_on(teacher, data.test, data.mean, data.std)
    extra = {"teacher_test_accuracy": run.evaluate(teacher)}
    if cfg.init:
        student = load_network(cfg.init, "init", data, cfg.dataset, run.device, arch=cfg.student)
        extra["init_test_accuracy"] = run.evaluate(student)
    log.print(
        f"teacher test accuracy {extra['teacher_test_accuracy']:.2f}%"
        + (f", student before fine-tuning {extra['init_test_accuracy']:.2f}%" if cfg.init else "")
    )

    student = fit_supervised(
        run, student, data, cfg, loss_fn=kd_at_loss_fn(teacher, cfg), schedule=schedule, indices=indices
    )
    if log.enabled:
        save_model(
            student,
            log.out / "model.pt",
            spec=cfg.student,
            dataset=cfg.dataset,
            test_accuracy=run.accuracy,
            command=log.command,
            image_size=int(data.train.images.shape[-1]),
        )
    return run.finish(
        epochs=schedule.epochs,
        iterations=schedule.iterations,
        **extra,
        model=cfg.student,
        student=cfg.student,
        teacher=cfg.teacher,
        init=cfg.init,
        dataset=cfg.dataset,
        seed=cfg.seed,
        images_per_class=cfg.images_per_class,
        alpha=cfg.alpha,
        temperature=cfg.temperature,
        beta=beta,
        lr=cfg.lr,
    )
