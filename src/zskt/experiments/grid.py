"""The paper's figure and tables as grids of runs of the `zskt` commands: the `Run` record, the run-id grammar
(every run folder's path says what it is), the command forms (the one place that names each command's
options), and the builders that `experiments/__init__.py` registers as named experiments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zskt.errors import ZsktError
from zskt.methods.registry import data_free_series, method_of_series, parse_run_id, series
from zskt.runids import (
    BENCHMARK_PAIRS,
    FIGURE_M,
    FIGURE_PAIR,
    MTE_M,
    PAIRS,
    SEEDS,
    TABLE1_M,
    TEACHER_SEED,
    pair_name,
)

__all__ = [
    "FIGURE_M",
    "FIGURE_PAIR",
    "MTE_M",
    "PAIRS",
    "SEEDS",
    "TABLE1_M",
    "TEACHER_SEED",
    "GridSpec",
    "Run",
    "pair_name",
    "parse_run_id",
]

# Defaults of the commands the grids shrink with --scale; None means "the command's own preset".
BELIEF_IMAGES = 1000  # SPEC §6: n_matching_images
BELIEF_STEPS = 200  # SPEC §6: n_adversarial_steps
BELIEF_MTE_STEPS = 100  # SPEC §6: K, the steps the MTE averages (fewer when fewer are recorded)


# ------------------------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class Run:
    """One run of one `zskt` command, in folder `id` of the experiment folder.

    `options` are the command's config fields (the option of `foo_bar` is `--foo-bar`); `needs` maps an option
    to the id of the run whose `model.pt` it reads, filled in by `run_argv` once that run has finished.
    """

    id: str  # relative folder, e.g. "cifar10/kd-at/wrn-40-2_wrn-16-1/M10/seed0"; parse_run_id reads it back
    command: str  # the zskt subcommand
    options: Mapping[str, Any] = field(default_factory=dict)
    needs: Mapping[str, str] = field(default_factory=dict)

    def __hash__(self) -> int:  # options are dicts; the id is unique within a grid
        return hash(self.id)

    @property
    def dependencies(self) -> tuple[str, ...]:
        return tuple(self.needs.values())

    @property
    def tags(self) -> dict:
        return parse_run_id(self.id)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "command": self.command,
            "options": dict(self.options),
            "needs": dict(self.needs),
        }


# ------------------------------------------------------------------------------------------- command forms
# The one place that knows each command's option names. Values are the command's config fields; options left
# out take the command's own (paper) defaults, so at --scale 1 the grid runs exactly the presets.


def scaled(value: int, scale: float) -> int:
    """`int(value * scale)` (the authors' rounding), at least 1."""
    return max(1, int(value * scale + 1e-9))


@dataclass(frozen=True)
class GridSpec:
    """What a named experiment is built for: data sets, seeds, --scale, given teacher files, overrides."""

    datasets: tuple[str, ...]
    seeds: tuple[int, ...] = SEEDS
    scale: float = 1.0  # multiplies epochs, pseudo batches and belief images/steps, each at least 1
    teachers: Mapping[tuple[str, str], str] = field(
        default_factory=dict
    )  # (dataset, arch) -> given model file
    pair: tuple[str, str] | None = None  # accuracy-vs-m, mte: the teacher/student pair; pairs: only this pair
    images_per_class: tuple[int, ...] | None = None  # accuracy-vs-m: the M > 0 values
    # Base lengths before --scale (None = the command's preset): the demo sets its own.
    epochs: Mapping[str, int] = field(default_factory=dict)  # dataset -> base epochs of train/kd-at
    few_shot_epochs: Mapping[str, int] = field(
        default_factory=dict
    )  # dataset -> the same, for the M-scaled runs
    iterations: Mapping[str, int] = field(default_factory=dict)  # dataset -> zero-shot pseudo batches
    methods: tuple[str, ...] | None = (
        None  # dfkd-benchmark: the data-free series to run (default: all registered)
    )
    method_iterations: Mapping[str, int] = field(
        default_factory=dict
    )  # command -> base iterations (not zero-shot)
    label_embeddings: Mapping[str, str] = field(
        default_factory=dict
    )  # dataset -> NAYER's --label-embeddings file (default: its seeded random class codes)
    belief_images: int = BELIEF_IMAGES
    belief_steps: int = BELIEF_STEPS
    extra: Mapping[str, Mapping[str, Any]] = field(
        default_factory=dict
    )  # command -> more options (the demo's)

    def __post_init__(self):
        if not self.seeds:
            raise ZsktError("give at least one seed")
        if not (self.scale > 0):
            raise ZsktError(f"--scale must be positive, got {self.scale}")

    def base_epochs(self, dataset: str, few_shot: bool = False) -> int | None:
        """train/kd-at `--epochs` (the base, which the commands scale with M): only when shortened or set."""
        from zskt.data import preset

        base = self.epochs.get(dataset)
        if few_shot and dataset in self.few_shot_epochs:
            base = self.few_shot_epochs[dataset]
        if base is None and self.scale == 1:
            return None
        return scaled(
            base if base is not None else preset(dataset, "train", "epochs", "--epochs"), self.scale
        )

    def zero_shot_iterations(self, dataset: str) -> int | None:
        from zskt.data import preset

        base = self.iterations.get(dataset)
        if base is None and self.scale == 1:
            return None
        return scaled(
            base if base is not None else preset(dataset, "zero-shot", "iterations", "--iterations"),
            self.scale,
        )

    def teacher_file(self, dataset: str, arch: str) -> str | None:
        return self.teachers.get((dataset, arch))


def _options(spec: GridSpec, command: str, **values: Any) -> dict:
    extra = dict(spec.extra.get(command, {}))
    return {**extra, **{k: v for k, v in values.items() if v is not None}}


def _teacher(spec: GridSpec, dataset: str, arch: str) -> tuple[dict, dict]:
    """(options, needs) naming the teacher: a given file, or the grid's own scratch run at TEACHER_SEED."""
    given = spec.teacher_file(dataset, arch)
    if given:
        return {"teacher": given}, {}
    return {}, {"teacher": scratch_id(dataset, arch, TEACHER_SEED)}


def scratch_id(dataset: str, arch: str, seed: int) -> str:
    return series("scratch").format(dataset=dataset, model=arch, seed=seed)


def scratch(spec: GridSpec, dataset: str, arch: str, seed: int) -> Run:
    """A network trained from scratch on the full train split (a teacher, or a Table 1 scratch column)."""
    return Run(
        scratch_id(dataset, arch, seed),
        "train",
        _options(spec, "train", dataset=dataset, model=arch, seed=seed, epochs=spec.base_epochs(dataset)),
    )


def check_images_per_class(dataset: str, m: int) -> None:
    """Refuse an M the data set cannot have (e.g. Table 1's M = 200 on digits' ~140 train images per
    class)."""
    from zskt.data import get_info

    info = get_info(dataset)
    if m > info.n_train // info.num_classes:
        raise ZsktError(
            f"M = {m} images per class is more than {info.title} has ({info.n_train} train images in "
            f"{info.num_classes} classes); pass a smaller -M"
        )


def no_teacher(spec: GridSpec, dataset: str, student: str, m: int, seed: int) -> Run:
    check_images_per_class(dataset, m)
    return Run(
        series("no-teacher").format(dataset=dataset, student=student, m=m, seed=seed),
        "train",
        _options(
            spec,
            "train",
            dataset=dataset,
            model=student,
            images_per_class=m,
            seed=seed,
            epochs=spec.base_epochs(dataset, few_shot=True),
        ),
    )


def kd_at(spec: GridSpec, dataset: str, teacher: str, student: str, m: int, seed: int) -> Run:
    check_images_per_class(dataset, m)
    options, needs = _teacher(spec, dataset, teacher)
    return Run(
        series("kd-at").format(dataset=dataset, teacher=teacher, student=student, m=m, seed=seed),
        "kd-at",
        _options(
            spec,
            "kd-at",
            **options,
            dataset=dataset,
            student=student,
            images_per_class=m,
            seed=seed,
            epochs=spec.base_epochs(dataset, few_shot=True),
        ),
        needs,
    )


def iterations_of(spec: GridSpec, command: str, dataset: str) -> int | None:
    """`--iterations` of a data-free run: None (the command's preset) unless the grid shortens or sets it."""
    if command == "zero-shot":
        return spec.zero_shot_iterations(dataset)
    base = spec.method_iterations.get(command)
    if base is None and spec.scale == 1:
        return None
    if base is None:
        from zskt.config import make_config
        from zskt.methods.registry import METHODS

        base = make_config(METHODS[command].config, dataset=dataset).total_iterations
    return scaled(base, spec.scale)


def data_free(spec: GridSpec, name: str, dataset: str, teacher: str, student: str, seed: int) -> Run:
    """A run of a registered data-free series (`zero-shot`, `dafl`, ...): the teacher, a fresh student, no
    data."""
    one = series(name)
    command = method_of_series(name)
    options, needs = _teacher(spec, dataset, teacher)
    if command == "nayer" and dataset in spec.label_embeddings:
        options = {**options, "label_embeddings": spec.label_embeddings[dataset]}
    return Run(
        one.format(dataset=dataset, teacher=teacher, student=student, seed=seed),
        command,
        _options(
            spec,
            command,
            **one.options,
            **options,
            dataset=dataset,
            student=student,
            seed=seed,
            iterations=iterations_of(spec, command, dataset),
        ),
        needs,
    )


def zero_shot(spec: GridSpec, dataset: str, teacher: str, student: str, seed: int) -> Run:
    return data_free(spec, "zero-shot", dataset, teacher, student, seed)


def finetune(spec: GridSpec, dataset: str, teacher: str, student: str, m: int, seed: int) -> Run:
    """The zero-shot student of `seed` fine-tuned with KD+AT on M images per class (`kd-at --init`)."""
    options, needs = _teacher(spec, dataset, teacher)
    zs = zero_shot(spec, dataset, teacher, student, seed).id
    return Run(
        series("finetune").format(dataset=dataset, teacher=teacher, student=student, m=m, seed=seed),
        "kd-at",
        _options(
            spec,
            "kd-at",
            **options,
            dataset=dataset,
            student=student,
            images_per_class=m,
            seed=seed,
            epochs=spec.base_epochs(dataset, few_shot=True),
        ),
        {**needs, "init": zs},
    )


def belief(spec: GridSpec, student_run: Run) -> Run:
    """Transition curves and MTE of a finished student against the teacher it learned from."""
    dataset, rest = student_run.id.split("/", 1)
    options = {k: v for k, v in student_run.options.items() if k == "teacher"}
    needs = {k: v for k, v in student_run.needs.items() if k == "teacher"}
    images = scaled(spec.belief_images, spec.scale)
    steps = max(2, scaled(spec.belief_steps, spec.scale))
    lengths = {}
    if (images, steps) != (BELIEF_IMAGES, BELIEF_STEPS):
        lengths = {"images": images, "steps": steps, "mte_steps": min(BELIEF_MTE_STEPS, steps)}
    return Run(
        f"{dataset}/belief/{rest}",
        "belief",
        _options(spec, "belief", **options, dataset=dataset, seed=0, **lengths),
        {"student": student_run.id, **needs},
    )


# ------------------------------------------------------------------------------------------- the grids


def _unique(runs: list[Run]) -> list[Run]:
    seen: dict[str, Run] = {}
    for run in runs:
        if run.id in seen:
            if seen[run.id].to_json() != run.to_json():
                raise AssertionError(f"two different runs share the id {run.id}")
            continue
        seen[run.id] = run
    return list(seen.values())


def teacher_runs(spec: GridSpec, dataset: str, teachers: set[str]) -> list[Run]:
    """The scratch runs that train the teachers no file was given for (first in the grid: students need
    them)."""
    return [
        scratch(spec, dataset, arch, TEACHER_SEED)
        for arch in sorted(teachers)
        if not spec.teacher_file(dataset, arch)
    ]


def accuracy_vs_m(spec: GridSpec) -> list[Run]:
    """Figure 2: no-teacher, KD+AT and zero-shot (+ fine-tune for M > 0) against M, one pair, per seed."""
    teacher, student = spec.pair or FIGURE_PAIR
    ms = spec.images_per_class or FIGURE_M
    runs: list[Run] = []
    for d in spec.datasets:
        runs += teacher_runs(spec, d, {teacher})
        for seed in spec.seeds:
            runs.append(scratch(spec, d, student, seed))  # the "student, full data" reference line
            runs.append(zero_shot(spec, d, teacher, student, seed))
            for m in ms:
                runs.append(no_teacher(spec, d, student, m, seed))
                runs.append(kd_at(spec, d, teacher, student, m, seed))
                runs.append(finetune(spec, d, teacher, student, m, seed))
    return _unique(runs)


def pairs(spec: GridSpec) -> list[Run]:
    """Table 1: every architecture from scratch (teacher and student columns), KD+AT M = 200 and zero-shot."""
    chosen = [spec.pair] if spec.pair else list(PAIRS)
    archs = sorted({a for pair in chosen for a in pair})
    m = (spec.images_per_class or (TABLE1_M,))[0]
    runs: list[Run] = []
    for d in spec.datasets:
        runs += teacher_runs(spec, d, {t for t, _ in chosen})
        for seed in spec.seeds:
            runs += [scratch(spec, d, arch, seed) for arch in archs]
            for teacher, student in chosen:
                runs.append(kd_at(spec, d, teacher, student, m, seed))
                runs.append(zero_shot(spec, d, teacher, student, seed))
    return _unique(runs)


def mte(spec: GridSpec) -> list[Run]:
    """Table 2: transition curves and MTE of the zero-shot and the KD+AT (M = 200) students of one pair."""
    teacher, student = spec.pair or FIGURE_PAIR
    m = (spec.images_per_class or (MTE_M,))[0]
    runs: list[Run] = []
    for d in spec.datasets:
        runs += teacher_runs(spec, d, {teacher})
        for seed in spec.seeds:
            zs = zero_shot(spec, d, teacher, student, seed)
            kd = kd_at(spec, d, teacher, student, m, seed)
            runs += [zs, kd, belief(spec, zs), belief(spec, kd)]
    return _unique(runs)


def dfkd_benchmark(spec: GridSpec) -> list[Run]:
    """The data-free benchmark (Fast-Datafree README table): every registered data-free method (or
    `spec.methods`) on its teacher -> student pairs, per seed, and the MTE of every student."""
    chosen = [spec.pair] if spec.pair else list(BENCHMARK_PAIRS)
    names = spec.methods or tuple(s.name for s in data_free_series())
    runs: list[Run] = []
    for d in spec.datasets:
        runs += teacher_runs(spec, d, {t for t, _ in chosen})
        for seed in spec.seeds:
            for teacher, student in chosen:
                for name in names:
                    run = data_free(spec, name, d, teacher, student, seed)
                    runs += [run, belief(spec, run)]
    return _unique(runs)


def order_runs(runs: list[Run]) -> list[Run]:
    """Dependency order (a run after every run it needs), otherwise the grid's order; checks the needs."""
    by_id = {r.id: r for r in runs}
    for run in runs:
        for dep in run.dependencies:
            if dep not in by_id:
                raise AssertionError(f"{run.id} needs {dep}, which is not in the grid")
    ordered: list[Run] = []
    state: dict[str, int] = {}  # 1 visiting, 2 placed

    def visit(run: Run) -> None:
        if state.get(run.id) == 2:
            return
        if state.get(run.id) == 1:
            raise AssertionError(f"dependency cycle through {run.id}")
        state[run.id] = 1
        for dep in run.dependencies:
            visit(by_id[dep])
        state[run.id] = 2
        ordered.append(run)

    for run in runs:
        visit(run)
    return ordered
