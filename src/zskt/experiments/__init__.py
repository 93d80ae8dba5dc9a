"""Named experiments: which runs make each of the paper's tables and figures (STYLE §1, §3).

`EXPERIMENTS` is the registry; `zskt reproduce NAME` expands one into runs (`experiments/grid.py`) and runs
the missing ones (`experiments/runner.py`); `zskt report DIR` turns their result.json files into tables and
plots. docs/experiments.md lists every grid with its run count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zskt.experiments import grid
from zskt.experiments.grid import GridSpec, Run


@dataclass(frozen=True)
class Experiment:
    """A named grid: `build(spec)` gives its runs; `defaults` are the GridSpec values it is built with unless
    the command line says otherwise (its data sets, seeds, pair, M values, and for the demo its lengths)."""

    name: str
    paper: str  # which table or figure it regenerates
    description: str
    build: Callable[[GridSpec], list[Run]]
    defaults: dict[str, Any]

    def spec(self, **overrides: Any) -> GridSpec:
        values = {**self.defaults, **{k: v for k, v in overrides.items() if v is not None}}
        return GridSpec(**values)

    def runs(self, **overrides: Any) -> list[Run]:
        return grid.order_runs(self.build(self.spec(**overrides)))


def demo_grid(spec: GridSpec) -> list[Run]:
    """The paper in miniature: Figure 2's grid for one pair at a few small M, plus Table 2's belief runs for
    the zero-shot student and the KD+AT student at the largest M (`zskt demo`)."""
    teacher, student = spec.pair
    m = max(spec.images_per_class)
    runs = grid.accuracy_vs_m(dataclasses.replace(spec))
    for seed in spec.seeds:
        runs.append(grid.belief(spec, grid.zero_shot(spec, spec.datasets[0], teacher, student, seed)))
        runs.append(grid.belief(spec, grid.kd_at(spec, spec.datasets[0], teacher, student, m, seed)))
    return runs


# The demo's plan on the embedded digits set (SPEC §11), sized to finish within 10 minutes on 2 CPU cores
# (docs/experiments.md has the measured times). The teacher is the digits preset (30 epochs) and the zero-shot
# student the digits preset (200 pseudo batches); the few-shot runs keep the authors' scaling with M from a
# base of 10 epochs instead of 30 (each few-shot run then sees 14,000 images, as many as 10 epochs of the full
# split); the belief runs use 50 images and K = 100 steps (the paper: 1000 images, MTE over the first 100).
DEMO = {
    "datasets": ("digits",),
    "seeds": (0,),
    "pair": ("wrn-16-2", "wrn-16-1"),
    "images_per_class": (2, 5),
    "few_shot_epochs": {"digits": 10},
    "belief_images": 50,
    "belief_steps": 100,
}
# `zskt demo --quick`: the same pipeline at toy lengths, for a first look and the tests (< 1 minute).
DEMO_QUICK = {
    **DEMO,
    "epochs": {"digits": 2},
    "few_shot_epochs": {"digits": 1},
    "iterations": {"digits": 6},
    "belief_images": 10,
    "belief_steps": 4,
}

# The data-free comparison on digits, at an equal time budget: each method gets about 30-60 s of the
# 2-core CPU (measured, docs/data_free.md): its full digits preset where that fits (DeepInversion, Fast, DAFL,
# DFAD, DFQ), else as many of its rounds as fit (zero-shot 70 of 200 pseudo batches, CMI 10 of 15 rounds,
# NAYER 20 of 30). A uniform fraction of every preset starved the generator family (DFAD 18.9 %, DFQ 28.5 %
# at 0.4), whose presets are cheap. --scale multiplies every budget.
DFKD_DIGITS = {
    "datasets": ("digits",),
    "seeds": (0,),
    "pair": ("wrn-16-2", "wrn-16-1"),
    "scale": 1.0,
    "epochs": {"digits": 30},
    "iterations": {"digits": 70},
    "method_iterations": {
        "deepinversion": 15,
        "cmi": 10,
        "fast": 30,
        "nayer": 20,
        "dafl": 200,
        "dfad": 200,
        "dfq": 60,
    },
    "belief_images": 20,
    "belief_steps": 20,
}

EXPERIMENTS: dict[str, Experiment] = {
    "accuracy-vs-m": Experiment(
        "accuracy-vs-m",
        "Figure 2",
        "student accuracy against M images per class: no-teacher, KD+AT, zero-shot (+ fine-tune for M > 0)",
        grid.accuracy_vs_m,
        {"datasets": ("cifar10", "svhn", "fashion-mnist")},
    ),
    "pairs": Experiment(
        "pairs",
        "Table 1",
        "the six teacher/student pairs: teacher and student from scratch, KD+AT M = 200, zero-shot",
        grid.pairs,
        {"datasets": ("cifar10",)},
    ),
    "mte": Experiment(
        "mte",
        "Table 2, Figure 4",
        "mean transition error of the zero-shot and KD+AT (M = 200) students of WRN-40-2 -> WRN-16-1",
        grid.mte,
        {"datasets": ("cifar10", "svhn")},
    ),
    "dfkd-benchmark": Experiment(
        "dfkd-benchmark",
        "the data-free benchmark (Fast-Datafree README)",
        "every registered data-free method on the benchmark's five teacher/student pairs, final and best "
        "accuracy "
        "beside the published best-over-training numbers, and each student's MTE",
        grid.dfkd_benchmark,
        {"datasets": ("cifar10", "cifar100")},
    ),
    "dfkd-digits": Experiment(
        "dfkd-digits",
        "the data-free benchmark in miniature",
        "digits on a CPU: every registered data-free method distils a WRN-16-2 teacher into a WRN-16-1, "
        "one seed, each within about the same minute of compute (its digits preset, shortened where that "
        "takes longer), about 10 minutes in all; a table and a plot of final and best accuracy, minutes, and "
        "each student's MTE",
        grid.dfkd_benchmark,
        DFKD_DIGITS,
    ),
    "demo": Experiment(
        "demo",
        "all, in miniature",
        "digits: teacher, zero-shot, KD+AT and no-teacher at small M, fine-tuning, MTE of both students",
        demo_grid,
        DEMO,
    ),
    "demo-quick": Experiment(
        "demo-quick",
        "all, at toy lengths",
        "the demo's pipeline at toy lengths (`zskt demo --quick`)",
        demo_grid,
        DEMO_QUICK,
    ),
}

__all__ = ["EXPERIMENTS", "Experiment", "GridSpec", "Run"]
