"""Host-memory helpers: large C-heap blocks go back to the OS when freed (glibc only).

Reference: the kernel's own resident-size count (/proc/self/status) around malloc/free of large blocks,
in a fresh interpreter (the allocator setting is process-wide).
"""

import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, sys
from rlvr_jax import host_memory
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def touch_and_free(n):
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)

if sys.argv[1] == "mapped":
    assert host_memory.map_large_allocations()
touch_and_free(30 << 20)  # a mapped block freed: glibc's default raises its mmap threshold to 30 MiB
before = rss_mb()
p = libc.malloc(24 << 20)  # below that raised threshold: from the heap unless the threshold is fixed
ctypes.memset(p, 1, 24 << 20)
q = libc.malloc(1024)  # a live block above it keeps the heap from shrinking back
libc.free(p)
print(rss_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_large_blocks_are_returned_when_freed():
    def retained(mode):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return float(out.stdout.split()[-1])

    assert retained("default") > 16  # the 24 MiB stay resident: what the setting is for
    assert retained("mapped") < 4
