"""Shared pieces of the benchmarks: the machine record, the measured peak, interleaved timing, peak memory and
fixed-width tables. Each benchmark states its hardware and load with its numbers (STYLE.md, airbench)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from zskt.runtime import FORCE_BF16_ENV, cpu_has_native_bf16

# The benchmarks time bf16 on purpose, also on a CPU that only emulates it (the header says which): zskt would
# otherwise refuse it there. Child processes (the `zskt` command, memory children) inherit this.
os.environ.setdefault(FORCE_BF16_ENV, "1")

ROOT = Path(__file__).resolve().parents[1]

# Peak FLOP/s of the development machine: 2 cores of an AMD EPYC (CPU family 26, Zen 5: full-width AVX-512 and
# AVX-512 BF16), torch 2.13 CPU, measured on a quiet machine as the best of a large matmul and a large 3x3
# convolution in channels_last (`measure_peak`). Issue 7 quoted 231 / 467 GFLOP/s ("Zen 4") from matmuls
# alone: torch's float32 matmul on this AMD CPU reaches only ~222 GFLOP/s (half the vector width), while
# oneDNN's float32 convolutions reach ~525 GFLOP/s, and bf16 ~1,000 (2 cores x 64 FLOP/cycle x ~4.1 GHz, and
# twice that for bf16 dot products), so percentages of the matmul figure came out above 100 %. The benchmarks
# also measure the peak at run time; on a loaded machine it comes out lower: the ratio of the two is the share
# of the cores the benchmark actually had.
REFERENCE_PEAK_GFLOPS = {("cpu", "fp32"): 525.0, ("cpu", "bf16"): 1005.0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    sync(device)
    return time.perf_counter()


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:
        return "n/a"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    """Where and when the numbers were taken."""
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "load_average": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def describe_machine(info: dict) -> str:
    where = info.get("gpu") or (
        f"{info['cpu']}, {info['cpu_count']} CPUs, {info['torch_threads']} torch threads, "
        f"native bf16 {'yes' if info['cpu_native_bf16'] else 'NO (bf16 is emulated)'}"
    )
    return f"{info['date']}  {where}  torch {info['torch']}  load average {info['load_average']}"


def require_finite(what: str, *values) -> None:
    """Stop the benchmark if a loss it computed is NaN or infinite: timing NaN arithmetic measures nothing
    (and can be faster or slower than the real thing)."""
    for v in values:
        v = torch.as_tensor(v)
        if not bool(torch.isfinite(v).all()):
            raise RuntimeError(
                f"{what}: non-finite value {v.flatten()[:4].tolist()}; the benchmark's networks "
                "produce NaN or inf, so its timings would not be of real arithmetic"
            )


@torch.no_grad()
def temper_logits(teacher: torch.nn.Module, inputs: torch.Tensor, spread: float = 4.0) -> torch.nn.Module:
    """Scale a randomly initialised network's classifier so that its logits on `inputs` spread by about
    `spread` per sample (max − min), as a trained teacher's do (mean max-probability ~0.5-0.9).

    A random WRN-40-2's logits spread by 70-90 on generator output: its softmax is then one-hot, a few steps
    of the adversarial generator push the gap past ~100, the teacher's probabilities underflow to 0 in
    float32, and the authors' KL back-propagates NaN. The tempered network does the same arithmetic, on finite
    numbers. Returns `teacher` (changed in place); its mode is left as it was.
    """
    was_training = teacher.training
    logits, _ = teacher.eval()(inputs)
    teacher.train(was_training)
    gap = (logits.amax(1) - logits.amin(1)).mean().item()
    fc = teacher.fc
    factor = spread / max(gap, 1e-6)
    fc.weight.mul_(factor)
    if fc.bias is not None:
        fc.bias.mul_(factor)
    return teacher


def measure_peak(device: torch.device, dtype: torch.dtype, seconds: float = 1.5, n: int = 2048) -> float:
    """GFLOP/s of the best of a large square matmul and a large 3x3 convolution (channels_last, no grad) in
    `dtype`, each the best of a few timed bursts: the roofline's compute peak as the kernels these loops use
    can reach it (on the CPU the convolutions, oneDNN, reach twice the float32 matmul's rate)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    x = torch.randn(32, 256, 32, 32, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    conv = (
        torch.nn.Conv2d(256, 256, 3, padding=1, bias=False)
        .to(device, dtype)
        .to(memory_format=torch.channels_last)
    )
    cases = ((lambda: torch.mm(a, b, out=c), 2 * n**3), (lambda: conv(x), 2 * 32 * 256 * 256 * 9 * 32 * 32))
    best = 0.0
    with torch.no_grad():
        for run, flops in cases:
            run()  # warm-up
            deadline = time.perf_counter() + seconds / len(cases)
            while time.perf_counter() < deadline:
                t0 = now(device)
                for _ in range(3):
                    run()
                best = max(best, flops * 3 / (now(device) - t0) / 1e9)
    return best


def peaks(device: torch.device, measure: bool = True) -> dict:
    """{"fp32": (reference or None, measured now), "bf16": ...} in GFLOP/s."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        measured = measure_peak(device, dtype) if measure else None
        out[name] = (REFERENCE_PEAK_GFLOPS.get((device.type, name)), measured)
    return out


def peak_for(peak: dict, precision: str) -> float | None:
    """The peak a percentage is taken of: the machine's quiet reference where known, else the measured one."""
    reference, measured = peak[precision]
    return reference or measured


def interleaved(
    cases: dict[str, Callable[[], float]], repeats: int, *, verbose: bool = False
) -> dict[str, list]:
    """Run every case once per repeat in turn (A B C A B C ...), so slow drifts of the machine's load hit all
    cases alike; returns each case's list of seconds."""
    times = {name: [] for name in cases}
    for r in range(repeats):
        for name, case in cases.items():
            times[name].append(case())
            if verbose:
                print(
                    f"  repeat {r + 1}/{repeats}  {name:<28} {times[name][-1]:8.3f} s",
                    file=sys.stderr,
                    flush=True,
                )
    return times


def median(values) -> float:
    return statistics.median(values)


def spread(values) -> str:
    """median [min-max] of a list of seconds, for the table."""
    return f"{median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def max_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB: Linux's VmHWM, which a new program starts afresh
    (`ru_maxrss` does not: it carries the parent's peak over fork and exec, so every child would report the
    benchmark parent's peak)."""
    hwm = _status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """Resident memory now, MiB (VmRSS; the peak where it cannot be read)."""
    now = _status_mib("VmRSS")
    return now if now is not None else max_rss_mib()


def child_peak_memory(script: Path, args: list[str], timeout: float = 1800) -> dict:
    """Run `script --memory-child ...args` in a fresh process and return the JSON it prints last: the peak
    memory of one configuration, free of what other configurations allocated in the parent."""
    out = subprocess.run(
        [sys.executable, str(script), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class FlopCount:
    """FLOPs of what runs inside `with FlopCount() as c:` (c.total), counted by torch.utils.flop_counter's
    formulas (matmuls and convolutions, forward and backward, 2 FLOPs per multiply-add) as FlopCounterMode
    counts them, but without its module hooks, which `torch.autograd.grad` does not allow (belief matching
    uses it)."""

    def __enter__(self):
        self.counter = FlopCounterMode(display=False)
        self.counter.mod_tracker = _NoModules()  # per-module breakdown off: the total is all we need
        self.counter.__enter__()
        return self

    def __exit__(self, *exc):
        self.counter.__exit__(*exc)

    @property
    def total(self) -> int:
        return self.counter.get_total_flops()


class _NoModules:
    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of `rows` with `columns` = [(key, header)]; missing values print as '-'."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(row.get(k)) for k, _ in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_json(path: str | None, obj) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2))


def start(title: str, device: torch.device, measure: bool = True) -> tuple[dict, dict]:
    """Print a table's header (what, the machine, the load) and the peaks; returns (machine info, peaks)."""
    info = machine(device)
    print(f"# {title}: {describe_machine(info)}", flush=True)
    peak = peaks(device, measure=measure)
    for name, (ref, measured) in peak.items():
        print(
            f"# peak {name}: reference {ref} GFLOP/s, measured now "
            f"{'-' if measured is None else f'{measured:.0f}'} GFLOP/s",
            flush=True,
        )
    return info, peak


def finish(rows: list[dict], columns: list[tuple[str, str]], info: dict, peak: dict, args, **extra) -> dict:
    """Print the table and the load at the end; write (and return) the JSON record of the run."""
    print(table(rows, columns))
    print(f"# load average at the end: {load_average()}")
    result = {"machine": info, "peak_gflops": peak, "args": vars(args), "rows": rows, **extra}
    write_json(args.json, result)
    return result


MEMORY_COLUMNS = [("peak_mib", "peak MiB (CUDA alloc / CPU VmHWM)"), ("added_mib", "CPU: MiB over start")]


def memory_row(mem: dict) -> dict:
    """A configuration's peak memory for the table: CUDA's peak allocation, or the CPU process's peak resident
    memory and what the loop added over the memory it held before its first step."""
    if "cuda_max_allocated_mib" in mem:
        return {"peak_mib": mem["cuda_max_allocated_mib"], "added_mib": None}
    return {"peak_mib": mem["max_rss_mib"], "added_mib": mem["max_rss_mib"] - mem["rss_before_mib"]}
