"""The run folder: the one place where a training function's side effects go (STYLE §4, §7).

A run folder holds `config.json` (resolved config), `environment.json`, `metrics.jsonl` (one JSON row per log
interval), `checkpoint.pt` (everything needed to resume), the final weights, and `result.json`, written last:
a folder with `result.json` is finished, and nothing aggregates anything else. All writes are atomic.

Nothing is lost (docs/decisions.md, "Run folders: one writer, safe overwrite"):
- one writer per run folder: a `RunLog` holds an exclusive lock on the sibling file `.NAME.lock` (process id,
  host, command, start time) until `close()` or the process's end; a second writer is refused in one line, and
  a lock left by a killed process (the kernel released its `flock`) is taken over;
- `--overwrite` renames the old folder to the sibling `.NAME.previous` and deletes it only once the new run
  has written its first checkpoint or its result (`commit_overwrite`, called by `save_checkpoint`, `finish`);
  a run that fails before that is rolled back (`close(failed=True)`), and a start after a kill -9 in between
  finishes the job: it restores the old run unless the new one got as far as a checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import math
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch

from zskt.errors import ZsktError, describe_os_error
from zskt.io import atomic_torch_save, atomic_write_json, atomic_write_text, file_record

RESULT = "result.json"
CHECKPOINT = "checkpoint.pt"
# Options that may differ between an interrupted run and its resumption without changing the result.
RESUME_FREE = frozenset({"device", "data_dir", "download", "quiet", "trust_checkpoint"})
# config.json's entry for what a method derives from the config before training (the schedule, a preset):
# written by `record_resolved`, for reading; a resume does not compare it, since it follows from the config.
RESOLVED = "resolved"
# config.json's record of the options changed on a resume with --allow-config-change (a list, one entry per
# resume: {"step": None or the checkpoint's step, "changed": {name: [before, after]}}).
CONFIG_CHANGES = "config_changes"
# Config fields that name input files: a run records each one's absolute path and sha256 (`io.file_record`).
INPUT_FIELDS = ("teacher", "student", "init", "label_embeddings")
# Without a terminal, a progress row at least this often (seconds), so a job under a scheduler shows it is
# alive; the environment variable ZSKT_PROGRESS_SECONDS changes it (e.g. 600 for quieter logs).
PROGRESS_SECONDS = 60.0


def now_iso() -> str:
    """The wall-clock time as ISO 8601 with the UTC offset, to the second (started/finished of a run)."""
    return datetime.datetime.now(datetime.UTC).astimezone().isoformat(timespec="seconds")


def is_finished(out: Path) -> bool:
    return (Path(out) / RESULT).is_file()


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ZsktError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZsktError(f"{path} is not valid JSON ({e}); delete it and rerun") from None


def aside_path(out: Path) -> Path:
    """Where `--overwrite` keeps the run it replaces until the new run's checkpoint (`.NAME.previous`)."""
    out = Path(os.path.abspath(out))  # "run/", "./run" and "." name the folder itself
    return out.parent / f".{out.name}.previous"


def lock_path(out: Path) -> Path:
    """The lock file of run folder `out`: `.NAME.lock` beside it, so that setting the folder aside (an
    overwrite) or deleting it never drops the lock of the process writing it."""
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}.lock"


class RunLog:
    """Writes one run folder. Pass `enabled=False` on non-zero ranks of a distributed run: nothing is written
    and no lock is taken (rank 0 holds it). Call `close()` when the run ends (`close(failed=True)` when it
    failed: an overwrite not yet committed is rolled back); the CLI does.

    `allow_change` names config fields that a `resume` may change (e.g. learning rates after a divergence);
    what changed is recorded in config.json under "config_changes" and kept in `config_changes`.

    Provenance: `started` (first start, kept across --resume) and `finished` go to environment.json and
    result.json; config fields named in INPUT_FIELDS that are files get `inputs` records (absolute path,
    sha256) there and in config.json's "resolved"; `record_runtime` adds the resolved device and precision.
    Every metrics row gets `time` (unix seconds) and `elapsed` (seconds of the run, continued over --resume).
    `tensorboard=True` mirrors metrics rows and `image` calls to TensorBoard event files in OUT/tensorboard.
    """

    def __init__(
        self,
        out: str | Path,
        *,
        command: str,
        config: dict,
        environment: dict | None = None,
        resume: bool = False,
        overwrite: bool = False,
        quiet: bool = False,
        enabled: bool = True,
        tensorboard: bool = False,
        progress_every: float | None = None,
        allow_change: tuple[str, ...] | frozenset[str] = (),
    ):
        self.out = Path(out)
        self.command = command
        self.config = config
        self.quiet = quiet
        self.enabled = enabled
        self.resumed_from: dict | None = None
        self.resolved: dict = {}
        self.progress_every = progress_seconds() if progress_every is None else progress_every
        self.started = now_iso()
        self.inputs: dict = {}
        self.runtime: dict = {}
        self._t0 = time.monotonic()
        self._elapsed_before = 0.0  # seconds of the run before this process (from metrics.jsonl on --resume)
        self._bar = None
        self._writer = None
        self.environment: dict | None = None
        self.config_changes: dict[str, list] = {}
        self._history: list = []
        self._lock: RunLock | None = None
        self._aside: Path | None = None
        self.restored = False  # set by close(failed=True) when it put back the run an overwrite had set aside
        if not enabled:
            return
        unknown = sorted(set(allow_change) - set(config))
        if unknown:
            raise ZsktError(
                f"--allow-config-change names {', '.join(unknown)}, which "
                f"{'is not an option' if len(unknown) == 1 else 'are not options'} of {command}; "
                f"choose among {', '.join(sorted(config))}"
            )
        if self.out.exists() and not self.out.is_dir():
            raise ZsktError(f"--out {self.out} exists and is not a folder; choose another --out")
        try:
            self._lock = RunLock(self.out, command)
        except OSError as e:  # e.g. under /proc, or under a regular file
            raise ZsktError(f"--out {self.out} cannot be made: {describe_os_error(e)}") from None
        if self._lock.stale:
            held = self._lock.stale
            self.print(
                f"{self.out}: took over the lock of process {held.get('pid', '?')} on "
                f"{held.get('host', '?')}, which is no longer running"
            )
        try:
            self._open(resume, overwrite, frozenset(allow_change), environment, tensorboard)
        except BaseException:
            self.close_tensorboard()
            self._lock.release()
            raise

    def _open(
        self,
        resume: bool,
        overwrite: bool,
        allow_change: frozenset[str],
        environment: dict | None,
        tensorboard: bool,
    ) -> None:
        self._recover_overwrite()
        if is_finished(self.out) and not overwrite:
            raise ZsktError(
                f"{self.out} already holds a finished run ({RESULT}); choose another --out, "
                "or pass --overwrite to replace it"
            )
        has_checkpoint = (self.out / CHECKPOINT).is_file()
        if overwrite:
            has_checkpoint = False
        elif resume and has_checkpoint:
            self._check_same_config(allow_change)
        elif has_checkpoint:
            raise ZsktError(
                f"{self.out} holds an unfinished run; pass --resume to continue it, "
                "or --overwrite to start again"
            )
        if resume and has_checkpoint:
            self.started = self._first_start() or self.started
        self.inputs = input_records(self.config)
        if resume and has_checkpoint:
            self._check_same_inputs(allow_change)
        if self.inputs:
            self.resolved["inputs"] = self.inputs
        if overwrite and self.out.is_dir() and any(self.out.iterdir()):
            here = Path.cwd().resolve()
            if self.out.resolve() in (here, *here.parents):
                raise ZsktError(
                    f"--overwrite {self.out} would replace the folder this command runs in; "
                    "run it from another folder"
                )
            # Set the old run aside in one rename (same parent, so the same file system): it comes back
            # intact if the new run fails before its first checkpoint.
            self._aside = aside_path(self.out)
            os.replace(self.out, self._aside)
        if not (resume and has_checkpoint):
            # A run killed before its first checkpoint starts again from step 0: its rows would be doubled.
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
        created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            if tensorboard:  # after the set-aside, so the event files go to the new run
                self._writer = tensorboard_writer(self.out / "tensorboard")
            self._write_config()
            if environment is not None:
                self.environment = {
                    **environment,
                    "started": self.started,
                    **({"inputs": self.inputs} if self.inputs else {}),
                }
                atomic_write_json(self.out / "environment.json", self.environment)
        except BaseException:  # e.g. no tensorboard package: nothing left behind, the old run back
            self.close_tensorboard()
            if created:
                shutil.rmtree(self.out, ignore_errors=True)
            self._rollback()
            raise

    def _first_start(self) -> str | None:
        """When the run in this folder first started (environment.json of an earlier process), if known."""
        try:
            return json.loads((self.out / "environment.json").read_text()).get("started")
        except (OSError, ValueError, AttributeError):
            return None

    def _recover_overwrite(self) -> None:
        """Finish an overwrite that a killed process left half done (we hold the lock: no one else writes).
        If the new run got as far as a checkpoint or result the old one goes, otherwise it comes back."""
        aside = aside_path(self.out)
        if not aside.is_dir():
            return
        if (self.out / CHECKPOINT).is_file() or is_finished(self.out):
            shutil.rmtree(aside)
            return
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(aside, self.out)
        self.print(f"{self.out}: restored the run that an interrupted --overwrite had set aside")

    def _write_config(self) -> None:
        changes = {CONFIG_CHANGES: self._history} if self._history else {}
        resolved = {RESOLVED: self.resolved} if self.resolved else {}
        atomic_write_json(
            self.out / "config.json", {"command": self.command, **self.config, **changes, **resolved}
        )

    def _check_same_inputs(self, allow_change: frozenset[str]) -> None:
        """A resume reads the same input files the run started with: a teacher (or embeddings) file replaced
        in place under the same path would silently change what the rest of the run distils from."""
        saved = read_json(self.out / "config.json").get(RESOLVED, {}).get("inputs", {})
        for name, record in self.inputs.items():
            before = saved.get(name)
            if before and before.get("sha256") != record["sha256"] and name not in allow_change:
                raise ZsktError(
                    f"cannot resume {self.out}: the --{name.replace('_', '-')} file {record['path']} changed "
                    f"since the run started (sha256 {before.get('sha256', '?')[:12]}... -> "
                    f"{record['sha256'][:12]}...); put the original back, use another --out, or pass "
                    f"--allow-config-change {name} to continue with the new file"
                )

    def _check_same_config(self, allow_change: frozenset[str]) -> None:
        path = self.out / "config.json"
        if not path.is_file():
            return
        saved = read_json(path)
        saved.pop("command", None)
        saved.pop(RESOLVED, None)
        self._history = list(saved.pop(CONFIG_CHANGES, None) or [])
        differ = sorted(
            k
            for k in set(saved) | set(self.config)
            if k not in RESUME_FREE and saved.get(k) != self.config.get(k)
        )
        refused = [k for k in differ if k not in allow_change]
        if refused:
            shown = ", ".join(f"{k}: {saved.get(k)!r} -> {self.config.get(k)!r}" for k in refused[:4])
            raise ZsktError(
                f"cannot resume {self.out} with a different config ({shown}); rerun with the "
                "original options, use another --out, or (to continue from the checkpoint with "
                "changed options, e.g. a lower learning rate) pass --allow-config-change "
                f"{','.join(refused)}"
            )
        self.config_changes = {k: [saved.get(k), self.config.get(k)] for k in differ}
        if self.config_changes:
            step = _checkpoint_step(self.out / CHECKPOINT)
            self._history.append({"step": step, "changed": self.config_changes})
            self.print(
                "resuming with changed options: "
                + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in self.config_changes.items())
            )

    def apply_lr_change(self, name: str, optimizer: Any, *schedules: Any) -> bool:
        """After `optimizer` and its `schedules` were restored from the checkpoint: when config field `name`
        (a learning rate) was changed on this resume (`--allow-config-change`), scale the restored learning
        rates and the schedules' base rates by new/old, so the run continues exactly as if it had been
        started with the new rate (every schedule here is a factor of its base rate). True if it did."""
        if name not in self.config_changes:
            return False
        old, new = self.config_changes[name]
        if not (isinstance(old, (int, float)) and isinstance(new, (int, float)) and old > 0):
            raise ZsktError(
                f"--allow-config-change {name}: cannot rescale a learning rate of {old!r} to {new!r}"
            )
        factor = new / old
        for group in optimizer.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor
        for schedule in schedules:
            schedule.base_lrs = [lr * factor for lr in schedule.base_lrs]
            if hasattr(schedule, "_last_lr"):
                schedule._last_lr = [group["lr"] for group in optimizer.param_groups]
        return True

    def record_resolved(self, **values: Any) -> None:
        """Add derived values (e.g. `schedule={...}`) to config.json under "resolved", after the config."""
        self.resolved.update({k: _plain(v) for k, v in values.items()})
        if self.enabled:
            self._write_config()

    def record_runtime(self, device: Any = None, precision: Any = None, **more: Any) -> None:
        """Record what "auto" resolved to (device, precision name, ...) in config.json's "resolved" and in
        result.json. Accepts a torch.device and a runtime.Precision (its `name`) as well as strings."""
        values = {"device": device, "precision": getattr(precision, "name", precision), **more}
        self.runtime.update(
            {
                k: str(v) if isinstance(v, torch.device) else _plain(v)
                for k, v in values.items()
                if v is not None
            }
        )
        self.record_resolved(runtime=self.runtime)

    # -- checkpoints -------------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        """Write checkpoint.pt atomically (a failed write, e.g. a full disk, leaves the previous one valid);
        the first one commits an `--overwrite`."""
        if self.enabled:
            atomic_torch_save(self.out / CHECKPOINT, state)
            self.commit_overwrite()

    def load_checkpoint(self, map_location: Any = "cpu") -> dict | None:
        """The last checkpoint, or None. Metrics rows past the checkpoint are dropped (they will be redone).

        In a distributed run rank 0 reads the file and sends it to every rank (all ranks call this at the same
        point), so the other ranks never read a file rank 0 is replacing, nor need the same file system."""
        from zskt.distributed import broadcast_object, world

        if world()[1] > 1:
            state, error = self._read_checkpoint("cpu") if self.enabled else (None, None)
            state, error = broadcast_object((state, error))
        else:
            state, error = self._read_checkpoint(map_location)
        if error:
            raise ZsktError(error)
        if state is None:
            return None
        self.resumed_from = {"step": state.get("step")}
        self._trim_metrics(state.get("step"))
        return state

    def _read_checkpoint(self, map_location: Any) -> tuple[dict | None, str | None]:
        path = self.out / CHECKPOINT
        if not path.is_file():
            return None, None
        from zskt.models.checkpoints import UntrustedCheckpoint, safe_load

        try:
            return safe_load(path, map_location=map_location), None
        except UntrustedCheckpoint as e:
            return None, str(e)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing here
            return None, (
                f"checkpoint {path} cannot be read ({type(e).__name__}); start the run again with "
                "--overwrite (or delete the file)"
            )

    def _trim_metrics(self, step: int | None) -> None:
        path = self.out / "metrics.jsonl"
        if step is None or not path.is_file() or not self.enabled:
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a row cut by the interruption
            if row.get("step", -1) <= step:
                keep.append(line)
                if isinstance(row.get("elapsed"), (int, float)):
                    self._elapsed_before = float(row["elapsed"])
                    self._t0 = time.monotonic()
        atomic_write_text(path, "".join(line + "\n" for line in keep))

    # -- metrics and printing ----------------------------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds of this run so far: this process's, plus those before a --resume (from the kept rows)."""
        return self._elapsed_before + time.monotonic() - self._t0

    def metrics(self, row: dict) -> None:
        """Append one row to metrics.jsonl (flushed: a crash loses at most the row being written), with its
        wall-clock `time` (unix seconds) and `elapsed` seconds; mirrored to TensorBoard when asked for."""
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in row.items()}
        wall = time.time()
        clean.setdefault("time", round(wall, 3))
        clean.setdefault("elapsed", round(self.elapsed(), 3))
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self._writer is not None:
            step = clean.get("step")
            for key, value in clean.items():
                if key not in ("step", "time") and _number(value):
                    self._writer.add_scalar(key, value, global_step=step, walltime=wall)
            self._writer.flush()

    def image(self, tag: str, array: Any, step: int) -> None:
        """Mirror an image (H×W grey or H×W×C, values in [0, 1]; numpy or tensor) to TensorBoard, e.g. the
        zero-shot pseudo-image grid at a log point. A no-op unless the run was started with --tensorboard."""
        if not self.enabled or self._writer is None:
            return
        x = torch.as_tensor(array).detach().float().cpu()
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        self._writer.add_image(tag, x.clamp(0, 1), global_step=step, dataformats="HWC")
        self._writer.flush()

    def print(self, message: str) -> None:
        if not self.enabled or self.quiet:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def progress(self, total: int, initial: int = 0, desc: str = "", unit: str = "it"):
        """A tqdm bar with rate and ETA when attached to a terminal; a no-op object otherwise."""
        self.close_progress()
        if self.enabled and not self.quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.1
            )
        elif self.enabled and not self.quiet:
            self._bar = _RowBar(total, initial, desc, unit, self.progress_every)
        else:
            self._bar = _NoBar()
        return self._bar

    def close_progress(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- the end -----------------------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> None:
        if self.enabled:
            atomic_write_json(self.out / name, obj)

    def finish(self, result: dict) -> dict:
        """Write result.json (last, atomically), commit an `--overwrite`, remove the resume checkpoint."""
        self.close_progress()
        result = {"command": self.command, **{k: _plain(v) for k, v in result.items()}}
        for key, value in self.runtime.items():
            result.setdefault(key, value)
        if self.inputs:
            result.setdefault("inputs", self.inputs)
        result.setdefault("started", self.started)
        result.setdefault("finished", now_iso())
        result.setdefault("elapsed", round(self.elapsed(), 3))
        if self.enabled:
            if self.environment is not None:
                atomic_write_json(
                    self.out / "environment.json", {**self.environment, "finished": result["finished"]}
                )
            self.close_tensorboard()
            atomic_write_json(self.out / RESULT, result)
            self.commit_overwrite()
            (self.out / CHECKPOINT).unlink(missing_ok=True)
        return result

    def close_tensorboard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- overwrite and lock ------------------------------------------------------------------------------
    def commit_overwrite(self) -> None:
        """Delete the run that `--overwrite` set aside: the new run has a checkpoint or result of its own."""
        if self._aside is not None:
            shutil.rmtree(self._aside, ignore_errors=True)
            self._aside = None

    def _rollback(self) -> bool:
        if self._aside is None or not self._aside.is_dir():
            return False
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self._aside, self.out)
        self._aside = None
        return True

    def close(self, failed: bool = False) -> None:
        """End the run: with `failed`, put back the run an uncommitted `--overwrite` set aside (then
        `restored` is True); release the lock. Safe to call twice."""
        self.close_progress()
        self.close_tensorboard()
        if failed and self.enabled:
            self.restored = self._rollback()
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _checkpoint_step(path: Path) -> int | None:
    try:
        from zskt.models.checkpoints import safe_load

        step = safe_load(path).get("step")
        return step if isinstance(step, int) else None
    except Exception:  # noqa: BLE001 - a label only; the run reads (and judges) the checkpoint itself
        return None


class RunLock:
    """One writer per run folder: an exclusive `flock` on `.NAME.lock` beside the folder, holding the writer's
    process id, host, command and start time (for the message to a second writer).

    The kernel drops a `flock` when its process dies, however it dies, so a lock file left by a killed process
    is simply taken over (on this host, and on network file systems whose `flock` is honoured across hosts).
    Where a file system has no `flock`, the lock falls back to the process id: a lock whose process is gone
    from this host is taken over; one from another host is refused, naming the file to delete.

    Within one process a new lock on a folder takes the lock over from the earlier `RunLock` (whose `release`
    then does nothing): runs one after another in one process (the demo's in-process executor, tests that
    resume a run they interrupted) are that process's own business."""

    def __init__(self, out: Path, command: str):
        import fcntl

        self.path = lock_path(out)
        self.key = os.path.abspath(self.path)
        self.fd: int | None = None
        self.stale: dict = {}
        self._made: list[Path] = []
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        earlier = _HELD.get(self.key)
        if earlier is not None and earlier.fd is not None:
            self.fd, earlier.fd = earlier.fd, None
            self._made, earlier._made = earlier._made, []
            _write_lock(self.fd, info)
            _HELD[self.key] = self
            return
        self._made = _make_parents(self.path.parent)
        for _ in range(5):  # retry when the file was replaced between our open and our lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _flock_waiting_for_exit(fd, fcntl.LOCK_EX)
            except BlockingIOError:
                holder = _read_lock(fd)
                os.close(fd)
                self._unmake()
                raise ZsktError(_held_message(out, holder, self.path)) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                holder = _read_lock(fd)  # no flock here: judge by the recorded process
                if holder and not _is_stale(holder):
                    os.close(fd)
                    self._unmake()
                    raise ZsktError(_held_message(out, holder, self.path)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file as we opened it: take the new one
                os.close(fd)
                continue
            self.stale = _read_lock(fd)  # what a killed process left, if anything
            _write_lock(fd, info)
            self.fd = fd
            _HELD[self.key] = self
            return
        self._unmake()
        raise ZsktError(f"cannot lock {self.path}: it keeps being replaced by another process; retry")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still locked: a waiting writer then finds a fresh file
        os.close(self.fd)
        self.fd = None
        if _HELD.get(self.key) is self:
            del _HELD[self.key]
        self._unmake()

    def _unmake(self) -> None:
        for folder in reversed(self._made):  # parents this lock created, if nothing else went into them
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._made = []


_HELD: dict[str, RunLock] = {}  # lock file -> the RunLock of this process that holds it


def held_by(out: str | Path) -> dict | None:
    """The process writing run folder `out` ({"pid", "host", "command", "started"}), or None when no live
    process holds its lock (the runner skips such a run instead of starting a second writer)."""
    import fcntl

    path = lock_path(Path(out))
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            _flock_waiting_for_exit(fd, fcntl.LOCK_SH)
        except BlockingIOError:
            return _read_lock(fd) or {"pid": "?"}
        except OSError:
            holder = _read_lock(fd)
            return holder if holder and not _is_stale(holder) else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


EXIT_GRACE = 30.0  # seconds to wait for a killed holder to finish exiting (its memory is freed first)


def _flock_waiting_for_exit(fd: int, kind: int) -> None:
    """`flock(kind | LOCK_NB)`; while the holder (on this host) is a process that is exiting, e.g. killed
    with SIGKILL a moment ago and still freeing its memory before the kernel closes its files, retry until it
    is gone (at most EXIT_GRACE seconds). Raises BlockingIOError when a live process holds the lock."""
    import fcntl

    deadline = time.monotonic() + EXIT_GRACE
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = _read_lock(fd)
            if time.monotonic() > deadline or not _exiting(holder):
                raise
            time.sleep(0.05)


def _exiting(holder: dict) -> bool:
    """Whether the lock's recorded process, on this host, is gone, a zombie, or has SIGKILL pending."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        status = Path(f"/proc/{holder['pid']}/status").read_text()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields.get("State", "").strip()[:1] in ("Z", "X"):
        return True
    sigkill = 1 << (signal.SIGKILL - 1)
    try:
        return any(int(fields.get(key, "0").strip(), 16) & sigkill for key in ("SigPnd", "ShdPnd"))
    except ValueError:
        return False


def _write_lock(fd: int, info: dict) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p `folder`; returns the folders it created, outermost first."""
    made = []
    for parent in reversed([folder, *folder.parents]):
        if not parent.exists():
            try:
                parent.mkdir()
                made.append(parent)
            except FileExistsError:
                pass
    return made


def _read_lock(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _is_stale(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another zskt process"
    return (
        f"zskt {holder.get('command', '?')} (process {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, started {holder.get('started', '?')})"
    )


def _held_message(out: Path, holder: dict, path: Path) -> str:
    who = describe_holder(holder)
    return (
        f"{out} is being written by {who}; wait for it to end or stop it, then rerun (if that process is "
        f"gone, delete {path})"
    )


def progress_seconds() -> float:
    """PROGRESS_SECONDS, or ZSKT_PROGRESS_SECONDS when set (a positive number of seconds)."""
    text = os.environ.get("ZSKT_PROGRESS_SECONDS", "")
    if not text:
        return PROGRESS_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ZsktError(f"ZSKT_PROGRESS_SECONDS={text!r}: expected a positive number of seconds (default 60)")
    return value


def input_records(config: dict) -> dict:
    """`io.file_record` of each INPUT_FIELDS value of `config` that names a file (not a model name)."""
    records = {}
    for name in INPUT_FIELDS:
        value = config.get(name)
        if isinstance(value, str) and value and Path(value).is_file():
            records[name] = file_record(value)
    return records


def tensorboard_writer(logdir: Path):
    """A TensorBoard SummaryWriter for `logdir` (the `tensorboard` extra); a one-line error without it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ZsktError(
            "--tensorboard needs the tensorboard package: pip install 'zskt[tensorboard]' "
            "(or pip install tensorboard)"
        ) from None
    return SummaryWriter(log_dir=str(logdir))


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def write(self, s: str) -> None:
        print(s, flush=True)

    def close(self) -> None:
        pass


class _RowBar(_NoBar):
    """The progress bar without a terminal (a log file, a scheduler's job): a row with step/total, rate, ETA
    and the latest `set_postfix_str` text at most every `every` seconds, checked at each `update`."""

    def __init__(self, total: int, initial: int, desc: str, unit: str, every: float):
        self.total, self.n, self.desc, self.unit, self.every = total, initial, desc, unit, every
        self.postfix = ""
        self._start_n = initial
        self._t0 = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every and self.n < self.total:
            self._last = now
            print(self.row(now), flush=True)

    def row(self, now: float) -> str:
        rate = (self.n - self._start_n) / max(now - self._t0, 1e-9)
        eta = _clock((self.total - self.n) / rate) if rate > 0 else "?"
        shown = (
            f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{self.unit}" if rate > 0 else "-"
        )
        text = (
            f"{self.desc + ' ' if self.desc else ''}{self.n}/{self.total} {self.unit}  {shown}  "
            f"elapsed {_clock(now - self._t0)}  eta {eta}"
        )
        return text + (f"  {self.postfix}" if self.postfix else "")

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.postfix = s


def _clock(seconds: float) -> str:
    """Seconds as H:MM:SS (or M:SS under an hour)."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else v
    if isinstance(v, Path):
        return str(v)
    return v


class Timer:
    """Wall-clock seconds of code blocks, synchronising CUDA so the time is the device's, not the launch's."""

    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()
