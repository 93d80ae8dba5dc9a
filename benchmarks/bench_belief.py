"""Throughput of adversarial belief matching (transition curves, MTE): zskt's batched `transition_curves`
beside the authors' one-image-one-target loop (`authors_transition_curves`), WRN-16-1 attacked vs a WRN-40-2
reference at 32x32, in (image, target, step) triples per second.

    python benchmarks/bench_belief.py   # 128 pairs x 2 steps batched; authors' 1 image x 9 targets x 3 steps
    python benchmarks/bench_belief.py --pairs 9000 --steps 3 --device cuda

The paper's measurement is 1000 images x 9 targets x 200 steps = 1.8 M triples; the authors' loop is timed on
a few triples only and the full run's time is extrapolated linearly (its cost per triple does not depend on
n). FLOPs per triple: FlopCounterMode on one step of each loop (student forward + input gradient, teacher
forward).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the authors' loop, kept once there
import _common as common

from zskt.evaluate.belief import DEFAULT_CHUNK, targets_for, transition_curves
from zskt.models import build_model
from zskt.models.frozen import frozen_copy
from zskt.runtime import resolve_precision

from reference_transition_curves import authors_transition_curves

PAPER_TRIPLES = 1000 * 9 * 200


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--pairs",
        type=int,
        default=None,
        help="(image, target) pairs stepped together by zskt (default: the device's default chunk, CPU 128)",
    )
    p.add_argument("--steps", type=int, default=2, help="adversarial steps timed per repeat (batched)")
    p.add_argument("--authors-images", type=int, default=1, help="images (x 9 targets) for the authors' loop")
    p.add_argument("--authors-steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--precisions", default="fp32,bf16", help="zskt precisions (the command's default is fp32)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-peak", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info, peak = common.start(
        "belief matching (transition curves), WRN-16-1 attacked vs WRN-40-2, 32x32",
        device,
        measure=not args.no_peak,
    )
    torch.manual_seed(0)
    student = build_model("wrn-16-1", 10, 3).to(device).eval()
    teacher = build_model("wrn-40-2", 10, 3).to(device).eval()
    n_pairs = args.pairs or DEFAULT_CHUNK.get(device.type, DEFAULT_CHUNK["cpu"])
    n_images = -(-n_pairs // 9)
    images = torch.randn(n_images, 3, 32, 32, device=device)
    sources = torch.randint(0, 10, (n_images,), device=device)
    targets = targets_for(sources, 10)

    def authors():
        t0 = common.now(device)
        curves = authors_transition_curves(
            student,
            teacher,
            images[: args.authors_images],
            sources[: args.authors_images],
            steps=args.authors_steps,
        )
        seconds = common.now(device) - t0
        common.require_finite("authors' loop: transition curves", *curves)
        return seconds / (args.authors_images * 9 * args.authors_steps)

    cases = {"authors": authors}
    precisions = {}
    for name in [x for x in args.precisions.split(",") if x]:
        precision = resolve_precision(name, device)
        precisions[name] = precision
        s, t = (
            frozen_copy(precision.prepare(student)),
            frozen_copy(precision.prepare(teacher)),
        )  # as run_belief

        def batched(precision=precision, s=s, t=t):
            t0 = common.now(device)
            curves = transition_curves(
                s, t, images, targets, steps=args.steps, chunk_size=n_pairs, precision=precision
            )
            seconds = common.now(device) - t0
            common.require_finite("zskt: transition curves", *curves)
            return seconds / (n_images * 9 * args.steps)

        transition_curves(s, t, images[:2], targets[:2], steps=1, precision=precision)  # warm-up
        cases[f"zskt-{name}"] = batched
    authors()  # warm-up
    times = common.interleaved(cases, args.repeats, verbose=args.verbose)

    # FLOPs per triple, counted on one step of 2 images x 9 targets (zskt) and one triple (authors).
    with common.FlopCount() as counter:
        authors_transition_curves(student, teacher, images[:1], sources[:1], steps=1)
    flops = {"authors": counter.total / 9}
    for name, precision in precisions.items():
        with common.FlopCount() as counter:
            transition_curves(
                precision.prepare(student),
                precision.prepare(teacher),
                images[:2],
                targets[:2],
                steps=1,
                precision=precision,
            )
        flops[f"zskt-{name}"] = counter.total / targets[:2].numel()  # 18 pairs, fewer with a tiny --pairs

    rows = []
    authors_s = common.median(times["authors"])
    for name, values in times.items():
        per = common.median(values)
        precision = "bf16" if "bf16" in name else "fp32"
        ref = common.peak_for(peak, precision)
        f = flops[name]
        rows.append(
            {
                "loop": name,
                "batch": 1 if name == "authors" else n_pairs,
                "triples_per_s": 1 / per,
                "n": len(values),
                "speedup": authors_s / per,
                "paper_hours": PAPER_TRIPLES * per / 3600,
                "mflop": f / 1e6,
                "gflops": f / per / 1e9,
                "pct_peak": 100 * f / per / 1e9 / ref,
            }
        )
    columns = [
        ("loop", "loop"),
        ("batch", "pairs stepped together"),
        ("triples_per_s", "triples / s (median)"),
        ("n", "n"),
        ("speedup", "x authors"),
        ("paper_hours", "h for 1000x9x200"),
        ("mflop", "MFLOP / triple"),
        ("gflops", "GFLOP/s"),
        ("pct_peak", "% peak"),
    ]
    return common.finish(rows, columns, info, peak, args)


if __name__ == "__main__":
    main()
