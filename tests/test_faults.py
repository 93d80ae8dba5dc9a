"""Nothing is lost, ever: each way a run can go wrong, at toy size, with the real commands where the command
line matters (docs/decisions.md, "Run folders: one writer, safe overwrite").

- `--overwrite` sets the old run aside and puts it back intact when the new run fails before its first
  checkpoint (also after a kill -9 in between);
- one writer per run folder: a second zskt on the same --out is refused in one line naming the first; a lock
  left by a killed process is taken over; `zskt reproduce` skips a run another process is writing;
- an --out that cannot be made, a full disk: one line, exit 2, the last checkpoint still valid;
- no silent unpickling: a checkpoint whose pickle would run code is refused unless trusted;
- a resume with a changed config is refused, and allowed for the fields the user names.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import zskt
from zskt.cli import describe_os_error, main
from zskt.errors import ZsktError
from zskt.models.checkpoints import UntrustedCheckpoint, load_model, read_checkpoint, trusting_checkpoints
from zskt.runlog import RunLog, aside_path, held_by, is_finished, lock_path

SRC = str(Path(zskt.__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
# A train run of seconds: 3 epochs of WRN-16-1 on 20 digits per class, a checkpoint after epochs 1 and 2.
TINY = [
    "train",
    "--dataset",
    "digits",
    "--model",
    "wrn-16-1",
    "--images-per-class",
    "20",
    "--epochs",
    "3",
    "--eval-every",
    "1",
    "--batch-size",
    "32",
    "--device",
    "cpu",
    "--quiet",
]


def zskt_cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m zskt ARGV` in a child process (the CLI's exit status and stderr as a user sees them)."""
    return subprocess.run(
        [sys.executable, "-m", "zskt", *argv],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        check=False,
    )


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    done = zskt_cli(*TINY, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def copy_of(run: Path, where: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, where / run.name))


# ----------------------------------------------------------------------------------------------- overwrite


def test_failed_overwrite_puts_the_old_run_back_intact(finished_run, tmp_path):
    out = copy_of(finished_run, tmp_path)
    before = files(out)
    empty = tmp_path / "no-data"
    empty.mkdir()
    failed = zskt_cli(
        "train",
        "--dataset",
        "cifar10",
        "--data-dir",
        str(empty),
        "--epochs",
        "1",
        "--out",
        str(out),
        "--overwrite",
        "--quiet",
    )
    assert failed.returncode == 2
    assert one_line(failed.stderr).startswith("zskt train: error: ")
    assert files(out) == before  # result, metrics, config and model exactly as they were
    assert not aside_path(out).exists() and not lock_path(out).exists()


def test_overwrite_commits_at_the_first_checkpoint_and_rolls_back_before(tmp_path):
    out = tmp_path / "run"
    old = RunLog(out, command="train", config={"lr": 0.1}, quiet=True)
    old.finish({"test_accuracy": 90.0})
    old.close()
    before = files(out)

    new = RunLog(out, command="train", config={"lr": 0.2}, overwrite=True, quiet=True)
    assert aside_path(out).is_dir() and not is_finished(out)  # set aside, not deleted
    new.metrics({"step": 1})
    new.close(failed=True)  # the new run failed before any checkpoint
    assert new.restored and files(out) == before and not aside_path(out).exists()

    new = RunLog(out, command="train", config={"lr": 0.2}, overwrite=True, quiet=True)
    new.save_checkpoint({"step": 1})
    assert not aside_path(out).exists()  # committed: the new run has a checkpoint of its own
    new.close(failed=True)
    assert not new.restored and (out / "checkpoint.pt").is_file()
    assert json.loads((out / "config.json").read_text())["lr"] == 0.2


def test_overwrite_killed_before_its_first_checkpoint_is_undone_at_the_next_start(finished_run, tmp_path):
    out = copy_of(finished_run, tmp_path)
    before = files(out)
    # A process that starts an overwrite and dies (SIGKILL) before the new run's first checkpoint.
    script = textwrap.dedent(f"""
        import os, signal
        from zskt.runlog import RunLog
        RunLog({str(out)!r}, command="train", config={{"lr": 9.0}}, overwrite=True, quiet=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert aside_path(out).is_dir() and not is_finished(out)
    # The next zskt on that folder finishes the job first: the finished run is back, and protected.
    again = zskt_cli(*TINY, "--out", str(out))
    assert again.returncode == 2 and "already holds a finished run" in one_line(again.stderr)
    assert files(out) == before and not aside_path(out).exists()


# ----------------------------------------------------------------------------------------------- one writer

HOLD = textwrap.dedent("""
    import sys, time
    from zskt.runlog import RunLog
    log = RunLog(sys.argv[1], command="train", config={}, quiet=True)
    print("holding", flush=True)
    time.sleep(120)
""")


def hold_lock(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        assert held_by(out)["pid"] == holder.pid
        refused = zskt_cli(*TINY, "--out", str(out))
        assert refused.returncode == 2
        line = one_line(refused.stderr)
        assert "is being written by zskt train" in line and f"process {holder.pid}" in line, line
        for extra in ("--resume", "--overwrite"):
            assert main([*TINY, "--out", str(out), extra]) == 2
            assert f"process {holder.pid}" in one_line(capsys.readouterr().err)
        with pytest.raises(ZsktError, match=f"process {holder.pid}"):  # the same in Python
            RunLog(out, command="train", config={}, quiet=True)
    finally:
        holder.kill()  # SIGKILL: no cleanup; the lock file stays behind
        holder.wait()
    assert lock_path(out).is_file() and held_by(out) is None
    assert main([*TINY, "--out", str(out), "--overwrite", "--epochs", "1"]) == 0
    assert is_finished(out) and not lock_path(out).exists()  # released at the end


def test_runner_reports_a_busy_run_and_leaves_it_alone(tmp_path):
    from zskt.experiments.grid import Run
    from zskt.experiments.runner import execute

    run = Run(
        id="digits/scratch/wrn-16-1/seed0",
        command="train",
        options={"dataset": "digits", "model": "wrn-16-1", "epochs": 1, "images_per_class": 5},
    )
    holder = hold_lock(tmp_path / run.id)
    started = []
    try:
        lines: list[str] = []
        outcome = execute(
            [run], tmp_path, executor=lambda argv, log, echo: started.append(argv) or 0, printer=lines.append
        )
    finally:
        holder.kill()
        holder.wait()
    assert not started and not outcome.ok
    assert f"process {holder.pid}" in outcome.busy[run.id]
    assert any("skipped" in line and run.id in line for line in lines)


# ----------------------------------------------------------------------------------------------- one line


@pytest.mark.parametrize("where", ["proc", "under-a-file"])
def test_an_out_that_cannot_be_made_is_one_line(tmp_path, where):
    if where == "proc":
        out = "/proc/zskt-cannot-be-here/run"
    else:
        (tmp_path / "a-file").write_text("not a folder")
        out = str(tmp_path / "a-file" / "run")
    failed = zskt_cli(*TINY, "--out", out)
    assert failed.returncode == 2
    line = one_line(failed.stderr)
    assert line.startswith("zskt train: error: ") and "Traceback" not in failed.stderr
    assert ("/proc/zskt-cannot-be-here" if where == "proc" else str(tmp_path / "a-file")) in line, line


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_an_out_without_write_permission_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        failed = zskt_cli(*TINY, "--out", str(locked / "run"))
    finally:
        locked.chmod(0o700)
    assert failed.returncode == 2 and "permission" in one_line(failed.stderr)


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "no space left"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "permission"),
        (errno.ENOTDIR, "not a folder"),
    ],
)
def test_os_errors_name_the_path_and_the_fix(code, words):
    line = describe_os_error(OSError(code, os.strerror(code), "/some/where/checkpoint.pt"))
    assert "\n" not in line and line.startswith("/some/where/checkpoint.pt: ") and words in line


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    import zskt.io

    out = tmp_path / "run"
    real_save = torch.save
    saves = []

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:  # the second checkpoint: half written, then the disk is full
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(zskt.io.torch, "save", save_until_the_disk_is_full)
    assert main([*TINY, "--out", str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "no space left" in line and "--resume" in line
    monkeypatch.setattr(zskt.io.torch, "save", real_save)
    assert read_checkpoint(out / "checkpoint.pt")["step"] == 1  # the first checkpoint, intact
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []  # no half file left
    assert main([*TINY, "--out", str(out), "--resume"]) == 0 and is_finished(out)


# ----------------------------------------------------------------------------------------------- unpickling


class _Mkdir:
    """Pickles as a call of os.mkdir(path): loading the file in full would create the folder."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def malicious_file(path: Path, marker: Path, weights: dict) -> Path:
    torch.save({"state_dict": weights, "payload": _Mkdir(str(marker))}, path)
    return path


def test_a_pickle_that_runs_code_is_refused_unless_trusted(tmp_path):
    from zskt.models.wresnet import WideResNet

    marker = tmp_path / "the-pickle-ran"
    path = malicious_file(tmp_path / "teacher.pt", marker, WideResNet(16, 1, num_classes=10).state_dict())
    with pytest.raises(UntrustedCheckpoint, match="--trust-checkpoint") as refused:
        load_model(path)
    assert "mkdir" in str(refused.value) and "\n" not in str(refused.value)
    assert not marker.exists()
    # The test's pickle does run code when trusted: the refusal above is what kept it from running.
    assert isinstance(load_model(path, trust=True), torch.nn.Module) and marker.is_dir()
    marker.rmdir()
    with trusting_checkpoints():
        read_checkpoint(path)
    assert marker.is_dir()


def test_a_resume_from_a_malicious_checkpoint_is_one_line_and_runs_nothing(tmp_path):
    out = tmp_path / "run"
    log = RunLog(out, command="train", config={"lr": 0.1}, quiet=True)
    log.save_checkpoint({"step": 1})
    log.close()
    marker = tmp_path / "the-pickle-ran"
    torch.save({"step": 1, "payload": _Mkdir(str(marker))}, out / "checkpoint.pt")
    with pytest.raises(ZsktError, match="--trust-checkpoint"):
        RunLog(out, command="train", config={"lr": 0.1}, resume=True, quiet=True).load_checkpoint()
    assert not marker.exists()


def test_the_cli_refuses_an_untrusted_teacher_in_one_line(tmp_path):
    from zskt.models.wresnet import WideResNet

    marker = tmp_path / "the-pickle-ran"
    path = malicious_file(tmp_path / "teacher.pt", marker, WideResNet(16, 1, num_classes=10).state_dict())
    failed = zskt_cli(
        "kd-at",
        "--dataset",
        "digits",
        "--teacher",
        str(path),
        "--student",
        "wrn-16-1",
        "--images-per-class",
        "2",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "kd"),
    )
    assert failed.returncode == 2 and "--trust-checkpoint" in one_line(failed.stderr)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------- resume


def interrupted_run(out: Path, monkeypatch) -> None:
    """TINY cut short right after its first checkpoint (as by Ctrl-C)."""
    original = RunLog.save_checkpoint

    def save_then_stop(self, state):
        original(self, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunLog, "save_checkpoint", save_then_stop)
    assert main([*TINY, "--out", str(out)]) == 130
    monkeypatch.setattr(RunLog, "save_checkpoint", original)
    assert (out / "checkpoint.pt").is_file() and not is_finished(out)


def test_a_changed_config_is_refused_on_resume_unless_named(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupted_run(out, monkeypatch)
    capsys.readouterr()
    assert main([*TINY, "--out", str(out), "--resume", "--lr", "0.05"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "different config" in line and "lr: 0.1 -> 0.05" in line and "--allow-config-change lr" in line
    assert main([*TINY, "--out", str(out), "--resume", "--lr", "0.05", "--allow-config-change", "seed"]) == 2
    assert main([*TINY, "--out", str(out), "--resume", "--lr", "0.05", "--allow-config-change", "lr"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.05
    assert config["config_changes"] == [{"step": 1, "changed": {"lr": [0.1, 0.05]}}]
    assert is_finished(out)


def test_a_run_started_again_without_a_checkpoint_does_not_double_its_metrics(tmp_path):
    out = tmp_path / "run"
    RunLog(out, command="x", config={}, quiet=True).metrics({"step": 1, "loss": 1.0})  # then killed
    for resume in (True, False):
        log = RunLog(out, command="x", config={}, resume=resume, quiet=True)
        assert log.load_checkpoint() is None
        log.metrics({"step": 1, "loss": 0.5})
        log.close()
        assert [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0.5]


@pytest.mark.parametrize("schedule", ["multistep", "lambda"])
def test_a_changed_learning_rate_continues_as_if_started_with_it(tmp_path, schedule):
    def make(lr):
        w = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.SGD([w], lr=lr, momentum=0.9)
        sched = (
            torch.optim.lr_scheduler.MultiStepLR(opt, [2, 4], 0.2)
            if schedule == "multistep"
            else torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + step))
        )
        return w, opt, sched

    def steps(w, opt, sched, n):
        for _ in range(n):
            opt.zero_grad()
            w.square().sum().backward()
            opt.step()
            sched.step()

    out = tmp_path / "run"
    log = RunLog(out, command="x", config={"lr": 0.1}, quiet=True)
    w, opt, sched = make(0.1)
    steps(w, opt, sched, 3)
    log.save_checkpoint({"step": 3, "opt": opt.state_dict(), "sched": sched.state_dict()})
    log.close()
    log = RunLog(out, command="x", config={"lr": 0.05}, resume=True, allow_change=("lr",), quiet=True)
    state = log.load_checkpoint()
    w2, opt2, sched2 = make(0.05)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert opt2.param_groups[0]["lr"] != pytest.approx(_lr_at(0.05, schedule, 3))  # restored: the old rate
    assert log.apply_lr_change("lr", opt2, sched2)
    assert opt2.param_groups[0]["lr"] == pytest.approx(_lr_at(0.05, schedule, 3))
    lrs = []
    for _ in range(3):
        steps(w2, opt2, sched2, 1)
        lrs.append(opt2.param_groups[0]["lr"])
    assert lrs == pytest.approx([_lr_at(0.05, schedule, k) for k in (4, 5, 6)])
    assert not log.apply_lr_change("momentum", opt2)


def _lr_at(lr: float, schedule: str, step: int) -> float:
    return lr * 0.2 ** sum(step >= m for m in (2, 4)) if schedule == "multistep" else lr / (1 + step)


def test_allow_config_change_needs_resume_and_real_option_names(tmp_path, capsys):
    assert main([*TINY, "--out", str(tmp_path / "a"), "--allow-config-change", "lr"]) == 2
    assert "--resume" in one_line(capsys.readouterr().err)
    RunLog(tmp_path / "b", command="train", config={"lr": 0.1}, quiet=True).save_checkpoint({"step": 1})
    with pytest.raises(ZsktError, match="no_such_option"):
        RunLog(
            tmp_path / "b",
            command="train",
            config={"lr": 0.2},
            resume=True,
            quiet=True,
            allow_change=("no_such_option",),
        )


# ----------------------------------------------------------------------------------------------- same numbers


def test_the_same_seed_gives_the_same_numbers_with_a_fixed_thread_count(tmp_path):
    results, weights = [], []
    threads = torch.get_num_threads()
    for name in ("a", "b"):
        try:
            assert main([*TINY, "--epochs", "1", "--threads", "1", "--out", str(tmp_path / name)]) == 0
        finally:
            torch.set_num_threads(threads)
        results.append(json.loads((tmp_path / name / "result.json").read_text())["test_accuracy"])
        weights.append(load_model(tmp_path / name / "model.pt").state_dict())
        assert json.loads((tmp_path / name / "environment.json").read_text())["torch_threads"] == 1
    assert results[0] == results[1]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_kill_during_a_run_then_resume_gives_the_uninterrupted_result(tmp_path):
    assert main([*TINY, "--out", str(tmp_path / "straight")]) == 0
    out = tmp_path / "cut"
    proc = subprocess.Popen(
        [sys.executable, "-m", "zskt", *TINY, "--out", str(out)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    if is_finished(out):
        pytest.skip("the run finished before it could be killed")
    how = "--resume" if (out / "checkpoint.pt").is_file() else "--overwrite"
    resumed = zskt_cli(*TINY, "--out", str(out), how)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "straight" / "result.json").read_text())["test_accuracy"]
    b = json.loads((out / "result.json").read_text())["test_accuracy"]
    assert a == b
