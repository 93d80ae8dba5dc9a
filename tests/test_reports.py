"""Reports: built from result.json files alone (fabricated here), numbers equal to the mean and population std
of those files, missing and started cells shown as such, published numbers beside ours, plots written."""

import json
import re

import numpy as np
import pytest

from zskt.experiments import EXPERIMENTS
from zskt.experiments.reproduce import record_experiment
from zskt.io import atomic_write_json
from zskt.reports import aggregate, collect, report
from zskt.reports.plots import pooled_curves


def fabricate(root, runs, value_of, skip=()):
    """Write result.json for each run not in `skip`: test_accuracy, or mte with curves for belief runs."""
    values = {}
    for run in runs:
        if run.id in skip:
            continue
        folder = root / run.id
        folder.mkdir(parents=True, exist_ok=True)
        v = value_of(run)
        values[run.id] = v
        if run.command == "belief":
            steps = 6
            result = {
                "mte": v,
                "images": 4,
                "targets_per_image": 9,
                "mean_p_student": list(np.linspace(0.1, 0.9, steps)),
                "mean_p_teacher": list(np.linspace(0.1, 0.9 - v, steps)),
                "sem_p_student": [0.01] * steps,
                "sem_p_teacher": [0.02] * steps,
            }
        else:
            result = {"test_accuracy": v, "train_seconds": 12.0}
        atomic_write_json(folder / "result.json", result)
    return values


def accuracy(run):
    rng = np.random.default_rng(abs(hash(run.id)) % 2**32)
    if run.command == "belief":
        return float(rng.uniform(0.05, 0.9))
    return float(rng.uniform(10, 99))


def row_of(text, first_cells):
    """The table row whose leading cells are `first_cells`, as a list of stripped cells."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[: len(first_cells)] == first_cells:
            return cells
    raise AssertionError(f"no row {first_cells} in the report")


def fmt(values, digits=2):
    mean, std = np.mean(values), np.std(values)  # population std, as the paper's np.std
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={len(values)})"


def test_figure2_numbers_equal_the_aggregated_results(tmp_path):
    experiment = EXPERIMENTS["accuracy-vs-m"]
    spec = experiment.spec(datasets=("svhn",))
    runs = experiment.runs(datasets=("svhn",))
    record_experiment(tmp_path, experiment, spec, runs)
    values = fabricate(tmp_path, runs, accuracy)
    text = report(tmp_path).read_text()
    kd10 = [values[f"svhn/kd-at/wrn-40-2_wrn-16-1/M10/seed{s}"] for s in (0, 1, 2)]
    nt50 = [values[f"svhn/no-teacher/wrn-16-1/M50/seed{s}"] for s in (0, 1, 2)]
    zs = [values[f"svhn/zero-shot/wrn-40-2_wrn-16-1/seed{s}"] for s in (0, 1, 2)]
    ft100 = [values[f"svhn/finetune/wrn-40-2_wrn-16-1/M100/seed{s}"] for s in (0, 1, 2)]
    header = row_of(text, ["method", "source"])
    assert header[2:] == ["M=0", "M=10", "M=25", "M=50", "M=75", "M=100"]
    kd = row_of(text, ["KD+AT", "**ours**"])
    assert kd[2] == "10 (chance)" and kd[3] == fmt(kd10)
    assert row_of(text, ["no teacher", "**ours**"])[5] == fmt(nt50)
    ours = row_of(text, ["zero-shot (M = 0) / fine-tuned (M > 0)", "**ours**"])
    assert ours[2] == fmt(zs) and ours[7] == fmt(ft100)
    # The paper's Figure 2 data and the Ferles reproduction beside ours.
    paper = row_of(text, ["", "paper (Fig. 2 data)", "10.00", "24.57"])
    assert paper[4:] == ["40.25", "54.03", "69.69", "77.72"]
    assert "94.37" in text and "Ferles et al." in text
    assert (tmp_path / "accuracy_vs_m_svhn_wrn-40-2_wrn-16-1.png").stat().st_size > 10_000
    # aggregate() is the same computation.
    cells = aggregate(collect(tmp_path), "test_accuracy")
    stat = cells[("svhn", "kd-at", "wrn-40-2", "wrn-16-1", 10, None)]
    assert (
        stat.n == 3 and stat.mean == pytest.approx(np.mean(kd10)) and stat.std == pytest.approx(np.std(kd10))
    )


def test_partial_grid_shows_missing_and_started_cells(tmp_path):
    experiment = EXPERIMENTS["accuracy-vs-m"]
    spec = experiment.spec(datasets=("cifar10",), seeds=(0, 1, 2))
    runs = experiment.runs(datasets=("cifar10",))
    record_experiment(tmp_path, experiment, spec, runs)
    skip = {r.id for r in runs if r.tags.get("m") in (75, 100) or r.id.endswith("M50/seed2")}
    values = fabricate(tmp_path, runs, accuracy, skip=skip)
    started = tmp_path / "cifar10/kd-at/wrn-40-2_wrn-16-1/M75/seed0"
    started.mkdir(parents=True)
    (started / "checkpoint.pt").write_bytes(b"x")
    text = report(tmp_path).read_text()
    kd = row_of(text, ["KD+AT", "**ours**"])
    assert kd[6] == "started"  # M = 75: one seed started, none finished
    assert kd[7] == "—"  # M = 100: nothing started
    m50 = [values[f"cifar10/kd-at/wrn-40-2_wrn-16-1/M50/seed{s}"] for s in (0, 1)]
    assert kd[5] == fmt(m50).replace("(n=2)", "(n=2 of 3)")
    assert re.search(r"\d+ finished runs of 52 planned \(1 started, \d+ not started\)", text)
    assert "`cifar10/kd-at/wrn-40-2_wrn-16-1/M75/seed0` | started" in text


def test_table1_and_table2_beside_published(tmp_path):
    pairs = EXPERIMENTS["pairs"].runs(seeds=(0, 1))
    mte = EXPERIMENTS["mte"].runs(datasets=("svhn",))
    values = fabricate(tmp_path, pairs + mte, accuracy)
    text = report(tmp_path).read_text()  # no experiment.json: everything found is shown
    row = row_of(text, ["WRN-40-2 → WRN-16-2", "**ours**"])
    teacher = [values[f"cifar10/scratch/wrn-40-2/seed{s}"] for s in (0, 1)]
    zs = [values[f"cifar10/zero-shot/wrn-40-2_wrn-16-2/seed{s}"] for s in (0, 1)]
    assert row[2] == fmt(teacher) and row[5] == fmt(zs)
    assert row_of(text, ["", "paper", "94.73 ± 0.02", "93.97 ± 0.11"])[5] == "89.71 ± 0.10"
    comp = row_of(text, ["", "COMP6248", "94.86 ± 0.12", "93.93 ± 0.04"])
    assert comp[4:] == ["85.49", "88.54"]  # single runs: no std
    # Table 2: our MTE per data set beside the paper's, the notebook's and both reproductions'.
    zs_mte = [values[f"svhn/belief/zero-shot/wrn-40-2_wrn-16-1/seed{s}"] for s in (0, 1, 2)]
    kd_mte = [values[f"svhn/belief/kd-at/wrn-40-2_wrn-16-1/M200/seed{s}"] for s in (0, 1, 2)]
    ours = row_of(text, ["SVHN", "**ours** (WRN-40-2 → WRN-16-1)"])
    assert ours[2:] == [fmt(zs_mte, 3), fmt(kd_mte, 3), "200"]
    assert row_of(text, ["SVHN", "paper"])[2:4] == ["0.09", "0.64"]
    assert row_of(text, ["CIFAR-10", "authors' notebook"])[2:4] == ["0.2182", "0.7182"]
    assert (tmp_path / "transition_curves_svhn_wrn-40-2_wrn-16-1.png").is_file()


def test_report_command_and_unknown_folders(tmp_path, capsys):
    from zskt.cli import main

    runs = EXPERIMENTS["demo"].runs()
    fabricate(tmp_path, runs, accuracy)
    (tmp_path / "notes" / "copied").mkdir(parents=True)
    (tmp_path / "notes" / "copied" / "result.json").write_text(json.dumps({"test_accuracy": 1.0}))
    assert main(["report", str(tmp_path)]) == 0
    assert f"report: {tmp_path / 'report.md'}" in capsys.readouterr().out
    text = (tmp_path / "report.md").read_text()
    # A finished run whose folder is not a run id is not a grid cell: it is listed in the generic table.
    other = text.split("## Other runs")[1]
    assert "`notes/copied`" in other and "`notes/copied`" not in text.split("## Other runs")[0]
    # digits has no published numbers: the paper's CIFAR-10 / SVHN values are shown as labelled context.
    assert "Published, for context only" in text and "(CIFAR-10)" in text
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_pooled_curves_equal_the_concatenated_curves():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=(12, 5)), rng.uniform(size=(30, 5))
    runs = [
        {
            "mean_p_student": x.mean(0).tolist(),
            "sem_p_student": (x.std(0) / np.sqrt(len(x))).tolist(),
            "images": len(x),
            "targets_per_image": 1,
        }
        for x in (a, b)
    ]
    mean, sem = pooled_curves(runs, "student")
    both = np.concatenate([a, b])
    assert np.allclose(mean, both.mean(0)) and np.allclose(sem, both.std(0) / np.sqrt(len(both)))


# ------------------------------------------------------------------------- runs of any folder, curves


def hand_made_run(folder, command, result, **config):
    """A finished run folder as a training command leaves it: config.json (command + fields), result.json."""
    folder.mkdir(parents=True)
    base = {
        "teacher": "runs/teacher/model.pt",
        "student": "wrn-16-1",
        "dataset": "digits",
        "iterations": 200,
        "beta": 0.0,
        "seed": 0,
        "device": "auto",
        "data_dir": None,
    }
    (folder / "config.json").write_text(json.dumps({"command": command, **base, **config}))
    (folder / "result.json").write_text(json.dumps({"command": command, **result}))


def test_report_of_runs_that_are_not_grid_ids_groups_seeds(tmp_path, capsys):
    from zskt.cli import main

    runs = tmp_path / "my-runs"
    hand_made_run(
        runs / "zs-a",
        "zero-shot",
        {"test_accuracy": 90.0, "best_test_accuracy": 91.0, "seconds_per_iteration": 0.2},
        seed=0,
    )
    # The same configuration with another seed, run on another device: one row, mean ± std over 2 seeds.
    hand_made_run(
        runs / "zs-b",
        "zero-shot",
        {"test_accuracy": 94.0, "best_test_accuracy": 95.0, "seconds_per_iteration": 0.4},
        seed=1,
        device="cpu",
    )
    # Another beta: a row of its own, and beta is the option that differs.
    hand_made_run(
        runs / "zs-beta", "zero-shot", {"test_accuracy": 80.0, "seconds_per_iteration": 0.3}, beta=250.0
    )
    hand_made_run(
        runs / "deep" / "kd",
        "kd-at",
        {"test_accuracy": 70.0, "train_seconds": 10.0, "iterations": 100},
        images_per_class=5,
    )
    assert main(["report", str(runs), "--print"]) == 0
    out = capsys.readouterr().out
    assert "skipping" not in out and "## Runs" in out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    cells = ([c.strip() for c in line.strip("|").split("|")] for line in lines)
    rows = {r[0] + " " + r[4]: r for r in cells}
    pair = rows["zero-shot beta=0.0"]
    assert pair[1:4] == ["teacher/model.pt", "wrn-16-1", "digits"]
    assert pair[5:9] == ["0,1", "92.00 ± 2.00 (n=2)", "93.00 ± 2.00 (n=2)", "0.3"]
    assert pair[9] == "`zs-a`, `zs-b`"
    beta = rows["zero-shot beta=250.0"]
    assert beta[5:8] == ["0", "80.00", "80.00"]  # no best recorded: the final accuracy
    kd = rows["kd-at "]  # the only kd-at run: no option differs
    assert kd[6] == "70.00" and kd[8] == "0.1" and kd[9] == "`deep/kd`"
    assert "finished runs" in out.splitlines()[2] and "4 finished runs" in out


def write_metrics(folder, rows, **config):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"command": "zero-shot", "teacher": "t/model.pt", "student": "wrn-16-1", **config})
    )
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "cut')


def test_plot_writes_a_png_of_several_runs(tmp_path, capsys):
    from zskt.cli import main
    from zskt.reports.curves import loss_columns, read_rows, run_label

    for seed in (0, 1):
        write_metrics(
            tmp_path / f"run{seed}",
            [
                {
                    "step": s,
                    "generator_loss": 1.0 / s,
                    "student_loss": 0.5 / s + seed,
                    "test_accuracy": 10.0 * s,
                    "best_test_accuracy": 10.0 * s,
                    "time": 1.7e9 + s,
                    "elapsed": 30.0 * s,
                }
                for s in range(1, 6)
            ],
            seed=seed,
        )
    assert run_label(tmp_path / "run1") == "zero-shot t/model.pt → wrn-16-1 seed 1"
    rows = read_rows(tmp_path / "run0")
    assert len(rows) == 5  # the cut last row is skipped
    assert loss_columns([rows]) == ["generator_loss", "student_loss"]
    png = tmp_path / "curves.png"
    assert main(["plot", str(tmp_path / "run0"), str(tmp_path / "run1"), "--out", str(png)]) == 0
    assert f"curves: {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # One run: the PNG goes into its folder by default; --x time plots against the elapsed minutes.
    assert main(["plot", str(tmp_path / "run0"), "--x", "time"]) == 0
    assert (tmp_path / "run0" / "curves.png").is_file()
    # A folder of runs stands for the runs below it; a folder without metrics is a one-line error.
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "all.png")]) == 0
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert "holds no metrics.jsonl" in capsys.readouterr().err


def test_plot_by_time_needs_wall_time_in_the_rows(tmp_path, capsys):
    from zskt.cli import main

    write_metrics(tmp_path / "old", [{"step": 1, "test_accuracy": 5.0}])
    assert main(["plot", str(tmp_path / "old"), "--x", "time"]) == 2
    assert "--x step" in capsys.readouterr().err
