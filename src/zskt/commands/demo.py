"""`zskt demo`: the whole paper in miniature on the embedded digits set, on a CPU, with no download.

A teacher (WRN-16-2), its zero-shot student (WRN-16-1), the KD+AT and no-teacher baselines at small M, the
zero-shot student fine-tuned at the same M, the MTE of the zero-shot and KD+AT students, then the report. It
is the `demo` experiment run by the same runner as `zskt reproduce`, so rerunning it skips what is finished
and continues an interrupted run. `--quick` runs the same pipeline at toy lengths (about a minute). The plan's
costs, the machine probe and the thread policy are in zskt/experiments/demo.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from zskt.cli import Command
from zskt.experiments import EXPERIMENTS
from zskt.experiments.demo import (
    ThreadPolicy,
    estimate_seconds,
    fit_scale,
    probe_costs,
)
from zskt.experiments.runner import DONE, format_seconds, status
from zskt.reports import report as build_report
from zskt.reports.collect import Results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="experiment folder (default ./zskt-demo, or ./zskt-demo-quick with --quick); rerun to "
        "continue an interrupted demo",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the same pipeline at toy lengths: about a minute, for a first look (its numbers mean nothing)",
    )
    parser.add_argument(
        "--list",
        "--dry-run",
        dest="list_only",
        action="store_true",
        help="only list the runs with their status and expected times",
    )
    parser.add_argument(
        "--executor",
        choices=("inprocess", "subprocess"),
        default="inprocess",
        help="run each command in this process (default: no start-up cost per run) or a child",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show each run's own output")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: each command's auto)")
    parser.add_argument(
        "--threads",
        type=_threads,
        default=None,
        metavar="N|auto",
        help="CPU threads for every run (default: PyTorch's count at the start, one per "
        "core, fixed, so the numbers do not depend on the machine's load; auto: 1 for a run that "
        "starts while other processes keep a core busy, in-process executor only)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="run the full plan even where the probe of this machine says it takes over 10 "
        "minutes (by default the demo is then sized down to fit, and says so)",
    )


def _threads(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of threads or auto, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of threads, got {value}")
    return value


def headline(report_root: Path) -> list[str]:
    """The demo's numbers, from the result.json files (what the report tables show)."""
    results = Results(report_root)
    spec = EXPERIMENTS["demo"].spec()
    teacher, student = spec.pair
    d = spec.datasets[0]
    m = max(spec.images_per_class)

    def acc(**tags) -> str:
        return results.cell("test_accuracy", dataset=d, **tags).format(unit="%")

    def mte(**tags) -> str:
        return results.cell(
            "mte", dataset=d, method="belief", teacher=teacher, student=student, **tags
        ).format(3)

    return [
        f"  teacher {teacher}: {acc(method='scratch', student=teacher, m=-1)}",
        f"  zero-shot {student} (no data): {acc(method='zero-shot', teacher=teacher, student=student, m=0)}",
        (
            f"  at M = {m} images per class: no teacher {acc(method='no-teacher', student=student, m=m)}, "
            f"KD+AT {acc(method='kd-at', teacher=teacher, student=student, m=m)}, "
            f"zero-shot fine-tuned {acc(method='finetune', teacher=teacher, student=student, m=m)}"
        ),
        (
            f"  MTE: zero-shot {mte(of='zero-shot', m=0)}, KD+AT (M = {m}) {mte(of='kd-at', m=m)} "
            "(paper, SVHN: 0.09 vs 0.64; CIFAR-10: 0.22 vs 0.68)"
        ),
    ]


def main(args: argparse.Namespace) -> int:
    from zskt.experiments.reproduce import reproduce
    from zskt.experiments.runner import EXECUTORS

    name = "demo-quick" if args.quick else "demo"
    experiment = EXPERIMENTS[name]
    out = Path(args.out or ("zskt-demo-quick" if args.quick else "zskt-demo"))
    adaptive = args.threads == "auto"
    threads = ThreadPolicy(fixed=None if adaptive else args.threads, adaptive=adaptive)
    torch.set_num_threads(threads.fixed)
    device = args.device or "auto"
    from zskt.runtime import resolve_device

    probe_device = resolve_device(device)
    costs = probe_costs(probe_device, experiment.spec().pair)
    scale, expected = fit_scale(experiment, out, costs) if not (args.quick or args.full) else (1.0, 0.0)
    spec = experiment.spec(scale=scale)
    runs = experiment.runs(scale=scale)
    left = [r for r in runs if status(r, out) != DONE]
    expected = sum(estimate_seconds(r, costs) for r in left)
    t0 = time.perf_counter()

    def printer(line: str) -> None:
        print(f"[{format_seconds(time.perf_counter() - t0):>5}] {line}", flush=True)

    teacher, student = spec.pair
    print(
        f"zskt demo{' --quick' if args.quick else ''}: the paper in miniature on the embedded digits set "
        f"(1,400 train / 397 test images, 16x16), CPU, no download: teacher {teacher}, zero-shot {student}, "
        f"KD+AT and no-teacher at M = {', '.join(map(str, spec.images_per_class))}, fine-tuning, MTE, "
        "report.",
        flush=True,
    )
    where = f"{probe_device.type.upper() if probe_device.type == 'cuda' else 'CPU'}, " + (
        "threads chosen by load" if adaptive else f"{threads.fixed} thread(s)"
    )
    print(
        f"{len(left)} of {len(runs)} runs to do in {out}; expected about {format_seconds(expected)} "
        f"(min:sec) on this machine ({where}; from a probe of its speed).",
        flush=True,
    )
    if scale < 1:
        print(
            f"This machine is too slow for the full demo in 10 minutes: it runs at --scale {scale:g} "
            "(fewer epochs, pseudo batches and belief steps; lower numbers than the README's); pass --full "
            "for "
            "the full plan.",
            flush=True,
        )
    common = ["--device", args.device] if args.device else []
    if args.executor == "subprocess" and not adaptive:
        common += ["--threads", str(threads.fixed)]
    try:
        outcome, report_path = reproduce(
            experiment,
            spec,
            out,
            list_only=args.list_only,
            executor=EXECUTORS[args.executor],
            common=common,
            echo=args.verbose,
            printer=printer,
            estimate=lambda run: estimate_seconds(run, costs),
            report=build_report,
            before_run=threads if args.executor == "inprocess" else None,
        )
    except KeyboardInterrupt:
        print(
            f"zskt demo: interrupted; run the same command again to continue ({out})",
            file=sys.stderr,
            flush=True,
        )
        return 130
    if outcome is None:
        return 0
    if report_path and not left:
        print(
            "\nzskt demo: every run was already finished (delete the folder to start again); the report was "
            "rebuilt:",
            flush=True,
        )
    elif report_path:
        print(
            f"\nzskt demo finished in {format_seconds(time.perf_counter() - t0)} (expected "
            f"{format_seconds(expected)}):",
            flush=True,
        )
    if report_path:
        for line in headline(out):
            print(line, flush=True)
        print(f"report (tables beside the paper's numbers, plots): {report_path.resolve()}", flush=True)
    return 0 if outcome.ok else 1


COMMAND = Command(
    "demo",
    "the paper in miniature on digits (CPU, no download, < 10 min; --quick: ~1 min)",
    add_arguments,
    main,
    description="Run the whole paper in miniature on the embedded digits set: train a WRN-16-2 teacher, "
    "transfer "
    "it zero-shot into a WRN-16-1, train the KD+AT and no-teacher baselines and fine-tune the zero-shot "
    "student "
    "at small M, measure the mean transition error of the zero-shot and KD+AT students, and write a report "
    "with the tables beside the paper's numbers and the plots. Finished runs are kept: rerun to continue. "
    "See docs/experiments.md.",
)
