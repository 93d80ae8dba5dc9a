"""Training curves of run folders: test accuracy and every loss of `metrics.jsonl` against the step (or the
run's wall time), several runs overlaid, as one PNG. Reads only metrics.jsonl, config.json and result.json;
matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from zskt.errors import ZsktError
from zskt.io import atomic_write_bytes
from zskt.reports.collect import method_label

METRICS = "metrics.jsonl"
# Accuracy columns drawn in the first panel (best_test_accuracy dashed, in the run's colour).
ACCURACY = ("test_accuracy", "best_test_accuracy")
X_AXES = {
    "step": ("step", "step (the run's unit: pseudo batch, epoch, ...)"),
    "time": ("elapsed", "wall time (minutes)"),
}


def run_folders(paths: list[str | Path]) -> list[Path]:
    """The run folders named: each path that holds metrics.jsonl, or else every folder below it that does."""
    folders: list[Path] = []
    for p in map(Path, paths):
        if (p / METRICS).is_file():
            folders.append(p)
        elif p.is_dir():
            below = sorted(m.parent for m in p.rglob(METRICS))
            if not below:
                raise ZsktError(f"{p} holds no {METRICS} (nor does any folder below it); give a run folder")
            folders += below
        else:
            raise ZsktError(f"{p} is not a run folder (no such folder)")
    return folders


def read_rows(folder: Path) -> list[dict]:
    """metrics.jsonl's rows (a row cut by an interruption is skipped)."""
    rows = []
    for line in (folder / METRICS).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def run_label(folder: Path) -> str:
    """Legend text from a run's config.json (and result.json): command, teacher → student, seed."""
    config, result = _json(folder / "config.json"), _json(folder / "result.json")
    command = config.get("command") or result.get("command") or "run"
    teacher = result.get("teacher_arch") or config.get("teacher")
    if isinstance(teacher, str) and "/" in teacher:
        teacher = "/".join(Path(teacher).parts[-2:])
    student = config.get("student") or config.get("model")
    if isinstance(student, str) and "/" in student:
        student = "/".join(Path(student).parts[-2:])
    parts = [method_label(command)]
    if teacher and student:
        parts.append(f"{teacher} → {student}")
    elif student:
        parts.append(str(student))
    if config.get("seed") is not None:
        parts.append(f"seed {config['seed']}")
    return " ".join(parts)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def loss_columns(runs: list[list[dict]]) -> list[str]:
    """Every column named *loss* in any run's rows, in first-seen order."""
    seen: dict[str, None] = {}
    for rows in runs:
        for row in rows:
            for key, value in row.items():
                if "loss" in key and _number(value):
                    seen.setdefault(key, None)
    return list(seen)


def plot_curves(paths: list[str | Path], out: str | Path, x: str = "step") -> Path:
    """Draw accuracy and each loss of the runs in `paths` against `x` ("step" or "time") into PNG `out`."""
    if x not in X_AXES:
        raise ZsktError(f"unknown --x {x!r}; choose one of {', '.join(X_AXES)}")
    folders = run_folders(paths)
    runs = [read_rows(f) for f in folders]
    if not any(runs):
        raise ZsktError(f"no metrics rows in {', '.join(map(str, folders))}; a run writes one per log point")
    x_key, x_title = X_AXES[x]
    if x == "time" and not any(_number(r.get("elapsed")) for rows in runs for r in rows):
        raise ZsktError(
            "--x time: these runs' metrics rows hold no wall time (`elapsed`); they were made by "
            "an older zskt: plot them with --x step"
        )
    labels = [run_label(f) for f in folders]
    if len(set(labels)) < len(labels):  # the same configuration twice: tell them apart by their folders
        labels = [f"{label} ({f.name})" for label, f in zip(labels, folders, strict=True)]
    panels = ["accuracy", *loss_columns(runs)]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 if len(panels) == 1 else 2
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.4 * cols, 3.6 * rows_n), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles, names = [], []
    for i, (rows, label) in enumerate(zip(runs, labels, strict=True)):
        colour = colours[i % len(colours)]
        labelled = False
        for panel, ax in zip(panels, axes.flat, strict=False):
            columns = ACCURACY if panel == "accuracy" else (panel,)
            for column in columns:
                points = [
                    (r[x_key], r[column]) for r in rows if _number(r.get(x_key)) and _number(r.get(column))
                ]
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                if x == "time":
                    xs = [v / 60 for v in xs]
                best = column == "best_test_accuracy"
                (line,) = ax.plot(
                    xs,
                    ys,
                    color=colour,
                    linestyle="--" if best else "-",
                    linewidth=1.0 if best else 1.6,
                    marker="." if len(xs) < 30 else None,
                )
                if not labelled:  # the run's first line stands for it in the legend
                    handles.append(line)
                    names.append(label)
                    labelled = True
    for panel, ax in zip(panels, axes.flat, strict=False):
        ax.set_title("test accuracy (%) — dashed: best so far" if panel == "accuracy" else panel)
        ax.set_xlabel(x_title)
        ax.grid(alpha=0.3)
        if "loss" in panel and _positive(runs, panel):
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.legend(handles, names, loc="lower center", ncol=min(2, len(names)), fontsize="small", frameon=False)
    legend_rows = math.ceil(len(names) / 2)
    fig.tight_layout(rect=(0, min(0.4, 0.05 * legend_rows / rows_n + 0.02), 1, 1))
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    out = Path(out)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def _positive(runs: list[list[dict]], column: str) -> bool:
    """Whether a loss is positive everywhere and spans more than a decade (then a log axis reads better)."""
    values = [r[column] for rows in runs for r in rows if _number(r.get(column))]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 10
