"""One XLA CPU device per core, for the launch scripts. Imports nothing of JAX: call it before JAX.

XLA's CPU backend exposes a single device by default, so a data-parallel mesh on a CPU machine
would run every program on one core's worth of device. Splitting the host into `os.cpu_count()`
devices lets the default `(1, -1, 1)` mesh shard the batch (and the params) over all cores.

Turn it off by setting the count yourself, e.g. `XLA_FLAGS=--xla_force_host_platform_device_count=1`,
or by running on an accelerator (`JAX_PLATFORMS` other than `cpu`).
"""

from __future__ import annotations

import os
import sys

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def use_all_cpu_cores(environ=None) -> bool:
    """Adds `--xla_force_host_platform_device_count=<cores>` to XLA_FLAGS when it applies.

    It applies when JAX is not imported yet (XLA reads the flag once, at backend start), XLA_FLAGS
    sets no device count of its own, and JAX_PLATFORMS is unset or `cpu` (accelerator runs keep
    their devices; the flag only affects the CPU backend anyway).

    Args:
      environ: the environment to edit (default `os.environ`).

    Returns:
      Whether the flag was added.
    """
    if environ is None and "jax" in sys.modules:
        return False  # Too late: the process's backends may already be up.
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    platforms = env.get("JAX_PLATFORMS", "").strip().lower()
    if DEVICE_COUNT_FLAG in flags or platforms not in ("", "cpu"):
        return False
    env["XLA_FLAGS"] = f"{flags} {DEVICE_COUNT_FLAG}={os.cpu_count() or 1}".strip()
    return True
