"""The run folder: the one place where a training function's side effects go (STYLE §4, §7).

A run folder holds `config.json` (resolved config), `environment.json`, `metrics.jsonl` (one JSON row per log
interval), `checkpoint.pt` (everything needed to resume), the final weights, and `result.json`, written last:
a folder with `result.json` is finished, and nothing aggregates anything else. All writes are atomic.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from zskt.errors import ZsktError
from zskt.io import atomic_torch_save, atomic_write_json, atomic_write_text

RESULT = "result.json"
CHECKPOINT = "checkpoint.pt"
# Options that may differ between an interrupted run and its resumption without changing the result.
RESUME_FREE = frozenset({"device", "data_dir", "download", "quiet"})
# config.json's entry for what a method derives from the config before training (the schedule, a preset):
# written by `record_resolved`, for reading; a resume does not compare it, since it follows from the config.
RESOLVED = "resolved"


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
    """Writes one run folder. Pass `enabled=False` on non-zero ranks of a distributed run: nothing is
    written."""

    def __init__(self, out: str | Path, *, command: str, config: dict, environment: dict | None = None,
                 resume: bool = False, overwrite: bool = False, quiet: bool = False, enabled: bool = True):
        self.out = Path(out)
        self.command = command
        self.config = config
        self.quiet = quiet
        self.enabled = enabled
        self.resumed_from: dict | None = None
        self.resolved: dict = {}
        self._bar = None
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
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "config.json", {"command": command, **config})
        if environment is not None:
            atomic_write_json(self.out / "environment.json", environment)

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
            atomic_write_json(self.out / "config.json", {"command": self.command, **self.config,
                                                         RESOLVED: self.resolved})

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
            return None, f"checkpoint {path} cannot be read ({type(e).__name__}); delete it to start the run again"

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
        atomic_write_text(path, "".join(line + "\n" for line in keep))

    # -- metrics and printing ----------------------------------------------------------------------------
    def metrics(self, row: dict) -> None:
        """Append one row to metrics.jsonl (flushed: a crash loses at most the row being written)."""
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in row.items()}
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(clean) + "\n")

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
        if self.enabled:
            atomic_write_json(self.out / RESULT, result)
            (self.out / CHECKPOINT).unlink(missing_ok=True)
        return result


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def write(self, s: str) -> None:
        print(s, flush=True)

    def close(self) -> None:
        pass


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
