"""The run scaffold every training command shares: device, precision, sharding under torchrun, resume,
periodic evaluation, metrics rows, checkpoints, timing, the divergence check and the final result. A method
builds its networks and optimisers, hands their state to `track`, and writes its algorithm as the body of `for
step in run.steps()`; everything between two steps happens here (docs/architecture.md)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from statistics import median
from typing import Any

import torch

from zskt.distributed import (
    Shard,
    all_sum,
    average_buffers,
    broadcast_module,
    check_in_sync,
    use_sync_batchnorm,
)
from zskt.errors import ZsktError
from zskt.evaluate import evaluate_accuracy
from zskt.models.frozen import frozen_copy
from zskt.runlog import RunLog, Timer
from zskt.runtime import resolve_device, resolve_precision

CHECKPOINT_FORMAT = (
    2  # the scaffold's checkpoint layout: {"format", "step", "state": {name: state_dict}, ...}
)
_NO_STEP = 2**62  # "no non-finite value seen" in Meter's first-bad-step tensors


class Meter:
    """Named running means kept on the device between log points, so the loop never waits for the device.

    Callers pass values already scaled by their shard's share of the batch under torchrun (a loss times
    `part.share`), so the sum over ranks is the global mean. Each name keeps the first step at which it was
    not finite, also on the device: a diverging run is caught at the next log point and named exactly.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.first_bad: dict[str, torch.Tensor] = {}

    def add(self, step: int, **values: torch.Tensor | float) -> None:
        for name, value in values.items():
            value = torch.as_tensor(value, device=self.device).detach().float()
            if name not in self.sums:
                self.sums[name] = torch.zeros((), device=self.device)
                self.counts[name] = 0
                self.first_bad[name] = torch.full((), _NO_STEP, dtype=torch.int64, device=self.device)
            self.sums[name] += value
            self.counts[name] += 1
            bad = self.first_bad[name]
            bad.copy_(torch.where(torch.isfinite(value), bad, bad.clamp(max=step)))

    def read(self) -> tuple[dict[str, float], dict[str, int]]:
        """(means since the last read, {name: first step where it was not finite}); one host sync, over all
        ranks under torchrun; then reset."""
        names = list(self.sums)
        if not names:
            return {}, {}
        sums = all_sum(torch.stack([self.sums[n] for n in names])).tolist()
        bad = torch.stack([self.first_bad[n] for n in names]).tolist()
        means = {n: s / max(1, self.counts[n]) for n, s in zip(names, sums, strict=True)}
        diverged = {
            n: b for n, b in zip(names, bad, strict=True) if b != _NO_STEP or not math.isfinite(means[n])
        }
        self.sums, self.counts, self.first_bad = {}, {}, {}
        return means, diverged


class _RNGState:
    """A torch.Generator as something with state_dict/load_state_dict, so `track` can checkpoint it."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"].cpu())


class Scaffold:
    """One training run: `steps()` yields 0-based step numbers from where the run stands (0, or the resumed
    checkpoint's step) to `total`; every `interval` steps and at the end it evaluates, writes a metrics row
    and a checkpoint. `iteration_units` is how many optimiser iterations one step holds (an epoch's batches),
    for `seconds_per_iteration`."""

    def __init__(
        self,
        cfg: Any,
        log: RunLog,
        *,
        total: int,
        interval: int,
        unit: str = "it",
        desc: str = "",
        batch_size: int | None = None,
        iteration_units: int = 1,
    ):
        self.cfg, self.log = cfg, log
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.total, self.interval = total, max(1, interval)
        self.unit, self.desc, self.iteration_units = unit, desc, iteration_units
        self.part = Shard.of(batch_size) if batch_size else None
        if self.part is not None and self.part.local == 0:
            raise ZsktError(
                f"batch_size {batch_size} is smaller than the {self.part.world_size} ranks; "
                "pass a larger --batch-size or start fewer processes"
            )
        self.meter = Meter(self.device)
        self.step = 0  # steps completed
        self.best, self.accuracy = -1.0, float("nan")
        self.history: list[float] = []  # seconds per iteration of each timed stretch
        self.first_seconds: float | None = None  # the first step of a process (warm-up), timed alone
        self._tracked: dict[str, Any] = {}
        self._trained: list[torch.nn.Module] = []
        self._evaluation: tuple | None = None
        self._on_log: list[Callable[[int], dict | None]] = []
        self._rates: list[tuple] = []
        self._t0 = time.perf_counter()

    # -- networks --------------------------------------------------------------------------------------------
    def train_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """A network this run trains: on the device, in the precision's layout, SyncBN if asked, the same
        initial weights on every rank, train mode."""
        module = use_sync_batchnorm(module.to(self.device), getattr(self.cfg, "sync_bn", False), self.device)
        module = self.precision.prepare(module).train()
        broadcast_module(module)
        self._trained.append(module)
        return module

    def frozen_module(self, module: torch.nn.Module, *, fold_bn: bool = True) -> torch.nn.Module:
        """A network this run only queries (a teacher): eval mode, no parameter gradients; with `fold_bn` its
        batch norms are folded into the preceding convolutions (the same function, less memory traffic,
        models/frozen.py). Methods that hook BN statistics pass fold_bn=False to keep the BN layers."""
        module = self.precision.prepare(module.to(self.device)).eval().requires_grad_(False)
        return frozen_copy(module, fold_bn=fold_bn)

    def track(self, **objects: Any) -> None:
        """Objects checkpointed and restored on resume: anything with state_dict/load_state_dict, or a
        torch.Generator."""
        for name, obj in objects.items():
            self._tracked[name] = _RNGState(obj) if isinstance(obj, torch.Generator) else obj

    def learning_rate(self, name: str, optimizer: torch.optim.Optimizer, *schedules: Any) -> None:
        """Config field `name` is the learning rate of `optimizer` (and its `schedules`): a resume with
        `--allow-config-change name` rescales them after they are restored, as if the run had begun with
        it."""
        self._rates.append((name, optimizer, *schedules))

    def evaluate_on(self, model: torch.nn.Module, split, mean, std, batch_size: int = 500) -> None:
        """Test `model` on `split` at every log point; the last evaluation is the run's `test_accuracy`."""
        self._evaluation = (model, split.to(self.device), mean, std, batch_size)

    def on_log(self, fn: Callable[[int], dict | None]) -> None:
        """Call fn(step) at each log point; a returned dict joins the metrics row."""
        self._on_log.append(fn)

    def evaluate(self, model: torch.nn.Module) -> float:
        """Test accuracy (%) of any model on the evaluation split given to `evaluate_on`."""
        _, split, mean, std, batch_size = self._evaluation
        return evaluate_accuracy(model, split, mean, std, batch_size=batch_size, precision=self.precision)

    # -- the loop --------------------------------------------------------------------------------------------
    def add(self, **values: torch.Tensor | float) -> None:
        """Running means for the next metrics row (losses, beliefs), kept on the device."""
        self.meter.add(self.step, **values)

    def steps(self) -> Iterator[int]:
        """The loop: resume, then yield each step; time, show progress and log between them."""
        self._resume()
        timer = Timer(self.device)
        bar = self.log.progress(self.total, initial=self.step, desc=self.desc, unit=self.unit)
        mark, stretch, first = timer.now(), 0, True
        while self.step < self.total:
            yield self.step
            self.step += 1
            stretch += 1
            bar.update(1)
            at_log_point = self.step % self.interval == 0 or self.step == self.total
            if first or at_log_point:
                # One sync per stretch between log points, none per step; the first step of a process
                # (allocator, kernel selection) is timed alone and kept only while it is the only measurement.
                now = timer.now()
                seconds = (now - mark) / stretch / self.iteration_units
                if first:
                    self.first_seconds = self.first_seconds if self.first_seconds is not None else seconds
                else:
                    self.history.append(seconds)
                mark, stretch, first = now, 0, False
            if at_log_point:
                self._log_point(bar, self.history[-1] if self.history else self.first_seconds)
        self.log.close_progress()

    def _log_point(self, bar, seconds: float | None) -> None:
        means, diverged = self.meter.read()
        self._check_finite(diverged)
        for module in self._trained:  # under torchrun: every rank evaluates and saves the same BN statistics
            average_buffers(module)
        if self._evaluation is not None:
            self.accuracy = self.evaluate(self._evaluation[0])
            self.best = max(self.best, self.accuracy)
        extra: dict = {}
        for fn in self._on_log:
            extra.update(fn(self.step) or {})
        row = {
            "step": self.step,
            **means,
            "test_accuracy": self.accuracy,
            "best_test_accuracy": self.best,
            **extra,
            "seconds_per_iteration": seconds,
        }
        self.log.metrics(row)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in means.items())
        bar.set_postfix_str(f"{shown} acc {self.accuracy:.2f}%")
        self.log.print(
            f"{self.desc} {self.step:>7}/{self.total}  {shown}  test {self.accuracy:6.2f}%  "
            f"(best {self.best:.2f}%)"
        )
        if self.step < self.total:
            self.log.save_checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "step": self.step,
                    "state": {name: obj.state_dict() for name, obj in self._tracked.items()},
                    "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                    "best": self.best,
                    "test_accuracy": self.accuracy,
                    "interval_seconds": self.history,
                    "first_seconds": self.first_seconds,
                }
            )

    def _check_finite(self, diverged: dict[str, int]) -> None:
        """Stop a diverging run: a non-finite loss since the last log point, or a non-finite parameter."""
        where = None
        if diverged:
            name, step = min(diverged.items(), key=lambda item: item[1])
            where = (
                f"{name} became non-finite at {self.unit} {step + 1}"
                if step != _NO_STEP
                else f"{name} became non-finite before {self.unit} {self.step}"
            )
        else:
            for module in self._trained:
                params = [p for p in module.parameters() if p.is_floating_point()]
                if params and not bool(torch.stack([p.detach().isfinite().all() for p in params]).all()):
                    name = type(module).__name__
                    where = f"a parameter of {name} became non-finite before {self.unit} {self.step}"
                    break
        if where is None:
            return
        last = (
            self.step - self.interval
            if self.step % self.interval == 0
            else self.step - self.step % self.interval
        )
        kept = (
            f"the last good checkpoint ({self.unit} {last}) is kept"
            if last > 0
            else "no checkpoint was written"
        )
        raise ZsktError(
            f"the run diverged: {where}; {kept}, no result written. Lower the learning rate and start "
            "again (--overwrite), or continue from the checkpoint with --resume "
            "--allow-config-change NAME,..."
        )

    def _resume(self) -> None:
        state = self.log.load_checkpoint(map_location=self.device)
        if state is None:
            return
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ZsktError(
                f"the checkpoint in {self.log.out} was written by an older zskt; start the run again "
                "with --overwrite"
            )
        for name, obj in self._tracked.items():
            obj.load_state_dict(state["state"][name])
        for name, optimizer, *schedules in self._rates:
            self.log.apply_lr_change(name, optimizer, *schedules)
        torch.set_rng_state(state["rng"].cpu())
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        self.step, self.best, self.accuracy = state["step"], state["best"], state["test_accuracy"]
        self.history, self.first_seconds = list(state["interval_seconds"]), state["first_seconds"]
        self.log.print(f"resumed from {self.unit} {self.step}")

    # -- the end ---------------------------------------------------------------------------------------------
    def finish(self, **result: Any) -> dict:
        """The result: the final and best test accuracy, seconds per iteration (median of the timed
        stretches), train seconds, the precision, the end-of-run weight check under torchrun; then
        result.json."""
        in_sync = check_in_sync(*self._trained)
        seconds = median(self.history) if self.history else self.first_seconds
        return self.log.finish(
            {
                "test_accuracy": self.accuracy,
                "best_test_accuracy": self.best,
                "seconds_per_iteration": seconds,
                "train_seconds": time.perf_counter() - self._t0,
                **result,
                **({"distributed": in_sync} if in_sync else {}),
                **self.precision.describe(),
            }
        )
