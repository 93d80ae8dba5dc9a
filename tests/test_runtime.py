"""The host allocator setting the `zskt` command makes (runtime.keep_freed_host_memory), and the precision
defaults (float32 everywhere, bf16 refused on a CPU that can only emulate it)."""

import ctypes
import json
import os
import subprocess
import sys

import pytest
import torch

from zskt import runtime
from zskt.errors import ZsktError

# A child process allocates and frees a 64 MiB tensor 20 times and reports its minor page faults over those
# rounds (after ten warm-up rounds), how much of its memory is in mmap-served blocks while such a tensor is
# alive, and what keep_freed_host_memory() says. Each case runs in a fresh process: mallopt changes the whole
# process.
CHILD = r"""
import ctypes, json, resource, sys, torch
from zskt.runtime import keep_freed_host_memory, environment
setting = keep_freed_host_memory() if sys.argv[1] == "kept" else "not called"
class MallInfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
def rounds(n):
    for _ in range(n):
        x = torch.empty(16 * 2**20)  # 64 MiB: served by its own mmap under glibc's defaults
        x.fill_(1.0)
        del x
rounds(10)  # the heap settles in a few rounds (alignment padding), then reuses its blocks
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(20)
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
alive = torch.empty(16 * 2**20)
mapped_mib = mallinfo2().hblkhd / 2**20  # bytes in mmap-served blocks while a 64 MiB tensor is alive
print(json.dumps({"setting": setting, "faults": after - before, "mapped_mib": mapped_mib,
                  "recorded": environment()["host_allocator"]}))
"""


def _child(mode: str, **env) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"),
    reason="glibc >= 2.33 (mallopt, mallinfo2)",
)
def test_freed_memory_is_reused_without_new_page_faults():
    default, kept = _child("default"), _child("kept")
    assert kept["setting"].startswith("glibc") and kept["recorded"] == kept["setting"]
    assert default["recorded"] == "system default"
    # Under the defaults the tensor is its own mmap (returned to the kernel when freed, mapped and faulted in
    # afresh next time); kept, it comes from the heap and the rounds reuse the first block's pages.
    # (blocks mapped before the call, at import, stay mapped: a few MiB)
    assert default["mapped_mib"] >= 64 and kept["mapped_mib"] < 32, (default, kept)
    # Page faults over the 20 rounds: 20 x 16384 under the defaults with 4 KiB pages; kept, at most a round or
    # two while the heap settles.
    assert kept["faults"] < default["faults"] / 5, (default, kept)


def test_zskt_malloc_system_leaves_the_default():
    assert _child("kept", ZSKT_MALLOC="system")["setting"] == "system default"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_zskt_executable_sets_it_and_runs_record_it(tmp_path):
    # `python -m zskt` goes through cli.entry, which makes the setting before the command; the run folder's
    # environment.json says what was in force. (`cli.main` in this process leaves the allocator alone.)
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zskt",
            "train",
            "--dataset",
            "digits",
            "--model",
            "wrn-16-1",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "environment.json").read_text())["host_allocator"].startswith(
        "glibc: freed memory"
    )


# ------------------------------------------------------------------------------------ precision defaults

ZEN5 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n"
AVX2_EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
NEOVERSE_V1 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(
    ("text", "native"),
    [(ZEN5, True), (SAPPHIRE_RAPIDS, True), (AVX2_EPYC, False), (NEOVERSE_V1, True), ("", False)],
)
def test_cpu_has_native_bf16_reads_the_flags(tmp_path, text, native):
    (tmp_path / "cpuinfo").write_text(text)
    assert runtime.cpu_has_native_bf16(tmp_path / "cpuinfo") is native
    assert runtime.cpu_has_native_bf16(tmp_path / "missing") is False


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) native bf16; the force variable starts unset."""
    monkeypatch.delenv(runtime.FORCE_BF16_ENV, raising=False)

    def pretend(native: bool):
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda *a: native)

    return pretend


def test_emulated_bf16_is_refused_in_one_line_unless_forced(cpu_flags, monkeypatch):
    cpu = torch.device("cpu")
    cpu_flags(False)
    with pytest.raises(ZsktError) as error:
        runtime.resolve_precision("bf16", cpu)
    message = str(error.value)
    assert "\n" not in message and "--precision fp32" in message and "16x slower" in message
    assert runtime.FORCE_BF16_ENV in message
    assert runtime.resolve_precision("fp32", cpu).name == "fp32"
    assert runtime.resolve_precision("auto", cpu).name == "fp32"
    monkeypatch.setenv(runtime.FORCE_BF16_ENV, "1")
    assert runtime.resolve_precision("bf16", cpu).name == "bf16"
    monkeypatch.setenv(runtime.FORCE_BF16_ENV, "0")
    with pytest.raises(ZsktError):
        runtime.resolve_precision("bf16", cpu)
    cpu_flags(True)
    assert runtime.resolve_precision("bf16", cpu).name == "bf16"


def test_the_command_refuses_emulated_bf16_before_the_run(cpu_flags, tmp_path, capsys):
    from zskt.cli import main

    cpu_flags(False)
    out = tmp_path / "run"
    argv = [
        "train",
        "--dataset",
        "digits",
        "--model",
        "wrn-16-1",
        "--image-size",
        "8",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--precision fp32" in err[0]
    assert not (out / "result.json").exists()


def test_auto_is_float32_with_tf32_on_cuda():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = False
        precision = runtime.resolve_precision("auto", torch.device("cuda"))  # resolving needs no GPU
        assert precision.name == "fp32" and precision.channels_last
        assert matmul.allow_tf32 and cudnn.allow_tf32
        assert runtime.resolve_precision("bf16", torch.device("cuda")).name == "bf16"  # one flag away
    finally:
        matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = saved
