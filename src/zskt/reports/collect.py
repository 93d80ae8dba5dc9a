"""Runs into numbers: read every result.json under an experiment folder (and nothing else that a run wrote),
and aggregate them per cell over seeds as mean, population std (ddof 0, the paper's np.std) and n.

What a run is comes from its folder's path (the run-id grammar of experiments/grid.py); which runs were
planned, and so which cells are still missing, comes from the folder's experiment.json when there is one.
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
            logger.warning("skipping %s: its folder is not a run id of the experiment grids", path)
            continue
        rows.append(Row(run_id, tags, read_json(path)))
    return rows


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
        self.record = read_json(self.root / "experiment.json") if (self.root / "experiment.json").is_file() else {}
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
            value, self.accuracy)
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
