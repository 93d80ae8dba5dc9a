"""`reproduce`: expand a named experiment, record it in DIR/experiment.json, run what is missing, report; or
print what is missing as shell commands in waves, for a scheduler (`--print-commands`).

experiment.json records the scale, where each teacher came from, each experiment's parameters and the
resolved grid (every run's command, options and needs). Several experiments may share one folder and reuse
each other's runs (e.g. the teachers): a run id means the same run in every grid. The scale and the teacher
files are properties of the whole folder, so a rerun with other values is refused rather than mixed in.
"""

from __future__ import annotations

import datetime
import json
import shlex
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from zskt.errors import ZsktError
from zskt.experiments import Experiment
from zskt.experiments.grid import GridSpec, Run, order_runs
from zskt.experiments.runner import DONE, PARTIAL, Outcome, Pool, execute, format_seconds, run_argv, status
from zskt.io import atomic_write_json
from zskt.runlog import is_finished, read_json

RECORD = "experiment.json"
FORMAT = "zskt-experiments"


def teacher_sources(runs: list[Run]) -> dict[str, str]:
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


def record_experiment(
    out: Path, experiment: Experiment, spec: GridSpec, runs: list[Run], common: Iterable[str] = ()
) -> dict:
    """Add this experiment and its runs to out/experiment.json (made if absent); refuse a mismatched scale or
    teacher source, which would mix runs of different lengths or teachers in one table."""
    path = Path(out) / RECORD
    record = (
        read_json(path)
        if path.is_file()
        else {
            "format": FORMAT,
            "version": 1,
            "scale": spec.scale,
            "teachers": {},
            "experiments": {},
            "runs": {},
        }
    )
    if abs(record.get("scale", 1.0) - spec.scale) > 1e-12:
        raise ZsktError(
            f"{out} holds runs made at --scale {record['scale']:g}, not {spec.scale:g}; pass "
            f"--scale {record['scale']:g} or choose another --out"
        )
    sources = teacher_sources(runs)
    for key, source in sources.items():
        before = record["teachers"].get(key)
        if before is not None and before != source:
            raise ZsktError(
                f"{out} holds students of the {key} teacher from {before!r}, not {source!r}; use the "
                "same teacher or choose another --out"
            )
    changed = []
    for run in runs:
        before = record["runs"].get(run.id)
        now = json.loads(json.dumps(run.to_json()))
        if (
            before
            and (before["options"], before["needs"]) != (now["options"], now["needs"])
            and status(run, out) != "todo"
        ):
            keys = sorted(
                k
                for k in set(before["options"]) | set(now["options"])
                if before["options"].get(k) != now["options"].get(k)
            )
            changed.append(f"{run.id} ({', '.join(keys) or 'needs'})")
    if changed:
        raise ZsktError(
            f"{len(changed)} run(s) in {out} were made with other options, e.g. {changed[0]}; choose "
            "another --out, or delete those run folders to redo them"
        )
    record["teachers"].update(sources)
    now = datetime.datetime.now().isoformat(timespec="seconds")
    previous = record["experiments"].get(experiment.name, {})
    ids = list(dict.fromkeys([*previous.get("runs", []), *(r.id for r in runs)]))
    record["experiments"][experiment.name] = {
        "paper": experiment.paper,
        "description": experiment.description,
        "datasets": sorted({*previous.get("datasets", []), *spec.datasets}),
        "seeds": sorted({*previous.get("seeds", []), *spec.seeds}),
        "pair": list(spec.pair) if spec.pair else None,
        "images_per_class": list(spec.images_per_class) if spec.images_per_class else None,
        "updated": now,
        "runs": ids,
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


def reproduce(
    experiment: Experiment,
    spec: GridSpec,
    out: Path,
    *,
    list_only: bool = False,
    executor: Callable | None = None,
    common: Iterable[str] = (),
    echo: bool = False,
    report: Callable[[Path], Path] | None = None,
    printer: Callable[[str], None] = print,
    estimate: Callable[[Run], float] | None = None,
    before_run: Callable[[Run], str] | None = None,
    pool: Pool | None = None,
) -> tuple[Outcome | None, Path | None]:
    """List, or run, the missing runs of `experiment` in `out`, then rebuild the report with `report(out)`
    (the commands pass `zskt.reports.report`). Runs go through `pool` when one is given (e.g.
    `ray_executor.RayPool`), else one at a time through `executor`."""
    from zskt.experiments.runner import subprocess_executor

    out = Path(out)
    check_teacher_files(spec)
    runs = order_runs(experiment.build(spec))
    common = list(common)
    shown = listing(runs, out, estimate)
    scale = "" if spec.scale == 1 else f", scale {spec.scale:g}"
    printer(
        f"{experiment.name} ({experiment.paper}): {len(runs)} runs in {out}{scale}: {summary(shown.counts)}"
    )
    if list_only:
        for line in shown.lines:
            printer(line)
        return None, None
    record_experiment(out, experiment, spec, runs, common)
    outcome = execute(
        runs,
        out,
        executor=executor or subprocess_executor,
        pool=pool,
        common=common,
        echo=echo,
        printer=printer,
        estimate=estimate,
        before_run=before_run,
    )
    report_path = report(out) if report else None
    finished = len(outcome.done) + len(outcome.skipped)
    printer(
        f"{experiment.name}: {len(outcome.done)} run(s) done now, {finished}/{len(runs)} finished, "
        f"{len(outcome.failed)} failed, {len(outcome.blocked)} waiting on a failed run"
        + (f", {len(outcome.busy)} being written by another process" if outcome.busy else "")
        + f"; {format_seconds(outcome.seconds)}"
    )
    for run_id, rc in outcome.failed.items():
        printer(f"  failed (exit status {rc}): {run_id}; see {out / run_id / 'output.log'}")
    if report_path:
        printer(f"report: {report_path}")
    return outcome, report_path


# ------------------------------------------------------------------------------------------- --print-commands


def waves(runs: list[Run], out: Path) -> list[list[Run]]:
    """The unfinished runs in waves: a run of wave k needs only finished runs and runs of waves 1..k-1 (its
    wave is one more than the latest wave among its unfinished needs), each wave in grid order."""
    wave: dict[str, int] = {}
    for run in order_runs(runs):  # needs first, so every unfinished need already has its wave
        if not is_finished(Path(out) / run.id):
            wave[run.id] = 1 + max((wave[d] for d in run.dependencies if d in wave), default=0)
    grouped: list[list[Run]] = [[] for _ in range(max(wave.values(), default=0))]
    for run in order_runs(runs):
        if run.id in wave:
            grouped[wave[run.id] - 1].append(run)
    return grouped


def shell_command(run: Run, out: Path, common: Iterable[str] = ()) -> str:
    """`python -m zskt ...` for `run`, shell-quoted, with --resume for a started run: `out` and every path in
    `common` and the run's options must be absolute for it to work from any folder."""
    return " ".join(shlex.quote(a) for a in ["python", "-m", "zskt", *run_argv(run, out, common)])


def print_commands(
    experiment: Experiment,
    spec: GridSpec,
    out: Path,
    *,
    common: Iterable[str] = (),
    script: Callable[[str], None] = print,
    printer: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> int:
    """Record `experiment` in out/experiment.json as a run would, and write its missing runs to `script` as a
    bash script: one command per line, in waves headed `# wave K: ...`, so a scheduler can run a wave's
    commands in any order and in parallel once the earlier waves have finished. Messages go to `printer`.
    Returns the number of commands."""
    out = Path(out).resolve()
    check_teacher_files(spec)
    runs = order_runs(experiment.build(spec))
    common = list(common)
    shown = listing(runs, out)
    record_experiment(out, experiment, spec, runs, common)
    grouped = waves(runs, out)
    n = sum(len(w) for w in grouped)
    printer(
        f"{experiment.name} ({experiment.paper}): {len(runs)} runs in {out}: {summary(shown.counts)}; "
        f"{n} command(s) in {len(grouped)} wave(s)"
    )
    script("#!/usr/bin/env bash")
    script(
        f"# zskt reproduce {experiment.name} --out {out}: {n} of {len(runs)} runs to do, in {len(grouped)} "
        "wave(s). A wave's commands may run in any order or at once, after every earlier wave has finished."
    )
    script(
        "# Rerun `zskt reproduce ... --print-commands` after an interruption: it prints what is still "
        "missing, "
        "with --resume for the started runs. `zskt report DIR` makes the report."
    )
    script("set -e")
    for k, wave in enumerate(grouped, 1):
        what = "with no unfinished dependencies" if k == 1 else "that need runs of earlier waves"
        script(f"# wave {k}: {len(wave)} run{'s' if len(wave) > 1 else ''} {what}")
        for run in wave:
            script(shell_command(run, out, common))
    return n
