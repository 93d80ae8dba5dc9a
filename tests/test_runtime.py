"""The host allocator setting the `zskt` command makes (runtime.keep_freed_host_memory)."""

import ctypes
import json
import os
import subprocess
import sys

import pytest

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
    proc = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True,
                          env={**os.environ, **env})
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                    reason="glibc >= 2.33 (mallopt, mallinfo2)")
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
    proc = subprocess.run([sys.executable, "-m", "zskt", "train", "--dataset", "digits", "--model", "wrn-16-1",
                           "--epochs", "1", "--device", "cpu", "--quiet", "--out", str(out)],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "environment.json").read_text())["host_allocator"].startswith("glibc: freed memory")
