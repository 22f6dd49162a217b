"""Rollouts by continuous batching: decode slots refilled from a queue of samples, bounded attention.

Public API: `generate(params, cfg, prompts, *, max_new_tokens, ...) -> RolloutResult`.
"""

from rlvr_jax.sampling.api import RolloutResult, generate
from rlvr_jax.sampling.buckets import bucket_count, bucket_length, kv_cache_bytes, rows_for_memory
from rlvr_jax.sampling.controls import Controls, select_tokens
from rlvr_jax.sampling.engine import release_programs
from rlvr_jax.sampling.scheduler import Stats

__all__ = [
    "Controls", "RolloutResult", "Stats", "bucket_count", "bucket_length", "generate", "kv_cache_bytes",
    "release_programs", "rows_for_memory", "select_tokens",
]
