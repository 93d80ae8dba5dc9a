"""The host allocator setting the `zskt` command makes (runtime.keep_freed_host_memory)."""

import json
import os
import subprocess
import sys

import pytest

# A child process allocates and frees a 64 MiB tensor 20 times and reports its minor page faults over those
# rounds (after five warm-up rounds), plus what keep_freed_host_memory() says. Each case runs in a fresh process:
# mallopt changes the whole process.
CHILD = r"""
import json, resource, sys, torch
from zskt.runtime import keep_freed_host_memory, environment
setting = keep_freed_host_memory() if sys.argv[1] == "kept" else "not called"
def rounds(n):
    for _ in range(n):
        x = torch.empty(16 * 2**20)  # 64 MiB: served by mmap under glibc's defaults
        x.fill_(1.0)
        del x
rounds(5)  # the heap settles in a few rounds (alignment padding), then reuses its blocks
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(20)
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"setting": setting, "faults": after - before, "recorded": environment()["host_allocator"]}))
"""


def _child(mode: str, **env) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True,
                          env={**os.environ, **env})
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_new_page_faults():
    default, kept = _child("default"), _child("kept")
    # Under the defaults each round maps 64 MiB afresh (16384 pages of 4 KiB, fewer with huge pages); kept,
    # the rounds reuse the first block's pages.
    assert kept["setting"].startswith("glibc") and kept["recorded"] == kept["setting"]
    assert default["recorded"] == "system default"
    assert kept["faults"] < 200, kept
    assert default["faults"] > 10 * max(kept["faults"], 100), (default, kept)


def test_zskt_malloc_system_leaves_the_default():
    assert _child("kept", ZSKT_MALLOC="system")["setting"] == "system default"
