"""Test of datamint_pipes.nodes.return_freed_memory_promptly: a process worker returns freed buffers to the kernel.

Each case runs in a fresh interpreter: malloc settings are per process and cannot be undone.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
import numpy as np

def anonymous_rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))

if sys.argv[1] == "tuned":
    from datamint_pipes.nodes import return_freed_memory_promptly
    return_freed_memory_promptly()
    return_freed_memory_promptly()  # once per process: a second call changes nothing
big = np.ones(16 << 20, np.uint8)  # freeing a 16 MiB block raises glibc's dynamic mmap threshold past 1 MiB
del big
before = anonymous_rss()
arrays = [np.ones(1 << 20, np.uint8) for _ in range(40)]
del arrays[::2]  # 20 MiB freed in holes between 20 MiB still in use
print((anonymous_rss() - before - (20 << 20)) / (1 << 20))
"""


def retained_mib(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=60)
    return float(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning, /proc")
def test_freed_buffers_go_back_to_the_kernel() -> None:
    plain = retained_mib("plain")
    if plain < 10:
        pytest.skip(f"this libc does not keep freed 1 MiB blocks ({plain:.1f} MiB retained): nothing to show")
    assert retained_mib("tuned") < 4
