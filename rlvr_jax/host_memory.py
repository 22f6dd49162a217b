"""Returning freed host memory to the operating system between the phases of a run.

XLA's CPU runtime and the Python side allocate through the C library's malloc. glibc keeps memory that
was freed in the middle of its heaps for reuse, so a process's resident size stays at the high-water mark
of whatever ran before: after a rollout and an evaluation, the update's temporaries (gradients, optimizer
temporaries) are added on top of memory nobody uses. `malloc_trim` hands those free pages back. On the
CPU demo this lowers the update's peak by ~0.6 GB (BENCHMARKS.md, the CPU demo's memory table); elsewhere (another libc,
macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc.malloc_trim if libc is not None else None
    except (OSError, AttributeError):  # not glibc: no malloc_trim
        return None


# glibc's mallopt parameter: requests at least this large are served by mmap and unmapped when freed.
_M_MMAP_THRESHOLD = -3
LARGE_ALLOCATION_BYTES = 1 << 20


@functools.cache
def map_large_allocations(threshold: int = LARGE_ALLOCATION_BYTES) -> bool:
    """Serves every C-heap request of `threshold` bytes or more with its own mmap (glibc `mallopt`).

    XLA's CPU buffers (weights copies, KV caches, gradients, temporaries) are large and short-lived. By
    default glibc raises its mmap threshold each time a mapped block is freed (up to 32 MiB), after which
    such buffers come from the heap, whose freed pages stay resident until `release_free_memory` and
    fragment around small live blocks: the CPU demo's resident size crept up by ~0.4 GiB over its later
    steps. A fixed threshold keeps them mapped, so freeing one returns its pages at once; the price is a
    page fault per fresh page. Process-wide: the launchers call it at start. False without glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return False
    return bool(mallopt and mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1)


def release_free_memory() -> None:
    """Gives the C heap's free pages back to the OS (glibc `malloc_trim(0)`); a no-op without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
