"""Supervised training: teachers and scratch students (SPEC §5), the few-shot "no teacher" baseline (SPEC §4,
α = 0), and the loop that the KD+AT baseline reuses with its own loss.

The recipe is the paper's: SGD lr 0.1, momentum 0.9, weight decay 5e-4, no Nesterov, lr ÷5 after 30/60/80 %
of the epochs with the authors' stepping, batch 128; CIFAR-10 200 epochs, SVHN 100, Fashion-MNIST 170.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zskt.config import check, field
from zskt.data import DeviceLoader, ImageData, dataset_name, load_dataset, select_per_class
from zskt.distributed import Shard
from zskt.methods.scaffold import Scaffold
from zskt.methods.schedule import Schedule, make_schedule, step_lr
from zskt.models import FeatureModel, WideResNet, build_model, is_model_name, model_names_hint, save_model
from zskt.runlog import RunLog
from zskt.runtime import PRECISIONS, seed_everything


@dataclass(frozen=True)
class SupervisedRecipe:
    """The paper's supervised SGD recipe and the data it runs on (SPEC §4, §5): the fields `train` (teachers,
    scratch and no-teacher students) and `kd-at` share. Each command's config adds its network fields."""

    dataset: str = field("digits", "data set: cifar10, svhn, fashion-mnist or digits (embedded, offline)")
    images_per_class: int = field(
        -1, "M: train on M images per class, chosen per seed (docs/kd_at.md); -1 = all"
    )
    epochs: int | None = field(
        None,
        "epochs; default: the data set's preset (cifar10 200, svhn 100, "
        "fashion-mnist 170, digits 30), scaled with M as the authors did",
    )
    scale_n_iters: float | None = field(
        None,
        "authors' iteration scale for M > 0; default 1 for cifar10/digits, "
        "M/100 for svhn/fashion-mnist (docs/kd_at.md)",
    )
    same_iterations: bool = field(False, "paper's form: the same iterations for every M (scale_n_iters = 1)")
    batch_size: int = field(128, "batch size (paper: 128)")
    lr: float = field(0.1, "initial SGD learning rate (paper: 0.1)")
    momentum: float = field(0.9, "SGD momentum (paper: 0.9)")
    weight_decay: float = field(5e-4, "SGD weight decay (paper: 5e-4)")
    nesterov: bool = field(False, "Nesterov momentum (authors: no; the Ferles reproduction: yes)")
    lr_decay: float = field(0.2, "learning-rate factor at each milestone (paper: ÷5)")
    eval_every: int | None = field(None, "evaluate and checkpoint every this many epochs; default epochs/100")
    seed: int = field(0, "seed for initialisation, subset choice and data order (paper: 0, 1, 2)")
    device: str = field("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    precision: str = field("auto", "fp32, bf16 (autocast), or auto: fp32 on CPU, bf16 on CUDA")
    sync_bn: bool = field(
        False,
        "under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, "
        "CUDA only); default: each rank's own shard",
    )
    image_size: int | None = field(None, "digits only: side of the resized images (default 16)")
    data_dir: str | None = field(None, "data root (default: $ZSKT_DATA or ~/.cache/zskt/data)")
    download: bool = field(False, "download missing data files (CIFAR-10, SVHN, Fashion-MNIST)")

    def __post_init__(self):
        dataset_name(self.dataset)  # a one-line error for an unknown name, before any file is read
        check(
            self.images_per_class == -1 or self.images_per_class > 0,
            f"images_per_class must be -1 (all) or positive, got {self.images_per_class}",
        )
        check(self.epochs is None or self.epochs > 0, f"epochs must be positive, got {self.epochs}")
        check(self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}")
        check(self.lr > 0, f"lr must be positive, got {self.lr}")
        check(self.eval_every is None or self.eval_every > 0, "eval_every must be positive")
        check(self.scale_n_iters is None or self.scale_n_iters > 0, "scale_n_iters must be positive")
        check(
            self.precision in PRECISIONS,
            f"unknown precision {self.precision!r}; choose {', '.join(PRECISIONS)}",
        )

    def schedule(self, n_train: int, num_classes: int = 10) -> Schedule:
        """Epochs and milestones for a train split of `n_train` images (SPEC §4's scaling with M)."""
        return make_schedule(
            self.dataset,
            n_train,
            self.images_per_class,
            self.batch_size,
            base_epochs=self.epochs,
            scale_n_iters=self.scale_n_iters,
            same_iterations=self.same_iterations,
            num_classes=num_classes,
        )


@dataclass(frozen=True)
class TrainConfig(SupervisedRecipe):
    """A teacher or scratch student trained with cross-entropy (the paper's teacher recipe, SPEC §5); with
    `images_per_class` M it is the few-shot "no teacher" baseline (SPEC §4, α = 0)."""

    model: str = field(
        "wrn-16-2",
        "network to train: a registered name (zskt list: wrn-16-2, resnet-18, "
        "vgg-11, ...) or any wrn-DEPTH-WIDTH",
    )

    def __post_init__(self):
        super().__post_init__()
        check(is_model_name(self.model), f"unknown model {self.model!r}; choose one of {model_names_hint()}")


def load_data(cfg) -> ImageData:
    return load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download, image_size=cfg.image_size)


def schedule_record(schedule: Schedule) -> dict:
    """The resolved schedule as config.json's `resolved.schedule` holds it."""
    return {
        "epochs": schedule.epochs,
        "milestones": list(schedule.milestones),
        "batches_per_epoch": schedule.batches_per_epoch,
        "iterations": schedule.iterations,
    }


def choose_subset(cfg: SupervisedRecipe, data: ImageData, log: RunLog) -> torch.Tensor | None:
    """The M-per-class train indices of this seed (SPEC §4), recorded in `subset.json` as the authors'
    checkpoints kept `indices`; None for the full split. `train` and `kd-at` call this identically, so a
    no-teacher and a KD+AT run with the same seed and M see the same images."""
    if cfg.images_per_class < 0:
        return None
    indices = select_per_class(data.train.labels, cfg.images_per_class, cfg.seed, data.info.num_classes)
    log.write_json(
        "subset.json",
        {"images_per_class": cfg.images_per_class, "seed": cfg.seed, "indices": indices.tolist()},
    )
    return indices


LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits, _ = model(images)
    return F.cross_entropy(logits.float(), labels)


def fit_supervised(
    run: Scaffold,
    model: torch.nn.Module,
    data: ImageData,
    cfg,
    *,
    schedule: Schedule,
    indices: torch.Tensor | None,
    loss_fn: LossFn = cross_entropy_loss,
) -> torch.nn.Module:
    """SGD over `schedule` on the run's scaffold (evaluation and a resume checkpoint every `eval_every`
    epochs); returns the trained model. The loss is `loss_fn(model, images, labels)` under autocast; KD+AT
    passes one that also runs the teacher.

    Under torchrun every rank walks the same global batches (same seed, order and augmentation draws) and
    trains on its shard of each; its loss is scaled by its share of the batch and the gradients are summed
    over ranks, which is the global batch's mean gradient (docs/distributed.md).
    """
    model = run.train_module(model)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )
    loader = DeviceLoader(
        data.train,
        data.mean,
        data.std,
        cfg.batch_size,
        device=run.device,
        augment=data.info.augment,
        shuffle=True,
        drop_last=False,
        seed=cfg.seed,
        indices=indices,
    )
    run.track(model=model, optimizer=optimizer, loader=loader)
    run.evaluate_on(model, data.test, data.mean, data.std)
    run.on_log(
        lambda epoch: {"epoch": epoch, "lr": step_lr(cfg.lr, epoch - 1, schedule.milestones, cfg.lr_decay)}
    )
    for epoch in run.steps():
        for group in optimizer.param_groups:
            group["lr"] = step_lr(cfg.lr, epoch, schedule.milestones, cfg.lr_decay)
        for images, labels in loader:
            part = Shard.of(len(labels))
            optimizer.zero_grad(set_to_none=True)
            loss = torch.zeros(())
            if part.local:  # a rank's shard of a last, short batch can be empty: it then adds zeros
                with run.precision.autocast():
                    loss = (
                        loss_fn(model, run.precision.layout(part.take(images)), part.take(labels))
                        * part.share
                    )
                loss.backward()
            run.add(train_loss=loss)
            part.reduce(model.parameters())
            optimizer.step()
    return model


def supervised_scaffold(cfg, log: RunLog, schedule: Schedule, desc: str) -> Scaffold:
    """The scaffold of a supervised run: one step per epoch, evaluated every `eval_every` epochs (epochs/100
    unless set)."""
    return Scaffold(
        cfg,
        log,
        total=schedule.epochs,
        interval=cfg.eval_every or max(1, schedule.epochs // 100),
        unit="epoch",
        desc=desc,
        iteration_units=schedule.batches_per_epoch,
    )


def train(cfg: TrainConfig, log: RunLog, data: ImageData | None = None) -> dict:
    """Train `cfg.model` from scratch with cross-entropy; writes `model.pt` and returns the result."""
    data = data or load_data(cfg)
    schedule = cfg.schedule(len(data.train.labels), data.info.num_classes)
    run = supervised_scaffold(cfg, log, schedule, f"train {cfg.dataset}")
    log.print(
        f"{cfg.model} on {data.info.title} ({len(data.train.labels)} train / {len(data.test.labels)} test), "
        f"{run.device}, {run.precision.name}: {schedule.describe()}"
    )
    log.record_resolved(schedule=schedule_record(schedule))
    seed_everything(cfg.seed)
    indices = choose_subset(cfg, data, log)
    model = build_model(cfg.model, data.info.num_classes, data.info.in_channels)
    if not isinstance(model, WideResNet):  # the loop unpacks (logits, maps); no maps needed here
        model = FeatureModel(model, ())
    model = fit_supervised(run, model, data, cfg, schedule=schedule, indices=indices)
    if log.enabled:
        save_model(
            model,
            log.out / "model.pt",
            dataset=cfg.dataset,
            test_accuracy=run.accuracy,
            command=log.command,
            image_size=int(data.train.images.shape[-1]),
        )
    return run.finish(
        epochs=schedule.epochs,
        iterations=schedule.iterations,
        model=cfg.model,
        dataset=cfg.dataset,
        seed=cfg.seed,
        images_per_class=cfg.images_per_class,
    )
