"""Seconds per training step of the supervised loops: a WRN-40-2 teacher step (cross-entropy) and a KD+AT step
(WRN-40-2 teacher -> WRN-16-1 student), each beside the authors'-semantics eager loop written out below,
interleaved in one process.

    python benchmarks/bench_train.py                      # batch 128, 32x32, CPU: teacher step and KD+AT step
    python benchmarks/bench_train.py --cases teacher --repeats 5 --memory

zskt's numbers are `fit_supervised` itself (the loop `zskt train` and `zskt kd-at` run, including the
on-device pad-crop-flip augmentation and the loss accumulated on the device), on a synthetic CIFAR-10-shaped
split of `--steps` batches: each repeat runs one warm-up epoch and two timed epochs and reports
fit_supervised's own `seconds_per_iteration`. The authors' loops get a ready normalised batch (no data loading
at all), so they are if anything flattered. FLOPs: FlopCounterMode on one step at batch 8, scaled to the
batch.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

from zskt.data import ImageData, ImageSplit, get_info
from zskt.methods.kd_at import KDATConfig, kd_at_loss_fn
from zskt.methods.schedule import Schedule
from zskt.methods.train import TrainConfig, cross_entropy_loss, fit_supervised, supervised_scaffold
from zskt.models import build_model
from zskt.models.frozen import frozen_copy
from zskt.runlog import RunLog
from zskt.runtime import resolve_precision

CASES = ("teacher", "kd-at")
LOOPS = ("authors", "zskt-fp32", "zskt-bf16")


# ------------------------------------------------------------------------------ the authors' loops, written
# out


def _attention(a):
    return F.normalize(a.pow(2).mean(1).view(a.size(0), -1))


def _kd_at_loss(y, s_logits, s_acts, t_logits, t_acts, alpha=0.9, temperature=4.0, beta=1000.0):
    # FSKT `KT_loss` in 'KD+AT' mode: (1-α)·CE + 2·α·T²·KL_mean + β·Σ attention_diff (SPEC §4).
    ce = F.cross_entropy(s_logits, y)
    kl = (
        F.kl_div(
            F.log_softmax(s_logits / temperature, 1), F.softmax(t_logits / temperature, 1), reduction="sum"
        )
        / s_logits.numel()
    )
    loss = (1 - alpha) * ce + 2 * alpha * temperature**2 * kl
    for s, t in zip(s_acts, t_acts, strict=True):
        loss = loss + beta * (_attention(s) - _attention(t)).pow(2).mean()
    return loss


class AuthorsStep:
    """Eager float32, default layout. teacher case: model(x), CE, zero_grad, backward, SGD step, float(loss).
    kd-at case (FSKT `FewShotKTSolver.train`): student and teacher forwards both with a graph (the teacher in
    eval mode but with requires_grad=True, so the backward also runs through it and fills its unused parameter
    gradients), the KD+AT loss, float() of accuracy and loss every step (host syncs), zero_grad, backward,
    SGD."""

    def __init__(self, case, model, teacher, batch_size, device):
        self.case, self.model, self.teacher = case, model.train(), teacher
        if teacher is not None:
            teacher.eval().requires_grad_(True)
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator(device=device).manual_seed(0)
        self.x = torch.randn(batch_size, 3, 32, 32, generator=g, device=device)
        self.y = torch.randint(0, 10, (batch_size,), generator=g, device=device)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            s_logits, s_acts = self.model(self.x)
            if self.case == "teacher":
                loss = F.cross_entropy(s_logits, self.y)
                common.require_finite("authors' step: loss", float(loss))
            else:
                t_logits, t_acts = self.teacher(self.x)
                loss = _kd_at_loss(self.y, s_logits, s_acts, t_logits, t_acts)
                float((s_logits.argmax(1) == self.y).float().mean())
                common.require_finite("authors' step: loss", float(loss))
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()


def synthetic_data(n_train: int, device) -> ImageData:
    info = get_info("cifar10")
    g = torch.Generator().manual_seed(0)
    train = ImageSplit(
        torch.randint(0, 256, (n_train, 3, 32, 32), generator=g, dtype=torch.uint8),
        torch.randint(0, 10, (n_train,), generator=g),
    )
    test = ImageSplit(train.images[:16].clone(), train.labels[:16].clone())
    return ImageData(info=info, train=train.to(device), test=test, mean=info.mean, std=info.std)


class ZsktStep:
    """`fit_supervised` with zskt's loss (cross-entropy, or `kd_at_loss_fn` with the frozen teacher), as `zskt
    train` / `zskt kd-at` set it up; returns its own seconds_per_iteration over epochs 2..3."""

    def __init__(self, case, model, teacher, batch_size, precision_name, device, steps):
        self.precision = resolve_precision(precision_name, device)
        self.model = self.precision.prepare(model)
        where = {"device": str(device), "precision": precision_name}
        if case == "teacher":
            self.cfg = TrainConfig(dataset="cifar10", batch_size=batch_size, eval_every=10**6, **where)
            self.loss_fn = cross_entropy_loss
        else:
            teacher = frozen_copy(self.precision.prepare(teacher))  # as kd_at() runs it
            self.cfg = KDATConfig(
                dataset="cifar10", teacher="bench", batch_size=batch_size, eval_every=10**6, **where
            )
            self.loss_fn = kd_at_loss_fn(teacher, self.cfg)
        self.data = synthetic_data(steps * batch_size, device)
        self.steps = steps
        self.finite = torch.ones((), dtype=torch.bool, device=device)

    def _checked_loss(self, model, images, labels):
        # Every step's loss checked on the device (one tiny op, no host sync), read after the run.
        loss = self.loss_fn(model, images, labels)
        self.finite &= torch.isfinite(loss.detach())
        return loss

    def run(self, epochs: int = 3) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            log = RunLog(Path(tmp) / "run", command="bench", config={}, enabled=False, quiet=True)
            schedule = Schedule(epochs=epochs, milestones=(), batches_per_epoch=self.steps)
            run = supervised_scaffold(self.cfg, log, schedule, "bench")
            fit_supervised(
                run,
                self.model,
                self.data,
                self.cfg,
                schedule=schedule,
                indices=None,
                loss_fn=self._checked_loss,
            )
            result = run.finish()
        common.require_finite("zskt step: every loss", self.finite)
        return result["seconds_per_iteration"]


def make_networks(case, device):
    torch.manual_seed(0)
    if case == "teacher":
        return build_model("wrn-40-2", 10, 3).to(device), None
    return build_model("wrn-16-1", 10, 3).to(device), build_model("wrn-40-2", 10, 3).to(device)


def make_step(case, loop, batch_size, device, steps, networks=None):
    model, teacher = (copy.deepcopy(m) for m in networks) if networks else make_networks(case, device)
    if loop == "authors":
        return AuthorsStep(case, model, teacher, batch_size, device)
    return ZsktStep(case, model, teacher, batch_size, "bf16" if "bf16" in loop else "fp32", device, steps)


def count_flops(case, loop, batch_size, device, flop_batch=8) -> float:
    step = make_step(case, loop, flop_batch, device, steps=1)
    if loop == "authors":
        with common.FlopCount() as counter:
            step.run(1)
    else:  # one iteration of fit_supervised's inner loop, exactly as it runs it
        x = step.precision.layout(torch.randn(flop_batch, 3, 32, 32, device=device))
        y = torch.randint(0, 10, (flop_batch,), device=device)
        with common.FlopCount() as counter:
            with step.precision.autocast():
                loss = step.loss_fn(step.model, x, y)
            loss.backward()
    return counter.total * batch_size / flop_batch


def memory_child(args) -> None:
    device = torch.device(args.device)
    case, loop = args.memory_child
    step = make_step(case, loop, args.batch_size, device, steps=2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = common.rss_mib()
    step.run(2) if loop == "authors" else step.run(epochs=1)
    common.sync(device)
    out = {"max_rss_mib": common.max_rss_mib(), "rss_before_mib": base}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(json.dumps(out))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help="teacher, kd-at")
    p.add_argument("--loops", default=",".join(LOOPS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--steps",
        type=int,
        default=2,
        help="batches per epoch of zskt's fit_supervised (3 epochs a "
        "repeat, the first a warm-up); the authors' loop times "
        "2x this many steps per repeat",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-flops", action="store_true")
    p.add_argument("--no-peak", action="store_true")
    p.add_argument("--memory", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info, peak = common.start(
        f"training steps, batch {args.batch_size}, 32x32", device, measure=not args.no_peak
    )
    loops = [x for x in args.loops.split(",") if x]
    rows = []
    for case in [x for x in args.cases.split(",") if x]:
        networks = make_networks(case, device)
        steps = {loop: make_step(case, loop, args.batch_size, device, args.steps, networks) for loop in loops}
        cases = {}
        for loop, step in steps.items():
            if loop == "authors":
                step.run(1)  # warm-up

                def timed(step=step):
                    t0 = common.now(device)
                    step.run(2 * args.steps)
                    return (common.now(device) - t0) / (2 * args.steps)
            else:

                def timed(step=step):
                    return step.run()

            cases[loop] = timed
        times = common.interleaved(cases, args.repeats, verbose=args.verbose)
        flops = (
            {}
            if args.no_flops
            else {loop: count_flops(case, loop, args.batch_size, device) for loop in loops}
        )
        authors = common.median(times["authors"]) if "authors" in times else None
        for loop, values in times.items():
            precision = "bf16" if "bf16" in loop else "fp32"
            sec = common.median(values)
            row = {
                "case": "WRN-40-2 CE step" if case == "teacher" else "KD+AT 40-2 -> 16-1",
                "case_id": case,
                "loop": loop,
                "seconds": sec,
                "min": min(values),
                "max": max(values),
                "n": len(values),
                "speedup": authors / sec if authors else None,
            }
            f = flops.get(loop)
            if f:
                ref = common.peak_for(peak, precision)
                row.update(
                    tflop=f / 1e12,
                    gflops=f / sec / 1e9,
                    pct_peak=100 * f / sec / 1e9 / ref,
                    floor_s=f / (ref * 1e9),
                )
            rows.append(row)
    if args.memory:
        for row in rows:
            mem = common.child_peak_memory(
                Path(__file__).resolve(),
                [
                    "--memory-child",
                    row["case_id"],
                    row["loop"],
                    "--device",
                    args.device,
                    "--batch-size",
                    str(args.batch_size),
                ],
            )
            row.update(common.memory_row(mem))
    columns = [
        ("case", "step"),
        ("loop", "loop"),
        ("seconds", "s / step (median)"),
        ("min", "min"),
        ("max", "max"),
        ("n", "n"),
        ("speedup", "x authors"),
        ("tflop", "TFLOP / step"),
        ("gflops", "GFLOP/s"),
        ("pct_peak", "% peak"),
        ("floor_s", "floor s"),
    ]
    if args.memory:
        columns += common.MEMORY_COLUMNS
    return common.finish(rows, columns, info, peak, args)


if __name__ == "__main__":
    main()
