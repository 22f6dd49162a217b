"""Row splitting of batches: strided micro-/mini-batch parts that stay spread over the batch devices.

A batch `[B, ...]` is split into `n` parts of `B/n` rows for `lax.map` / `lax.scan` over micro- or
mini-batches (log-prob passes, the update's gradient accumulation) and merged back in row order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlvr_jax import sharding as shd


def split_rows(x, n: int):
    """`[B, ...] -> [n, B/n, ...]`, part `k` taking rows `k, k+n, k+2n, ...` (strided).

    Strided parts keep every part spread evenly over the devices a batch-sharded array lives on
    (row blocks stay local: the reshape and transpose need no communication), unlike contiguous
    slices, which would put a whole micro-batch on a few devices.
    """
    b = x.shape[0]
    if b % n:
        raise ValueError(f"batch of {b} rows does not split into {n} equal parts")
    return jnp.swapaxes(x.reshape(b // n, n, *x.shape[1:]), 0, 1)


def merge_rows(x):
    """Inverse of `split_rows`: `[n, B/n, ...] -> [B, ...]`."""
    return jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def constrain_rows(sharder: shd.Sharder | None, x, lead: int = 0):
    """Shards dimension `lead` of `x` along the batch mesh axes (identity without a sharder)."""
    logical = (None,) * lead + (shd.ACT_BATCH,) + (None,) * (x.ndim - lead - 1)
    return shd.constrain(sharder, x, logical)


def map_micro_batches(fn, arrays: tuple, micro_batch_size: int | None, sharder=None):
    """Applies `fn(*micro_arrays) -> pytree of [mb, ...]` sequentially over micro-batches.

    Args:
      fn: per-micro-batch function. arrays: `[B, ...]` arrays, split along rows (strided).
      micro_batch_size: rows per call; None or >= B runs the whole batch at once.
      sharder: optional; keeps each micro-batch sharded along the batch mesh axes.

    Returns:
      `fn`'s outputs re-assembled to `[B, ...]` in the original row order.
    """
    b = arrays[0].shape[0]
    if not micro_batch_size or micro_batch_size >= b:
        return fn(*arrays)
    if b % micro_batch_size:
        raise ValueError(f"batch size {b} is not a multiple of micro_batch_size {micro_batch_size}")
    parts = tuple(constrain_rows(sharder, split_rows(x, b // micro_batch_size), lead=1) for x in arrays)
    out = jax.lax.map(lambda xs: fn(*xs), parts)
    return jax.tree.map(merge_rows, out)
