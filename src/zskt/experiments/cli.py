"""`zskt reproduce NAME --out DIR`: run a named experiment's missing runs (teachers first), then its report."""

from __future__ import annotations

import argparse
import sys

from zskt.cli import Command
from zskt.errors import ZsktError
from zskt.experiments import EXPERIMENTS


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `reproduce` and `demo`: where, how much, and how runs are executed."""
    grid = parser.add_argument_group("grid")
    grid.add_argument("--seeds", nargs="+", type=int, metavar="S", help="seeds (default: 0 1 2, the authors')")
    grid.add_argument("--scale", type=float, default=None, metavar="S",
                      help="multiply every epoch count, pseudo-batch count and belief image/step count by S "
                      "(each at least 1) for a quick look; recorded, and fixed for the folder (default 1)")
    grid.add_argument("--list", "--dry-run", dest="list_only", action="store_true",
                      help="only list the runs with their status (done / partial / todo) and exit")
    execution = parser.add_argument_group("execution")
    execution.add_argument("--executor", choices=("subprocess", "inprocess"), default=None,
                           help="run each command in a child process (default for reproduce: isolates memory) or "
                           "in this process (no start-up cost per run; default for demo)")
    execution.add_argument("--verbose", "-v", action="store_true", help="show each run's own output")
    execution.add_argument("--no-report", action="store_true", help="do not rebuild the report at the end")
    passed = parser.add_argument_group("passed to every run")
    passed.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (each command's default: auto)")
    passed.add_argument("--data-dir", default=None, help="data root (default: $ZSKT_DATA or ~/.cache/zskt/data)")
    passed.add_argument("--download", action="store_true", help="download missing data files first")


def common_options(args: argparse.Namespace) -> list[str]:
    common = []
    if args.device:
        common += ["--device", args.device]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    if args.download:
        common.append("--download")
    return common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=list(EXPERIMENTS), metavar="NAME",
                        help="; ".join(f"{e.name}: {e.paper}, {e.description}" for e in EXPERIMENTS.values()))
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="experiment folder: experiment.json, one run folder per run, report.md, *.png")
    parser.add_argument("--dataset", nargs="+", metavar="D",
                        help="data set(s); default: the experiment's (accuracy-vs-m: cifar10 svhn fashion-mnist; "
                        "pairs: cifar10; mte: cifar10 svhn)")
    parser.add_argument("--pair", metavar="T,S", help="teacher,student (accuracy-vs-m and mte default: "
                        "wrn-40-2,wrn-16-1; pairs: only this pair instead of all six)")
    parser.add_argument("-M", "--images-per-class", metavar="M,...",
                        help="accuracy-vs-m: the M > 0 values (default 10,25,50,75,100); pairs and mte: the "
                        "KD+AT M (default 200)")
    parser.add_argument("--teacher", metavar="FILE", help="use this teacher file (a model.pt, the authors' "
                        "last.pth.tar, a Ferles *-dict.pth) for the pair's teacher instead of training one")
    parser.add_argument("--teachers", nargs="+", metavar="[D/]ARCH=FILE", default=(),
                        help="teacher files by architecture (and data set, when several are run)")
    add_grid_arguments(parser)


def parse_pair(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    parts = [p.strip().lower() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ZsktError(f"bad --pair {text!r}: expected TEACHER,STUDENT such as wrn-40-2,wrn-16-1")
    from zskt.models import MODELS

    for p in parts:
        if p not in MODELS:
            raise ZsktError(f"unknown model {p!r} in --pair; choose from {', '.join(MODELS)}")
    return parts[0], parts[1]


def parse_ms(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ZsktError(f"bad -M {text!r}: expected positive integers such as 10,25,50") from None
    if not values or min(values) <= 0:
        raise ZsktError(f"bad -M {text!r}: expected positive integers such as 10,25,50")
    return values


def parse_teachers(datasets: tuple[str, ...], pair: tuple[str, str], teacher: str | None,
                   teachers: list[str]) -> dict[tuple[str, str], str]:
    """--teacher FILE and --teachers [D/]ARCH=FILE as {(dataset, arch): file}."""
    from zskt.data import get_info
    from zskt.models import MODELS

    given: dict[tuple[str, str], str] = {}
    entries = ([f"{pair[0]}={teacher}"] if teacher else []) + list(teachers)
    for entry in entries:
        key, sep, path = entry.partition("=")
        if not sep or not path:
            raise ZsktError(f"bad --teachers entry {entry!r}: expected ARCH=FILE or DATASET/ARCH=FILE")
        dataset, _, arch = key.rpartition("/")
        arch = arch.strip().lower()
        if arch not in MODELS:
            raise ZsktError(f"unknown model {arch!r} in --teachers; choose from {', '.join(MODELS)}")
        if dataset:
            targets = [get_info(dataset).name]
        elif len(datasets) == 1:
            targets = list(datasets)
        else:
            raise ZsktError(f"several data sets are run ({', '.join(datasets)}): say which one {path} is for, "
                            f"as --teachers DATASET/{arch}={path}")
        for d in targets:
            given[(d, arch)] = path
    return given


def build_spec(args: argparse.Namespace, experiment):
    from zskt.data import get_info

    datasets = tuple(get_info(d).name for d in args.dataset) if args.dataset else None
    pair = parse_pair(args.pair)
    spec0 = experiment.spec(datasets=datasets, pair=pair)
    teachers = parse_teachers(spec0.datasets, pair or spec0.pair or experiment.spec().pair
                              or ("wrn-40-2", "wrn-16-1"), args.teacher, args.teachers)
    return experiment.spec(datasets=datasets, pair=pair, seeds=tuple(args.seeds) if args.seeds else None,
                           scale=args.scale, images_per_class=parse_ms(args.images_per_class),
                           teachers=teachers or None)


def main(args: argparse.Namespace) -> int:
    from zskt.experiments.reproduce import reproduce
    from zskt.experiments.runner import EXECUTORS

    experiment = EXPERIMENTS[args.name]
    spec = build_spec(args, experiment)
    try:
        outcome, _ = reproduce(experiment, spec, args.out, list_only=args.list_only,
                               executor=EXECUTORS[args.executor or "subprocess"], common=common_options(args),
                               echo=args.verbose, report=not args.no_report)
    except KeyboardInterrupt:
        print("zskt reproduce: interrupted; rerun the same command to continue (finished runs are kept, "
              "the interrupted one resumes from its checkpoint)", file=sys.stderr, flush=True)
        return 130
    return 0 if outcome is None or outcome.ok else 1


COMMAND = Command(
    "reproduce", "run a named experiment's grid (accuracy-vs-m, pairs, mte), skipping finished runs", add_arguments,
    main, description="Run the missing runs of a named experiment in dependency order (teachers before students), "
    "one run folder each under --out, then rebuild the report (zskt report). Finished runs (result.json) are "
    "skipped; an interrupted run continues from its checkpoint: rerun the same command after any interruption. "
    "Experiments: " + "; ".join(f"{e.name} ({e.paper}): {e.description}" for e in EXPERIMENTS.values())
    + ". See docs/experiments.md.")
