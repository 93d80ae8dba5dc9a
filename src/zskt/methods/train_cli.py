"""`zskt train`: a teacher, a scratch student, or the few-shot "no teacher" baseline (`--images-per-class M`).

Also `schedule_command`, which `kd-at` shares: a run-folder command with `--print-schedule [M,...]`, printing
the resolved epochs, milestones and iterations of the canonical train split (no data files needed) and exiting.
"""

from __future__ import annotations

import argparse
import dataclasses

from zskt.cli import Command, run_folder_command
from zskt.config import config_from_args, option_name
from zskt.data import get_info
from zskt.errors import ZsktError
from zskt.methods.schedule import default_scale_n_iters
from zskt.methods.train import TrainConfig, train


def schedule_table(cfg, images_per_class: list[int]) -> str:
    """SPEC §4's table for `cfg` at each M, from the registry's canonical train-split size."""
    info = get_info(cfg.dataset)
    lines = [f"{cfg.dataset}: {info.n_train} train images, batch {cfg.batch_size}"
             + (f", base epochs {cfg.epochs}" if cfg.epochs else "")
             + (f"; fine-tuning from --init for {cfg.finetune_epochs} epochs"
                if getattr(cfg, "init", None) and getattr(cfg, "finetune_epochs", None) else ""),
             f"{'M':>5} {'scale':>6} {'epochs':>8} {'milestones':>20} {'batches/epoch':>14} {'iterations':>11}"]
    for m in images_per_class:
        one = dataclasses.replace(cfg, images_per_class=m)
        schedule = one.schedule(info.n_train, info.num_classes)
        scale = cfg.scale_n_iters or default_scale_n_iters(cfg.dataset, m, cfg.same_iterations)
        lines.append(f"{'all' if m < 0 else m:>5} {scale:>6g} {schedule.epochs:>8} "
                     f"{'/'.join(map(str, schedule.milestones)):>20} {schedule.batches_per_epoch:>14} "
                     f"{schedule.iterations:>11}")
    return "\n".join(lines)


def schedule_command(name: str, help: str, config_cls: type, run, *, required: tuple[str, ...] = (),
                     **kwargs) -> Command:
    """`run_folder_command` plus `--print-schedule [M,...]`, which needs neither --out nor the `required`
    fields (checked here instead of by argparse, so the printout can go without them)."""
    # --out is required for a run, not for the printout: checked in main below.
    base = run_folder_command(name, help, config_cls, run, out_required=False, **kwargs)

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        base.add_arguments(parser)
        parser.add_argument("--print-schedule", nargs="?", const="", default=None, metavar="M,...",
                            help="print epochs, milestones, batches/epoch and iterations (SPEC §4) for "
                            "--images-per-class, or for each M listed (-1 = all), on the canonical train split "
                            "of --dataset, and exit without training (no data files needed)")

    def main(args: argparse.Namespace) -> int:
        if args.print_schedule is None:
            missing = [option_name(f) for f in ("out", *required) if getattr(args, f, None) is None]
            if missing:
                raise ZsktError(f"{', '.join(missing)} required (or --print-schedule to only print the schedule)")
            return base.main(args)
        cfg = config_from_args(config_cls, args)
        try:
            values = [int(m) for m in args.print_schedule.split(",") if m.strip()] or [cfg.images_per_class]
        except ValueError:
            raise ZsktError(f"bad value {args.print_schedule!r} for --print-schedule: expected M,... "
                            "(integers, -1 = all)") from None
        for m in values:  # the same check as the config's, for the listed M
            dataclasses.replace(cfg, images_per_class=m)
        print(schedule_table(cfg, values), flush=True)
        return 0

    return Command(name, help, add_arguments, main, base.description)


COMMAND = schedule_command(
    "train", "train a teacher or scratch student with cross-entropy (paper's SGD recipe)", TrainConfig, train,
    description="Train a Wide ResNet from scratch with the paper's recipe (SGD 0.1, momentum 0.9, wd 5e-4, "
    "lr /5 at 30/60/80%% of the run, batch 128). With --images-per-class M it is the few-shot 'no teacher' "
    "baseline on M images per class (SPEC §4), with the authors' epoch scaling.",
    aliases={"images_per_class": ("-M",)})
