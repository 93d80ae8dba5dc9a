"""The demo's plan on this machine: unit costs probed here (a few training steps and pseudo batches at the
demo's sizes), the time each run will take, the scale that fits the 10-minute promise, and the thread policy.
The `zskt demo` command itself is zskt/commands/demo.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zskt.experiments.grid import Run
from zskt.experiments.runner import DONE, status

BUDGET_SECONDS = 600  # the demo's promise: within 10 minutes
RUN_OVERHEAD = 1.5  # seconds per run besides its steps (data, networks, files), in process


@dataclass(frozen=True)
class UnitCosts:
    """Seconds per unit of work on digits (16x16 grey images): per image through forward + backward + update
    of each network (an evaluation image costs a third of that), per zero-shot pseudo batch of 128 (1
    generator + 10 student steps), per belief curve step of one image pair. `reference()` holds the costs
    measured by timing the demo's runs on this project's 2-core CPU (docs/experiments.md); `probe_costs()`
    measures them where the demo runs, which is what the demo plans with."""

    train_per_image: Mapping[str, float]
    zero_shot_per_batch: float
    belief_per_pair_step: float
    source: str = "reference"

    @staticmethod
    def reference() -> UnitCosts:
        return UnitCosts(
            {"wrn-16-1": 0.0002, "wrn-16-2": 0.0005, "wrn-40-1": 0.00041, "wrn-40-2": 0.0016},
            zero_shot_per_batch=0.37,
            belief_per_pair_step=0.00022,
        )

    def per_image(self, model: str) -> float:
        if model in self.train_per_image:
            return self.train_per_image[model]
        # Not probed: scale the dearest probed network by its FLOPs' ratio in the reference costs.
        reference = UnitCosts.reference().train_per_image
        known = max(self.train_per_image, key=lambda m: reference.get(m, 0.0))
        return self.train_per_image[known] * reference.get(model, 0.002) / reference.get(known, 0.002)


def probe_costs(
    device: torch.device | str = "cpu", pair: tuple[str, str] = ("wrn-16-2", "wrn-16-1"), repeats: int = 1
) -> UnitCosts:
    """Measure `UnitCosts` here, in a few seconds: a few training steps of each network of `pair` and a few
    generator and student steps of the zero-shot loop, at the demo's sizes (digits, batch 128), with this
    process's thread count and the runs' layout. The steps are the runs' own kind of arithmetic (not their
    code: the loops also load data, evaluate and log, which `PROBE_OVERHEAD` covers); the random networks and
    inputs are drawn from a private generator, leaving the global seed as it was."""
    import torch.nn.functional as F

    from zskt.models.frozen import frozen_copy
    from zskt.models.generator import Generator
    from zskt.models.wresnet import WideResNet, parse_wrn_name
    from zskt.runlog import Timer
    from zskt.runtime import resolve_precision

    device = torch.device(device)
    precision = resolve_precision("fp32" if device.type == "cpu" else "auto", device)
    timer = Timer(device)
    batch, size = 128, 16

    def seconds(step) -> float:
        step()  # warm-up (first-call allocations, kernel choice)
        times = []
        for _ in range(repeats):
            t0 = timer.now()
            step()
            times.append(timer.now() - t0)
        return sorted(times)[len(times) // 2]

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(12345)
        nets = {
            name: precision.prepare(
                WideResNet(*parse_wrn_name(name), num_classes=10, in_channels=1).to(device)
            )
            for name in pair
        }
        x = precision.layout(torch.randn(batch, 1, size, size, device=device))
        y = torch.randint(0, 10, (batch,), device=device)
        per_image = {}
        for name, net in nets.items():
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

            def train_step(net=net, opt=opt):
                opt.zero_grad(set_to_none=True)
                with precision.autocast():
                    loss = F.cross_entropy(net(x)[0], y)
                loss.backward()
                opt.step()

            per_image[name] = seconds(train_step) / batch * PROBE_OVERHEAD["train"]
        # The teacher as the zero-shot loop holds it: eval mode, BN folded, no gradients of its own.
        teacher, student = precision.prepare(frozen_copy(nets[pair[0]])), nets[pair[1]].train()
        generator = Generator(z_dim=100, image_size=size, out_channels=1).to(device)
        opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
        opt_s = torch.optim.Adam(student.parameters(), lr=2e-3)
        z = torch.randn(batch, 100, device=device)

        def kl(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return F.kl_div(
                F.log_softmax(s.float(), 1),
                F.log_softmax(t.float(), 1),
                reduction="batchmean",
                log_target=True,
            )

        def generator_step():
            opt_g.zero_grad(set_to_none=True)
            fake = precision.layout(generator(z))
            with precision.autocast():
                loss = -kl(student(fake)[0], teacher(fake)[0])
            loss.backward()
            opt_g.step()

        # The loop draws the pseudo batch and the teacher's answer once for its n_S = 10 student steps.
        def pseudo_batch_once():
            with torch.no_grad(), precision.autocast():
                fake = precision.layout(generator(z))
                return fake, teacher(fake)[0]

        fake, answer = pseudo_batch_once()

        def student_step():
            opt_s.zero_grad(set_to_none=True)
            with precision.autocast():
                loss = kl(student(fake)[0], answer)
            loss.backward()
            opt_s.step()

        pseudo_batch = (
            seconds(generator_step) + seconds(pseudo_batch_once) + 10 * seconds(student_step)
        ) * PROBE_OVERHEAD["zero-shot"]
    reference = UnitCosts.reference()
    belief = per_image[pair[1]] * reference.belief_per_pair_step / reference.train_per_image["wrn-16-1"]
    return UnitCosts(
        per_image,
        zero_shot_per_batch=pseudo_batch,
        belief_per_pair_step=belief,
        source=f"probed on {device}, {torch.get_num_threads()} thread(s)",
    )


# What the runs cost beyond the probe's bare steps (data loading and augmentation, evaluation, metrics, the
# zero-shot loop's bookkeeping): each a runs' time over the probe's estimate, measured on this project's CPU
# by timing the probe and the runs back to back (docs/benchmarks.md).
PROBE_OVERHEAD = {"train": 1.0, "zero-shot": 1.0}


def _belief_seconds(options: dict, tags: dict, info, costs: UnitCosts) -> float:
    curves = min(options.get("images", 1000), info.n_test) * (info.num_classes - 1)
    return curves * options.get("steps", 200) * costs.belief_per_pair_step


# The cost model of each command that is not a training method; the methods' are their registry entries'
# `cost` (zskt.methods.registry).
COST_MODELS: dict[str, Callable[[Run, Any, UnitCosts], float]] = {"belief": _belief_seconds}


def estimate_seconds(run: Run, costs: UnitCosts | None = None) -> float:
    """Expected seconds for one digits run, from its options and the unit costs (default: the reference
    machine's; the demo passes the costs it probed on the machine it runs on)."""
    from zskt.data import get_info
    from zskt.methods.registry import METHODS

    info = get_info(run.options.get("dataset", "digits"))
    method = METHODS.get(run.command)
    model = method.cost if method is not None else COST_MODELS.get(run.command)
    costs = costs or UnitCosts.reference()
    return RUN_OVERHEAD + (model(run.options, run.tags, info, costs) if model else 0.0)


def fit_scale(experiment, out: Path, costs: UnitCosts, budget: float = BUDGET_SECONDS) -> tuple[float, float]:
    """(scale, expected seconds) for the demo here: 1 when its unfinished runs fit in 90 % of `budget` at the
    probed costs, else the largest of 0.9, 0.8, ... 0.1 that fits (fewer epochs, pseudo batches and belief
    steps: `GridSpec.scale`). A folder that already holds runs keeps the scale they were made at."""
    from zskt.experiments.reproduce import RECORD
    from zskt.runlog import read_json

    def expected(scale: float) -> float:
        runs = experiment.runs(scale=scale)
        return sum(estimate_seconds(r, costs) for r in runs if status(r, out) != DONE)

    record = Path(out) / RECORD
    if record.is_file():
        scale = float(read_json(record).get("scale", 1.0))
        return scale, expected(scale)
    for scale in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1):
        seconds = expected(scale)
        if seconds <= 0.9 * budget:
            return scale, seconds
    return scale, seconds


def other_processes_cpu(interval: float = 0.4) -> float | None:
    """Cores' worth of CPU that other processes used over the next `interval` seconds (Linux /proc/stat), or
    None where that cannot be read."""
    import os

    def busy_and_total() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [
                int(v) for v in f.readline().split()[1:9]
            ]  # user nice system idle iowait irq softirq steal
        return sum(values) - values[3] - values[4], sum(values)

    try:
        busy0, _ = busy_and_total()
        ours0, t0 = time.process_time(), time.perf_counter()
        time.sleep(interval)
        busy1, _ = busy_and_total()
        ours1, t1 = time.process_time(), time.perf_counter()
    except (OSError, ValueError, IndexError):
        return None
    busy = (busy1 - busy0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)
    return max(0.0, busy - (ours1 - ours0) / (t1 - t0))


class ThreadPolicy:
    """The demo's thread count, set before each run: `fixed` threads (default: this process's count at the
    start), whatever the load, since the thread count can change a CPU run's rounding and so its numbers
    (issue 17.7: a digits teacher of 99.50 % on 1 thread against 98.99 % on 2).

    `adaptive=True` (--threads auto) is the opt-in, load-dependent choice: the runs are small (16x16 images,
    batches of 20-128), so each step is many short parallel regions; when another process holds a core, the
    OpenMP threads of a 2-thread run wait for each other at every region and a run slows down up to 30x
    (measured: a 6 s fine-tuning took 3:38 next to two other jobs). One thread on a busy machine avoids that,
    at the price of numbers that depend on the load."""

    def __init__(self, fixed: int | None = None, adaptive: bool = False):
        self.default = torch.get_num_threads()
        self.fixed = fixed or self.default
        self.adaptive = adaptive

    def __call__(self, run: Run) -> str:
        if not self.adaptive:
            torch.set_num_threads(self.fixed)
            return ""
        others = other_processes_cpu() if self.default > 1 else None
        threads = 1 if others is not None and others > 0.3 else self.default
        torch.set_num_threads(threads)
        return f" [1 thread: other processes use {others:.1f} cores]" if threads < self.default else ""
