"""The run folder: finished runs are protected, resumes check their config, writes are atomic."""

import datetime
import json
import re
import time

import pytest
import torch

from zskt.errors import ZsktError
from zskt.runlog import RunLog, is_finished


def test_folder_lifecycle(tmp_path):
    out = tmp_path / "run"
    log = RunLog(out, command="train", config={"a": 1}, environment={"torch": "x"}, quiet=True)
    assert json.loads((out / "config.json").read_text()) == {"command": "train", "a": 1}
    log.metrics({"step": 1, "loss": 0.5})
    log.save_checkpoint({"step": 1, "w": [1, 2]})
    log.metrics({"step": 2, "loss": 0.4})
    # An unfinished run must not be clobbered by accident ...
    with pytest.raises(ZsktError, match="--resume"):
        RunLog(out, command="train", config={"a": 1}, quiet=True)
    # ... a resume with another config is refused ...
    with pytest.raises(ZsktError, match="different config"):
        RunLog(out, command="train", config={"a": 2}, resume=True, quiet=True)
    # ... and a resume drops metric rows past the checkpoint (they will be computed again).
    log = RunLog(out, command="train", config={"a": 1}, resume=True, quiet=True)
    assert log.load_checkpoint()["w"] == [1, 2]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    log.finish({"test_accuracy": 99.0})
    assert is_finished(out) and not (out / "checkpoint.pt").exists()
    with pytest.raises(ZsktError, match="finished run"):
        RunLog(out, command="train", config={"a": 1}, quiet=True)
    RunLog(out, command="train", config={"a": 3}, overwrite=True, quiet=True)
    assert not is_finished(out)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    log = RunLog(tmp_path / "r", command="x", config={}, quiet=True)
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ZsktError, match="cannot be read"):
        log.load_checkpoint()


def test_disabled_log_writes_nothing(tmp_path):
    log = RunLog(tmp_path / "r", command="x", config={}, enabled=False)
    log.metrics({"step": 1})
    log.save_checkpoint({"step": 1})
    log.finish({"test_accuracy": 1.0})
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------- rows for schedulers, provenance, TensorBoard


def test_rows_without_a_terminal_show_step_rate_eta_and_losses(tmp_path, capsys):
    log = RunLog(tmp_path / "r", command="x", config={}, progress_every=0.0)  # a row at every update
    bar = log.progress(10, desc="toy", unit="batch")
    bar.update(1)
    bar.set_postfix_str("G 0.1234 S 0.5678")
    bar.update(3)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("toy ")]
    assert len(lines) == 2
    assert "1/10 batch" in lines[0] and "4/10 batch" in lines[1]
    assert re.search(r"eta \d+:\d\d", lines[1]) and re.search(r" batch/s | s/batch ", lines[1])
    assert lines[1].endswith("G 0.1234 S 0.5678")
    log.close_progress()
    # The 60 s default: no row within a short run; and none when quiet.
    log = RunLog(tmp_path / "r2", command="x", config={})
    bar = log.progress(10, desc="toy")
    bar.update(5)
    log = RunLog(tmp_path / "r3", command="x", config={}, quiet=True, progress_every=0.0)
    log.progress(10, desc="toy").update(5)
    assert "toy" not in capsys.readouterr().out


def test_metrics_rows_carry_wall_time_and_elapsed_continues_after_resume(tmp_path):
    out = tmp_path / "r"
    log = RunLog(out, command="x", config={}, quiet=True)
    before = time.time()
    log.metrics({"step": 1, "loss": 0.5})
    log._elapsed_before = 100.0  # as if the run had been going for 100 s
    log.metrics({"step": 2, "loss": 0.4})
    log.save_checkpoint({"step": 2})
    log.metrics({"step": 3, "loss": 0.3})
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(before - 1 <= r["time"] <= time.time() + 1 for r in rows)
    assert 0 <= rows[0]["elapsed"] < 100 <= rows[1]["elapsed"] < 200
    resumed = RunLog(out, command="x", config={}, resume=True, quiet=True)
    resumed.load_checkpoint()
    resumed.metrics({"step": 3, "loss": 0.3})
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["elapsed"] >= rows[1]["elapsed"] >= 100


def test_provenance_times_input_files_and_runtime(tmp_path):
    import hashlib

    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"weights" * 1000)
    config = {"teacher": str(teacher), "student": "wrn-16-1", "init": "", "device": "auto"}
    log = RunLog(tmp_path / "r", command="x", config=config, environment={"torch": "x"}, quiet=True)
    log.record_runtime(device=torch.device("cpu"), precision="fp32")
    result = log.finish({"test_accuracy": 1.0})
    expected = {
        "path": str(teacher.resolve()),
        "bytes": 7000,
        "sha256": hashlib.sha256(b"weights" * 1000).hexdigest(),
    }
    saved = json.loads((tmp_path / "r" / "result.json").read_text())
    assert saved == result
    assert saved["inputs"] == {"teacher": expected}  # "wrn-16-1" names a network, not a file; "" is no file
    assert saved["device"] == "cpu" and saved["precision"] == "fp32"
    started = datetime.datetime.fromisoformat(saved["started"])
    finished = datetime.datetime.fromisoformat(saved["finished"])
    assert started.tzinfo is not None and started <= finished
    env = json.loads((tmp_path / "r" / "environment.json").read_text())
    assert env["started"] == saved["started"] and env["finished"] == saved["finished"]
    assert env["inputs"]["teacher"]["sha256"] == expected["sha256"]
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["device"] == "auto" and cfg["resolved"]["runtime"] == {"device": "cpu", "precision": "fp32"}
    assert cfg["resolved"]["inputs"]["teacher"] == expected


def test_resume_keeps_the_first_start(tmp_path):
    out = tmp_path / "r"
    log = RunLog(out, command="x", config={}, environment={}, quiet=True)
    log.save_checkpoint({"step": 1})
    env = json.loads((out / "environment.json").read_text())
    env["started"] = "2020-01-01T00:00:00+00:00"
    (out / "environment.json").write_text(json.dumps(env))
    resumed = RunLog(out, command="x", config={}, environment={}, resume=True, quiet=True)
    assert resumed.finish({})["started"] == "2020-01-01T00:00:00+00:00"


class FakeWriter:
    """The part of torch.utils.tensorboard.SummaryWriter that RunLog uses, recording the calls."""

    def __init__(self, logdir):
        self.logdir, self.scalars, self.images, self.closed = logdir, [], [], False

    def add_scalar(self, tag, value, global_step=None, walltime=None):
        self.scalars.append((tag, value, global_step))

    def add_image(self, tag, image, global_step=None, walltime=None, dataformats="CHW"):
        self.images.append((tag, tuple(image.shape), dataformats, global_step, float(image.max())))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_mirror_of_metrics_rows_and_images(tmp_path, monkeypatch):
    import numpy as np

    import zskt.runlog

    writers = []
    monkeypatch.setattr(
        zskt.runlog, "tensorboard_writer", lambda d: writers.append(FakeWriter(d)) or writers[-1]
    )
    log = RunLog(tmp_path / "r", command="x", config={}, quiet=True, tensorboard=True)
    (writer,) = writers
    assert writer.logdir == tmp_path / "r" / "tensorboard"
    log.metrics({"step": 5, "student_loss": 0.25, "test_accuracy": 50.0, "note": "text", "flag": True})
    log.image("pseudo", np.full((6, 8, 3), 2.0), 5)
    log.image("pseudo_grey", torch.zeros(6, 8), 5)
    assert sorted(t for t, _, _ in writer.scalars) == ["elapsed", "student_loss", "test_accuracy"]
    assert ("student_loss", 0.25, 5) in writer.scalars and ("test_accuracy", 50.0, 5) in writer.scalars
    assert writer.images == [("pseudo", (6, 8, 3), "HWC", 5, 1.0), ("pseudo_grey", (6, 8, 1), "HWC", 5, 0.0)]
    log.finish({})
    assert writer.closed
    # Without --tensorboard, image() is a no-op and no writer is made.
    plain = RunLog(tmp_path / "p", command="x", config={}, quiet=True)
    plain.image("pseudo", np.zeros((2, 2)), 1)
    assert len(writers) == 1


def test_tensorboard_missing_is_a_one_line_error_before_anything_is_written(tmp_path):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorboard is installed here")
    with pytest.raises(ZsktError, match=r"pip install 'zskt\[tensorboard\]'"):
        RunLog(tmp_path / "r", command="x", config={}, quiet=True, tensorboard=True)
    assert not (tmp_path / "r").exists()


def test_the_pseudo_image_grid_goes_to_tensorboard_as_saved(tmp_path, monkeypatch):
    import zskt.runlog
    from zskt.images import save_image_grid

    writer = FakeWriter(tmp_path)
    monkeypatch.setattr(zskt.runlog, "tensorboard_writer", lambda d: writer)
    log = RunLog(tmp_path / "r", command="x", config={}, quiet=True, tensorboard=True)
    grid = save_image_grid(torch.zeros(4, 3, 8, 8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tmp_path / "g.png")
    log.image("pseudo", grid, 7)
    # 4 images of 8x8 enlarged x4, in a 2x2 grid with 1-pixel lines: 2*(32+1)+1 = 67 pixels a side.
    assert grid.shape == (67, 67, 3) and (tmp_path / "g.png").is_file()
    assert writer.images == [("pseudo", (67, 67, 3), "HWC", 7, 1.0)]


def test_resume_refuses_an_input_file_replaced_under_the_same_path(tmp_path):
    # The teacher (or NAYER's embeddings) file a run started from is pinned by its sha256: a resume after the
    # file was overwritten in place is refused in one line, unless the change is allowed by name.
    teacher, embeddings = tmp_path / "teacher.pt", tmp_path / "le.npz"
    teacher.write_bytes(b"weights")
    embeddings.write_bytes(b"codes")
    config = {"teacher": str(teacher), "label_embeddings": str(embeddings), "lr": 0.1}
    out = tmp_path / "r"
    RunLog(out, command="x", config=config, quiet=True).save_checkpoint({"step": 1})
    RunLog(out, command="x", config=config, resume=True, quiet=True)  # unchanged files: fine
    embeddings.write_bytes(b"other codes")
    with pytest.raises(ZsktError) as caught:
        RunLog(out, command="x", config=config, resume=True, quiet=True)
    text = str(caught.value)
    assert "--label-embeddings file" in text and "changed since the run started" in text and "\n" not in text
    assert "--allow-config-change label_embeddings" in text
    log = RunLog(out, command="x", config=config, resume=True, quiet=True, allow_change=("label_embeddings",))
    assert log.inputs["label_embeddings"]["sha256"] != log.inputs["teacher"]["sha256"]
