"""Runs into numbers: read every result.json under an experiment folder (and nothing else that a run wrote),
and aggregate them per cell over seeds as mean, population std (ddof 0, the paper's np.std) and n.

What a run is comes from its folder's path (the run-id grammar of experiments/grid.py); which runs were
planned, and so which cells are still missing, comes from the folder's experiment.json when there is one.
Finished runs in folders that are not run ids (a researcher's own runs) are read by `collect_other`, from
their config.json and result.json, for the report's generic table (`group_runs`).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from zskt.methods.registry import parse_run_id
from zskt.runlog import CHECKPOINT, RESULT, read_json

logger = logging.getLogger(__name__)

CELL_KEYS = ("dataset", "method", "teacher", "student", "m", "of")


@dataclass(frozen=True)
class Row:
    """One finished run: its id, what it is (tags from the id), and its result.json."""

    id: str
    tags: dict
    result: dict


@dataclass(frozen=True)
class Stat:
    """A cell over seeds: mean, population std, n, and the values (by seed order)."""

    mean: float
    std: float
    n: int
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        n = len(values)
        mean = math.fsum(values) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
        return cls(mean, std, n, tuple(values))


def cell_key(tags: dict) -> tuple:
    """(dataset, method, teacher, student, m, of): the seeds of one cell share it."""
    return tuple(tags.get(k) for k in CELL_KEYS)


def collect(root: str | Path) -> list[Row]:
    """Every finished run under `root`, from its result.json, sorted by id. Folders whose path is not a run id
    (e.g. runs copied in by hand under another name) are skipped with a warning."""
    root = Path(root)
    rows = []
    for path in sorted(root.rglob(RESULT)):
        run_id = path.parent.relative_to(root).as_posix()
        try:
            tags = parse_run_id(run_id)
        except ValueError:
            logger.info("%s: its folder is not a run id of the experiment grids (see collect_other)", path)
            continue
        rows.append(Row(run_id, tags, read_json(path)))
    return rows


# ------------------------------------------------------------------------------------- runs of any folder

# Config fields that do not change what a run computes: left out of the options a table shows and of the
# grouping over seeds (the seed itself is what a group is over).
NOT_OPTIONS = frozenset(
    {"device", "data_dir", "download", "quiet", "eval_batch_size", "seed", "command", "resolved"}
)
# Fields a table shows in their own columns.
IDENTITY = ("teacher", "student", "model", "dataset")


@dataclass(frozen=True)
class Run:
    """A finished run in any folder: its path under the root, its config.json (if any) and result.json."""

    id: str
    config: dict
    result: dict

    @property
    def command(self) -> str:
        return self.result.get("command") or self.config.get("command") or "?"

    def value(self, name: str):
        """A config field, or the result's entry of that name when the config has none."""
        return self.config.get(name, self.result.get(name))

    def input_key(self, name: str):
        """What identifies an input file (teacher, init, a belief student): its sha256 when the run recorded
        it, else the path as given."""
        for record in (self.result.get("inputs"), (self.config.get("resolved") or {}).get("inputs")):
            if isinstance(record, dict) and isinstance(record.get(name), dict) and record[name].get("sha256"):
                return record[name]["sha256"]
        return self.value(name)


def method_label(command: str) -> str:
    """The name a report gives a run's method, from the command that made it (the one place labels come
    from; a method registry can supply them here)."""
    return command


def collect_other(root: str | Path) -> list[Run]:
    """Every finished run under `root` whose folder is not a run id of the grids (e.g. a researcher's own
    `zskt zero-shot --out runs/a` runs), sorted by folder."""
    root = Path(root)
    runs = []
    for path in sorted(root.rglob(RESULT)):
        run_id = path.parent.relative_to(root).as_posix()
        try:
            parse_run_id(run_id)
            continue
        except ValueError:
            pass
        result = read_json(path)
        config_path = path.parent / "config.json"
        config = read_json(config_path) if config_path.is_file() else {}
        if isinstance(result, dict) and isinstance(config, dict):
            runs.append(Run("." if run_id == "." else run_id, config, result))
    return runs


def _frozen(v):
    return tuple(v) if isinstance(v, list) else v


def differing_options(runs: list[Run]) -> dict[str, list[str]]:
    """Per command: the config fields (but NOT_OPTIONS and IDENTITY) whose values differ between its runs."""
    by_command: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_command[run.command].append(run)
    out = {}
    for command, group in by_command.items():
        keys = sorted({k for run in group for k in run.config} - NOT_OPTIONS - set(IDENTITY))
        out[command] = [k for k in keys if len({repr(_frozen(run.config.get(k))) for run in group}) > 1]
    return out


@dataclass(frozen=True)
class RunGroup:
    """Runs that differ only in their seed (and in fields that do not change the result)."""

    runs: tuple[Run, ...]
    options: tuple[tuple[str, object], ...]

    @property
    def first(self) -> Run:
        return self.runs[0]

    def stat(self, name: str) -> Stat | None:
        values = [r.result.get(name) for r in self.runs]
        values = [
            float(v)
            for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ]
        return Stat.of(values) if values else None

    def seconds_per_iteration(self) -> Stat | None:
        values = []
        for r in self.runs:
            v = r.result.get("seconds_per_iteration")
            if not isinstance(v, (int, float)):
                took, n = r.result.get("train_seconds"), r.result.get("iterations")
                v = took / n if isinstance(took, (int, float)) and isinstance(n, (int, float)) and n else None
            if isinstance(v, (int, float)) and math.isfinite(v):
                values.append(float(v))
        return Stat.of(values) if values else None

    def seeds(self) -> list:
        return [r.value("seed") for r in self.runs]


def group_runs(runs: list[Run]) -> list[RunGroup]:
    """Runs grouped over seeds: one group per command and config, up to NOT_OPTIONS (seed among them); input
    files compare by sha256 where recorded. Each group carries its values of the fields that differ between
    the runs of its command (the table's options column)."""
    differ = differing_options(runs)
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        fields = {
            k: run.input_key(k) if k in ("teacher", "student", "init") else _frozen(v)
            for k, v in run.config.items()
            if k not in NOT_OPTIONS
        }
        if not run.config:  # no config.json: what the result says, one group per run
            fields = {"id": run.id}
        groups[(run.command, repr(sorted(fields.items(), key=lambda kv: kv[0])))].append(run)
    out = []
    for (command, _), members in groups.items():
        members.sort(key=lambda r: (str(r.value("seed")), r.id))
        options = tuple((k, members[0].config.get(k)) for k in differ.get(command, []))
        out.append(RunGroup(tuple(members), options))
    out.sort(
        key=lambda g: (
            g.first.command,
            str(g.first.value("dataset")),
            str(g.first.value("teacher")),
            str(g.first.value("student") or g.first.value("model")),
            repr(g.options),
        )
    )
    return out


def planned(root: str | Path) -> dict[str, str]:
    """The runs experiment.json plans, each with its state: done, started (a folder without result.json), or
    missing (not started). Empty when there is no experiment.json."""
    root = Path(root)
    record_path = root / "experiment.json"
    if not record_path.is_file():
        return {}
    states = {}
    for run_id in read_json(record_path).get("runs", {}):
        folder = root / run_id
        if (folder / RESULT).is_file():
            states[run_id] = "done"
        elif (folder / CHECKPOINT).is_file() or (folder / "config.json").is_file():
            states[run_id] = "started"
        else:
            states[run_id] = "missing"
    return states


def aggregate(rows: list[Row], value: str) -> dict[tuple, Stat]:
    """Cell key -> Stat of `value` over the rows that have it (a number), in seed order."""
    groups: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        v = row.result.get(value)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            groups[cell_key(row.tags)].append((row.tags["seed"], float(v)))
    return {key: Stat.of([v for _, v in sorted(items)]) for key, items in groups.items()}


class Results:
    """An experiment folder's finished runs, aggregated, plus what is planned but not finished."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.rows = collect(self.root)
        self.planned = planned(self.root)
        self.accuracy = aggregate(self.rows, "test_accuracy")
        self.mte = aggregate(self.rows, "mte")
        self.best = aggregate(self.rows, "best_test_accuracy")
        self.seconds = aggregate(self.rows, "train_seconds")
        self.record = (
            read_json(self.root / "experiment.json") if (self.root / "experiment.json").is_file() else {}
        )
        # Planned-but-unfinished runs per cell, and every cell anything is known about.
        self.pending: dict[tuple, list[str]] = defaultdict(list)
        self.tags: dict[str, dict] = {row.id: row.tags for row in self.rows}
        for run_id, state in self.planned.items():
            try:
                tags = parse_run_id(run_id)
            except ValueError:
                continue
            self.tags.setdefault(run_id, tags)
            if state != "done":
                self.pending[cell_key(tags)].append(state)

    def known(self, **match) -> list[dict]:
        """Tags of every run (finished or planned) matching all of `match`."""
        return [t for t in self.tags.values() if all(t.get(k) == v for k, v in match.items())]

    def datasets(self) -> list[str]:
        return sorted({t["dataset"] for t in self.tags.values()})

    def cell(self, value: str, **tags) -> Cell:
        key = tuple(tags.get(k) for k in CELL_KEYS)
        stats = {"mte": self.mte, "best_test_accuracy": self.best, "train_seconds": self.seconds}.get(
            value, self.accuracy
        )
        return Cell(stats.get(key), self.pending.get(key, []))


@dataclass(frozen=True)
class Cell:
    """What a table shows for one cell: the aggregate of its finished seeds and the states of the others."""

    stat: Stat | None
    pending: list[str]

    def format(self, digits: int = 2, unit: str = "") -> str:
        started = sum(1 for s in self.pending if s == "started")
        if self.stat is None:
            return "started" if started else "—"
        s = self.stat
        text = f"{s.mean:.{digits}f}" + (f" ± {s.std:.{digits}f}" if s.n > 1 else "") + unit
        total = s.n + len(self.pending)
        return text + (f" (n={s.n})" if total == s.n else f" (n={s.n} of {total})")
