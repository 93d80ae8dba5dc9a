"""Grids across machines: `--print-commands` (a bash script in dependency waves, for a scheduler) and
`--executor ray` (every run a Ray task), each end to end at toy size on digits with the real commands; the
shared bookkeeping with several runs in flight; and the one-line error when Ray is not installed."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from zskt.cli import main
from zskt.experiments import EXPERIMENTS
from zskt.experiments.reproduce import print_commands
from zskt.experiments.runner import Ended, execute
from zskt.io import atomic_write_json

# The mte grid on digits at toy lengths (teacher 1 epoch, 2 pseudo batches, KD+AT at M = 2, belief runs of 10
# images x 2 steps): 5 runs in 3 waves, a few seconds each.
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
    "0.01",
    "--device",
    "cpu",
]
TEACHER = "digits/scratch/wrn-16-1/seed0"
ZERO_SHOT = "digits/zero-shot/wrn-16-1_wrn-16-1/seed0"
KD_AT = "digits/kd-at/wrn-16-1_wrn-16-1/M2/seed0"
WAVES = {
    TEACHER: 1,
    ZERO_SHOT: 2,
    KD_AT: 2,
    f"digits/belief/{ZERO_SHOT[7:]}": 3,
    f"digits/belief/{KD_AT[7:]}": 3,
}


def commands_by_wave(script: str, out: Path) -> dict[str, int]:
    """run id -> wave, from a --print-commands script; checks that every other line is a comment or set -e."""
    waves, wave = {}, 0
    for line in script.splitlines():
        header = re.fullmatch(r"# wave (\d+): (\d+) runs? .*", line)
        if header:
            wave = int(header[1])
        elif line.startswith("python -m zskt "):
            argv = shlex.split(line)
            folder = Path(argv[argv.index("--out") + 1])
            assert folder.is_absolute(), line
            waves[str(folder.relative_to(out.resolve()))] = wave
        else:
            assert line.startswith("#") or line == "set -e", line
    return waves


def test_print_commands_script_runs_the_grid_in_waves(tmp_path, capsys):
    out = tmp_path / "grid"
    assert main([*GRID, "--out", str(out), "--print-commands"]) == 0
    printed = capsys.readouterr()
    assert "5 command(s) in 3 wave(s)" in printed.err  # messages on stderr, the script alone on stdout
    assert printed.out.startswith("#!/usr/bin/env bash\n")
    record = json.loads((out / "experiment.json").read_text())  # recorded as a run would
    assert sorted(record["runs"]) == sorted(WAVES)
    waves = commands_by_wave(printed.out, out)
    assert waves == WAVES
    for run_id, run in record["runs"].items():  # a run comes in a later wave than every run it needs
        assert all(waves[dep] < waves[run_id] for dep in run["needs"].values())

    # bash alone runs it, from another folder.
    script = tmp_path / "runs.sh"
    script.write_text(printed.out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run(
        ["bash", str(script)], cwd=elsewhere, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert all((out / run_id / "result.json").is_file() for run_id in WAVES)
    assert main(["report", str(out)]) == 0
    assert "Mean transition error" in (out / "report.md").read_text()
    capsys.readouterr()

    # Nothing is left to print.
    assert main([*GRID, "--out", str(out), "--print-commands"]) == 0
    printed = capsys.readouterr()
    assert commands_by_wave(printed.out, out) == {} and "0 command(s) in 0 wave(s)" in printed.err


def test_print_commands_resumes_started_runs_and_skips_finished_ones(tmp_path):
    experiment = EXPERIMENTS["mte"]
    spec = experiment.spec(datasets=("svhn",), seeds=(0,))
    teacher, zero_shot = (
        tmp_path / "svhn/scratch/wrn-40-2/seed0",
        tmp_path / "svhn/zero-shot/wrn-40-2_wrn-16-1/seed0",
    )
    teacher.mkdir(parents=True)
    atomic_write_json(teacher / "result.json", {"test_accuracy": 90.0})
    zero_shot.mkdir(parents=True)
    (zero_shot / "checkpoint.pt").write_bytes(b"x")
    lines: list[str] = []
    n = print_commands(
        experiment,
        spec,
        tmp_path,
        common=["--data-dir", "/data"],
        script=lines.append,
        printer=lambda s: None,
    )
    assert n == 4
    script = "\n".join(lines)
    assert commands_by_wave(script, tmp_path) == {
        "svhn/zero-shot/wrn-40-2_wrn-16-1/seed0": 1,
        "svhn/kd-at/wrn-40-2_wrn-16-1/M200/seed0": 1,
        "svhn/belief/zero-shot/wrn-40-2_wrn-16-1/seed0": 2,
        "svhn/belief/kd-at/wrn-40-2_wrn-16-1/M200/seed0": 2,
    }
    resumed = [line for line in lines if line.startswith("python") and "--resume" in line]
    assert len(resumed) == 1 and f"--out {zero_shot.resolve()}" in resumed[0]
    assert all(
        line.endswith("--data-dir /data")
        for line in lines
        if line.startswith("python") and "--resume" not in line
    )
    assert "# wave 1: 2 runs with no unfinished dependencies" in lines


class HeldPool:
    """A pool with every submitted run in flight at once, ending them newest first (as a cluster might)."""

    concurrent = True

    def __init__(self, fail=()):
        self.held, self.fail, self.submitted = [], fail, []

    def has_room(self):
        return True

    def submit(self, run, out, common):
        self.held.append((run, out))
        self.submitted.append(run.id)

    def wait(self):
        run, out = self.held.pop()
        if run.id in self.fail:
            return [Ended(run.id, 1, 0.5, "node-2")]
        (out / run.id).mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / run.id / "result.json", {"test_accuracy": 50.0})
        return [Ended(run.id, 0, 1.0, "node-1")]

    def cancel(self):
        self.held.clear()


def test_several_runs_in_flight_keep_dependency_order_and_failures(tmp_path):
    runs = EXPERIMENTS["mte"].runs(datasets=("svhn",), seeds=(0, 1))
    failing = "svhn/zero-shot/wrn-40-2_wrn-16-1/seed0"
    pool, lines = HeldPool(fail=(failing,)), []
    outcome = execute(runs, tmp_path, pool=pool, printer=lines.append)
    assert pool.submitted[0] == "svhn/scratch/wrn-40-2/seed0"
    assert len(pool.submitted) == 8  # all but the belief run of the failed student
    assert outcome.failed == {failing: 1}
    assert outcome.blocked == {"svhn/belief/zero-shot/wrn-40-2_wrn-16-1/seed0": failing}
    assert len(outcome.done) == 7
    # With several runs in flight, each line names its run.
    assert any(re.fullmatch(r"\[2/9\] submitted svhn/.*", line) for line in lines)
    assert any(
        line.startswith(f"    FAILED {failing} (exit status 1)") and "on node-2" in line for line in lines
    )


def test_executor_ray_without_ray_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as where it is not installed
    out = tmp_path / "grid"
    assert main([*GRID, "--out", str(out), "--executor", "ray"]) == 2
    assert (
        capsys.readouterr().err
        == "zskt reproduce: error: --executor ray needs Ray; pip install 'zskt[ray]'\n"
    )
    assert not out.exists()
    assert main([*GRID, "--out", str(out), "--address", "auto"]) == 2
    assert "--address is for --executor ray" in capsys.readouterr().err


def test_ray_executor_runs_the_grid_and_then_skips_it(tmp_path, capsys, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the local Ray instance's workers and their runs
    out = tmp_path / "grid"
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20)
    try:
        assert main([*GRID, "--out", str(out), "--executor", "ray"]) == 0
        printed = capsys.readouterr().out
        assert "each run takes 1 CPU(s) and 0 GPU(s)" in printed  # no GPU in the cluster: none per run
        assert "mte: 5 run(s) done now, 5/5 finished, 0 failed" in printed
        assert all((out / run_id / "result.json").is_file() for run_id in WAVES)
        assert (out / "report.md").is_file()
        assert len(json.loads((out / "experiment.json").read_text())["runs"]) == 5
        # A student is submitted only once its teacher has finished.
        lines = printed.splitlines()
        teacher_done = next(i for i, line in enumerate(lines) if line.startswith(f"    done {TEACHER}"))
        assert all(
            i > teacher_done for i, line in enumerate(lines) if "submitted" in line and TEACHER not in line
        )
        assert (out / ZERO_SHOT / "output.log").read_text().startswith("$ zskt zero-shot ")

        finished = {run_id: (out / run_id / "result.json").stat().st_mtime_ns for run_id in WAVES}
        assert main([*GRID, "--out", str(out), "--executor", "ray"]) == 0
        printed = capsys.readouterr().out
        assert "submitted" not in printed and "mte: 0 run(s) done now, 5/5 finished" in printed
        assert finished == {run_id: (out / run_id / "result.json").stat().st_mtime_ns for run_id in WAVES}
    finally:
        ray.shutdown()


def test_nayer_embeddings_reach_the_nayer_runs_of_their_data_set(tmp_path, capsys):
    # --label-embeddings D=FILE goes to the NAYER runs on D (as an absolute path in a printed script) and to
    # no other run; a data set the experiment does not run, a malformed entry or a missing file is one line.
    le = tmp_path / "cifar10_le.npz"
    le.write_bytes(b"checked by zskt nayer itself")
    out = tmp_path / "exp"
    args = ["reproduce", "dfkd-benchmark", "--out", str(out), "--seeds", "0", "--print-commands"]
    assert main([*args, "--label-embeddings", f"cifar10={le}"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("python -m zskt")]
    with_le = [line for line in lines if "--label-embeddings" in line]
    assert with_le and all(" nayer " in line and "--dataset cifar10 " in line for line in with_le)
    assert all(f"--label-embeddings {le.resolve()}" in line for line in with_le)
    assert len(with_le) == sum(" nayer " in line and "--dataset cifar10 " in line for line in lines)
    for entry, words in (
        (f"svhn={le}", "which this experiment does not run"),
        ("cifar10", "expected DATASET=FILE"),
        (f"cifar100={tmp_path / 'none.npz'}", "file not found"),
    ):
        assert main([*args, "--label-embeddings", entry]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
