"""Multi-process helpers: host copies of global arrays, row all-gathers, host data -> global arrays.

`initialize` starts one (every process calls it first, before any other JAX call).
A multi-process run (GPU hosts, TPU pods, or a CPU cluster with gloo collectives) runs the same
SPMD programs on every process over *global* arrays whose shards live on other processes' devices.
Three host <-> device crossings need care there, and these helpers make each one work the same way
in a single process:

  device -> host  `to_host`: `np.asarray` cannot read a sharded array whose shards are not all
                  local; those are all-gathered (a collective: every process must call it, in the
                  same order, which SPMD code does by construction).
  host -> host    `allgather_rows`: each process's `[rows, ...]` slice (e.g. the rewards of the
                  responses it scored) -> the concatenation over processes, in process order.
  host -> device  `put_rows`: numpy data that is the same on every process -> global arrays
                  sharded by rows, as the jitted steps' `in_shardings` expect (jit refuses numpy
                  inputs with non-replicated shardings once arrays span processes).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from rlvr_jax import sharding as shd


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> None:
    """Joins a multi-process run; a no-op for a single process.

    Args:
      coordinator_address: `host:port` of process 0 (a CPU cluster, GPU hosts); needs the other two.
      num_processes, process_id: the run's process count and this process's index.
      auto: `jax.distributed.initialize()` with auto-detection (TPU pods, SLURM); used when no
        coordinator address is given.
    """
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise ValueError("a coordinator address needs num_processes and process_id")
        if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
            # Cross-process collectives of the CPU backend (a CPU cluster, or the tests' fake devices);
            # accelerator backends ignore it. Must be set before the backends start.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif auto:
        jax.distributed.initialize()


def is_multiprocess() -> bool:
    """Whether this program is one of several JAX processes (`jax.distributed.initialize` was called)."""
    return jax.process_count() > 1


def _needs_gather(x: Any) -> bool:
    # A replicated array has a full copy on a local device, which np.asarray reads without communication.
    return isinstance(x, jax.Array) and not x.is_fully_addressable and not x.sharding.is_fully_replicated


def to_host(tree: Any) -> Any:
    """Copies a pytree of (possibly global) arrays to host numpy arrays holding the global values.

    Blocks until the arrays are computed. Leaves that are sharded over other processes' devices are
    all-gathered in one collective, so every process must call this with the same tree structure.
    """
    leaves, treedef = jax.tree.flatten(tree)
    remote = [i for i, x in enumerate(leaves) if _needs_gather(x)]
    # tiled=True: a global array comes back as its global value (stacking is for process-local inputs).
    fetched = multihost_utils.process_allgather([leaves[i] for i in remote], tiled=True) if remote else []
    gathered = dict(zip(remote, fetched))
    out = [gathered[i] if i in gathered else np.asarray(jax.device_get(x)) for i, x in enumerate(leaves)]
    return jax.tree.unflatten(treedef, [np.asarray(x) for x in out])


def allgather_rows(local: np.ndarray) -> np.ndarray:
    """Concatenates every process's `[rows, ...]` array along rows, in process order.

    Every process must pass the same shape and dtype. Identity in a single process.
    """
    local = np.asarray(local)
    if not is_multiprocess():
        return local
    return np.asarray(multihost_utils.process_allgather(local, tiled=True))


def put_rows(tree: Any, sharder: shd.Sharder | None) -> Any:
    """Host arrays (identical on every process) -> global arrays with rows split along `ACT_BATCH`.

    The sharding is the prefix spec the log-prob and update programs state for their batch inputs
    (`sharder.sharding((ACT_BATCH,), (rows,))`), so they take these arrays without a reshard.
    Leaves that already are jax arrays are kept, except host-local arrays in a multi-process run
    (e.g. an eager `jnp` result), which are copied to the host and placed like numpy data.
    Without a sharder the tree is returned unchanged.
    """
    if sharder is None:
        return tree
    multi = is_multiprocess()

    def put(x):
        if isinstance(x, jax.Array) and (not multi or not x.is_fully_addressable):
            return x
        x = np.asarray(x)
        sharding = sharder.sharding((shd.ACT_BATCH,), x.shape[:1])
        if not multi:
            return jax.device_put(x, sharding)
        # Each process fills its own devices' shards from its (identical) copy of the global value.
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)
