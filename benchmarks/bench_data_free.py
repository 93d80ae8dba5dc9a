"""Seconds per round of DAFL, DFAD and DFQ: the DataFree reference code's loop (written out in
tests/reference_generative.py from CMI `datafree/synthesis/generative.py` + `datafree_kd.py` at acbbea6, the
copy the equality tests check) beside zskt's `generative_round`, in float32
(and bf16 with --bf16), measured interleaved in one process.

    python benchmarks/bench_data_free.py                              # the three methods, WRN-16-2 ->
    WRN-16-1 python benchmarks/bench_data_free.py --methods dfq --batch-size 256 --image-size 32 --repeats 5
    python benchmarks/bench_data_free.py --check                      # reference loop here vs zskt: max
    |diff|

One round = the method's generator steps (1) and student steps (5 for DAFL and DFAD, 10 for DFQ) at the
method's loss weights. Each case runs `--rounds` rounds per repeat after a warm-up round; cases are
interleaved (A B C A B C ...) and the table gives medians over `--repeats`. The reference loop runs as that
code does: eager NCHW float32; the generator's literal layers and a separate normaliser; the teacher with its
batch norms and `DeepInversionHook`s on all of them in every forward (the synthesizer registers them whatever
the BN weight); all five loss terms computed whatever their weights; `loss.backward()` into the student's
parameters in the generator step; plain Adam and SGD. zskt's loop is set up as `zskt dafl|dfad|dfq` sets it
up.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _common as common
from reference_generative import reference_kldiv, reference_round

from zskt.methods.dafl import DAFLConfig
from zskt.methods.dfad import DFADConfig
from zskt.methods.dfq import DFQConfig
from zskt.methods.generative import GenerativeState, Teacher, generative_round
from zskt.models import build_model
from zskt.models.dfkd_generator import DataFreeGenerator
from zskt.runtime import Precision, resolve_precision

CONFIGS = {"dafl": DAFLConfig, "dfad": DFADConfig, "dfq": DFQConfig}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # CIFAR-10's, the reference's NORMALIZE_DICT


# ------------------------------------------------------------------------------ the two loops


class ReferenceLoop:
    """`GenerativeSynthesizer.synthesize()` then `train(synthesizer, [student, teacher], ...)`, per round."""

    def __init__(self, cfg, teacher, student, generator, device):
        self.cfg = cfg
        self.teacher = teacher.eval()  # requires_grad stays True, as a loaded model's does
        self.student, self.generator = student.train(), generator.train()
        self.generator.fuse_upsample = False
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.generator_lr, betas=(0.5, 0.999))
        self.opt_s = torch.optim.SGD(
            student.parameters(), cfg.student_lr, weight_decay=cfg.weight_decay, momentum=0.9
        )
        self.criterion = torch.nn.L1Loss() if cfg.discrepancy == "l1" else reference_kldiv
        self.weights = {k: getattr(cfg, k) for k in ("adv", "bn", "oh", "act", "balance")}
        dtype = next(generator.parameters()).dtype
        self.mean = torch.tensor(MEAN[: generator.out_channels], device=device, dtype=dtype).view(1, -1, 1, 1)
        self.std = torch.tensor(STD[: generator.out_channels], device=device, dtype=dtype).view(1, -1, 1, 1)
        self.rng = torch.Generator(device=device).manual_seed(0)
        self.device = device

    def run(self, rounds: int) -> None:
        cfg = self.cfg
        for _ in range(rounds):
            reference_round(
                self.teacher,
                self.student,
                self.generator,
                self.opt_g,
                self.opt_s,
                self.criterion,
                self.weights,
                self.rng,
                cfg.generator_steps,
                cfg.student_steps,
                cfg.batch,
                self.mean,
                self.std,
                sample_eval=cfg.sample_mode == "eval",
            )
        common.sync(self.device)


class ZsktLoop:
    """zskt's `generative_round`, set up as `train_generative` sets it up (frozen teacher, folded copy for the
    student's targets, channels_last, fused generator)."""

    def __init__(self, cfg, teacher, student, generator, precision: Precision):
        self.cfg, self.precision = cfg, precision
        self.teacher = Teacher.build(precision.prepare(teacher).eval().requires_grad_(False), cfg)
        self.state = GenerativeState.build(
            precision.prepare(student).train(),
            precision.prepare(generator).train(),
            cfg,
            next(student.parameters()).device,
        )

    def run(self, rounds: int) -> None:
        for _ in range(rounds):
            generative_round(self.teacher, self.state, self.cfg, self.precision)
        common.sync(next(self.state.student.parameters()).device)


def make_networks(pair: str, cfg, image_size: int, device, seed: int = 0):
    teacher_name, student_name = pair.split(":")
    torch.manual_seed(seed)
    teacher = build_model(teacher_name, 10, 3).to(device).eval()
    for m in teacher.modules():  # trained-looking BN statistics (the BN term is then not ~0)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    student = build_model(student_name, 10, 3).to(device)
    generator = DataFreeGenerator(
        cfg.z_dim, image_size=image_size, out_channels=3, ngf=cfg.generator_width, mean=MEAN, std=STD
    ).to(device)
    return teacher, student, generator


def make_loop(name: str, cfg, networks, device):
    teacher, student, generator = (copy.deepcopy(m) for m in networks)
    if name == "reference":
        generator.mean.fill_(0.0)  # the reference normalises outside the generator
        generator.std.fill_(1.0)
        return ReferenceLoop(cfg, teacher, student, generator, device)
    return ZsktLoop(cfg, teacher, student, generator, resolve_precision(name.split("-")[1], device))


def check(method: str = "dfq", pair: str = "wrn-16-1:wrn-16-1") -> float:
    """Largest parameter difference between this file's reference loop and zskt's loop after one round in
    float64 from the same networks and z sequence (NCHW, no autocast): the two agree to rounding."""
    device = torch.device("cpu")
    cfg = CONFIGS[method](dataset="cifar10", batch_size=8, ngf=8, z_dim=16, student_steps=2)
    torch.set_default_dtype(torch.float64)
    try:
        networks = make_networks(pair, cfg, 8, device)
        ref = make_loop("reference", cfg, networks, device)
        ref.run(1)
        ours = ZsktLoop(cfg, *(copy.deepcopy(m) for m in networks), Precision("fp32", "cpu", False))
        ours.state.z_source.manual_seed(0)
        ours.run(1)
    finally:
        torch.set_default_dtype(torch.float32)
    pairs = [
        *zip(ref.student.parameters(), ours.state.student.parameters(), strict=True),
        *zip(ref.generator.parameters(), ours.state.generator.parameters(), strict=True),
    ]
    return max((a - b).abs().max().item() for a, b in pairs)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--methods", default="dafl,dfad,dfq")
    p.add_argument("--pair", default="wrn-16-2:wrn-16-1", help="teacher:student (default wrn-16-2:wrn-16-1)")
    p.add_argument(
        "--batch-size", type=int, default=64, help="pseudo images per step (reference scripts: 256)"
    )
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=1, help="rounds per timed repeat")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the table gives medians")
    p.add_argument("--bf16", action="store_true", help="also zskt's loop under bf16 autocast")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-peak", action="store_true", help="do not measure the peak now")
    p.add_argument(
        "--check",
        action="store_true",
        help="only compare the reference loop here with zskt's (parameters after one round, float64)",
    )
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.check:
        diffs = {m: check(m) for m in CONFIGS}
        for m, d in diffs.items():
            print(
                f"{m}: reference loop here vs zskt generative_round, float64: max |parameter difference| "
                f"{d:.2e}"
            )
        return diffs
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info, peak = common.start(
        f"data-free generator family, {args.pair}, batch {args.batch_size}, "
        f"{args.image_size}x{args.image_size}",
        device,
        measure=not args.no_peak,
    )
    loops = ["reference", "zskt-fp32"] + (["zskt-bf16"] if args.bf16 else [])
    rows = []
    for method in [m for m in args.methods.split(",") if m]:
        cfg = CONFIGS[method](dataset="cifar10", batch_size=args.batch_size)
        networks = make_networks(args.pair, cfg, args.image_size, device)
        runs = {name: make_loop(name, cfg, networks, device) for name in loops}
        cases = {}
        for name, loop in runs.items():
            loop.run(1)  # warm-up: allocator, oneDNN primitive cache

            def case(loop=loop):
                t0 = common.now(device)
                loop.run(args.rounds)
                return (common.now(device) - t0) / args.rounds

            cases[name] = case
        times = common.interleaved(cases, args.repeats, verbose=args.verbose)
        reference = common.median(times["reference"])
        for name, values in times.items():
            sec = common.median(values)
            rows.append(
                {
                    "method": method,
                    "loop": name,
                    "steps": f"{cfg.generator_steps}+{cfg.student_steps}",
                    "seconds": sec,
                    "min": min(values),
                    "max": max(values),
                    "n": len(values),
                    "speedup": reference / sec,
                }
            )
        del runs, cases
    columns = [
        ("method", "method"),
        ("loop", "loop"),
        ("steps", "G+S steps / round"),
        ("seconds", "s / round (median)"),
        ("min", "min"),
        ("max", "max"),
        ("n", "n"),
        ("speedup", "x reference"),
    ]
    return common.finish(rows, columns, info, peak, args)


if __name__ == "__main__":
    main()
