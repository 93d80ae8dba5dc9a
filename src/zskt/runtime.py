"""Devices, seeds, the precision and layout policy, and the environment a run records.

Policy (docs/decisions.md): float32 is the default everywhere (with TF32 matmuls and convolutions on CUDA)
until a CIFAR-10 run shows bf16 equal within noise; bf16 autocast is one flag away (`--precision bf16`). On a
CPU without native bf16 arithmetic that flag is refused unless forced (`cpu_has_native_bf16`). channels_last
everywhere.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zskt.errors import ZsktError

PRECISIONS = ("auto", "fp32", "bf16")
FORCE_BF16_ENV = "ZSKT_FORCE_BF16"  # set to 1 to run bf16 autocast on a CPU that can only emulate it


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ZsktError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ZsktError(f"device {name!r} asked for but CUDA is not available here; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, as the authors' `set_torch_seeds` does (SPEC §3)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Precision:
    """How a run computes: autocast dtype (or none) and memory layout."""

    name: str  # "fp32" or "bf16"
    device_type: str
    channels_last: bool

    def autocast(self):
        if self.name == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    @property
    def inference_chunk(self) -> int | None:
        """Largest batch a frozen network's no-grad forward takes at once: 64 on the CPU, where larger ones'
        activations spill the caches and each image costs more (docs/benchmarks.md); no limit elsewhere.
        Splitting changes nothing but speed: an eval-mode network treats every image on its own."""
        return 64 if self.device_type == "cpu" else None

    def describe(self) -> dict:
        return {
            "precision": self.name,
            "channels_last": self.channels_last,
            "tf32": self.device_type == "cuda" and torch.backends.cuda.matmul.allow_tf32,
        }


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively: x86 AVX-512 BF16 or AMX-BF16, or Arm's BF16 extension (Linux's
    /proc/cpuinfo flags `avx512_bf16`, `amx_bf16`, `bf16`). Without them oneDNN emulates bf16 autocast with
    conversions around float32 arithmetic, far slower than plain float32. False where it cannot be read."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and {"avx512_bf16", "amx_bf16", "bf16"} & set(
            value.split()
        ):
            return True
    return False


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """`auto` is float32 on every device (TF32 on CUDA): the paper's experiments run in float32 until a
    CIFAR-10 run shows bf16 equal within noise (docs/decisions.md). bf16 on a CPU without native bf16 is
    refused with a one-line error unless $ZSKT_FORCE_BF16=1 (the benchmarks and tests set it)."""
    if precision not in PRECISIONS:
        raise ZsktError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    name = "fp32" if precision == "auto" else precision
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    forced = os.environ.get(FORCE_BF16_ENV, "") not in ("", "0")
    if name == "bf16" and device.type == "cpu" and not forced and not cpu_has_native_bf16():
        raise ZsktError(
            "this CPU has no native bf16 (no AVX-512 BF16 or AMX): bf16 autocast would be emulated, "
            f"about 16x slower than float32; use --precision fp32 (or set {FORCE_BF16_ENV}=1 to run "
            "it anyway)"
        )
    # channels_last on every device and precision: cuDNN and oneDNN's CPU kernels, float32 included, are
    # faster in NHWC (docs/benchmarks.md). A layout changes rounding only, never the function computed
    # (tests/test_models.py::test_channels_last_gives_same_output); it is recorded with every result.
    return Precision(name=name, device_type=device.type, channels_last=True)


def git_revision() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=False
        )
        if out.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


_HOST_ALLOCATOR = {"setting": "system default"}


def keep_freed_host_memory() -> str:
    """Ask glibc's malloc to keep freed host memory for reuse (no mmap per large block, no trimming).

    By default glibc serves blocks over its mmap threshold (at most 32 MiB) with a fresh mmap and trims the
    heap's free top, so a training loop on the CPU gets new pages from the kernel for its large activations
    on every step: tens of thousands of page faults per zero-shot pseudo batch (docs/benchmarks.md). With
    mmap off (M_MMAP_MAX 0) and no trimming, freed blocks are reused; the process keeps its peak memory until
    it exits, as PyTorch's CUDA caching allocator does on a GPU. Results do not change. Called once by the
    `zskt` executable (`cli.entry`; not on import, not by `cli.main`); ZSKT_MALLOC=system skips it. Returns
    what is in force, which runs record.
    """
    if _HOST_ALLOCATOR["setting"] != "system default" or os.environ.get("ZSKT_MALLOC", "") == "system":
        return _HOST_ALLOCATOR["setting"]
    if not sys.platform.startswith("linux"):
        return _HOST_ALLOCATOR["setting"]
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return _HOST_ALLOCATOR["setting"]
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    if mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 2**31 - 1) == 1:
        _HOST_ALLOCATOR["setting"] = "glibc: freed memory kept (M_MMAP_MAX 0, no trim)"
    return _HOST_ALLOCATOR["setting"]


def environment(device: torch.device | None = None) -> dict:
    """What a run records about where it ran."""
    import zskt

    env = {
        "zskt": zskt.__version__,
        "git": git_revision(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "torch_threads": torch.get_num_threads(),
        "host_allocator": _HOST_ALLOCATOR["setting"],
        "argv": sys.argv,
    }
    from zskt.distributed import world

    world_size = world()[1]
    if world_size > 1:
        import torch.distributed as dist

        env["distributed"] = {"world_size": world_size, "backend": dist.get_backend()}
    if device is not None:
        env["device"] = str(device)
        if device.type == "cuda":
            env["device_name"] = torch.cuda.get_device_name(device)
            env["cuda"] = torch.version.cuda
    return env
