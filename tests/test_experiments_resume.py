"""Kill-and-rerun at toy scale, with the real commands: a grid whose runner is killed (SIGKILL, runner and
command together) in the middle of a run finishes on the next call, keeps the runs that had finished, and
continues the interrupted one from its checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from zskt.cli import main

# The mte grid on digits at toy lengths: teacher (1 epoch), zero-shot (10 pseudo batches, a checkpoint after
# each), KD+AT at M = 2, and the belief run of each student: 5 runs.
GRID = [
    "reproduce",
    "mte",
    "--dataset",
    "digits",
    "--seeds",
    "0",
    "--pair",
    "wrn-16-1,wrn-16-1",
    "-M",
    "2",
    "--scale",
    "0.05",
    "--device",
    "cpu",
]
ZERO_SHOT = "digits/zero-shot/wrn-16-1_wrn-16-1/seed0"
TEACHER = "digits/scratch/wrn-16-1/seed0"


def test_kill_and_rerun_at_toy_scale(tmp_path):
    out = tmp_path / "grid"
    proc = subprocess.Popen(
        [sys.executable, "-m", "zskt", *GRID, "--out", str(out), "--executor", "subprocess"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoint = out / ZERO_SHOT / "checkpoint.pt"
    deadline = time.monotonic() + 300
    try:
        while not checkpoint.is_file():
            assert proc.poll() is None, "the grid ended before the zero-shot run wrote a checkpoint"
            assert time.monotonic() < deadline, "no zero-shot checkpoint within 300 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and the command it is running
        proc.wait()
    assert not (out / ZERO_SHOT / "result.json").is_file(), "killed too late: the zero-shot run had finished"
    teacher_result = out / TEACHER / "result.json"
    finished_before = teacher_result.stat().st_mtime_ns

    assert main([*GRID, "--out", str(out), "--list"]) == 0
    assert main([*GRID, "--out", str(out), "--executor", "inprocess"]) == 0
    record = json.loads((out / "experiment.json").read_text())
    assert len(record["runs"]) == 5
    assert all((out / run_id / "result.json").is_file() for run_id in record["runs"])
    assert teacher_result.stat().st_mtime_ns == finished_before  # not run again
    log = (out / ZERO_SHOT / "output.log").read_text()
    assert log.count("$ zskt zero-shot") == 2  # the killed attempt and the resumed one
    resumed = [line for line in log.splitlines() if line.startswith("$ zskt zero-shot")][-1]
    assert resumed.endswith("--resume")
    assert json.loads((out / ZERO_SHOT / "result.json").read_text())["iterations"] == 10
    assert Path(out / "report.md").is_file()
    # A third call has nothing left to do.
    assert main([*GRID, "--out", str(out), "--executor", "inprocess"]) == 0
    assert log == (out / ZERO_SHOT / "output.log").read_text()
