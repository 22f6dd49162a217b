"""`generate`: the public rollout API (a contract: tests outside this repo call it with other models)."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import numpy as np

from rlvr_jax import sharding as shd
from rlvr_jax.host_memory import release_free_memory
from rlvr_jax.models import transformer as tfm
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.sampling import buckets, engine, scheduler
from rlvr_jax.sampling.controls import Controls

# Decode slots when the device reports no memory limit (CPU). A CPU decode step reads every weight once
# for all its rows, so throughput grows with rows until the matmuls turn compute-bound: SmolLM2-135M
# evaluated 200 problems x 64 tokens in 72-83 s with 64 slots, 117-125 s with 32, 119 s with 128
# (BENCHMARKS.md). The KV cache of 64 SmolLM2 slots x 192 positions is 0.57 GB in float32.
CPU_SLOTS_PER_DEVICE = 64


@dataclasses.dataclass
class RolloutResult:
    """Samples of one `generate` call, `N = len(prompts) * n` rows ordered prompt-major (p0s0, p0s1, ...).

    Attributes:
      tokens: N lists of response token ids (ending with the stop token when one ended the row).
      logprobs: N float32 arrays, same lengths: `log_softmax(logits / temperature)[token]`
        (temperature 1 for greedy), before top-k / top-p truncation.
      finish_reason: N strings, "stop" or "length".
      response_ids: int32 `[N, T_resp]`, right-padded with `pad_id`. `T_resp` is the longest response
        rounded up to a length bucket (see `buckets.bucket_length`), capped at `max_new_tokens`.
      response_mask: int32 `[N, T_resp]`, 1 on response tokens.
      logprob_array: float32 `[N, T_resp]`, 0 on padding.
      response_lengths: int32 `[N]`.
      prompt_ids: int32 `[N, P]`, each row's prompt left-padded with `pad_id` (P: the longest prompt,
        bucket used); `prompt_mask`: int32 `[N, P]`.
      prompt_index: int32 `[N]`, the prompt each row was sampled from (the GRPO group id).
    """

    tokens: list[list[int]]
    logprobs: list[np.ndarray]
    finish_reason: list[str]
    response_ids: np.ndarray
    response_mask: np.ndarray
    logprob_array: np.ndarray
    response_lengths: np.ndarray
    prompt_ids: np.ndarray
    prompt_mask: np.ndarray
    prompt_index: np.ndarray


def generate(
    params: dict,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    stop_token_ids: Sequence[int] = (),
    n: int = 1,
    seed: int = 0,
    sharder: shd.Sharder | None = None,
    sub_batch_size: int | str | None = "auto",
    pad_id: int = 0,
    progress: bool | Callable[[int], None] = True,
    cache_dtype: str | None = None,
    min_prompt_bucket: int = 16,
    stats: scheduler.Stats | None = None,
) -> RolloutResult:
    """Samples `n` responses for each prompt, by continuous batching over a fixed set of decode slots.

    Args:
      params: params pytree (placed/sharded by the caller). Each call makes one per-layer copy in
        `cfg.dtype` for the decode steps (see `decode_step`), freed when it returns.
      cfg: the model config.
      prompts: token-id lists (no padding), any lengths.
      max_new_tokens: most tokens drawn per sample.
      temperature: logits are divided by it before sampling and for the log-probs (ignored if greedy).
      top_p: nucleus truncation; 1 disables. top_k: keep the k most likely tokens; 0 disables.
      greedy: argmax decoding; log-probs are then those of the temperature-1 distribution.
      stop_token_ids: ids that end a sample (kept as its last token, finish reason "stop").
      n: samples per prompt; each prompt is prefilled once per refill and copied to its samples' slots.
      seed: PRNG seed; a sample depends only on (seed, prompt index, sample index, params).
      sharder: mesh + rules; slots are split over the batch axes, the cache by `decode_step.CACHE_AXES`.
      sub_batch_size: decode slots (most samples decoded at once; bounds the KV cache). None: one
        slot per sample. "auto": as many as the KV cache of the free accelerator memory allows
        (`_auto_slots`), `CPU_SLOTS_PER_DEVICE` per batch shard on CPU. Results do not depend on it.
      pad_id: padding id of the padded arrays on the result.
      progress: show a tqdm bar of samples finished / total with tokens/s; or a callable, called with the
        number of samples just finished whenever some finish (for a caller's own bar), drawing nothing.
      cache_dtype: KV cache dtype; default `cfg.dtype` on CPU, bfloat16 on accelerators.
      min_prompt_bucket: smallest prompt-length (and cache window) bucket.
      stats: optional `scheduler.Stats`, filled with schedule counters (benchmarks).

    Returns:
      A `RolloutResult`.
    """
    if cache_dtype is None:
        cache_dtype = cfg.dtype if jax.default_backend() == "cpu" else "bfloat16"
    _validate(prompts, max_new_tokens, temperature, top_p, top_k, n, sub_batch_size)
    if sub_batch_size == "auto":
        sub_batch_size = _auto_slots(cfg, prompts, n, max_new_tokens, cache_dtype, min_prompt_bucket, sharder)
    multiple = _batch_shards(sharder)
    rows = len(prompts) * n
    # At most `sub_batch_size` slots (a memory bound): the power of two at or below it.
    cap = rows if sub_batch_size is None else 1 << (int(sub_batch_size).bit_length() - 1)
    slots = buckets.bucket_count(min(cap, rows), multiple=multiple)
    controls = Controls(greedy=greedy, top_k=0 if greedy else int(top_k), use_top_p=not greedy and top_p < 1.0)
    sample = dict(controls=controls, seed=seed, temperature=1.0 if greedy else temperature, top_p=top_p,
                  stop_ids=engine.stop_array(stop_token_ids))
    plan = scheduler.Plan(n=n, max_new_tokens=max_new_tokens, slots=slots, multiple=multiple,
                          min_prompt_bucket=min_prompt_bucket, cache_dtype=cache_dtype)
    out = scheduler.run(params, cfg, prompts, plan, sample, sharder=sharder, progress=progress, stats=stats)
    # The call's weight copy and cache are freed now; hand their heap pages back, or calls in a row (an
    # evaluation's batches) stack each one's leftovers on the last (+0.3 GiB per call on the CPU demo).
    release_free_memory()
    return _assemble(out, prompts, n, max_new_tokens, pad_id, min_prompt_bucket)


def _validate(prompts, max_new_tokens, temperature, top_p, top_k, n, sub_batch_size) -> None:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
    if max_new_tokens < 1 or n < 1:
        raise ValueError(f"max_new_tokens and n must be >= 1, got {max_new_tokens} and {n}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature}")
    if not 0.0 < top_p <= 1.0 or top_k < 0:
        raise ValueError(f"need 0 < top_p <= 1 and top_k >= 0, got top_p={top_p}, top_k={top_k}")
    if sub_batch_size not in (None, "auto") and not (isinstance(sub_batch_size, int) and sub_batch_size >= 1):
        raise ValueError(f"sub_batch_size (decode slots) must be None, 'auto' or an int >= 1, got {sub_batch_size!r}")


def _auto_slots(cfg, prompts, n, max_new_tokens, cache_dtype, min_bucket, sharder) -> int:
    """Slots whose KV cache fits 85% of the first device's free memory, after the per-layer weight copy.

    `CPU_SLOTS_PER_DEVICE` per batch shard when the device reports no memory limit (CPU).
    """
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" not in stats:
        return CPU_SLOTS_PER_DEVICE * _batch_shards(sharder)
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    shapes = jax.tree.leaves(tfm.param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
    weights = sum(math.prod(shape) for shape in shapes)
    budget = 0.85 * free - weights * np.dtype(cfg.dtype).itemsize  # `decode_step.unstack_params` copy
    length = buckets.bucket_length(max(len(p) for p in prompts) + max_new_tokens, minimum=min_bucket)
    return buckets.rows_for_memory(cfg, length, max(budget, 1.0), cache_dtype) * _batch_shards(sharder)


def _batch_shards(sharder) -> int:
    """Devices the slot axis is split over (slot and prefill counts are bucketed to a multiple of it)."""
    if sharder is None:
        return 1
    target = dict(sharder.rules).get(shd.ACT_BATCH)
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    return math.prod(sharder.mesh.shape[a] for a in axes)


def _assemble(out: dict, prompts, n, max_new_tokens, pad_id, min_bucket) -> RolloutResult:
    lengths = out["lengths"]
    t_resp = min(max_new_tokens, buckets.bucket_length(int(lengths.max()), minimum=16))
    resp_mask = (np.arange(t_resp)[None, :] < lengths[:, None]).astype(np.int32)
    resp_ids = np.where(resp_mask == 1, out["tokens"][:, :t_resp], pad_id).astype(np.int32)
    logprob_array = np.where(resp_mask == 1, out["logprobs"][:, :t_resp], 0.0).astype(np.float32)
    p = buckets.bucket_length(max(len(q) for q in prompts), minimum=min_bucket)
    prompt_ids = np.full((len(prompts), p), pad_id, np.int32)
    prompt_mask = np.zeros((len(prompts), p), np.int32)
    for i, q in enumerate(prompts):
        prompt_ids[i, p - len(q):], prompt_mask[i, p - len(q):] = q, 1
    return RolloutResult(
        tokens=[row[:k].tolist() for row, k in zip(resp_ids, lengths)],
        logprobs=[row[:k].copy() for row, k in zip(logprob_array, lengths)],
        finish_reason=["stop" if s else "length" for s in out["stopped"]],
        response_ids=resp_ids, response_mask=resp_mask, logprob_array=logprob_array,
        response_lengths=lengths.astype(np.int32), prompt_ids=np.repeat(prompt_ids, n, axis=0),
        prompt_mask=np.repeat(prompt_mask, n, axis=0),
        prompt_index=np.arange(len(lengths), dtype=np.int32) // n)
