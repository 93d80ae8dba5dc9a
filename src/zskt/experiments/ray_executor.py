"""`zskt reproduce --executor ray`: a grid's runs as Ray tasks, many at once, on one machine or a cluster.

Every run is one task that runs `python -m zskt ARGV` in a child process on whichever node Ray picks, writing
the run's folder under the experiment folder, which every node must see at the same path (a shared file
system). The driver (`zskt reproduce`) keeps the books with the same loop as the local executors
(`runner.execute`): it submits a run once every run it needs has finished, reacts with `ray.wait` as tasks
end, and writes experiment.json and the report. Ray is an optional extra (`pip install 'zskt[ray]'`): it is
imported here only, when a pool is opened.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

from zskt.errors import ZsktError
from zskt.experiments.grid import Run
from zskt.experiments.runner import OUTPUT_LOG, Ended, run_argv

NEEDS_RAY = "--executor ray needs Ray; pip install 'zskt[ray]'"
CANCEL_GRACE = 60.0  # seconds a cancelled run gets to save its checkpoint before its worker is killed

log = logging.getLogger(__name__)

# `python -m zskt`, with SIGINT unblocked first: a Ray worker blocks SIGINT and a child inherits the signal
# mask, so without this the command could not be Ctrl-C'd into saving its checkpoint when its task is
# cancelled.
ZSKT_MAIN = (
    "import runpy, signal; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "runpy.run_module('zskt', run_name='__main__', alter_sys=True)"
)


def import_ray():
    """The `ray` module, or a one-line ZsktError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ZsktError(NEEDS_RAY) from None
    return ray


def run_on_worker(run: Run, out: str, common: list[str]) -> tuple[int, float, str]:
    """The body of one Ray task: `python -m zskt ARGV` for `run`, its output appended to the run's output.log
    (as the local subprocess executor does); returns (exit status, seconds, host). The argv is made here, from
    the folder as this worker sees it, so a task Ray retries after losing a node continues with --resume."""
    t0 = time.perf_counter()
    argv = run_argv(run, Path(out), common)
    log_path = Path(out) / run.id / OUTPUT_LOG
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Ray gives each task OMP_NUM_THREADS = its CPUs and CUDA_VISIBLE_DEVICES = its GPUs; the child inherits
    # both.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "a") as output:
        output.write(f"$ zskt {' '.join(argv)}\n")
        output.flush()
        proc = subprocess.Popen(
            [sys.executable, "-c", ZSKT_MAIN, *argv], stdout=output, stderr=subprocess.STDOUT, env=env
        )
        try:
            while True:  # poll, so that ray.cancel's KeyboardInterrupt is raised within a second
                try:
                    rc = proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    pass
        except KeyboardInterrupt:
            # Cancelled: Ctrl-C the command, as a terminal would, so it saves what it can and exits.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=CANCEL_GRACE / 2)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    return rc, time.perf_counter() - t0, socket.gethostname()


class RayPool:
    """A `runner.Pool` on Ray: every submitted run becomes a task at once (Ray queues it until a node has its
    CPUs and GPUs free). Use as a context manager: it connects on entry (`address` None starts a local
    instance, "auto" joins the cluster this machine is part of, or host:port / ray://host:port) and shuts
    down on exit what it started."""

    concurrent = True

    def __init__(
        self,
        address: str | None = None,
        gpus_per_run: float | None = None,
        cpus_per_run: float = 1.0,
        init_options: dict | None = None,
    ):
        self.address = address
        self.gpus_per_run = gpus_per_run
        self.cpus_per_run = cpus_per_run
        self.init_options = dict(init_options or {})
        self.in_flight: dict = {}  # ObjectRef -> (run id, its output.log)
        self.started = False
        self.ray = None
        self.task = None

    def __enter__(self) -> Self:
        ray = self.ray = import_ray()
        if not ray.is_initialized():
            options = dict(self.init_options)
            if self.address is None:  # a fresh local instance; Ray's dashboard is not part of plain `ray`
                options.setdefault("include_dashboard", False)
            try:
                ray.init(address=self.address, **options)
            except (
                ConnectionError,
                RuntimeError,
                ValueError,
            ) as e:  # no cluster at that address, or a bad one
                raise ZsktError(f"cannot start or reach Ray (--address {self.address}): {e}") from None
            self.started = True
        resources = ray.cluster_resources()
        if self.gpus_per_run is None:  # one GPU per run where there are GPUs
            self.gpus_per_run = 1.0 if resources.get("GPU", 0) > 0 else 0.0
        for name, per_run in (("GPU", self.gpus_per_run), ("CPU", self.cpus_per_run)):
            if per_run > resources.get(name, 0):
                log.warning(
                    "each run asks for %g %s(s) but the Ray cluster has %g: runs wait until nodes with "
                    "them join",
                    per_run,
                    name,
                    resources.get(name, 0),
                )
        self.task = ray.remote(run_on_worker).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run)
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False

    def describe(self) -> str:
        resources = self.ray.cluster_resources()
        return (
            f"Ray: {len([n for n in self.ray.nodes() if n.get('Alive')])} node(s), "
            f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; each run takes "
            f"{self.cpus_per_run:g} CPU(s) and {self.gpus_per_run:g} GPU(s)"
        )

    def has_room(self) -> bool:
        return True  # Ray holds the task until its resources are free

    def submit(self, run: Run, out: Path, common: list[str]) -> None:
        self.in_flight[self.task.remote(run, str(out), list(common))] = (
            run.id,
            Path(out) / run.id / OUTPUT_LOG,
        )

    def wait(self) -> list[Ended]:
        ray = self.ray
        refs = list(self.in_flight)
        ready: list = []
        while not ready:  # short waits, so that Ctrl-C reaches this loop promptly
            ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
        ended = []
        for ref in ready:
            run_id, log_path = self.in_flight.pop(ref)
            try:
                rc, seconds, host = ray.get(ref)
            except ray.exceptions.RayError as e:  # a lost node or worker, after Ray's retries: into the log
                log_path.parent.mkdir(parents=True, exist_ok=True)
                with open(log_path, "a") as output:
                    output.write(f"zskt reproduce: the Ray task failed: {type(e).__name__}: {e}\n")
                rc, seconds, host = -1, 0.0, ""
            ended.append(Ended(run_id, rc, seconds, host))
        return ended

    def cancel(self) -> None:
        """Ctrl-C every run in flight (a queued one simply never starts), give them CANCEL_GRACE seconds to
        save their checkpoints, then stop the workers that are still busy."""
        ray = self.ray
        refs = list(self.in_flight)
        for ref in refs:
            ray.cancel(ref, force=False)
        if refs:
            _, left = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE)
            for ref in left:
                ray.cancel(ref, force=True)
        self.in_flight.clear()
