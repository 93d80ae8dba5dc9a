"""Every benchmark table in one go: the zero-shot loop, the training steps, belief matching, the data-free
generator family.

    python benchmarks/run_all.py                       # CPU, the tables docs/benchmarks.md records
    python benchmarks/run_all.py --quick               # fewer repeats, for a look
    python benchmarks/run_all.py --device cuda         # GPU: adds the compiled (CUDA graphs) student step
    python benchmarks/run_all.py --json-dir benchmarks/results

Each script can also be run alone (see their --help). Every table is preceded by the machine, the date and the
load average, and each zskt row is measured interleaved with the authors'-semantics loop in the same process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_belief
import bench_data_free
import bench_train
import bench_zero_shot


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="1 repeat each, no memory or CLI check")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--json-dir", default=None, help="write zero_shot.json, train.json, belief.json, data_free.json here"
    )
    args = p.parse_args(argv)
    repeats = "1" if args.quick else str(args.repeats)
    common = ["--device", args.device, "--repeats", repeats] + (
        ["--threads", str(args.threads)] if args.threads else []
    )
    extra = [] if args.quick else ["--memory"]

    def out(name):
        return ["--json", str(Path(args.json_dir) / f"{name}.json")] if args.json_dir else []

    loops = "authors,zskt-fp32,zskt-bf16" + (",zskt-bf16-compile" if args.device.startswith("cuda") else "")
    cli = [] if args.quick or args.device.startswith("cuda") else ["--cli"]
    # On a GPU a pseudo batch takes tens of milliseconds: time more of them per repeat.
    iterations = ["--iterations", "20"] if args.device.startswith("cuda") else []
    bench_zero_shot.main([*common, *extra, *cli, *iterations, "--loops", loops, *out("zero_shot")])
    print()
    steps = ["--steps", "10"] if args.device.startswith("cuda") else []
    bench_train.main([*common, *extra, *steps, *out("train")])
    print()
    belief = (
        ["--pairs", "9000", "--steps", "5", "--authors-images", "3", "--authors-steps", "10"]
        if args.device.startswith("cuda")
        else []
    )
    bench_belief.main([*common, *belief, *out("belief")])
    print()
    bench_data_free.main(
        [*common, *(["--bf16"] if args.device.startswith("cuda") else []), *out("data_free")]
    )


if __name__ == "__main__":
    main()
