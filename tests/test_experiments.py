"""The experiment grids and the runner: exact run counts, dependency order, the argv of each run, skipping
finished runs, continuing interrupted ones, failures, and the folder record (experiment.json)."""

import json
from pathlib import Path

import pytest

from zskt.errors import ZsktError
from zskt.experiments import EXPERIMENTS
from zskt.experiments.grid import GridSpec, parse_run_id
from zskt.experiments.reproduce import RECORD, reproduce
from zskt.experiments.runner import execute, ready_runs, run_argv, status
from zskt.io import atomic_write_json
from zskt.reports import report


def fake_executor(calls, fail=()):
    """Stands in for a zskt command: records the argv and writes the files a finished run leaves."""

    def run(argv, log_path, echo=False):
        out = Path(argv[argv.index("--out") + 1])
        calls.append(out)
        if any(str(out).endswith(f) for f in fail):
            return 1
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.pt").write_text("weights")
        atomic_write_json(out / "result.json", {"test_accuracy": 50.0})
        return 0

    return run


# ------------------------------------------------------------------------------------------- grid sizes


def test_accuracy_vs_m_run_count():
    runs = EXPERIMENTS["accuracy-vs-m"].runs()
    # Per data set: 1 teacher (WRN-40-2, seed 0) + per seed [1 scratch student + 1 zero-shot
    # + 5 M x (no-teacher + KD+AT + fine-tune)] = 1 + 3 * (2 + 15) = 52; three data sets.
    assert len(runs) == 3 * (1 + 3 * (1 + 1 + 5 * 3)) == 156
    methods = [r.tags["method"] for r in runs]
    assert methods.count("scratch") == 3 * (1 + 3)
    assert methods.count("zero-shot") == 3 * 3
    assert methods.count("kd-at") == methods.count("no-teacher") == methods.count("finetune") == 3 * 5 * 3
    assert {r.tags["dataset"] for r in runs} == {"cifar10", "svhn", "fashion-mnist"}
    assert sorted({r.tags["m"] for r in runs if r.tags["method"] == "kd-at"}) == [10, 25, 50, 75, 100]
    assert len({r.id for r in runs}) == len(runs)


def test_pairs_run_count():
    runs = EXPERIMENTS["pairs"].runs()
    # CIFAR-10: 4 architectures x 3 seeds from scratch (teacher and student columns; the seed-0 ones are the
    # teachers) + 6 pairs x 3 seeds x (KD+AT M = 200, zero-shot).
    assert len(runs) == 4 * 3 + 6 * 3 * 2 == 48
    assert {r.tags["m"] for r in runs if r.command == "kd-at"} == {200}


def test_mte_run_count():
    runs = EXPERIMENTS["mte"].runs()
    # CIFAR-10 and SVHN: 1 teacher + 3 seeds x (zero-shot, KD+AT M = 200, belief of each).
    assert len(runs) == 2 * (1 + 3 * 4) == 26
    beliefs = [r for r in runs if r.command == "belief"]
    assert sorted({r.tags["of"] for r in beliefs}) == ["kd-at", "zero-shot"]


def test_demo_run_count():
    runs = EXPERIMENTS["demo"].runs()
    # digits, one seed: teacher + scratch student + zero-shot + 2 M x 3 methods + 2 belief runs.
    assert len(runs) == 1 + 1 + 1 + 2 * 3 + 2 == 11
    assert len(EXPERIMENTS["demo-quick"].runs()) == 11


def test_seeds_and_given_teacher_change_the_count(tmp_path):
    teacher = tmp_path / "last.pth.tar"
    runs = EXPERIMENTS["accuracy-vs-m"].runs(
        datasets=("svhn",), seeds=(0, 1), teachers={("svhn", "wrn-40-2"): str(teacher)}
    )
    assert len(runs) == 2 * (2 + 15)  # no teacher run
    students = [r for r in runs if r.command in ("kd-at", "zero-shot")]
    assert all(r.options["teacher"] == str(teacher) and "teacher" not in r.needs for r in students)


def test_dependency_order_teachers_first():
    for name in ("accuracy-vs-m", "pairs", "mte", "demo"):
        runs = EXPERIMENTS[name].runs()
        position = {r.id: i for i, r in enumerate(runs)}
        for run in runs:
            for dep in run.dependencies:
                assert position[dep] < position[run.id], (name, run.id, dep)
    runs = EXPERIMENTS["mte"].runs(datasets=("svhn",))
    assert runs[0].id == "svhn/scratch/wrn-40-2/seed0"


def test_run_ids_parse_back():
    assert parse_run_id("cifar10/kd-at/wrn-40-2_wrn-16-1/M10/seed2") == {
        "method": "kd-at",
        "dataset": "cifar10",
        "teacher": "wrn-40-2",
        "student": "wrn-16-1",
        "m": 10,
        "seed": 2,
    }
    assert parse_run_id("svhn/belief/zero-shot/wrn-40-2_wrn-16-1/seed1")["of"] == "zero-shot"
    assert parse_run_id("digits/scratch/wrn-16-2/seed0")["m"] == -1
    with pytest.raises(ValueError):
        parse_run_id("digits/whatever/seed0")


def test_scale_shrinks_every_length_with_a_floor_of_one():
    runs = {r.id: r for r in EXPERIMENTS["mte"].runs(datasets=("cifar10",), seeds=(0,), scale=0.001)}
    assert runs["cifar10/scratch/wrn-40-2/seed0"].options["epochs"] == 1  # int(200 * 0.001) = 0 -> 1
    assert runs["cifar10/zero-shot/wrn-40-2_wrn-16-1/seed0"].options["iterations"] == 80
    belief = runs["cifar10/belief/zero-shot/wrn-40-2_wrn-16-1/seed0"].options
    assert (belief["images"], belief["steps"], belief["mte_steps"]) == (1, 2, 2)
    # At scale 1 nothing is passed: each command's preset (the paper's value) applies.
    full = {r.id: r for r in EXPERIMENTS["mte"].runs(datasets=("cifar10",), seeds=(0,))}
    assert "epochs" not in full["cifar10/scratch/wrn-40-2/seed0"].options
    assert "iterations" not in full["cifar10/zero-shot/wrn-40-2_wrn-16-1/seed0"].options


def test_run_argv(tmp_path):
    runs = {r.id: r for r in EXPERIMENTS["accuracy-vs-m"].runs(datasets=("svhn",), seeds=(1,))}
    run = runs["svhn/finetune/wrn-40-2_wrn-16-1/M25/seed1"]
    argv = run_argv(run, tmp_path, ["--device", "cpu"])
    assert argv[0] == "kd-at"
    flags = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert flags["--teacher"] == str(tmp_path / "svhn/scratch/wrn-40-2/seed0/model.pt")
    assert flags["--init"] == str(tmp_path / "svhn/zero-shot/wrn-40-2_wrn-16-1/seed1/model.pt")
    assert flags["--images-per-class"] == "25" and flags["--seed"] == "1" and flags["--dataset"] == "svhn"
    assert flags["--out"] == str(tmp_path / run.id) and flags["--device"] == "cpu"
    folder = tmp_path / run.id
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert run_argv(run, tmp_path)[-1] == "--overwrite"  # started, no checkpoint: start again cleanly
    (folder / "checkpoint.pt").write_bytes(b"x")
    assert run_argv(run, tmp_path)[-1] == "--resume"
    assert status(run, tmp_path) == "partial"


# ------------------------------------------------------------------------------------------- the runner


def test_skip_finished_and_rerun_runs_nothing(tmp_path):
    runs = EXPERIMENTS["mte"].runs(datasets=("svhn",), seeds=(0, 1))
    calls = []
    outcome = execute(runs, tmp_path, executor=fake_executor(calls), printer=lambda s: None)
    assert outcome.ok and len(outcome.done) == len(runs) == len(calls) == 9
    assert calls[0] == tmp_path / "svhn/scratch/wrn-40-2/seed0"
    calls.clear()
    outcome = execute(runs, tmp_path, executor=fake_executor(calls), printer=lambda s: None)
    assert calls == [] and len(outcome.skipped) == len(runs)
    # A missing result is the only thing that makes a run run again.
    (tmp_path / runs[-1].id / "result.json").unlink()
    execute(runs, tmp_path, executor=fake_executor(calls), printer=lambda s: None)
    assert calls == [tmp_path / runs[-1].id]


def test_failed_run_blocks_only_its_dependents(tmp_path):
    runs = EXPERIMENTS["mte"].runs(datasets=("svhn",), seeds=(0, 1))
    calls = []
    outcome = execute(
        runs,
        tmp_path,
        executor=fake_executor(calls, fail=("zero-shot/wrn-40-2_wrn-16-1/seed0",)),
        printer=lambda s: None,
    )
    assert list(outcome.failed) == ["svhn/zero-shot/wrn-40-2_wrn-16-1/seed0"]
    assert list(outcome.blocked) == ["svhn/belief/zero-shot/wrn-40-2_wrn-16-1/seed0"]
    assert len(outcome.done) == len(runs) - 2 and not outcome.ok


def test_ready_runs_waits_for_needs(tmp_path):
    runs = EXPERIMENTS["mte"].runs(datasets=("svhn",), seeds=(0,))
    assert [r.id for r in ready_runs(runs, tmp_path)] == ["svhn/scratch/wrn-40-2/seed0"]
    teacher = tmp_path / "svhn/scratch/wrn-40-2/seed0"
    teacher.mkdir(parents=True)
    (teacher / "result.json").write_text("{}")
    assert [r.command for r in ready_runs(runs, tmp_path)] == ["zero-shot", "kd-at"]


def test_list_only_writes_nothing(tmp_path, capsys):
    experiment = EXPERIMENTS["pairs"]
    outcome, _report = reproduce(experiment, experiment.spec(), tmp_path / "x", list_only=True)
    assert outcome is None and not (tmp_path / "x").exists()
    shown = capsys.readouterr().out
    assert "48 runs" in shown and shown.count("todo ") == 48


def test_record_and_folder_scale_is_fixed(tmp_path):
    experiment = EXPERIMENTS["mte"]
    spec = experiment.spec(datasets=("svhn",), seeds=(0,), scale=0.5)
    reproduce(experiment, spec, tmp_path, executor=fake_executor([]), printer=lambda s: None, report=report)
    record = json.loads((tmp_path / RECORD).read_text())
    assert record["scale"] == 0.5 and len(record["runs"]) == 5
    assert record["experiments"]["mte"]["datasets"] == ["svhn"]
    assert record["teachers"] == {"svhn/wrn-40-2": "trained: svhn/scratch/wrn-40-2/seed0"}
    assert record["runs"]["svhn/zero-shot/wrn-40-2_wrn-16-1/seed0"]["argv"][0] == "zero-shot"
    assert (tmp_path / "report.md").is_file()
    with pytest.raises(ZsktError, match="scale"):
        reproduce(
            experiment,
            experiment.spec(datasets=("svhn",), seeds=(0,)),
            tmp_path,
            executor=fake_executor([]),
            printer=lambda s: None,
        )


def test_given_teacher_file_must_exist(tmp_path):
    experiment = EXPERIMENTS["mte"]
    spec = experiment.spec(datasets=("svhn",), teachers={("svhn", "wrn-40-2"): str(tmp_path / "nope.pt")})
    with pytest.raises(ZsktError, match="not found"):
        reproduce(experiment, spec, tmp_path, executor=fake_executor([]), printer=lambda s: None)


def test_grid_spec_checks():
    with pytest.raises(ZsktError):
        GridSpec(datasets=("svhn",), scale=0)
    with pytest.raises(ZsktError):
        GridSpec(datasets=("svhn",), seeds=())


def test_reproduce_cli_list_and_errors(tmp_path, capsys):
    from zskt.cli import main

    assert (
        main(
            ["reproduce", "mte", "--dataset", "svhn", "--seeds", "0", "--out", str(tmp_path / "x"), "--list"]
        )
        == 0
    )
    assert "5 runs" in capsys.readouterr().out
    assert main(["reproduce", "mte", "--out", str(tmp_path), "--pair", "wrn-40-2"]) == 2
    assert "--pair" in capsys.readouterr().err
    # Two data sets and an unqualified teacher file: which data set is it for?
    assert main(["reproduce", "mte", "--out", str(tmp_path), "--teachers", "wrn-40-2=x.pt"]) == 2
    assert "DATASET/wrn-40-2" in capsys.readouterr().err


def test_changed_options_for_existing_runs_are_refused(tmp_path):
    experiment = EXPERIMENTS["mte"]
    spec = experiment.spec(datasets=("svhn",), seeds=(0,))
    reproduce(experiment, spec, tmp_path, executor=fake_executor([]), printer=lambda s: None)
    other = experiment.spec(datasets=("svhn",), seeds=(0,), iterations={"svhn": 10})
    with pytest.raises(
        ZsktError, match="other options, e.g. svhn/zero-shot/wrn-40-2_wrn-16-1/seed0 \\(iterations\\)"
    ):
        reproduce(experiment, other, tmp_path, executor=fake_executor([]), printer=lambda s: None)
    # More seeds into the same folder are fine: the finished runs are reused.
    calls = []
    more = experiment.spec(datasets=("svhn",), seeds=(0, 1))
    reproduce(experiment, more, tmp_path, executor=fake_executor(calls), printer=lambda s: None)
    assert len(calls) == 4 and all("seed1" in str(c) for c in calls)
