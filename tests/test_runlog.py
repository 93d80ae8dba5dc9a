"""The run folder: finished runs are protected, resumes check their config, writes are atomic."""

import json

import pytest

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
