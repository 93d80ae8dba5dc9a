"""`zskt plot RUN [RUN ...]`: the training curves of run folders (accuracy and losses from metrics.jsonl)."""

from __future__ import annotations

import argparse
from pathlib import Path

from zskt.cli import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="a run folder (the --out of a training command), or a folder of run folders",
    )
    parser.add_argument(
        "--out",
        metavar="PNG",
        default=None,
        help="where to write the PNG (default: RUN/curves.png for one run, ./curves.png for several)",
    )
    parser.add_argument(
        "--x",
        choices=("step", "time"),
        default="step",
        help="horizontal axis: the run's step (pseudo batch, epoch) or its wall time in "
        "minutes (default: step)",
    )


def main(args: argparse.Namespace) -> int:
    from zskt.reports.curves import plot_curves, run_folders

    out = args.out
    if out is None:
        folders = run_folders(args.runs)
        out = folders[0] / "curves.png" if len(folders) == 1 else Path("curves.png")
    path = plot_curves(args.runs, out, x=args.x)
    print(f"curves: {path}")
    return 0


COMMAND = Command(
    "plot",
    "draw runs' training curves (accuracy, losses) from their metrics.jsonl into a PNG",
    add_arguments,
    main,
    description="Draw test accuracy (and the best so far, dashed) and every loss in the runs' "
    "metrics.jsonl against the step or the wall time, the runs overlaid, one panel per "
    "quantity, into a PNG. The legend names each run by its command, teacher → student and "
    "seed (from its config.json). Reads only the run folders; safe while a run is going.",
)
