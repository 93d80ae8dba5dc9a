"""The runner: a grid's missing runs, in dependency order, each a `zskt` command writing its own run folder.

A folder with `result.json` is finished and never run again; one with `checkpoint.pt` is continued with
`--resume`; one that was started but left no checkpoint is started again (`--overwrite` clears its partial
metrics). So the runner can be killed at any point and simply rerun. `execute` keeps the books (what may
start, what finished, what failed and what that blocks) and hands runs to a pool: `SerialPool` runs them one
at a time here through an executor function; `ray_executor.RayPool` runs many at once on a Ray cluster.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from zskt.experiments.grid import Run, order_runs
from zskt.runlog import CHECKPOINT, RESULT, describe_holder, held_by, is_finished, read_json

DONE, PARTIAL, TODO = "done", "partial", "todo"
OUTPUT_LOG = "output.log"  # the command's own output, appended on every attempt, in its run folder


def status(run: Run, out: Path) -> str:
    """done (result.json), partial (started: checkpoint or config, no result), or todo."""
    folder = Path(out) / run.id
    if is_finished(folder):
        return DONE
    if (folder / CHECKPOINT).is_file() or (folder / "config.json").is_file():
        return PARTIAL
    return TODO


def run_argv(run: Run, out: Path, common: Iterable[str] = (), folder_state: bool = True) -> list[str]:
    """The `zskt` arguments that perform `run` in `out/run.id`: its options, the files of the runs it needs,
    `common` (options every run takes, e.g. --data-dir), and (with `folder_state`) --resume for a folder with
    a checkpoint or --overwrite for one started without."""
    folder = Path(out) / run.id
    argv = [run.command]
    for key, value in {
        **run.options,
        **{k: str(Path(out) / dep / "model.pt") for k, dep in run.needs.items()},
    }.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, str(value)]
    argv += ["--out", str(folder), *common]
    if not folder_state:
        return argv
    if (folder / CHECKPOINT).is_file():
        argv.append("--resume")
    elif (folder / "config.json").is_file():
        argv.append("--overwrite")  # started, killed before its first checkpoint: begin again, cleanly
    return argv


def ready_runs(runs: list[Run], out: Path, skip: set[str] = frozenset()) -> Iterator[Run]:
    """Unfinished runs (not in `skip`) whose needs have all finished, in grid order."""
    for run in runs:
        if run.id in skip or is_finished(Path(out) / run.id):
            continue
        if all(is_finished(Path(out) / dep) for dep in run.dependencies):
            yield run


def blocked_by(run: Run, by_id: dict[str, Run], failed: set[str]) -> str | None:
    """The failed run that `run` waits on, directly or through other runs; None if none."""
    for dep in run.dependencies:
        if dep in failed:
            return dep
        if dep in by_id:
            found = blocked_by(by_id[dep], by_id, failed)
            if found:
                return found
    return None


# ------------------------------------------------------------------------------------------- executors
# An executor runs one argv and returns its exit status; the command's output goes to `log_path`, and also
# to the terminal when `echo` is set.


def subprocess_executor(argv: list[str], log_path: Path, echo: bool = False) -> int:
    """`python -m zskt ARGV` in a child process (isolates memory; a crash cannot take the runner down)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "a") as log:
        log.write(f"$ zskt {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "zskt", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            bufsize=1,
        )
        try:
            for line in proc.stdout:
                log.write(line)
                if echo:
                    print("    " + line, end="", flush=True)
            return proc.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the child too (same process group); let it write its last checkpoint and exit.
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s: str) -> int:
        for stream in self.streams:
            stream.write(s)
            stream.flush()
        return len(s)

    def isatty(self) -> bool:  # progress bars print lines, not a redrawn bar, into the log
        return False


def inprocess_executor(argv: list[str], log_path: Path, echo: bool = False) -> int:
    """`zskt.cli.main(argv)` in this process: no interpreter start-up per run (the demo's many short runs)."""
    from zskt.cli import main

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"$ zskt {' '.join(argv)}\n")
        stream = _Tee(log, _Indented(sys.__stdout__)) if echo else _Tee(log)
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse errors
                rc = e.code if isinstance(e.code, int) else 2
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - a crashing run is reported; the grid goes on
                import traceback

                traceback.print_exc()
                print(f"zskt {argv[0]}: crashed: {type(e).__name__}: {e}")
                rc = 1
    if rc == 130:  # cli.main turns Ctrl-C into 130 after the run saved what it could
        raise KeyboardInterrupt
    return rc


class _Indented(io.TextIOBase):
    def __init__(self, stream):
        self.stream = stream
        self.at_start = True

    def write(self, s: str) -> int:
        for line in s.splitlines(keepends=True):
            if self.at_start:
                self.stream.write("    ")
            self.stream.write(line)
            self.at_start = line.endswith("\n")
        self.stream.flush()
        return len(s)


EXECUTORS: dict[str, Callable[[list[str], Path, bool], int]] = {
    "subprocess": subprocess_executor,
    "inprocess": inprocess_executor,
}


# ------------------------------------------------------------------------------------------- the loop


@dataclass
class Outcome:
    """What one call of `execute` did."""

    done: list[str] = field(default_factory=list)  # finished by this call
    skipped: list[str] = field(default_factory=list)  # already finished before it
    failed: dict[str, int] = field(default_factory=dict)  # id -> exit status
    blocked: dict[str, str] = field(default_factory=dict)  # id -> the failed run it needs
    busy: dict[str, str] = field(default_factory=dict)  # id -> the other process writing its folder
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked and not self.busy


def headline(run: Run, out: Path) -> str:
    """The number a finished run is for, from its result.json."""
    try:
        result = read_json(Path(out) / run.id / RESULT)
    except Exception:  # noqa: BLE001 - a display nicety only
        return ""
    if isinstance(result.get("mte"), (int, float)):
        return f"MTE {result['mte']:.3f}"
    if isinstance(result.get("test_accuracy"), (int, float)):
        return f"test accuracy {result['test_accuracy']:.2f}%"
    return ""


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class Ended:
    """A run that left a pool: its exit status, seconds, and the machine it ran on (when not this one)."""

    run_id: str
    rc: int
    seconds: float
    where: str = ""


class Pool(Protocol):
    """Where `execute` sends runs. `submit` starts one (or queues it); `wait` blocks until at least one has
    ended and returns those; `cancel` stops the ones in flight after Ctrl-C, letting them save their state."""

    concurrent: bool  # several runs in flight at once (their lines then name the run)

    def has_room(self) -> bool: ...
    def submit(self, run: Run, out: Path, common: list[str]) -> None: ...
    def wait(self) -> list[Ended]: ...
    def cancel(self) -> None: ...


class SerialPool:
    """One run at a time, in this process, through an executor function (the local executors)."""

    concurrent = False

    def __init__(
        self, executor: Callable[[list[str], Path, bool], int] = subprocess_executor, echo: bool = False
    ):
        self.executor = executor
        self.echo = echo
        self.queued: list[tuple[Run, Path, list[str]]] = []

    def has_room(self) -> bool:
        return not self.queued

    def submit(self, run: Run, out: Path, common: list[str]) -> None:
        self.queued.append((run, out, common))

    def wait(self) -> list[Ended]:
        run, out, common = self.queued.pop(0)
        t0 = time.perf_counter()
        rc = self.executor(run_argv(run, out, common), out / run.id / OUTPUT_LOG, self.echo)
        return [Ended(run.id, rc, time.perf_counter() - t0)]

    def cancel(self) -> None:  # the executor already let the interrupted command save its state
        self.queued.clear()


def execute(
    runs: list[Run],
    out: Path,
    *,
    executor: Callable[[list[str], Path, bool], int] = subprocess_executor,
    pool: Pool | None = None,
    common: Iterable[str] = (),
    echo: bool = False,
    printer: Callable[[str], None] = print,
    estimate: Callable[[Run], float] | None = None,
    before_run: Callable[[Run], str] | None = None,
) -> Outcome:
    """Run every unfinished run of `runs` whose needs are met, in dependency order: through `pool` (default:
    one at a time with `executor`), submitting each run once every run it needs has finished. A failed run is
    reported and the runs that do not need it go on; Ctrl-C cancels the runs in flight, which save their
    state. `before_run(run)` is called just before each run is submitted (the demo picks its thread count
    there); what it returns is appended to the run's line."""
    out = Path(out)
    pool = pool or SerialPool(executor, echo)
    runs = order_runs(runs)
    by_id = {r.id: r for r in runs}
    common = list(common)
    outcome = Outcome(skipped=[r.id for r in runs if is_finished(out / r.id)])
    todo = len(runs) - len(outcome.skipped)
    t_start = time.perf_counter()
    index = 0
    running: set[str] = set()
    try:
        while True:
            for run in ready_runs(runs, out, skip=set(outcome.failed) | set(outcome.busy) | running):
                if not pool.has_room():
                    break
                holder = held_by(out / run.id)
                if holder is not None:  # one writer per run folder: another zskt is running this one
                    outcome.busy[run.id] = describe_holder(holder)
                    printer(f"    skipped {run.id}: {outcome.busy[run.id]} is writing it; rerun when it ends")
                    continue
                index += 1
                resumed = " (resuming)" if "--resume" in run_argv(run, out, common) else ""
                expected = f", about {format_seconds(estimate(run))}" if estimate else ""
                note = before_run(run) if before_run else ""
                verb = "submitted " if pool.concurrent else ""
                printer(f"[{index:>{len(str(todo))}}/{todo}] {verb}{run.id}{resumed}{expected}{note}")
                pool.submit(run, out, common)
                running.add(run.id)
            if not running:
                break
            for ended in pool.wait():
                running.discard(ended.run_id)
                _report(by_id[ended.run_id], ended, out, outcome, printer, pool.concurrent, t_start)
    except KeyboardInterrupt:
        pool.cancel()
        raise
    for run in runs:
        if not is_finished(out / run.id) and run.id not in outcome.failed and run.id not in outcome.busy:
            cause = blocked_by(run, by_id, set(outcome.failed) | set(outcome.busy))
            if cause:
                outcome.blocked[run.id] = cause
    outcome.seconds = time.perf_counter() - t_start
    return outcome


def _report(
    run: Run,
    ended: Ended,
    out: Path,
    outcome: Outcome,
    printer: Callable[[str], None],
    name_it: bool,
    t_start: float,
) -> None:
    """One ended run into `outcome`, with its line (and the tail of its output when it failed)."""
    took = format_seconds(ended.seconds)
    elapsed = format_seconds(time.perf_counter() - t_start)
    which = f" {run.id}" if name_it else ""
    where = f" on {ended.where}" if ended.where else ""
    if ended.rc == 0 and is_finished(out / run.id):
        outcome.done.append(run.id)
        printer(f"    done{which} in {took}{where} (elapsed {elapsed}): {headline(run, out)}")
    else:
        outcome.failed[run.id] = ended.rc
        printer(
            f"    FAILED{which} (exit status {ended.rc}) after {took}{where}; its output: "
            f"{out / run.id / OUTPUT_LOG}"
        )
        for line in _tail(out / run.id / OUTPUT_LOG, 5):
            printer(f"      | {line}")


def _tail(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []
