"""Epoch counts and learning-rate milestones of the supervised recipes, as the authors computed them
(docs/kd_at.md), the data sets' presets, and `--print-schedule`, which `train` and `kd-at` share."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from zskt.data import preset
from zskt.errors import ZsktError

# Base epochs and the few-shot iteration scale are the data set's presets (zskt.data.registry, with sources);
# milestones are at 30/60/80 % of the run.
MILESTONE_FRACTIONS = (0.3, 0.6, 0.8)


@dataclass(frozen=True)
class Schedule:
    """How long a supervised run is and when its learning rate drops."""

    epochs: int
    milestones: tuple[int, ...]
    batches_per_epoch: int

    @property
    def iterations(self) -> int:
        return self.epochs * self.batches_per_epoch

    def describe(self) -> str:
        return (
            f"{self.epochs} epochs x {self.batches_per_epoch} batches = {self.iterations} iterations; "
            f"lr /5 after epochs {', '.join(map(str, self.milestones))}"
        )


def milestones_at(epochs: int) -> tuple[int, ...]:
    """30/60/80 % of `epochs`, rounded down as the authors' base recipes are (200 epochs: 60, 120, 160)."""
    # 1e-9 absorbs float error (0.3 * 200 must give 60, not 59.999...).
    return tuple(int(f * epochs + 1e-9) for f in MILESTONE_FRACTIONS)


def default_scale_n_iters(dataset: str, images_per_class: int, same_iterations: bool = False) -> float:
    """The authors' `scale_n_iters`: 1 in the CIFAR-10 scripts; M/100 in the SVHN scripts ("for SVHN and low M
    lower n_iters doesnt hurt perf"), and in ours for Fashion-MNIST, which the Southampton study scaled the
    same way. `same_iterations=True` gives the paper's stated "same iterations for every M" (scale 1)."""
    if same_iterations or images_per_class is None or images_per_class < 0:
        return 1.0
    scale = preset(dataset, "train", "scale_n_iters_few_shot", "--scale-n-iters")
    return images_per_class / 100 if scale == "m/100" else float(scale)


def make_schedule(
    dataset: str,
    n_train: int,
    images_per_class: int,
    batch_size: int,
    *,
    base_epochs: int | None = None,
    scale_n_iters: float | None = None,
    same_iterations: bool = False,
    num_classes: int = 10,
) -> Schedule:
    """SPEC §4: for M > 0, scale = scale_n_iters · n_train / (10·M); epochs = int(base·scale) and each
    milestone int(m·scale), with the authors' float arithmetic (so CIFAR-10 M = 75 gives 13,333 epochs and
    milestones 4000/8000/10666). M = −1 is the full split at the base recipe."""
    base = preset(dataset, "train", "epochs", "--epochs") if base_epochs is None else base_epochs
    base_milestones = list(milestones_at(base))
    if images_per_class is None or images_per_class < 0:
        epochs, milestones, n_images = base, base_milestones, n_train
    else:
        if scale_n_iters is None:
            scale_n_iters = default_scale_n_iters(dataset, images_per_class, same_iterations)
        scale = scale_n_iters * n_train / (num_classes * images_per_class)
        epochs = int(base * scale)
        milestones = [int(m * scale) for m in base_milestones]
        n_images = num_classes * images_per_class
    batches = -(-n_images // batch_size)  # drop_last=False: the last partial batch counts
    return Schedule(epochs=max(1, epochs), milestones=tuple(milestones), batches_per_epoch=batches)


def step_lr(base_lr: float, epoch: int, milestones: tuple[int, ...], gamma: float = 0.2) -> float:
    """Learning rate during 0-based `epoch` under the authors' stepping: `scheduler.step(epoch=epoch)` after
    each epoch means a decay at milestone m first applies in epoch m + 1 (SPEC §4)."""
    return base_lr * gamma ** sum(1 for m in milestones if m < epoch)


# ------------------------------------------------------------------------------------------- --print-schedule


def schedule_table(cfg, images_per_class: list[int]) -> str:
    """SPEC §4's table for `cfg` at each M, from the registry's canonical train-split size."""
    from zskt.data import get_info

    info = get_info(cfg.dataset)
    lines = [
        f"{cfg.dataset}: {info.n_train} train images, batch {cfg.batch_size}"
        + (f", base epochs {cfg.epochs}" if cfg.epochs else "")
        + (
            f"; fine-tuning from --init for {cfg.finetune_epochs} epochs"
            if getattr(cfg, "init", None) and getattr(cfg, "finetune_epochs", None)
            else ""
        ),
        f"{'M':>5} {'scale':>6} {'epochs':>8} {'milestones':>20} {'batches/epoch':>14} {'iterations':>11}",
    ]
    for m in images_per_class:
        one = dataclasses.replace(cfg, images_per_class=m)
        schedule = one.schedule(info.n_train, info.num_classes)
        scale = cfg.scale_n_iters or default_scale_n_iters(cfg.dataset, m, cfg.same_iterations)
        lines.append(
            f"{'all' if m < 0 else m:>5} {scale:>6g} {schedule.epochs:>8} "
            f"{'/'.join(map(str, schedule.milestones)):>20} {schedule.batches_per_epoch:>14} "
            f"{schedule.iterations:>11}"
        )
    return "\n".join(lines)


def schedule_command(
    name: str, help: str, config_cls: type, run, *, required: tuple[str, ...] = (), **kwargs
):
    """`run_folder_command` plus `--print-schedule [M,...]`, which needs neither --out nor the `required`
    fields (checked here instead of by argparse, so the printout can go without them)."""
    from zskt.cli import Command, command_config, run_folder_command

    # --out is required for a run, not for the printout: checked in main below.
    base = run_folder_command(name, help, config_cls, run, out_required=False, required=required, **kwargs)

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        base.add_arguments(parser)
        parser.add_argument(
            "--print-schedule",
            nargs="?",
            const="",
            default=None,
            metavar="M,...",
            help="print epochs, milestones, batches/epoch and iterations (docs/kd_at.md) for "
            "--images-per-class, or for each M listed (-1 = all), on the canonical train split "
            "of --dataset, and exit without training (no data files needed)",
        )

    def main(args: argparse.Namespace) -> int:
        if args.print_schedule is None:
            if args.out is None:  # the required fields are checked by base.main, after a --config replay
                raise ZsktError("--out required (or --print-schedule to only print the schedule)")
            return base.main(args)
        cfg = command_config(name, config_cls, args)
        try:
            values = [int(m) for m in args.print_schedule.split(",") if m.strip()] or [cfg.images_per_class]
        except ValueError:
            raise ZsktError(
                f"bad value {args.print_schedule!r} for --print-schedule: expected M,... (integers, -1 = all)"
            ) from None
        for m in values:  # the same check as the config's, for the listed M
            dataclasses.replace(cfg, images_per_class=m)
        print(schedule_table(cfg, values), flush=True)
        return 0

    return Command(name, help, add_arguments, main, base.description)
