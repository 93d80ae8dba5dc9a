"""Seconds per pseudo batch of the zero-shot loop: the authors' loop (tests/reference_zero_shot.py, SPEC §3)
beside zskt's `zero_shot_steps` in float32 and with the bf16 option, measured interleaved in one process.

    python benchmarks/bench_zero_shot.py                      # both pairs, batch 128, 32x32, CPU
    python benchmarks/bench_zero_shot.py --pairs wrn-40-2:wrn-16-1 --iterations 2 --repeats 5
    python benchmarks/bench_zero_shot.py --cli                # + the `zskt zero-shot` command's own timing
    python benchmarks/bench_zero_shot.py --device cuda --loops authors,zskt-fp32,zskt-bf16,zskt-bf16-compile

One pseudo batch = 1 generator step + 10 student steps at batch 128 (the authors' scripts). Each case runs
`--iterations` pseudo batches per repeat after one warm-up pseudo batch; cases are interleaved (A B C A B C
...) and the table gives medians over `--repeats`. FLOPs are counted with
torch.utils.flop_counter.FlopCounterMode (convolutions and matmuls, forward and backward, as each loop
executes them) on one pseudo batch at a small batch and scaled linearly to the benchmark's batch (exact: every
counted op is per-sample).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the authors' loop, kept once there
import _common as common

from zskt.methods.scaffold import Meter
from zskt.methods.zero_shot import ZeroShotConfig, ZeroShotState, zero_shot_steps
from zskt.models import Generator, build_model
from zskt.models.frozen import frozen_copy
from zskt.runtime import resolve_precision

from reference_zero_shot import reference_zero_shot_steps

LOOPS = ("authors", "zskt-fp32", "zskt-bf16")
ALL_LOOPS = LOOPS + ("zskt-fp32-compile", "zskt-bf16-compile")
DEFAULT_PAIRS = "wrn-40-2:wrn-16-1,wrn-16-2:wrn-16-1"


# ------------------------------------------------------------------------------ the two loops


class AuthorsLoop:
    """`ZeroShotKTSolver.run` + `LearnableLoader` as the authors run them (SPEC §2-§3), eager float32: the one
    literal copy of their loop, tests/reference_zero_shot.py (every call re-runs the generator with a graph,
    the teacher keeps requires_grad, student steps back-propagate into the generator), with the authors' plain
    Adam and the generator's literal upsample-then-conv layers. (The authors also read four logged scalars per
    pseudo batch with float(), a host sync that costs nothing measurable on the CPU; not done here.)"""

    def __init__(self, teacher, student, generator, batch_size, total=80_000, seed=0):
        self.teacher = teacher.eval()
        generator.fuse_upsample = False  # the authors' layers as written: nn.Upsample, then the 3x3 conv
        self.cfg = ZeroShotConfig(dataset="cifar10", iterations=total, batch_size=batch_size, seed=seed)
        device = next(generator.parameters()).device
        state = ZeroShotState.build(student.train(), generator.train(), self.cfg, device)
        # The authors' optimisers: torch.optim.Adam's default (not fused) implementation.
        state.student_optimiser = torch.optim.Adam(student.parameters(), lr=self.cfg.student_lr)
        state.generator_optimiser = torch.optim.Adam(generator.parameters(), lr=self.cfg.generator_lr)
        cosine = state.student_schedule.lr_lambdas[0]
        state.student_schedule = torch.optim.lr_scheduler.LambdaLR(state.student_optimiser, cosine)
        state.generator_schedule = torch.optim.lr_scheduler.LambdaLR(state.generator_optimiser, cosine)
        self.state = state

    def run(self, n_pseudo_batches: int) -> None:
        pseudo = reference_zero_shot_steps(self.teacher, self.state, n_pseudo_batches, self.cfg)
        # Non-finite losses would have turned the student's weights or the generator's output non-finite.
        common.require_finite(
            "authors' loop: pseudo batch and student weights", pseudo, *self.state.student.parameters()
        )


class ZsktLoop:
    """zskt's `zero_shot_steps`, set up as `zero_shot` sets it up (frozen teacher, precision policy, running
    means on the device); `compile` wraps the student in torch.compile (CUDA: mode="reduce-overhead")."""

    def __init__(
        self,
        teacher,
        student,
        generator,
        batch_size,
        precision_name,
        device,
        total=80_000,
        compile=False,
        seed=0,
    ):
        self.precision = resolve_precision(precision_name, device)
        self.teacher = frozen_copy(
            self.precision.prepare(teacher).eval().requires_grad_(False)
        )  # as zero_shot()
        student = self.precision.prepare(student).train()
        generator = self.precision.prepare(generator).train()
        self.cfg = ZeroShotConfig(dataset="cifar10", iterations=total, batch_size=batch_size, seed=seed)
        self.state = ZeroShotState.build(student, generator, self.cfg, device)
        if compile:
            mode = "reduce-overhead" if device.type == "cuda" else None
            self.state.student = torch.compile(student, mode=mode)
        self.meter = Meter(device)

    def run(self, n_pseudo_batches: int) -> None:
        zero_shot_steps(
            self.teacher,
            self.state,
            self.cfg,
            range(n_pseudo_batches),
            precision=self.precision,
            record=lambda **values: self.meter.add(0, **values),
        )
        means, _ = self.meter.read()  # one host sync, as at a log point; a NaN anywhere makes its mean NaN
        common.require_finite(
            "zskt loop: generator and student losses", means["generator_loss"], means["student_loss"]
        )


def make_networks(pair: str, device, seed=0, image_size=32):
    """Random networks; the teacher's classifier tempered so that its softmax is not one-hot on pseudo images
    (as a trained teacher's is not), which keeps both loops' losses finite (`common.temper_logits`)."""
    teacher_name, student_name = pair.split(":")
    torch.manual_seed(seed)
    teacher = build_model(teacher_name, 10, 3).to(device)
    student = build_model(student_name, 10, 3).to(device)
    generator = Generator(100, image_size=image_size, out_channels=3).to(device)
    with torch.no_grad():
        z = generator.sample_z(64, generator=torch.Generator(device=device).manual_seed(seed + 1))
        common.temper_logits(teacher, copy.deepcopy(generator)(z))
    return teacher, student, generator


def make_loop(name: str, pair: str, batch_size: int, device, networks=None):
    teacher, student, generator = (
        (copy.deepcopy(m) for m in networks) if networks else make_networks(pair, device)
    )
    if name == "authors":
        return AuthorsLoop(teacher, student, generator, batch_size)
    precision = "bf16" if "bf16" in name else "fp32"
    return ZsktLoop(
        teacher, student, generator, batch_size, precision, device, compile=name.endswith("compile")
    )


def count_flops(name: str, pair: str, batch_size: int, device, flop_batch: int = 8) -> float:
    """FLOPs of one pseudo batch of loop `name` at `batch_size`, counted at `flop_batch` and scaled."""
    loop = make_loop(name.replace("-compile", ""), pair, flop_batch, device)
    with common.FlopCount() as counter:
        loop.run(1)
    return counter.total * batch_size / flop_batch


def spec_flops(pair: str, batch_size: int) -> dict:
    """FLOPs per pseudo batch from SPEC §1/§2's per-image forward costs, with backward = 2x forward
    (weight + input gradients) and 1x where only one of them is needed. `spec_done_once` is the floor the
    issue quotes (the generator's literal layers, 231.7 MFLOP per image); `..._fused_generator` counts the
    generator as zskt runs it (each upsample-conv pair a transposed convolution: 105.8 MFLOP per image at
    32x32)."""
    fwd = {"wrn-16-1": 53.3e6, "wrn-16-2": 202.2e6, "wrn-40-1": 166.6e6, "wrn-40-2": 655.2e6}
    t, s = (fwd[n] for n in pair.split(":"))
    out = {}
    for key, g in (("spec_done_once", 231.7e6), ("spec_done_once_fused_generator", 105.8e6)):
        # zskt: G fwd+bwd(weights, input not needed past the Linear) ~3G; S fwd + input-grad bwd; T fwd +
        # input bwd; pseudo batch: G fwd + T fwd; 10 student steps: S fwd + bwd(weights + input grads inside)
        # = 3S each.
        done_once = (3 * g + 2 * s + 2 * t) + (g + t) + 10 * 3 * s
        out[key] = done_once * batch_size
    return out


# ------------------------------------------------------------------------------ memory, in a child process


def memory_child(args) -> None:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    loop = make_loop(args.memory_child[1], args.memory_child[0], args.batch_size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = common.rss_mib()
    loop.run(2)
    common.sync(device)
    out = {"max_rss_mib": common.max_rss_mib(), "rss_before_mib": base}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["cuda_max_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    print(json.dumps(out))


# ------------------------------------------------------------------------------ the CLI's own timing


class CliCase:
    """`zskt zero-shot` on a synthetic CIFAR-10 with a saved random-init teacher: returns the run's
    result.json `seconds_per_iteration` (what the command reports; warm-up and evaluation excluded)."""

    def __init__(self, pair: str, precision: str, batch_size: int, device, iterations=6, eval_every=3):
        from zskt.data.synthetic import write_fake_dataset
        from zskt.models import save_model

        self.dir = Path(tempfile.mkdtemp(prefix="zskt_bench_cli_"))
        write_fake_dataset("cifar10", self.dir / "data", n_train=10, n_test=100)
        teacher, _, _ = make_networks(pair, "cpu")
        save_model(teacher, self.dir / "teacher.pt", dataset="cifar10")
        self.args = [
            "zero-shot",
            "--teacher",
            str(self.dir / "teacher.pt"),
            "--student",
            pair.split(":")[1],
            "--dataset",
            "cifar10",
            "--data-dir",
            str(self.dir / "data"),
            "--iterations",
            str(iterations),
            "--eval-every",
            str(eval_every),
            "--batch-size",
            str(batch_size),
            "--device",
            str(device),
            "--precision",
            precision,
            "--quiet",
            "--overwrite",
        ]
        self.n = 0

    def __call__(self) -> float:
        self.n += 1
        out = self.dir / f"run{self.n}"
        # The command runs with this process's torch thread count, so that both sides use the same cores.
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        proc = subprocess.run(
            [sys.executable, "-m", "zskt", *self.args, "--out", str(out)],
            check=False,
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"zskt zero-shot failed:\n{proc.stderr[-2000:]}")
        return json.loads((out / "result.json").read_text())["seconds_per_iteration"]


# ------------------------------------------------------------------------------ main


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--pairs", default=DEFAULT_PAIRS, help=f"teacher:student,... (default {DEFAULT_PAIRS})")
    p.add_argument("--loops", default=",".join(LOOPS), help=f"which loops, of {', '.join(ALL_LOOPS)}")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--iterations", type=int, default=1, help="pseudo batches per timed repeat")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the table gives medians")
    p.add_argument(
        "--precision",
        default=None,
        help="shorthand: fp32 or bf16 keeps only zskt's loop in that precision (beside the authors')",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.add_argument("--no-peak", action="store_true", help="do not measure the peak now (use the reference)")
    p.add_argument(
        "--memory", action="store_true", help="peak memory per configuration, each in a fresh process"
    )
    p.add_argument(
        "--cli",
        action="store_true",
        help="also time `zskt zero-shot` (6 pseudo batches, eval every 3) "
        "in fp32 and bf16 for the first pair, interleaved",
    )
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--memory-child", nargs=2, metavar=("PAIR", "LOOP"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    loops = [x for x in args.loops.split(",") if x]
    if args.precision:
        loops = ["authors", f"zskt-{args.precision}"]
    pairs = [x for x in args.pairs.split(",") if x]
    info, peak = common.start(
        f"zero-shot loop, batch {args.batch_size}, 32x32", device, measure=not args.no_peak
    )

    rows = []
    for pair in pairs:
        networks = make_networks(pair, device)
        runs = {name: make_loop(name, pair, args.batch_size, device, networks) for name in loops}
        cases = {}
        for name, loop in runs.items():
            loop.run(1)  # warm-up: allocator, oneDNN primitive cache, compilation

            def case(loop=loop):
                t0 = common.now(device)
                loop.run(args.iterations)
                return (common.now(device) - t0) / args.iterations

            cases[name] = case
        if args.cli and pair == pairs[0]:
            for precision in ("fp32", "bf16"):
                cases[f"zskt CLI {precision}"] = CliCase(pair, precision, args.batch_size, device)
        times = common.interleaved(cases, args.repeats, verbose=args.verbose)
        flops = {} if args.no_flops else {n: count_flops(n, pair, args.batch_size, device) for n in runs}
        authors = common.median(times["authors"]) if "authors" in times else None
        for name, values in times.items():
            precision = "bf16" if "bf16" in name else "fp32"
            sec = common.median(values)
            f = flops.get(name) or flops.get(name.replace("zskt CLI ", "zskt-"))
            row = {
                "pair": pair.replace("wrn-", "").replace(":", " -> "),
                "pair_id": pair,
                "loop": name,
                "precision": precision,
                "seconds": sec,
                "min": min(values),
                "max": max(values),
                "n": len(values),
                "speedup": authors / sec if authors else None,
                "tflop": f / 1e12 if f else None,
                "run_80k_h": sec * 80_000 / 3600,
            }
            if f:
                row["gflops"] = f / sec / 1e9
                ref = common.peak_for(peak, precision)
                row["pct_peak"] = 100 * row["gflops"] / ref if ref else None
                row["floor_s"] = f / (ref * 1e9) if ref else None
            rows.append(row)
        del runs, cases

    if args.memory:
        script = Path(__file__).resolve()
        for row in rows:
            if row["loop"].startswith("zskt CLI"):
                continue
            extra = ["--device", args.device, "--batch-size", str(args.batch_size)]
            mem = common.child_peak_memory(script, ["--memory-child", row["pair_id"], row["loop"], *extra])
            row.update(common.memory_row(mem))
            row["rss_before_mib"] = mem["rss_before_mib"]

    columns = [
        ("pair", "teacher -> student"),
        ("loop", "loop"),
        ("seconds", "s / pseudo batch (median)"),
        ("min", "min"),
        ("max", "max"),
        ("n", "n"),
        ("speedup", "x authors"),
        ("tflop", "TFLOP / pseudo batch"),
        ("gflops", "GFLOP/s"),
        ("pct_peak", "% peak"),
        ("floor_s", "floor s"),
        ("run_80k_h", "80k pseudo batches, h"),
    ]
    if args.memory:
        columns += common.MEMORY_COLUMNS
    return common.finish(
        rows,
        columns,
        info,
        peak,
        args,
        spec_flops={pair: spec_flops(pair, args.batch_size) for pair in pairs},
    )


if __name__ == "__main__":
    main()
