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
            result = {"mte": v, "images": 4, "targets_per_image": 9,
                      "mean_p_student": list(np.linspace(0.1, 0.9, steps)),
                      "mean_p_teacher": list(np.linspace(0.1, 0.9 - v, steps)),
                      "sem_p_student": [0.01] * steps, "sem_p_teacher": [0.02] * steps}
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
    assert stat.n == 3 and stat.mean == pytest.approx(np.mean(kd10)) and stat.std == pytest.approx(np.std(kd10))


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


def test_report_command_and_unknown_folders(tmp_path, capsys, caplog):
    from zskt.cli import main

    runs = EXPERIMENTS["demo"].runs()
    fabricate(tmp_path, runs, accuracy)
    (tmp_path / "notes" / "copied").mkdir(parents=True)
    (tmp_path / "notes" / "copied" / "result.json").write_text(json.dumps({"test_accuracy": 1.0}))
    assert main(["report", str(tmp_path)]) == 0
    assert f"report: {tmp_path / 'report.md'}" in capsys.readouterr().out
    text = (tmp_path / "report.md").read_text()
    assert "notes/copied" not in text and "not a run id" in caplog.text
    # digits has no published numbers: the paper's CIFAR-10 / SVHN values are shown as labelled context.
    assert "Published, for context only" in text and "(CIFAR-10)" in text
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_pooled_curves_equal_the_concatenated_curves():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=(12, 5)), rng.uniform(size=(30, 5))
    runs = [{"mean_p_student": x.mean(0).tolist(), "sem_p_student": (x.std(0) / np.sqrt(len(x))).tolist(),
             "images": len(x), "targets_per_image": 1} for x in (a, b)]
    mean, sem = pooled_curves(runs, "student")
    both = np.concatenate([a, b])
    assert np.allclose(mean, both.mean(0)) and np.allclose(sem, both.std(0) / np.sqrt(len(both)))
