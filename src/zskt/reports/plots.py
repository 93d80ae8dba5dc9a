"""The report's figures, from aggregated result.json values only: accuracy against M (Figure 2's form) and
transition curves (Figure 4's form). matplotlib with the Agg backend: no display needed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from zskt.methods.registry import series_label
from zskt.reports import published
from zskt.reports.collect import Results
from zskt.runids import FIGURE_PAIR

# (method at M > 0, label, colour); M = 0 is chance for the baselines and the zero-shot run for ours.
SERIES = tuple(
    (name, series_label(name), colour)
    for name, colour in (("no-teacher", "tab:gray"), ("kd-at", "tab:blue"), ("finetune", "tab:red"))
)
PUBLISHED_SERIES = {"no-teacher": "no-teacher", "kd-at": "kd-at", "finetune": "zero-shot"}
METHOD_TITLES = {
    "finetune": "fine-tuned zero-shot"
}  # belief plots' titles where the series label is too long
FIGURE_STEPS = 30  # Figure 4 plots the first 30 steps (SPEC §6)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_points(
    results: Results, dataset: str, teacher: str, student: str, method: str, ms: list[int]
) -> tuple[list[int], list[float], list[float]]:
    """(M, mean, std) of one series over the M values that have finished runs; M = 0 as in Figure 2."""
    xs, means, stds = [], [], []
    for m in [0, *ms]:
        if m == 0:
            if method == "finetune":
                stat = results.cell(
                    "test_accuracy",
                    dataset=dataset,
                    method="zero-shot",
                    teacher=teacher,
                    student=student,
                    m=0,
                ).stat
            else:  # chance, by definition (the paper plots 10 for 10 classes)
                xs.append(0)
                means.append(100.0 / num_classes(dataset))
                stds.append(0.0)
                continue
        else:
            tags = {
                "dataset": dataset,
                "method": method,
                "student": student,
                "m": m,
                "teacher": None if method == "no-teacher" else teacher,
            }
            stat = results.cell("test_accuracy", **tags).stat
        if stat is not None:
            xs.append(m)
            means.append(stat.mean)
            stds.append(stat.std)
    return xs, means, stds


def num_classes(dataset: str) -> int:
    from zskt.data import get_info
    from zskt.errors import ZsktError

    try:
        return get_info(dataset).num_classes
    except ZsktError:  # a data set whose files are gone since the runs: the paper's 10
        return 10


def plot_accuracy_vs_m(
    results: Results, dataset: str, teacher: str, student: str, ms: list[int], path: Path
) -> Path:
    """Figure 2's form: the three methods (mean ± population std over seeds), chance at M = 0 for the
    baselines, our teacher and scratch student as reference lines, and the published curves where they
    exist."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, label, colour in SERIES:
        xs, means, stds = accuracy_points(results, dataset, teacher, student, method, ms)
        if xs:
            ax.errorbar(xs, means, yerr=stds, marker="o", color=colour, label=f"{label} (ours)", capsize=3)
    lines = []
    t = results.cell("test_accuracy", dataset=dataset, method="scratch", student=teacher, m=-1).stat
    if t is not None:
        lines.append((t.mean, f"teacher {teacher}, full data (ours)", "black", "--"))
    s = results.cell("test_accuracy", dataset=dataset, method="scratch", student=student, m=-1).stat
    if s is not None:
        lines.append((s.mean, f"student {student}, full data (ours)", "tab:green", "--"))
    paper = published.FIGURE2["NB-ACC"].get(dataset) if (teacher, student) == FIGURE_PAIR else None
    if paper:
        for method, label, colour in SERIES:
            points = paper[PUBLISHED_SERIES[method]]
            pm = sorted(points)
            ax.plot(
                pm,
                [points[m][0] for m in pm],
                linestyle=":",
                marker=".",
                color=colour,
                alpha=0.6,
                label=f"{label} (paper)",
            )
        for label, value in published.REFERENCE_LINES[dataset].items():
            lines.append((value, f"{label} (paper)", "0.6", ":"))
    for value, label, colour, style in lines:
        ax.axhline(value, color=colour, linestyle=style, linewidth=1, label=label)
    ax.set_xlabel("M (images per class)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}: {teacher} → {student}, accuracy against M")
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pooled_curves(results: list[dict], which: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean curve and its standard error over every curve of every seed, from the per-run mean and SEM that
    belief writes: as if all runs' curves were one set (population std / sqrt(count), as the notebook)."""
    means, sems, counts = [], [], []
    for r in results:
        mean, sem = r.get(f"mean_p_{which}"), r.get(f"sem_p_{which}")
        if not mean or not sem:
            continue
        means.append(np.asarray(mean, dtype=float))
        sems.append(np.asarray(sem, dtype=float))
        counts.append(int(r.get("images", 1)) * int(r.get("targets_per_image", 1)))
    if not means:
        return None
    steps = min(len(m) for m in means)
    means = np.stack([m[:steps] for m in means])
    sems = np.stack([s[:steps] for s in sems])
    n = np.asarray(counts, dtype=float)[:, None]
    total = n.sum()
    mean = (n * means).sum(0) / total
    second = (n * (sems**2 * n + means**2)).sum(0) / total  # each run's variance is sem² · n (ddof 0)
    var = np.clip(second - mean**2, 0, None)
    return mean, np.sqrt(var / total)


def draw_transition_curves(ax, runs: list[dict], student: str, teacher: str) -> None:
    """Figure 4's form on one axis: the mean probability of the target class along the first 30 adversarial
    steps for the attacked student and its teacher, ±2 standard errors, pooled over `runs` (belief result.json
    values: `mean_p_*`, `sem_p_*`). `zskt belief` draws one run with it, the report each group of seeds."""
    labels = {
        "student": " ".join(["student", student, "(attacked)"]).replace("  ", " "),
        "teacher": f"teacher {teacher}".strip(),
    }
    for which, colour in (("student", "tab:blue"), ("teacher", "tab:red")):
        label = labels[which]
        pooled = pooled_curves(runs, which)
        if pooled is None:
            continue
        mean, sem = pooled
        shown = min(FIGURE_STEPS, len(mean))
        x = np.arange(shown)
        ax.plot(x, mean[:shown], color=colour, label=label)
        ax.fill_between(
            x,
            mean[:shown] - 2 * sem[:shown],
            mean[:shown] + 2 * sem[:shown],
            color=colour,
            alpha=0.25,
            linewidth=0,
        )
    ax.set_xlabel("adversarial step")
    ax.set_ylabel("p(target class)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")


def plot_transition_curves(
    results: Results, dataset: str, teacher: str, student: str, path: Path
) -> Path | None:
    """Figure 4's form per belief student (zero-shot, KD+AT at each M), pooled over seeds."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in results.rows:
        t = row.tags
        if (
            t["method"] == "belief"
            and t["dataset"] == dataset
            and t["teacher"] == teacher
            and t["student"] == student
        ):  # not every row has a teacher tag
            groups.setdefault((t["of"], t["m"]), []).append(row.result)
    if not groups:
        return None
    plt = _pyplot()
    keys = sorted(groups, key=lambda k: (k[0] != "zero-shot", k))
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        runs = groups[key]
        draw_transition_curves(ax, runs, student, teacher)
        mtes = [r["mte"] for r in runs if isinstance(r.get("mte"), (int, float))]
        name = METHOD_TITLES.get(key[0], series_label(key[0])) + (f", M = {key[1]}" if key[1] > 0 else "")
        mte_text = ""
        if mtes:
            mte_text = f"MTE {np.mean(mtes):.3f}" + (f" ± {np.std(mtes):.3f}" if len(mtes) > 1 else "")
        ax.set_title(f"{name} student: {mte_text} (n={len(runs)})", fontsize=10)
    fig.suptitle(f"{dataset}: transition curves, mean ± 2 SE over all curves", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_data_free(
    results: Results, dataset: str, teacher: str, student: str, names: list[str], path: Path
) -> Path | None:
    """The data-free methods of one pair side by side: final test accuracy (bars, ± std over seeds), best over
    training (a tick, test-selected), and each run's minutes in the label; None when no run has finished."""
    bars = []
    for name in names:
        tags = {"dataset": dataset, "method": name, "teacher": teacher, "student": student, "m": 0}
        final = results.cell("test_accuracy", **tags).stat
        if final is None:
            continue
        best = results.cell("best_test_accuracy", **tags).stat
        seconds = results.cell("train_seconds", **tags).stat
        label = "\n".join(textwrap.wrap(series_label(name), 16))  # long labels wrap, not over the next
        label += f"\n{seconds.mean / 60:.1f} min" if seconds else ""
        bars.append((label, final, best))
    if not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.3 * len(bars) + 2, 4))
    xs = np.arange(len(bars))
    ax.bar(
        xs,
        [b[1].mean for b in bars],
        yerr=[b[1].std for b in bars],
        color="tab:blue",
        capsize=3,
        label="final",
    )
    best_x = [x for x, b in zip(xs, bars, strict=True) if b[2] is not None]
    ax.scatter(
        best_x,
        [b[2].mean for b in bars if b[2] is not None],
        marker="_",
        s=400,
        color="tab:red",
        label="best over training (test-selected)",
        zorder=3,
    )
    ax.axhline(100.0 / num_classes(dataset), color="gray", linestyle=":", label="chance")
    ax.set_xticks(xs, [b[0] for b in bars], fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 118)  # room above the bars for the legend
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(f"data-free methods, {dataset}: {teacher.upper()} → {student.upper()}")
    ax.legend(loc="upper center", ncol=3, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
