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
import threading

import jax

from rlvr_jax.compile_counter import BACKEND_COMPILE_EVENT

_installed = threading.Lock()
_listening = False


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc.malloc_trim if libc is not None else None
    except (OSError, AttributeError):  # not glibc: no malloc_trim
        return None


def release_free_memory() -> None:
    """Gives the C heap's free pages back to the OS (glibc `malloc_trim(0)`); a no-op without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _after_compile(event: str, duration: float, **kwargs) -> None:
    if event == BACKEND_COMPILE_EVENT:
        release_free_memory()


def release_after_compiles() -> None:
    """From now on, every XLA compilation hands the compiler's freed memory back before its program runs.

    Compiling an update or decode program takes a few hundred MB of compiler memory; glibc keeps it
    once freed, and the new program's buffers then come on top of it. A compile that happens inside a
    training step (a new packing or window shape late in a run) set the CPU demo's peak that way
    (BENCHMARKS.md). JAX reports each compilation synchronously, before the program first runs, so a
    trim there is in time. Process-wide and idempotent; `malloc_trim` costs milliseconds, compiles seconds.
    """
    global _listening
    with _installed:
        if not _listening:
            jax.monitoring.register_event_duration_secs_listener(_after_compile)
            _listening = True
