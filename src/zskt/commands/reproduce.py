"""`zskt reproduce NAME --out DIR`: run a named experiment's missing runs (teachers first), then its report;
on this machine, on a Ray cluster (`--executor ray`), or as shell commands for a scheduler
(`--print-commands`)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from zskt.cli import Command
from zskt.errors import ZsktError
from zskt.experiments import EXPERIMENTS
from zskt.reports import report as build_report


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `reproduce` and `demo`: where, how much, and how runs are executed."""
    grid = parser.add_argument_group("grid")
    grid.add_argument(
        "--seeds", nargs="+", type=int, metavar="S", help="seeds (default: 0 1 2, the authors')"
    )
    grid.add_argument(
        "--scale",
        type=float,
        default=None,
        metavar="S",
        help="multiply every epoch count, pseudo-batch count and belief image/step count by S "
        "(each at least 1) for a quick look; recorded, and fixed for the folder (default 1)",
    )
    grid.add_argument(
        "--list",
        "--dry-run",
        dest="list_only",
        action="store_true",
        help="only list the runs with their status (done / partial / todo) and exit",
    )
    execution = parser.add_argument_group("execution")
    execution.add_argument(
        "--executor",
        choices=("subprocess", "inprocess", "ray"),
        default=None,
        help="run each command in a child process (default: isolates memory), in this process "
        "(no start-up cost per run), or as Ray tasks, many at once, on this machine or a "
        "cluster whose nodes share the --out folder (needs pip install 'zskt[ray]'; see "
        "docs/distributed.md)",
    )
    execution.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show each run's own output (local executors; with ray see RUN/output.log)",
    )
    execution.add_argument("--no-report", action="store_true", help="do not rebuild the report at the end")
    execution.add_argument(
        "--print-commands",
        action="store_true",
        help="run nothing: print a bash script of one `python -m zskt ...` command per missing "
        "run (absolute paths, --resume for started runs), in waves ('# wave K' lines) where a "
        "run needs only finished runs and runs of earlier waves, for a scheduler (one SLURM job "
        "array per wave, docs/distributed.md) or `bash`; records experiment.json as a run "
        "would, and writes only the script to stdout (> runs.sh)",
    )
    ray = parser.add_argument_group("ray (with --executor ray)")
    ray.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="the Ray cluster: auto (the one this machine joined with `ray start`), HOST:PORT or "
        "ray://HOST:PORT (default: start a local Ray instance on this machine)",
    )
    ray.add_argument(
        "--gpus-per-run",
        type=float,
        default=None,
        metavar="G",
        help="GPUs Ray reserves for each run, and makes its only visible ones (default: 1 when the "
        "cluster has GPUs, else 0; 0.5 puts two runs on one GPU)",
    )
    ray.add_argument(
        "--cpus-per-run",
        type=float,
        default=None,
        metavar="C",
        help="CPUs Ray reserves for each run, and its thread count (default 1)",
    )
    passed = parser.add_argument_group("passed to every run")
    passed.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N or auto (each command's default: auto)"
    )
    passed.add_argument(
        "--data-dir", default=None, help="data root (default: $ZSKT_DATA or ~/.cache/zskt/data)"
    )
    passed.add_argument("--download", action="store_true", help="download missing data files first")


def absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def common_options(args: argparse.Namespace, absolute_paths: bool = False) -> list[str]:
    """The options passed to every run; with `absolute_paths` (commands that run elsewhere) paths are
    absolute."""
    common = []
    if args.device:
        common += ["--device", args.device]
    if args.data_dir:
        common += ["--data-dir", absolute(args.data_dir) if absolute_paths else args.data_dir]
    if args.download:
        common.append("--download")
    return common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        choices=list(EXPERIMENTS),
        metavar="NAME",
        help="; ".join(f"{e.name}: {e.paper}, {e.description}" for e in EXPERIMENTS.values()),
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="experiment folder: experiment.json, one run folder per run, report.md, *.png",
    )
    parser.add_argument(
        "--dataset",
        nargs="+",
        metavar="D",
        help="data set(s); default: the experiment's (accuracy-vs-m: cifar10 svhn fashion-mnist; "
        "pairs: cifar10; mte: cifar10 svhn)",
    )
    parser.add_argument(
        "--pair",
        metavar="T,S",
        help="teacher,student (accuracy-vs-m and mte default: "
        "wrn-40-2,wrn-16-1; pairs: only this pair instead of all six)",
    )
    parser.add_argument(
        "-M",
        "--images-per-class",
        metavar="M,...",
        help="accuracy-vs-m: the M > 0 values (default 10,25,50,75,100); pairs and mte: the "
        "KD+AT M (default 200)",
    )
    parser.add_argument(
        "--teacher",
        metavar="FILE",
        help="use this teacher file (a model.pt, the authors' "
        "last.pth.tar, a Ferles *-dict.pth) for the pair's teacher instead of training one",
    )
    parser.add_argument(
        "--teachers",
        nargs="+",
        metavar="[D/]ARCH=FILE",
        default=(),
        help="teacher files by architecture (and data set, when several are run)",
    )
    parser.add_argument(
        "--label-embeddings",
        nargs="+",
        metavar="D=FILE",
        default=(),
        help="dfkd-benchmark, dfkd-digits: NAYER's label-text embeddings file per data set (e.g. "
        "cifar10=cifar10_le.npz; docs/data_free.md); without one NAYER uses seeded random class codes",
    )
    parser.add_argument(
        "--methods",
        metavar="NAME,...",
        help="dfkd-benchmark: the data-free methods to run "
        "(default: every registered one: " + ", ".join(s.name for s in _data_free()) + ")",
    )
    add_grid_arguments(parser)


def _data_free():
    from zskt.methods.registry import data_free_series

    return data_free_series()


def parse_methods(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    known = [s.name for s in _data_free()]
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ZsktError(
            f"unknown method {', '.join(unknown) or text!r} in --methods; choose from {', '.join(known)}"
        )
    return names


def parse_pair(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    parts = [p.strip().lower() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ZsktError(f"bad --pair {text!r}: expected TEACHER,STUDENT such as wrn-40-2,wrn-16-1")
    from zskt.models import is_model_name, model_names_hint

    for p in parts:
        if not is_model_name(p):
            raise ZsktError(f"unknown model {p!r} in --pair; choose from {model_names_hint()}")
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


def parse_teachers(
    datasets: tuple[str, ...], pair: tuple[str, str], teacher: str | None, teachers: list[str]
) -> dict[tuple[str, str], str]:
    """--teacher FILE and --teachers [D/]ARCH=FILE as {(dataset, arch): file}."""
    from zskt.data import get_info
    from zskt.models import is_model_name, model_names_hint

    given: dict[tuple[str, str], str] = {}
    entries = ([f"{pair[0]}={teacher}"] if teacher else []) + list(teachers)
    for entry in entries:
        key, sep, path = entry.partition("=")
        if not sep or not path:
            raise ZsktError(f"bad --teachers entry {entry!r}: expected ARCH=FILE or DATASET/ARCH=FILE")
        dataset, _, arch = key.rpartition("/")
        arch = arch.strip().lower()
        if not is_model_name(arch):
            raise ZsktError(f"unknown model {arch!r} in --teachers; choose from {model_names_hint()}")
        if dataset:
            targets = [get_info(dataset).name]
        elif len(datasets) == 1:
            targets = list(datasets)
        else:
            raise ZsktError(
                f"several data sets are run ({', '.join(datasets)}): say which one {path} is for, "
                f"as --teachers DATASET/{arch}={path}"
            )
        for d in targets:
            given[(d, arch)] = path
    return given


def build_spec(args: argparse.Namespace, experiment, absolute_paths: bool = False):
    from zskt.data import get_info

    datasets = tuple(get_info(d).name for d in args.dataset) if args.dataset else None
    pair = parse_pair(args.pair)
    spec0 = experiment.spec(datasets=datasets, pair=pair)
    teachers = parse_teachers(
        spec0.datasets,
        pair or spec0.pair or experiment.spec().pair or ("wrn-40-2", "wrn-16-1"),
        args.teacher,
        args.teachers,
    )
    if absolute_paths:  # the teacher files as other machines and folders must name them
        teachers = {key: absolute(path) for key, path in teachers.items()}
    return experiment.spec(
        datasets=datasets,
        pair=pair,
        seeds=tuple(args.seeds) if args.seeds else None,
        scale=args.scale,
        images_per_class=parse_ms(args.images_per_class),
        teachers=teachers or None,
        methods=parse_methods(getattr(args, "methods", None)),
        label_embeddings=parse_label_embeddings(
            spec0.datasets, getattr(args, "label_embeddings", ()), absolute_paths
        )
        or None,
    )


def parse_label_embeddings(
    datasets: tuple[str, ...], entries, absolute_paths: bool = False
) -> dict[str, str]:
    """--label-embeddings D=FILE ... as {dataset: file}: each data set one of the experiment's, each file
    present (its contents are checked by `zskt nayer` itself, before its run folder is made)."""
    from zskt.data import get_info

    given: dict[str, str] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise ZsktError(
                f"bad --label-embeddings entry {entry!r}: expected DATASET=FILE, e.g. cifar10=le.npz"
            )
        dataset = get_info(name).name
        if dataset not in datasets:
            raise ZsktError(
                f"--label-embeddings names {name!r}, which this experiment does not run "
                f"(its data sets: {', '.join(datasets)})"
            )
        if not Path(path).is_file():
            raise ZsktError(f"--label-embeddings file not found: {path}")
        given[dataset] = absolute(path) if absolute_paths else path
    return given


def check_execution(args: argparse.Namespace) -> None:
    ray_only = [
        flag
        for flag, value in (
            ("--address", args.address),
            ("--gpus-per-run", args.gpus_per_run),
            ("--cpus-per-run", args.cpus_per_run),
        )
        if value is not None
    ]
    if ray_only and args.executor != "ray":
        raise ZsktError(f"{ray_only[0]} is for --executor ray")
    if args.print_commands and (args.list_only or args.executor):
        raise ZsktError(f"--print-commands runs nothing: drop {'--list' if args.list_only else '--executor'}")
    if (args.gpus_per_run or 0) < 0 or (args.cpus_per_run is not None and args.cpus_per_run <= 0):
        raise ZsktError("--gpus-per-run must be >= 0 and --cpus-per-run > 0")


def main(args: argparse.Namespace) -> int:
    from zskt.experiments.reproduce import print_commands, reproduce
    from zskt.experiments.runner import EXECUTORS

    experiment = EXPERIMENTS[args.name]
    check_execution(args)
    elsewhere = args.print_commands or args.executor == "ray"  # commands that run on other machines
    spec = build_spec(args, experiment, absolute_paths=elsewhere)
    common = common_options(args, absolute_paths=elsewhere)
    if args.print_commands:
        print_commands(experiment, spec, args.out, common=common)
        return 0
    out = absolute(args.out) if elsewhere else args.out
    pool = contextlib.nullcontext()
    if args.executor == "ray" and not args.list_only:
        from zskt.experiments.ray_executor import RayPool

        pool = RayPool(args.address, args.gpus_per_run, args.cpus_per_run or 1.0)
    try:
        with pool as opened:
            if opened is not None:
                print(opened.describe(), flush=True)
            outcome, _ = reproduce(
                experiment,
                spec,
                out,
                list_only=args.list_only,
                executor=EXECUTORS.get(args.executor or "subprocess"),
                common=common,
                echo=args.verbose,
                report=None if args.no_report else build_report,
                pool=opened,
            )
    except KeyboardInterrupt:
        print(
            "zskt reproduce: interrupted; rerun the same command to continue (finished runs are kept, "
            "the interrupted one resumes from its checkpoint)",
            file=sys.stderr,
            flush=True,
        )
        return 130
    return 0 if outcome is None or outcome.ok else 1


COMMAND = Command(
    "reproduce",
    "run a named experiment's grid (accuracy-vs-m, pairs, mte), skipping finished runs",
    add_arguments,
    main,
    description="Run the missing runs of a named experiment in dependency order (teachers before students), "
    "one run folder each under --out, then rebuild the report (zskt report). Finished runs (result.json) are "
    "skipped; an interrupted run continues from its checkpoint: rerun the same command after any "
    "interruption. "
    "--executor ray runs many at once on a Ray cluster; --print-commands prints them for a scheduler "
    "(docs/distributed.md). "
    "Experiments: "
    + "; ".join(f"{e.name} ({e.paper}): {e.description}" for e in EXPERIMENTS.values())
    + ". See docs/experiments.md.",
)
