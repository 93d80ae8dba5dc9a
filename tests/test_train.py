"""Teacher / scratch training end to end at toy size, its resume equivalence, and the CLI around it."""

import json

import pytest
import torch

import zskt
from zskt.cli import main
from zskt.config import to_dict
from zskt.errors import ZsktError
from zskt.methods.train import TrainConfig, train
from zskt.runlog import RunLog

TOY = {
    "dataset": "digits",
    "model": "wrn-16-1",
    "image_size": 8,
    "epochs": 4,
    "eval_every": 1,
    "batch_size": 64,
    "device": "cpu",
}


def run(out, cfg, **kw):
    log = RunLog(out, command="train", config=to_dict(cfg), quiet=True, **kw)
    return train(cfg, log)


class Interrupt(Exception):
    pass


def test_train_writes_folder_and_learns(tmp_path):
    cfg = TrainConfig(**TOY)
    result = run(tmp_path / "a", cfg)
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"config.json", "metrics.jsonl", "model.pt", "result.json"} <= files
    assert "checkpoint.pt" not in files
    saved = json.loads((tmp_path / "a" / "result.json").read_text())
    assert saved["test_accuracy"] == result["test_accuracy"] > 50.0  # 10 classes: chance is 10 %
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    model = zskt.load_model(tmp_path / "a" / "model.pt")
    assert not model.training and model.arch()["name"] == "wrn-16-1" and model.in_channels == 1


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    cfg = TrainConfig(**TOY)
    straight = run(tmp_path / "straight", cfg)

    saves = []
    original = RunLog.save_checkpoint

    def save_then_die(self, state):
        original(self, state)
        saves.append(state["step"])
        if len(saves) == 2:
            raise Interrupt

    monkeypatch.setattr(RunLog, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupt):
        run(tmp_path / "cut", cfg)
    monkeypatch.setattr(RunLog, "save_checkpoint", original)
    assert (tmp_path / "cut" / "checkpoint.pt").exists() and not (tmp_path / "cut" / "result.json").exists()
    resumed = run(tmp_path / "cut", cfg, resume=True)

    assert resumed["test_accuracy"] == straight["test_accuracy"]
    a = zskt.load_model(tmp_path / "straight" / "model.pt").state_dict()
    b = zskt.load_model(tmp_path / "cut" / "model.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x)["epoch"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4]


def test_no_teacher_baseline_uses_m_per_class_and_scaled_epochs(tmp_path):
    cfg = TrainConfig(**{**TOY, "epochs": 2, "images_per_class": 3})
    result = run(tmp_path / "m3", cfg)
    # 1400 train images, M = 3: scale = 1400 / 30, epochs = int(2 * 46.67) = 93 on 30 images (1 batch each).
    assert result["epochs"] == 93 and result["iterations"] == 93


def test_cli_train_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "train",
        "--dataset",
        "digits",
        "--model",
        "wrn-16-1",
        "--image-size",
        "8",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    assert "test_accuracy" in capsys.readouterr().out
    assert main(argv) == 2  # finished folder is not overwritten silently
    err = capsys.readouterr().err
    assert "already holds a finished run" in err and len(err.strip().splitlines()) == 1
    for bad, words in [
        (["--epochs", "-1"], "epochs must be positive"),
        (["--model", "vgg"], "unknown model"),
        (["--dataset", "mnist"], "unknown data set"),
    ]:
        assert main(["train", "--out", str(tmp_path / "x"), *bad]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(tmp_path / "x"), "--no-such-option", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and len(err.strip().splitlines()) == 1


def test_cli_help_and_list(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--images-per-class" in text and "--nesterov" in text and "paper: 0.1" in text
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "175,066" in text and "2,243,546" in text and "digits" in text and "embedded" in text


def test_missing_data_file_is_one_line_error(tmp_path, capsys):
    assert (
        main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err
    assert "not found" in err and "download" in err and len(err.strip().splitlines()) == 1


def test_bad_config_values_raise(tmp_path):
    with pytest.raises(ZsktError):
        TrainConfig(dataset="digits", batch_size=0)
