"""The open core: a method registered inside a test (one config, one loop on the scaffold, one registry entry)
runs through the `zskt` CLI, an experiment grid and the report; the scaffold stops a diverging run."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from zskt.cli import main as cli_main
from zskt.config import field
from zskt.data import load_dataset
from zskt.experiments import Experiment, grid
from zskt.experiments.reproduce import reproduce
from zskt.experiments.runner import EXECUTORS
from zskt.losses import kl_divergence
from zskt.methods import registry
from zskt.methods.registry import Method, data_free
from zskt.methods.scaffold import Scaffold
from zskt.models import build_model, load_model, save_model
from zskt.reports import report

SIZE = 8


@dataclass(frozen=True)
class NoiseKDConfig:
    """A toy data-free method: the student matches the teacher on Gaussian noise images."""

    teacher: str = field("", "teacher file")
    student: str = field("wrn-16-1", "student network")
    dataset: str = field("digits", "data set (its test split scores the student)")
    iterations: int | None = field(None, "steps (default 4)")
    batch_size: int = field(16, "noise images per step")
    lr: float = field(1e-3, "Adam learning rate")
    eval_every: int | None = field(None, "log every this many steps (default 2)")
    image_size: int = field(SIZE, "digits image side")
    seed: int = field(0, "seed")
    device: str = field("cpu", "device")
    precision: str = field("fp32", "precision")

    @property
    def total_iterations(self) -> int:
        return self.iterations or 4


def noise_kd(cfg: NoiseKDConfig, log) -> dict:
    data = load_dataset(cfg.dataset, image_size=cfg.image_size)
    run = Scaffold(
        cfg,
        log,
        total=cfg.total_iterations,
        interval=cfg.eval_every or 2,
        unit="step",
        desc="noise-kd",
        batch_size=cfg.batch_size,
    )
    teacher = run.frozen_module(load_model(cfg.teacher))
    torch.manual_seed(cfg.seed)
    student = run.train_module(build_model(cfg.student, 10, 1))
    optimiser = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    noise = torch.Generator().manual_seed(cfg.seed)
    run.track(student=student, optimiser=optimiser, noise=noise)
    run.evaluate_on(student, data.test, data.mean, data.std)
    for _ in run.steps():
        x = torch.randn(cfg.batch_size, 1, SIZE, SIZE, generator=noise)
        with torch.no_grad():
            target = teacher(x)[0]
        loss = kl_divergence(student(x)[0], target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        run.add(student_loss=loss)
    if log.enabled:
        save_model(student, log.out / "model.pt", dataset=cfg.dataset, image_size=SIZE)
    return run.finish(student=cfg.student, dataset=cfg.dataset, seed=cfg.seed)


@pytest.fixture
def toy_method(monkeypatch):
    entry = Method(
        NoiseKDConfig, noise_kd, data_free("noise-kd", "noise KD (toy)"), "toy: KD on noise images"
    )
    monkeypatch.setitem(registry.METHODS, "noise-kd", entry)
    return entry


@pytest.fixture
def teacher_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    save_model(build_model("wrn-16-1", 10, 1), path, dataset="digits", image_size=SIZE)
    return path


def test_a_registered_method_is_a_command(toy_method, teacher_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        cli_main(["noise-kd", "--teacher", str(teacher_file), "--out", str(out), "--quiet", "-h"][:-1]) == 0
    )
    result = json.loads((out / "result.json").read_text())
    assert result["command"] == "noise-kd" and 0 <= result["test_accuracy"] <= 100
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and all(r["student_loss"] > 0 for r in rows)
    assert "noise-kd" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "toy: KD on noise images" in capsys.readouterr().out


def test_a_registered_method_runs_in_a_grid_and_its_report(toy_method, teacher_file, tmp_path):
    experiment = Experiment(
        "toy",
        "none",
        "the toy method on one pair",
        grid.dfkd_benchmark,
        {
            "datasets": ("digits",),
            "pair": ("wrn-16-1", "wrn-16-1"),
            "seeds": (0, 1),
            "methods": ("noise-kd",),
            "teachers": {("digits", "wrn-16-1"): str(teacher_file)},
            "belief_images": 3,
            "belief_steps": 2,
            "extra": {"belief": {"image_size": SIZE}},
        },
    )
    runs = experiment.runs()
    assert [r.id for r in runs if r.command == "noise-kd"] == [
        "digits/noise-kd/wrn-16-1_wrn-16-1/seed0",
        "digits/noise-kd/wrn-16-1_wrn-16-1/seed1",
    ]
    assert grid.parse_run_id(runs[0].id)["method"] == "noise-kd"
    outcome, path = reproduce(
        experiment,
        experiment.spec(),
        tmp_path / "grid",
        executor=EXECUTORS["inprocess"],
        printer=lambda line: None,
        report=report,
    )
    assert not outcome.failed, outcome.failed
    text = path.read_text()
    assert "Data-free methods, digits" in text and "noise KD (toy)" in text
    line = next(x for x in text.splitlines() if "noise KD (toy)" in x)
    assert "(n=2)" in line  # final accuracy over both seeds, and the MTE column filled from the belief runs


def test_a_diverging_run_stops_with_one_line_and_no_result(toy_method, teacher_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main(
        [
            "noise-kd",
            "--teacher",
            str(teacher_file),
            "--out",
            str(out),
            "--quiet",
            "--lr",
            "1e30",
            "--iterations",
            "6",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "diverged" in err and len(err.splitlines()) == 1, err
    assert not (out / "result.json").exists()


def test_the_digits_comparison_runs_every_data_free_method():
    from zskt.experiments import EXPERIMENTS
    from zskt.methods.registry import data_free_series

    runs = EXPERIMENTS["dfkd-digits"].runs()
    methods = {grid.parse_run_id(r.id)["method"] for r in runs if r.command != "belief"}
    assert {s.name for s in data_free_series()} <= methods
    assert {"zero-shot", "dafl", "dfad", "dfq", "deepinversion", "cmi", "fast", "nayer"} <= methods
    # every student's MTE is measured too
    assert sum(r.command == "belief" for r in runs) == len(data_free_series())


@pytest.mark.parametrize(
    "name", ["zero-shot", "deepinversion", "cmi", "fast", "nayer", "dafl", "dfad", "dfq"]
)
def test_data_free_configs_share_the_teacher_student_fields_and_their_checks(name):
    # One base declares teacher, student, data set and how the run computes: every data-free method takes
    # the project's own data sets (npz:/folder:), and refuses an unknown one, a nonsense precision or a bad
    # student in one line, alike.
    from zskt.errors import ZsktError
    from zskt.methods.common import TeacherStudentConfig

    config = registry.METHODS[name].config
    assert issubclass(config, TeacherStudentConfig)
    cfg = config(teacher="t.pt", dataset="npz:my_digits.npz")
    assert (cfg.dataset, cfg.trust_checkpoint, cfg.precision) == ("npz:my_digits.npz", False, "auto")
    for bad, words in (
        ({"dataset": "imagenet-22k"}, "imagenet-22k"),
        ({"precision": "fp8"}, "precision"),
        ({"student": "resnet-19"}, "resnet-19"),
        ({"student": "wrn-17-3"}, "depth 17"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
    ):
        with pytest.raises(ZsktError, match=words):
            config(teacher="t.pt", **bad)
