"""Run ids: every run folder's path inside an experiment folder says what it holds, e.g.
`cifar10/zero-shot/wrn-40-2_wrn-16-1/seed0`. The grammar (a `Series` per kind of run, declared by each
method's registry entry) and the paper's grid constants live here, a leaf module that `experiments/` and
`reports/` both import, so neither imports the other."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The paper's six teacher -> student pairs of Table 1, in its row order.
PAIRS = (
    ("wrn-16-2", "wrn-16-1"),
    ("wrn-40-1", "wrn-16-1"),
    ("wrn-40-2", "wrn-16-1"),
    ("wrn-40-1", "wrn-16-2"),
    ("wrn-40-2", "wrn-16-2"),
    ("wrn-40-2", "wrn-40-1"),
)
FIGURE_PAIR = ("wrn-40-2", "wrn-16-1")  # Figure 2 and Table 2 use this pair only
FIGURE_M = (10, 25, 50, 75, 100)  # Figure 2's M > 0; M = 0 is the zero-shot run itself (docs/experiments.md)
TABLE1_M = 200  # Table 1's KD+AT column
MTE_M = 200  # Table 2's KD+AT student: the paper does not say its M; both reproductions used 200
SEEDS = (0, 1, 2)  # the authors' scripts
TEACHER_SEED = (
    0  # one teacher per architecture and data set, reused by every student seed (as the authors' files)
)
# The data-free benchmark's teacher -> student pairs (the Fast-Datafree README table), in its column order.
BENCHMARK_PAIRS = (
    ("resnet-34", "resnet-18"),
    ("vgg-11", "resnet-18"),
    ("wrn-40-2", "wrn-16-1"),
    ("wrn-40-2", "wrn-40-1"),
    ("wrn-40-2", "wrn-16-2"),
)

# What each placeholder of a pattern matches. Network names are registry names (lower case, digits, hyphens).
_FIELDS = {
    "dataset": r"[^/]+",
    "teacher": r"[a-z0-9-]+?",
    "student": r"[a-z0-9-]+?",
    "model": r"[a-z0-9-]+?",
    "m": r"\d+",
    "seed": r"\d+",
}
BELIEF = "belief"  # `<dataset>/belief/<student run id without its dataset>`: the MTE of that run's student


@dataclass(frozen=True)
class Series:
    """One kind of run and its folder pattern, e.g. Series("kd-at", "{dataset}/kd-at/{teacher}_{student}/M{m}/
    seed{seed}", "KD+AT"); `label` is how reports name it; `options` are the command options every run of the
    series takes (a recipe of the method, e.g. the data-free benchmark's own ZSKT settings)."""

    name: str
    pattern: str
    label: str
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def regex(self) -> re.Pattern:
        parts = re.split(r"(\{\w+\})", self.pattern)
        body = "".join(
            f"(?P<{p[1:-1]}>{_FIELDS[p[1:-1]]})" if p.startswith("{") else re.escape(p) for p in parts
        )
        return re.compile(f"^{body}$")

    def format(self, **tags) -> str:
        return self.pattern.format(**tags)


def parse_run_id(run_id: str, series: Iterable[Series]) -> dict:
    """What a run folder holds, from its path: method (the series name), dataset, teacher, student (or model),
    m, seed; a belief run adds `of` (the series of the student it measures). m is 0 for a data-free run with a
    teacher and -1 for the full train split. Raises ValueError on a path outside the grammar."""
    series = tuple(series)
    parts = run_id.strip("/").split("/")
    if len(parts) > 2 and parts[1] == BELIEF:
        inner = parse_run_id("/".join([parts[0], *parts[2:]]), series)
        return {**inner, "method": BELIEF, "of": inner["method"]}
    for one in series:
        match = one.regex().match(run_id.strip("/"))
        if match:
            tags = {"method": one.name, **match.groupdict()}
            tags["seed"] = int(tags["seed"])
            tags["m"] = int(tags["m"]) if "m" in tags else (0 if "teacher" in tags else -1)
            if "model" in tags:
                tags["student"] = tags["model"]
            return tags
    raise ValueError(f"not a run id: {run_id}")


def pair_name(teacher: str, student: str) -> str:
    return f"{teacher}_{student}"
