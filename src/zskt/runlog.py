"""The run folder: the one place where a training function's side effects go (STYLE §4, §7).

A run folder holds `config.json` (resolved config), `environment.json`, `metrics.jsonl` (one JSON row per log
interval), `checkpoint.pt` (everything needed to resume), the final weights, and `result.json`, written last:
a folder with `result.json` is finished, and nothing aggregates anything else. All writes are atomic.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from zskt.errors import ZsktError
from zskt.io import atomic_torch_save, atomic_write_json, atomic_write_text, file_record

RESULT = "result.json"
CHECKPOINT = "checkpoint.pt"
# Options that may differ between an interrupted run and its resumption without changing the result.
RESUME_FREE = frozenset({"device", "data_dir", "download", "quiet"})
# config.json's entry for what a method derives from the config before training (the schedule, a preset):
# written by `record_resolved`, for reading; a resume does not compare it, since it follows from the config.
RESOLVED = "resolved"
# Config fields that name input files: a run records each one's absolute path and sha256 (`io.file_record`).
INPUT_FIELDS = ("teacher", "student", "init")
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


class RunLog:
    """Writes one run folder. Pass `enabled=False` on non-zero ranks of a distributed run: nothing is written.

    Provenance: `started` (first start, kept across --resume) and `finished` go to environment.json and
    result.json; config fields named in INPUT_FIELDS that are files get `inputs` records (absolute path,
    sha256) there and in config.json's "resolved"; `record_runtime` adds the resolved device and precision.
    Every metrics row gets `time` (unix seconds) and `elapsed` (seconds of the run, continued over --resume).
    `tensorboard=True` mirrors metrics rows and `image` calls to TensorBoard event files in OUT/tensorboard.
    """

    def __init__(self, out: str | Path, *, command: str, config: dict, environment: dict | None = None,
                 resume: bool = False, overwrite: bool = False, quiet: bool = False, enabled: bool = True,
                 tensorboard: bool = False, progress_every: float | None = None):
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
        if not enabled:
            return
        if self.out.exists() and not self.out.is_dir():
            raise ZsktError(f"--out {self.out} exists and is not a folder")
        if is_finished(self.out) and not overwrite:
            raise ZsktError(f"{self.out} already holds a finished run ({RESULT}); choose another --out, "
                            "or pass --overwrite to replace it")
        has_checkpoint = (self.out / CHECKPOINT).is_file()
        if overwrite:
            for name in (RESULT, CHECKPOINT, "metrics.jsonl"):
                (self.out / name).unlink(missing_ok=True)
            has_checkpoint = False
        elif resume and has_checkpoint:
            self._check_same_config()
        elif has_checkpoint:
            raise ZsktError(f"{self.out} holds an unfinished run; pass --resume to continue it, "
                            "or --overwrite to start again")
        if resume and has_checkpoint:
            self.started = self._first_start() or self.started
        if tensorboard:  # before anything is written: a missing package is a one-line error, no folder
            self._writer = tensorboard_writer(self.out / "tensorboard")
        self.inputs = input_records(config)
        if self.inputs:
            self.resolved["inputs"] = self.inputs
        self.out.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if environment is not None:
            self.environment = {**environment, "started": self.started,
                                **({"inputs": self.inputs} if self.inputs else {})}
            atomic_write_json(self.out / "environment.json", self.environment)

    def _first_start(self) -> str | None:
        """When the run in this folder first started (environment.json of an earlier process), if known."""
        try:
            return json.loads((self.out / "environment.json").read_text()).get("started")
        except (OSError, ValueError, AttributeError):
            return None

    def _write_config(self) -> None:
        resolved = {RESOLVED: self.resolved} if self.resolved else {}
        atomic_write_json(self.out / "config.json", {"command": self.command, **self.config, **resolved})

    def _check_same_config(self) -> None:
        path = self.out / "config.json"
        if not path.is_file():
            return
        saved = read_json(path)
        saved.pop("command", None)
        saved.pop(RESOLVED, None)
        differ = sorted(k for k in set(saved) | set(self.config)
                        if k not in RESUME_FREE and saved.get(k) != self.config.get(k))
        if differ:
            shown = ", ".join(f"{k}: {saved.get(k)!r} -> {self.config.get(k)!r}" for k in differ[:4])
            raise ZsktError(f"cannot resume {self.out} with a different config ({shown}); "
                            "rerun with the original options or use another --out")

    def record_resolved(self, **values: Any) -> None:
        """Add derived values (e.g. `schedule={...}`) to config.json under "resolved", after the config
        fields."""
        self.resolved.update({k: _plain(v) for k, v in values.items()})
        if self.enabled:
            self._write_config()

    def record_runtime(self, device: Any = None, precision: Any = None, **more: Any) -> None:
        """Record what "auto" resolved to (device, precision name, ...) in config.json's "resolved" and in
        result.json. Accepts a torch.device and a runtime.Precision (its `name`) as well as strings."""
        values = {"device": device, "precision": getattr(precision, "name", precision), **more}
        self.runtime.update({k: str(v) if isinstance(v, torch.device) else _plain(v)
                             for k, v in values.items() if v is not None})
        self.record_resolved(runtime=self.runtime)

    # -- checkpoints -------------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        if self.enabled:
            atomic_torch_save(self.out / CHECKPOINT, state)

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
        try:
            return torch.load(path, map_location=map_location, weights_only=False), None
        except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing here
            return None, (f"checkpoint {path} cannot be read ({type(e).__name__}); delete it to start the run "
                          "again")

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

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                             smoothing=0.1)
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
        """Write result.json (last, atomically) and remove the resume checkpoint."""
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
                atomic_write_json(self.out / "environment.json", {**self.environment,
                                                                  "finished": result["finished"]})
            self.close_tensorboard()
            atomic_write_json(self.out / RESULT, result)
            (self.out / CHECKPOINT).unlink(missing_ok=True)
        return result

    def close_tensorboard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


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
        raise ZsktError("--tensorboard needs the tensorboard package: pip install 'zskt[tensorboard]' "
                        "(or pip install tensorboard)") from None
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
        shown = (f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{self.unit}" if rate > 0
                 else "-")
        text = f"{self.desc + ' ' if self.desc else ''}{self.n}/{self.total} {self.unit}  {shown}  " \
               f"elapsed {_clock(now - self._t0)}  eta {eta}"
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
