"""`zskt demo`: the whole paper in miniature on the embedded digits set, on a CPU, with no download.

A teacher (WRN-16-2), its zero-shot student (WRN-16-1), the KD+AT and no-teacher baselines at small M, the
zero-shot student fine-tuned at the same M, the MTE of the zero-shot and KD+AT students, then the report. It is
the `demo` experiment run by the same runner as `zskt reproduce`, so rerunning it skips what is finished and
continues an interrupted run. `--quick` runs the same pipeline at toy lengths (about a minute).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from zskt.cli import Command
from zskt.experiments import EXPERIMENTS
from zskt.experiments.grid import Run
from zskt.experiments.runner import DONE, format_seconds, status

# Unit costs on digits (16x16, fp32, two threads), measured by timing the demo's runs alone on this project's
# 2-core CPU (AMD EPYC, torch 2.13; docs/experiments.md): seconds per image through forward + backward (an
# evaluation image costs a third of that), per zero-shot pseudo batch of 128 (1 generator + 10 student steps,
# with its evaluations), per belief curve step (student forward + backward, teacher forward), and a fixed cost
# per run (data, networks, files). WRN-40-x are scaled from WRN-16-2 by their FLOPs (SPEC §1).
TRAIN_PER_IMAGE = {"wrn-16-1": 0.0002, "wrn-16-2": 0.0005, "wrn-40-1": 0.00041, "wrn-40-2": 0.0016}
ZERO_SHOT_PER_BATCH = 0.37  # WRN-16-2 -> WRN-16-1
BELIEF_PER_PAIR_STEP = 0.00022  # WRN-16-1 attacked, WRN-16-2 reference
RUN_OVERHEAD = 1.5


def estimate_seconds(run: Run) -> float:
    """Expected seconds for one digits run on a 2-core CPU, from its options and the measured unit costs."""
    from zskt.data import get_info
    from zskt.methods.schedule import make_schedule

    o = run.options
    info = get_info(o.get("dataset", "digits"))
    student = o.get("model") or o.get("student", "wrn-16-1")
    per_image = TRAIN_PER_IMAGE.get(student, 0.002)
    seconds = RUN_OVERHEAD
    if run.command in ("train", "kd-at"):
        m = o.get("images_per_class", -1)
        epochs = make_schedule(info.name, info.n_train, m, 128, base_epochs=o.get("epochs")).epochs
        if run.command == "kd-at":  # the teacher's forward pass on every training image
            per_image += TRAIN_PER_IMAGE.get(run.tags.get("teacher", "wrn-16-2"), 0.002) / 3
        evaluations = epochs // max(1, epochs // 100)  # every epochs/100 epochs (the commands' default)
        seconds += epochs * (info.n_train if m < 0 else m * info.num_classes) * per_image
        seconds += evaluations * info.n_test * TRAIN_PER_IMAGE.get(student, 0.002) / 3
    elif run.command == "zero-shot":
        from zskt.data import preset

        seconds += (o.get("iterations") or preset(info.name, "zero-shot", "iterations", "--iterations")) * ZERO_SHOT_PER_BATCH
    elif run.command == "belief":
        curves = min(o.get("images", 1000), info.n_test) * (info.num_classes - 1)
        seconds += curves * o.get("steps", 200) * BELIEF_PER_PAIR_STEP
    return seconds


def other_processes_cpu(interval: float = 0.4) -> float | None:
    """Cores' worth of CPU that other processes used over the next `interval` seconds (Linux /proc/stat), or
    None where that cannot be read."""
    import os

    def busy_and_total() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(values) - values[3] - values[4], sum(values)

    try:
        busy0, _ = busy_and_total()
        ours0, t0 = time.process_time(), time.perf_counter()
        time.sleep(interval)
        busy1, _ = busy_and_total()
        ours1, t1 = time.process_time(), time.perf_counter()
    except (OSError, ValueError, IndexError):
        return None
    busy = (busy1 - busy0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)
    return max(0.0, busy - (ours1 - ours0) / (t1 - t0))


class ThreadPolicy:
    """The demo's thread count, chosen before each run. Its runs are small (16x16 images, batches of 20-128),
    so each step is many short parallel regions; when another process holds a core, the OpenMP threads of a
    2-thread run wait for each other at every region and a run slows down up to 30x (measured: a 6 s
    fine-tuning took 3:38 next to two other jobs). One thread on a busy machine avoids that; two threads on an
    idle one are about 1.5x faster. `fixed` (--threads N) overrides the measurement."""

    def __init__(self, fixed: int | None = None):
        import torch

        self.default = torch.get_num_threads()
        self.fixed = fixed

    def __call__(self, run: Run) -> str:
        import torch

        if self.fixed:
            torch.set_num_threads(self.fixed)
            return ""
        others = other_processes_cpu() if self.default > 1 else None
        threads = 1 if others is not None and others > 0.3 else self.default
        torch.set_num_threads(threads)
        return f" [1 thread: other processes use {others:.1f} cores]" if threads < self.default else ""


def _build_report(out: Path) -> Path:
    from zskt.reports import report

    return report(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="experiment folder (default ./zskt-demo, or ./zskt-demo-quick with --quick); rerun to "
                        "continue an interrupted demo")
    parser.add_argument("--quick", action="store_true", help="the same pipeline at toy lengths: about a minute, "
                        "for a first look (its numbers mean nothing)")
    parser.add_argument("--list", "--dry-run", dest="list_only", action="store_true",
                        help="only list the runs with their status and expected times")
    parser.add_argument("--executor", choices=("inprocess", "subprocess"), default="inprocess",
                        help="run each command in this process (default: no start-up cost per run) or a child")
    parser.add_argument("--verbose", "-v", action="store_true", help="show each run's own output")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: each command's auto)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for every run (default: all cores, or 1 for a run that starts while "
                        "other processes keep a core busy; in-process executor only)")


def headline(report_root: Path) -> list[str]:
    """The demo's numbers, from the result.json files (what the report tables show)."""
    from zskt.reports.collect import Results

    results = Results(report_root)
    spec = EXPERIMENTS["demo"].spec()
    teacher, student = spec.pair
    d = spec.datasets[0]
    m = max(spec.images_per_class)

    def acc(**tags) -> str:
        return results.cell("test_accuracy", dataset=d, **tags).format(unit="%")

    def mte(**tags) -> str:
        return results.cell("mte", dataset=d, method="belief", teacher=teacher, student=student, **tags).format(3)

    return [
        f"  teacher {teacher}: {acc(method='scratch', student=teacher, m=-1)}",
        f"  zero-shot {student} (no data): {acc(method='zero-shot', teacher=teacher, student=student, m=0)}",
        (f"  at M = {m} images per class: no teacher {acc(method='no-teacher', student=student, m=m)}, "
        f"KD+AT {acc(method='kd-at', teacher=teacher, student=student, m=m)}, "
        f"zero-shot fine-tuned {acc(method='finetune', teacher=teacher, student=student, m=m)}"),
        (f"  MTE: zero-shot {mte(of='zero-shot', m=0)}, KD+AT (M = {m}) {mte(of='kd-at', m=m)} "
        "(paper, SVHN: 0.09 vs 0.64; CIFAR-10: 0.22 vs 0.68)"),
    ]


def main(args: argparse.Namespace) -> int:
    from zskt.experiments.reproduce import reproduce
    from zskt.experiments.runner import EXECUTORS

    name = "demo-quick" if args.quick else "demo"
    experiment = EXPERIMENTS[name]
    out = Path(args.out or ("zskt-demo-quick" if args.quick else "zskt-demo"))
    spec = experiment.spec()
    runs = experiment.runs()
    left = [r for r in runs if status(r, out) != DONE]
    expected = sum(estimate_seconds(r) for r in left)
    t0 = time.perf_counter()

    def printer(line: str) -> None:
        print(f"[{format_seconds(time.perf_counter() - t0):>5}] {line}", flush=True)

    teacher, student = spec.pair
    print(f"zskt demo{' --quick' if args.quick else ''}: the paper in miniature on the embedded digits set "
          f"(1,400 train / 397 test images, 16x16), CPU, no download: teacher {teacher}, zero-shot {student}, "
          f"KD+AT and no-teacher at M = {', '.join(map(str, spec.images_per_class))}, fine-tuning, MTE, report.",
          flush=True)
    print(f"{len(left)} of {len(runs)} runs to do in {out}; expected about {format_seconds(expected)} "
          f"(min:sec) on a 2-core CPU.", flush=True)
    common = ["--device", args.device] if args.device else []
    try:
        outcome, report_path = reproduce(experiment, spec, out, list_only=args.list_only,
                                         executor=EXECUTORS[args.executor], common=common, echo=args.verbose,
                                         printer=printer, estimate=estimate_seconds, report=_build_report,
                                         before_run=ThreadPolicy(args.threads)
                                         if args.executor == "inprocess" else None)
    except KeyboardInterrupt:
        print(f"zskt demo: interrupted; run the same command again to continue ({out})", file=sys.stderr,
              flush=True)
        return 130
    if outcome is None:
        return 0
    if report_path and not left:
        print("\nzskt demo: every run was already finished (delete the folder to start again); the report was "
              "rebuilt:", flush=True)
    elif report_path:
        print(f"\nzskt demo finished in {format_seconds(time.perf_counter() - t0)} (expected "
              f"{format_seconds(expected)}):", flush=True)
    if report_path:
        for line in headline(out):
            print(line, flush=True)
        print(f"report (tables beside the paper's numbers, plots): {report_path.resolve()}", flush=True)
    return 0 if outcome.ok else 1


COMMAND = Command(
    "demo", "the paper in miniature on digits (CPU, no download, < 10 min; --quick: ~1 min)", add_arguments, main,
    description="Run the whole paper in miniature on the embedded digits set: train a WRN-16-2 teacher, transfer "
    "it zero-shot into a WRN-16-1, train the KD+AT and no-teacher baselines and fine-tune the zero-shot student "
    "at small M, measure the mean transition error of the zero-shot and KD+AT students, and write a report "
    "with the tables beside the paper's numbers and the plots. Finished runs are kept: rerun to continue. "
    "See docs/experiments.md.")
