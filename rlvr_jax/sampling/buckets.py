"""Shape buckets and KV-cache memory arithmetic.

Every distinct (rows, prompt length, new tokens) triple is a separate XLA program, so prompt lengths
and row counts are rounded up to a small set of sizes: a training run compiles a handful of programs,
not one per step.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from rlvr_jax.models.config import ModelConfig


def bucket_length(n: int, minimum: int = 16) -> int:
    """Smallest size `>= max(n, minimum)` of the form `2^k` or `3 * 2^k`.

    The `3 * 2^k` steps cap padding at 33% (powers of two alone waste up to 50%) while keeping
    the number of buckets logarithmic: 16, 24, 32, 48, 64, 96, 128, 192, 256, ...
    """
    n = max(int(n), int(minimum), 1)
    p = 1 << (n - 1).bit_length()  # next power of two
    three_quarters = 3 * p // 4
    return three_quarters if three_quarters >= n and three_quarters * 4 == 3 * p else p


def bucket_count(n: int, multiple: int = 1, cap: int | None = None) -> int:
    """Rows bucket: next power of two `>= n` (at most `cap`), rounded up to a multiple of `multiple`.

    Args:
      n: rows needed.
      multiple: the bucket is a multiple of this (e.g. the number of batch shards of the mesh, so
        rows split evenly over devices).
      cap: upper bound before rounding (the sub-batch size), so the last, partial sub-batch never
        compiles a bigger program than the full ones.
    """
    b = 1 << max(int(n) - 1, 0).bit_length()
    if cap is not None:
        b = min(b, max(int(cap), int(n)))
    return -(-b // multiple) * multiple


def kv_cache_bytes(cfg: ModelConfig, rows: int, length: int, dtype="bfloat16") -> int:
    """Bytes of a K+V cache for `rows` sequences of `length` slots."""
    per_slot = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(dtype).itemsize
    return rows * length * per_slot


def rows_for_memory(cfg: ModelConfig, length: int, budget_bytes: float, dtype="bfloat16") -> int:
    """Largest power-of-two row count whose KV cache (plus the per-step float32 logits) fits a budget.

    Example (Qwen2.5-Math-1.5B: 28 layers, 2 KV heads of 128, vocab 151,936; bf16 cache): a row of
    256 prompt + 3,072 response slots takes 95 MB, so 1,024 rows need ~98 GB. With ~30 GB left for
    the cache next to the params and optimizer state on an 80 GB GPU this returns 256, i.e. four
    sub-batches.
    """
    per_row = kv_cache_bytes(cfg, 1, length, dtype) + 3 * cfg.vocab_size * 4  # logits + 2 temporaries
    rows = int(budget_bytes // per_row)
    if rows < 1:
        raise ValueError(f"one row of {length} slots needs {per_row / 2**20:.1f} MiB > budget")
    return 1 << int(math.log2(rows))
