"""`report(dir)`: an experiment folder's result.json files as DIR/report.md (tables beside the published
numbers) and PNG plots. It can be rebuilt at any time, from a finished or a half-finished grid."""

from __future__ import annotations

import datetime
from pathlib import Path

from zskt.io import atomic_write_text
from zskt.methods.registry import data_free_series, series_label
from zskt.reports import published
from zskt.reports.collect import Results, Run, RunGroup, Stat, collect_other, group_runs, method_label
from zskt.reports.plots import num_classes, plot_accuracy_vs_m, plot_data_free, plot_transition_curves
from zskt.runids import FIGURE_PAIR, PAIRS, TABLE1_M

REPORT = "report.md"
TITLES = {"cifar10": "CIFAR-10", "svhn": "SVHN", "fashion-mnist": "Fashion-MNIST", "digits": "digits"}
# Figure 2's series (the method at M > 0; M = 0 is chance for the baselines and the zero-shot run for ours),
# with their labels from the method registry.
SERIES = tuple((name, series_label(name)) for name in ("no-teacher", "kd-at", "finetune"))
PUBLISHED_SERIES = {"no-teacher": "no-teacher", "kd-at": "kd-at", "finetune": "zero-shot"}
LEGEND = (
    "Ours: mean ± population std over seeds (as the paper's np.std), with n, from each run's result.json. "
    "— = planned, not started; started = begun but unfinished (running, or interrupted: rerun the same "
    "command to continue); (n=k of N) = k of the N planned seeds finished; blank = not in this grid."
)


def title(dataset: str) -> str:
    return TITLES.get(dataset, dataset)


def arch(name: str) -> str:
    return name.upper() if name else ""


def pub(value: tuple[float, float | None] | float | None, digits: int = 2) -> str:
    """A published number: 'mean ± std' or 'mean' (a single run or no std reported)."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        mean, std = value
        return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")
    return f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out + [""]


# ------------------------------------------------------------------------------------------- sections


def figure_pairs(results: Results, dataset: str) -> list[tuple[str, str]]:
    """Pairs with an accuracy-against-M grid in `dataset` (fine-tuning runs exist only there)."""
    return sorted({(t["teacher"], t["student"]) for t in results.known(dataset=dataset, method="finetune")})


def our_ms(results: Results, dataset: str, teacher: str, student: str) -> list[int]:
    ms = {t["m"] for t in results.known(dataset=dataset, method="finetune", teacher=teacher, student=student)}
    ms |= {t["m"] for t in results.known(dataset=dataset, method="kd-at", teacher=teacher, student=student)}
    ms |= {t["m"] for t in results.known(dataset=dataset, method="no-teacher", student=student)}
    return sorted(m for m in ms if m > 0)


def figure2_section(results: Results, dataset: str, teacher: str, student: str, root: Path) -> list[str]:
    ms = our_ms(results, dataset, teacher, student)
    nc = num_classes(dataset)
    published_here = (teacher, student) == FIGURE_PAIR and dataset in published.FIGURE2["NB-ACC"]
    columns = sorted({0, *ms, *(published.FIGURE2["NB-ACC"]["cifar10"]["kd-at"] if published_here else ())})
    lines = [f"### Accuracy against M (Figure 2): {arch(teacher)} → {arch(student)}", ""]
    rows = []
    for method, label in SERIES:
        ours = []
        for m in columns:
            if m == 0:
                if method == "finetune":
                    ours.append(
                        results.cell(
                            "test_accuracy",
                            dataset=dataset,
                            method="zero-shot",
                            teacher=teacher,
                            student=student,
                            m=0,
                        ).format()
                    )
                else:
                    ours.append(f"{100 / nc:g} (chance)")
            elif m in ms:
                ours.append(
                    results.cell(
                        "test_accuracy",
                        dataset=dataset,
                        method=method,
                        student=student,
                        m=m,
                        teacher=None if method == "no-teacher" else teacher,
                    ).format()
                )
            else:
                ours.append("")
        rows.append([label, "**ours**", *ours])
        if published_here:
            for source in ("NB-ACC", "FERLES"):
                points = published.FIGURE2[source].get(dataset, {}).get(PUBLISHED_SERIES[method], {})
                rows.append(["", published.SOURCES[source], *(pub(points.get(m)) for m in columns)])
    lines += table(["method", "source", *(f"M={m}" for m in columns)], rows)
    lines += reference_lines(results, dataset, teacher, student, published_here)
    if not published_here:
        lines += figure2_context()
    png = plot_accuracy_vs_m(
        results, dataset, teacher, student, ms, root / f"accuracy_vs_m_{dataset}_{teacher}_{student}.png"
    )
    lines += [f"![accuracy against M, {dataset}]({png.name})", ""]
    return lines


def reference_lines(
    results: Results, dataset: str, teacher: str, student: str, published_here: bool
) -> list[str]:
    t = results.cell("test_accuracy", dataset=dataset, method="scratch", student=teacher, m=-1)
    s = results.cell("test_accuracy", dataset=dataset, method="scratch", student=student, m=-1)
    lines = [
        (
            f"Reference lines (full train split, from scratch): teacher {arch(teacher)} **{t.format()}**, "
            f"student {arch(student)} **{s.format()}** (ours)."
        )
    ]
    if published_here:
        refs = "; ".join(f"{k} {v:.2f}" for k, v in published.REFERENCE_LINES[dataset].items())
        other = "; ".join(f"{k} {v:.2f}" for k, v in published.OTHER_POINTS.get(dataset, {}).items())
        lines[0] += f" Paper (NB-ACC): {refs}" + (f"; {other}" if other else "") + "."
    return lines + [""]


def figure2_context() -> list[str]:
    """The published Figure 2 numbers (CIFAR-10, SVHN), for a data set or pair the paper has no numbers
    for."""
    columns = [0, 10, 25, 50, 75, 100]
    rows = []
    for method, label in SERIES:
        first = True
        for source in ("NB-ACC", "FERLES"):
            for dataset in ("cifar10", "svhn"):
                points = published.FIGURE2[source][dataset][PUBLISHED_SERIES[method]]
                rows.append(
                    [
                        label if first else "",
                        f"{published.SOURCES[source]} ({title(dataset)})",
                        *(pub(points.get(m)) for m in columns),
                    ]
                )
                first = False
    return [
        (
            "Published, for context only (WRN-40-2 → WRN-16-1 on CIFAR-10 and SVHN; other data and M, so not "
            "comparable cell by cell):"
        ),
        "",
        *table(["method", "source", *(f"M={m}" for m in columns)], rows),
    ]


def table1_pairs(results: Results, dataset: str) -> list[tuple[str, str]]:
    """Pairs with Table 1's KD+AT column (M = 200) in `dataset`, in the paper's row order."""

    found = {(t["teacher"], t["student"]) for t in results.known(dataset=dataset, method="kd-at", m=TABLE1_M)}
    return [p for p in PAIRS if p in found] + sorted(found - set(PAIRS))


def table1_section(results: Results, dataset: str) -> list[str]:
    pairs = table1_pairs(results, dataset)
    rows = []
    for teacher, student in pairs:
        cells = [
            results.cell("test_accuracy", dataset=dataset, method="scratch", student=teacher, m=-1),
            results.cell("test_accuracy", dataset=dataset, method="scratch", student=student, m=-1),
            results.cell(
                "test_accuracy", dataset=dataset, method="kd-at", teacher=teacher, student=student, m=TABLE1_M
            ),
            results.cell(
                "test_accuracy", dataset=dataset, method="zero-shot", teacher=teacher, student=student, m=0
            ),
        ]
        rows.append([f"{arch(teacher)} → {arch(student)}", "**ours**", *(c.format() for c in cells)])
        if dataset == published.TABLE1_DATASET:
            for source in ("PAPER", "FERLES", "COMP6248"):
                values = published.TABLE1[source].get((teacher, student), {})
                rows.append(
                    [
                        "",
                        published.SOURCES[source],
                        *(pub(values.get(k)) for k in ("teacher", "student", "kd-at", "zero-shot")),
                    ]
                )
    lines = [f"### Teacher/student pairs (Table 1 form), {title(dataset)}", ""]
    lines += table(
        [
            "teacher → student",
            "source",
            "teacher scratch",
            "student scratch",
            f"KD+AT M={TABLE1_M}",
            "zero-shot M=0",
        ],
        rows,
    )
    if dataset != published.TABLE1_DATASET:
        lines += [f"The paper's Table 1 is on CIFAR-10 only; no published numbers for {title(dataset)}.", ""]
    else:
        lines += ["COMP6248's KD+AT and zero-shot values are single runs.", ""]
    return lines


def benchmark_section(results: Results, dataset: str, root: Path | None = None) -> list[str]:
    """The data-free methods side by side, per teacher/student pair: our final accuracy (the number a run ends
    with) and, labelled as such, our best over training beside the benchmark's published best-over-training
    numbers; the MTE of each method's student where its belief runs exist."""
    names = [s.name for s in data_free_series()]
    found = {
        (t["teacher"], t["student"], t["method"])
        for t in results.known(dataset=dataset)
        if t["method"] in names
    }
    if not found or {m for *_, m in found} == {"zero-shot"} and figure_pairs(results, dataset):
        return []  # nothing here but the paper's own zero-shot runs, which its tables already show
    pairs = [p for p in published.BENCHMARK_PAIRS if any(f[:2] == p for f in found)]
    pairs += sorted({f[:2] for f in found} - set(pairs))
    rows = []
    for teacher, student in pairs:
        first = True
        for name in names:
            if (teacher, student, name) not in found:
                continue
            tags = {"dataset": dataset, "method": name, "teacher": teacher, "student": student, "m": 0}
            mte = results.cell(
                "mte", dataset=dataset, method="belief", of=name, teacher=teacher, student=student, m=0
            )
            seconds = results.cell("train_seconds", **tags).stat
            rows.append(
                [
                    f"{arch(teacher)} → {arch(student)}" if first else "",
                    series_label(name),
                    results.cell("test_accuracy", **tags).format(),
                    results.cell("best_test_accuracy", **tags).format(),
                    pub(published.benchmark_value(dataset, name, teacher, student)),
                    mte.format(3) if mte.stat or mte.pending else "",
                    f"{seconds.mean / 60:.1f}" if seconds else "",
                ]
            )
            first = False
    lines = [
        f"### Data-free methods, {title(dataset)}",
        "",
        (
            "**final**: the test accuracy a run ends with (mean ± population std over seeds, n). **best over "
            "training**: the highest test accuracy at any evaluation, which picks the stopping point on the "
            "test set; the published numbers ("
            + published.BENCHMARK_SOURCE
            + ") are of that kind, so compare "
            "them with that column, and prefer the final one for claims."
        ),
        "",
    ]
    plots = []
    for teacher, student in pairs if root is not None else ():
        png = plot_data_free(
            results, dataset, teacher, student, names, root / f"data_free_{dataset}_{teacher}_{student}.png"
        )
        if png:
            plots.append(f"![data-free methods, {dataset}, {teacher} → {student}]({png.name})\n")
    return (
        plots
        + lines
        + table(
            [
                "teacher → student",
                "method",
                "final",
                "best over training (test-selected)",
                "published (best over training)",
                "MTE",
                "minutes",
            ],
            rows,
        )
    )


def table2_section(results: Results, root: Path) -> list[str]:
    rows = []
    plots = []
    for dataset in results.datasets():
        groups = sorted(
            {(t["teacher"], t["student"]) for t in results.known(dataset=dataset, method="belief")}
        )
        for teacher, student in groups:
            kd_ms = sorted(
                {
                    t["m"]
                    for t in results.known(
                        dataset=dataset, method="belief", of="kd-at", teacher=teacher, student=student
                    )
                }
            ) or [None]
            zs = results.cell(
                "mte", dataset=dataset, method="belief", of="zero-shot", teacher=teacher, student=student, m=0
            )
            for m in kd_ms:
                kd = (
                    results.cell(
                        "mte",
                        dataset=dataset,
                        method="belief",
                        of="kd-at",
                        teacher=teacher,
                        student=student,
                        m=m,
                    )
                    if m is not None
                    else None
                )
                rows.append(
                    [
                        title(dataset),
                        f"**ours** ({arch(teacher)} → {arch(student)})",
                        zs.format(3),
                        kd.format(3) if kd else "",
                        str(m) if m is not None else "",
                    ]
                )
            png = plot_transition_curves(
                results,
                dataset,
                teacher,
                student,
                root / f"transition_curves_{dataset}_{teacher}_{student}.png",
            )
            if png:
                plots.append(f"![transition curves, {dataset}]({png.name})")
    if not rows:
        return []
    for dataset in ("svhn", "cifar10"):
        for source in ("PAPER", "NB-MTE", "FERLES", "COMP6248"):
            values = published.TABLE2[source][dataset]
            m = "not stated" if source in ("PAPER", "NB-MTE") else "200"
            rows.append(
                [
                    title(dataset),
                    published.SOURCES[source],
                    pub(values["zero-shot"], 4 if source == "NB-MTE" else 3 if source == "COMP6248" else 2),
                    pub(values["kd-at"], 4 if source == "NB-MTE" else 3 if source == "COMP6248" else 2),
                    m,
                ]
            )
    lines = [
        "## Mean transition error (Table 2) and transition curves (Figure 4)",
        "",
        (
            "MTE: the mean |p_teacher − p_student| of the target class over the first K adversarial steps "
            "on the student, over N agreeing test images × 9 target classes (the paper: K = 100, N = 1000; "
            "runs made with --scale or by the demo use fewer, as each run's result.json records). Published "
            "values are WRN-40-2 → WRN-16-1."
        ),
        "",
    ]
    lines += table(["data set", "source", "zero-shot", "KD+AT", "KD+AT student's M"], rows)
    return lines + [*(p + "\n" for p in plots)]


def runs_section(results: Results) -> list[str]:
    ids = sorted(set(results.planned) | {row.id for row in results.rows})
    by_id = {row.id: row for row in results.rows}
    rows = []
    for run_id in ids:
        row = by_id.get(run_id)
        state = "done" if row else results.planned.get(run_id, "missing")
        value, seconds = "", ""
        if row:
            r = row.result
            if isinstance(r.get("mte"), (int, float)):
                value = f"MTE {r['mte']:.4f}"
            elif isinstance(r.get("test_accuracy"), (int, float)):
                value = f"{r['test_accuracy']:.2f}%"
            took = r.get("train_seconds", r.get("seconds"))
            seconds = f"{took:.0f}" if isinstance(took, (int, float)) else ""
        rows.append([f"`{run_id}`", state, value, seconds])
    return ["## Runs", "", *table(["run", "state", "result", "seconds"], rows)]


def short_path(value) -> str:
    """A file path as its last two parts (runs/teacher/model.pt -> teacher/model.pt); other values as is."""
    if not isinstance(value, str) or "/" not in value:
        return "" if value is None else str(value)
    return "/".join(Path(value).parts[-2:])


def stat_text(stat: Stat | None, digits: int = 2) -> str:
    if stat is None:
        return "—"
    text = f"{stat.mean:.{digits}f}"
    return text + (f" ± {stat.std:.{digits}f} (n={stat.n})" if stat.n > 1 else "")


def option_text(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "—" if value is None else str(value)


def group_row(group: RunGroup, with_mte: bool) -> list[str]:
    run: Run = group.first
    teacher = run.result.get("teacher_arch") or short_path(run.value("teacher"))
    student = short_path(run.value("student") or run.value("model"))
    seconds = group.seconds_per_iteration()
    cells = [
        method_label(run.command),
        teacher or "—",
        student or "—",
        str(run.value("dataset") or "—"),
        ", ".join(f"{k}={option_text(v)}" for k, v in group.options),
        ",".join(str(s) for s in group.seeds()),
        stat_text(group.stat("test_accuracy")),
        stat_text(group.stat("best_test_accuracy") or group.stat("test_accuracy")),
        f"{seconds.mean:.3g}" if seconds else "—",
    ]
    if with_mte:
        cells.append(stat_text(group.stat("mte"), 4))
    return cells + [", ".join(f"`{r.id}`" for r in group.runs)]


def other_runs_section(runs: list[Run], grid: bool) -> list[str]:
    """The generic table of finished runs in folders that are not grid run ids, grouped over seeds."""
    groups = group_runs(runs)
    with_mte = any(isinstance(r.result.get("mte"), (int, float)) for r in runs)
    header = [
        "method",
        "teacher",
        "student",
        "data set",
        "options that differ",
        "seeds",
        "final accuracy (%)",
        "best accuracy (%)",
        "s / iteration",
    ]
    header += [*(["MTE"] if with_mte else []), "runs"]
    title = "## Other runs (folders that are not run ids of the grids)" if grid else "## Runs"
    note = (
        "Each row is one configuration: mean ± population std over its seeds (n runs) when runs differ "
        "only in the seed; options that differ = the config fields that differ between the runs of that "
        "method; best accuracy = the best test accuracy at any log point (the final one where the run "
        "records no best); s / iteration = the run's median seconds per iteration (or train seconds / "
        "iterations). From each run's config.json and result.json."
    )
    return [title, "", note, "", *table(header, [group_row(g, with_mte) for g in groups])]


def header(results: Results, root: Path, others: int = 0) -> list[str]:
    record = results.record
    done = len(results.rows)
    states = list(results.planned.values())
    planned = len(states)
    lines = ["# zskt report", ""]
    experiments = record.get("experiments", {})
    if experiments:
        names = ", ".join(f"`{name}` ({e.get('paper', '')})" for name, e in experiments.items())
        lines.append(f"Experiments: {names}.  ")
    started, missing = states.count("started"), states.count("missing")
    count = f"{done} finished runs" + (
        f" of {planned} planned ({started} started, {missing} not started)" if planned else ""
    )
    if others:
        count = (
            f"{others} finished runs"
            if not (done or planned)
            else count + f", and {others} finished runs in folders that are not grid run ids"
        )
    lines.append(
        f"Folder `{root}`: {count}. Built {datetime.datetime.now().isoformat(timespec='seconds')} from "
        "the runs' result.json files (`zskt report DIR` rebuilds it)."
    )
    lines.append("")
    scale = record.get("scale", 1.0)
    if scale != 1:
        lines += [
            (
                f"> **Scale {scale:g}**: every run was shortened (epochs, pseudo batches, belief images and "
                f"steps × {scale:g}); the numbers are not comparable with the published ones."
            ),
            "",
        ]
    teachers = record.get("teachers", {})
    if teachers:
        lines.append("Teachers: " + "; ".join(f"{k}: {v}" for k, v in sorted(teachers.items())) + ".")
        lines.append("")
    return lines + ([LEGEND, ""] if done or planned else [])


def report(root: str | Path) -> Path:
    """Write root/report.md and its PNGs from the result.json files under `root`; return the report's path."""
    root = Path(root)
    if not root.is_dir():
        from zskt.errors import ZsktError

        raise ZsktError(
            f"{root} is not a folder; give an experiment folder (the --out of zskt reproduce/demo)"
        )
    results = Results(root)
    others = collect_other(root)
    grid = bool(results.rows or results.planned)
    lines = header(results, root, others=len(others))
    if not grid and others:
        lines += other_runs_section(others, grid=False)
        path = root / REPORT
        atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
        return path
    for dataset in results.datasets():
        body = []
        for teacher, student in figure_pairs(results, dataset):
            body += figure2_section(results, dataset, teacher, student, root)
        if table1_pairs(results, dataset):
            body += table1_section(results, dataset)
        body += benchmark_section(results, dataset, root)
        if body:
            lines += [f"## {title(dataset)}", "", *body]
    lines += table2_section(results, root)
    lines += [
        "Published sources: "
        + "; ".join(f"**{published.SOURCES[k]}**: {v}" for k, v in published.SOURCE_NOTES.items())
        + ".",
        "",
    ]
    lines += runs_section(results)
    if others:
        lines += ["", *other_runs_section(others, grid=True)]
    path = root / REPORT
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path
