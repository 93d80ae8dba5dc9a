"""`reproduce`: expand a named experiment, record it in DIR/experiment.json, run what is missing, report.

experiment.json records the scale, where each teacher came from, each experiment's parameters and the
resolved grid (every run's command, options and needs). Several experiments may share one folder and reuse
each other's runs (e.g. the teachers): a run id means the same run in every grid. The scale and the teacher
files are properties of the whole folder, so a rerun with other values is refused rather than mixed in.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from zskt.errors import ZsktError
from zskt.experiments import EXPERIMENTS, Experiment
from zskt.experiments.grid import GridSpec, Run, order_runs
from zskt.experiments.runner import DONE, PARTIAL, Outcome, execute, format_seconds, run_argv, status
from zskt.io import atomic_write_json
from zskt.runlog import read_json

RECORD = "experiment.json"
FORMAT = "zskt-experiments"


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ZsktError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def teacher_sources(spec: GridSpec, runs: list[Run]) -> dict[str, str]:
    """'dataset/arch' -> the given file, or 'trained: <run id>', for every teacher the grid's students use."""
    sources = {}
    for run in runs:
        dataset = run.options.get("dataset")
        if "teacher" in run.options:
            arch = run.tags.get("teacher")
            sources[f"{dataset}/{arch}"] = str(run.options["teacher"])
        elif "teacher" in run.needs:
            arch = run.tags.get("teacher")
            sources[f"{dataset}/{arch}"] = f"trained: {run.needs['teacher']}"
    return sources


def check_teacher_files(spec: GridSpec) -> None:
    for (dataset, arch), path in spec.teachers.items():
        if not Path(path).is_file():
            raise ZsktError(f"teacher file {path} ({dataset} {arch}) not found")


def record_experiment(out: Path, experiment: Experiment, spec: GridSpec, runs: list[Run],
                      common: Iterable[str] = ()) -> dict:
    """Add this experiment and its runs to out/experiment.json (made if absent); refuse a mismatched scale or
    teacher source, which would mix runs of different lengths or teachers in one table."""
    path = Path(out) / RECORD
    record = read_json(path) if path.is_file() else {"format": FORMAT, "version": 1, "scale": spec.scale,
                                                     "teachers": {}, "experiments": {}, "runs": {}}
    if abs(record.get("scale", 1.0) - spec.scale) > 1e-12:
        raise ZsktError(f"{out} holds runs made at --scale {record['scale']:g}, not {spec.scale:g}; pass "
                        f"--scale {record['scale']:g} or choose another --out")
    sources = teacher_sources(spec, runs)
    for key, source in sources.items():
        before = record["teachers"].get(key)
        if before is not None and before != source:
            raise ZsktError(f"{out} holds students of the {key} teacher from {before!r}, not {source!r}; use the "
                            "same teacher or choose another --out")
    changed = []
    for run in runs:
        before = record["runs"].get(run.id)
        now = json.loads(json.dumps(run.to_json()))
        if before and (before["options"], before["needs"]) != (now["options"], now["needs"]) \
                and status(run, out) != "todo":
            keys = sorted(k for k in set(before["options"]) | set(now["options"])
                          if before["options"].get(k) != now["options"].get(k))
            changed.append(f"{run.id} ({', '.join(keys) or 'needs'})")
    if changed:
        raise ZsktError(f"{len(changed)} run(s) in {out} were made with other options, e.g. {changed[0]}; choose "
                        "another --out, or delete those run folders to redo them")
    record["teachers"].update(sources)
    now = datetime.datetime.now().isoformat(timespec="seconds")
    previous = record["experiments"].get(experiment.name, {})
    ids = list(dict.fromkeys([*previous.get("runs", []), *(r.id for r in runs)]))
    record["experiments"][experiment.name] = {
        "paper": experiment.paper, "description": experiment.description,
        "datasets": sorted({*previous.get("datasets", []), *spec.datasets}),
        "seeds": sorted({*previous.get("seeds", []), *spec.seeds}),
        "pair": list(spec.pair) if spec.pair else None,
        "images_per_class": list(spec.images_per_class) if spec.images_per_class else None,
        "updated": now, "runs": ids,
    }
    for run in runs:
        record["runs"][run.id] = {**run.to_json(), "argv": run_argv(run, out, common, folder_state=False)}
    record["updated"] = now
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    return record


@dataclass
class Listing:
    counts: dict[str, int]
    lines: list[str]


def listing(runs: list[Run], out: Path, estimate: Callable[[Run], float] | None = None) -> Listing:
    """Each run with its status (done / partial / todo) and what it waits on."""
    counts = {DONE: 0, PARTIAL: 0, "todo": 0}
    lines = []
    width = max((len(r.id) for r in runs), default=10)
    for run in runs:
        state = status(run, out)
        counts[state] += 1
        needs = f"  needs {', '.join(run.dependencies)}" if run.dependencies and state != DONE else ""
        eta = f"  ~{format_seconds(estimate(run))}" if estimate and state != DONE else ""
        lines.append(f"  {state:<8} {run.id:<{width}}  zskt {run.command}{eta}{needs}")
    return Listing(counts, lines)


def summary(counts: dict[str, int]) -> str:
    return f"{counts[DONE]} done, {counts[PARTIAL]} partial, {counts['todo']} to do"


def reproduce(experiment: Experiment, spec: GridSpec, out: Path, *, list_only: bool = False,
              executor: Callable | None = None, common: Iterable[str] = (), echo: bool = False,
              report: bool = True, printer: Callable[[str], None] = print,
              estimate: Callable[[Run], float] | None = None) -> tuple[Outcome | None, Path | None]:
    """List, or run, the missing runs of `experiment` in `out`, then rebuild the report."""
    from zskt.experiments.runner import subprocess_executor

    out = Path(out)
    check_teacher_files(spec)
    runs = order_runs(experiment.build(spec))
    common = list(common)
    shown = listing(runs, out, estimate)
    scale = "" if spec.scale == 1 else f", scale {spec.scale:g}"
    printer(f"{experiment.name} ({experiment.paper}): {len(runs)} runs in {out}{scale}: {summary(shown.counts)}")
    if list_only:
        for line in shown.lines:
            printer(line)
        return None, None
    record_experiment(out, experiment, spec, runs, common)
    outcome = execute(runs, out, executor=executor or subprocess_executor, common=common, echo=echo,
                      printer=printer, estimate=estimate)
    report_path = None
    if report:
        from zskt.reports import report as build_report

        report_path = build_report(out)
    finished = len(outcome.done) + len(outcome.skipped)
    printer(f"{experiment.name}: {len(outcome.done)} run(s) done now, {finished}/{len(runs)} finished, "
            f"{len(outcome.failed)} failed, {len(outcome.blocked)} waiting on a failed run; "
            f"{format_seconds(outcome.seconds)}")
    for run_id, rc in outcome.failed.items():
        printer(f"  failed (exit status {rc}): {run_id}; see {out / run_id / 'output.log'}")
    if report_path:
        printer(f"report: {report_path}")
    return outcome, report_path
