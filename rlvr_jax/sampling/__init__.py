"""Rollouts: bucketed prefill + a jitted `while_loop` decode over a donated, sharded KV cache.

Public API: `generate(params, cfg, prompts, *, max_new_tokens, ...) -> RolloutResult`.
"""

from rlvr_jax.sampling.api import RolloutResult, generate
from rlvr_jax.sampling.buckets import bucket_count, bucket_length, kv_cache_bytes, rows_for_memory
from rlvr_jax.sampling.controls import Controls, select_tokens

__all__ = [
    "Controls", "RolloutResult", "bucket_count", "bucket_length", "generate", "kv_cache_bytes",
    "rows_for_memory", "select_tokens",
]
