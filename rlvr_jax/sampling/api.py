"""`generate`: the public rollout API (a contract: tests outside this repo call it with other models)."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np

from rlvr_jax import sharding as shd
from rlvr_jax.distributed import to_host
from rlvr_jax.models import transformer as tfm
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.sampling import buckets, engine
from rlvr_jax.sampling.controls import Controls
from rlvr_jax.sampling.progress import ProgressBar


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
      prompt_ids: int32 `[N, P]`, each row's prompt left-padded with `pad_id` (P: the largest prompt
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
    progress: bool = True,
    cache_dtype: str | None = None,
    min_prompt_bucket: int = 16,
) -> RolloutResult:
    """Samples `n` responses for each prompt.

    Args:
      params: params pytree (placed/sharded by the caller). Each sub-batch program makes one per-layer
        copy in `cfg.dtype` for its decode loop (bf16 weights read per token rather than fp32 masters;
        see `decode_step`), freed when the program ends.
      cfg: the model config.
      prompts: token-id lists (no padding), any lengths.
      max_new_tokens: most tokens drawn per sample.
      temperature: logits are divided by it before sampling and for the log-probs (ignored if greedy).
      top_p: nucleus truncation; 1 disables. top_k: keep the k most likely tokens; 0 disables.
      greedy: argmax decoding; log-probs are then those of the temperature-1 distribution.
      stop_token_ids: ids that end a sample (kept as its last token, finish reason "stop").
      n: samples per prompt; each prompt is prefilled once and its cache copied to its n rows.
      seed: PRNG seed; a sample depends only on (seed, prompt index, sample index, params).
      sharder: mesh + rules; rows are split over the batch axes, the cache by `CACHE_LOGICAL_AXES`.
      sub_batch_size: most rows (samples) per device program; prompts are grouped so a sub-batch holds
        whole prompts (must be >= n). None: all rows at once. "auto": as many rows as the KV cache
        of the free accelerator memory allows (`_auto_sub_batch`; all rows on CPU, which reports
        no memory limit). Results do not depend on it.
      pad_id: padding id of the padded arrays on the result.
      progress: show a tqdm bar over decode steps.
      cache_dtype: KV cache dtype; default `cfg.dtype` on CPU, bfloat16 on accelerators.
      min_prompt_bucket: smallest prompt-length bucket.

    Returns:
      A `RolloutResult`.
    """
    if cache_dtype is None:
        cache_dtype = cfg.dtype if jax.default_backend() == "cpu" else "bfloat16"
    if sub_batch_size == "auto":
        sub_batch_size = _auto_sub_batch(cfg, prompts, n, max_new_tokens, cache_dtype, min_prompt_bucket, sharder)
    _validate(prompts, max_new_tokens, temperature, top_p, top_k, n, sub_batch_size)
    controls = Controls(greedy=greedy, top_k=0 if greedy else int(top_k), use_top_p=not greedy and top_p < 1.0)
    common = dict(stop_token_ids=sorted({int(t) for t in stop_token_ids}), seed=seed,
                  temperature=1.0 if greedy else temperature, top_p=top_p, controls=controls, n=n,
                  max_new_tokens=max_new_tokens, sharder=sharder, cache_dtype=cache_dtype,
                  progress_every=16 if progress else 0)
    per_sub = len(prompts) if sub_batch_size is None else sub_batch_size // n
    layout = dict(min_bucket=min_prompt_bucket, per_sub=per_sub,
                  multiple=_batch_shards(sharder) // math.gcd(_batch_shards(sharder), n))
    pieces = _run_sub_batches(params, cfg, prompts, layout, progress, common)
    return _assemble(pieces, n, max_new_tokens, pad_id)


def _run_sub_batches(params, cfg, prompts, layout: dict, progress: bool, common: dict) -> list:
    """Dispatches every sub-batch, fetching each one's outputs while the next one runs."""
    n, max_new_tokens, per_sub = common["n"], common["max_new_tokens"], layout["per_sub"]
    chunks = [range(s, min(s + per_sub, len(prompts))) for s in range(0, len(prompts), per_sub)]
    pieces, cache, pending = [], None, None
    with ProgressBar(len(chunks), max_new_tokens, enabled=progress) as bar:
        for k, chunk in enumerate(chunks):
            ids, mask, active, row_ids = _sub_batch_arrays(prompts, chunk, n, **layout)
            length = ids.shape[1] + max_new_tokens
            if not engine.cache_fits(cache, cfg, len(ids) * n, length, common["cache_dtype"]):
                cache = None  # drop the old buffer before the next one is allocated
            out, cache = engine.run_sub_batch(params, cfg, cache, ids, mask, active, row_ids, sub_index=k, **common)
            if pending is not None:
                pieces.append(_fetch(*pending))
                bar.finish_sub_batch(k - 1)
            pending = (out, ids, mask, len(chunk) * n)
        pieces.append(_fetch(*pending))
        bar.finish_sub_batch(len(chunks) - 1)
    return pieces


def _validate(prompts, max_new_tokens, temperature, top_p, top_k, n, sub_batch_size) -> None:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
    if max_new_tokens < 1 or n < 1:
        raise ValueError(f"max_new_tokens and n must be >= 1, got {max_new_tokens} and {n}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature}")
    if not 0.0 < top_p <= 1.0 or top_k < 0:
        raise ValueError(f"need 0 < top_p <= 1 and top_k >= 0, got top_p={top_p}, top_k={top_k}")
    if sub_batch_size is not None and sub_batch_size < n:
        raise ValueError(f"sub_batch_size ({sub_batch_size}) must be >= n ({n}): a sub-batch holds whole prompts")


def _auto_sub_batch(cfg, prompts, n, max_new_tokens, cache_dtype, min_bucket, sharder) -> int | None:
    """Rows whose KV cache fits 85% of the first device's free memory, after the per-layer weight copy.

    None (all rows at once) when the device reports no memory limit (CPU). A multiple of `n`.
    """
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" not in stats or not prompts:
        return None
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    shapes = jax.tree.leaves(tfm.param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
    weights = sum(math.prod(shape) for shape in shapes)
    budget = 0.85 * free - weights * np.dtype(cfg.dtype).itemsize  # `decode_step.unstack_params` copy
    length = buckets.bucket_length(max(len(p) for p in prompts), minimum=min_bucket) + max_new_tokens
    rows = buckets.rows_for_memory(cfg, length, max(budget, 1.0), cache_dtype) * _batch_shards(sharder)
    return max(n, rows // n * n)


def _batch_shards(sharder) -> int:
    """Devices the row axis is split over (rows are bucketed to a multiple of it)."""
    if sharder is None:
        return 1
    target = dict(sharder.rules).get(shd.ACT_BATCH)
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    return math.prod(sharder.mesh.shape[a] for a in axes)


def _sub_batch_arrays(prompts, chunk, n, *, min_bucket, multiple, per_sub):
    """Left-padded, bucketed `[m, p]` ids and mask, plus per-row `active` and global row ids.

    The device arrays pad with id 0; `pad_id` (possibly not a valid token id) is applied on the host.
    """
    m = buckets.bucket_count(len(chunk), multiple=multiple, cap=per_sub)
    p = buckets.bucket_length(max(len(prompts[i]) for i in chunk), minimum=min_bucket)
    ids = np.zeros((m, p), np.int32)
    mask = np.zeros((m, p), np.int32)
    mask[:, -1] = 1  # dummy rows: one pad token, so attention never sees an empty row
    for r, i in enumerate(chunk):
        ids[r, p - len(prompts[i]):] = prompts[i]
        mask[r, p - len(prompts[i]):] = 1
    rows = m * n
    active = np.arange(rows) < len(chunk) * n
    row_ids = (chunk.start * n + np.arange(rows)).astype(np.int32)
    return ids, mask, active, row_ids


def _fetch(out, ids, mask, real_rows):
    out = to_host(out)  # blocks until this sub-batch is done; all-gathers rows held by other processes
    return {k: v[:real_rows] for k, v in out.items()}, ids, mask


def _assemble(pieces, n, max_new_tokens, pad_id) -> RolloutResult:
    lengths = np.concatenate([o["lengths"] for o, _, _ in pieces]).astype(np.int32)
    t_resp = min(max_new_tokens, buckets.bucket_length(int(lengths.max()), minimum=16))
    resp_ids = np.concatenate([o["tokens"][:, :t_resp] for o, _, _ in pieces])
    logprob_array = np.concatenate([o["logprobs"][:, :t_resp] for o, _, _ in pieces]).astype(np.float32)
    resp_mask = (np.arange(t_resp)[None, :] < lengths[:, None]).astype(np.int32)
    resp_ids = np.where(resp_mask == 1, resp_ids, pad_id).astype(np.int32)
    stopped = np.concatenate([o["stopped"] for o, _, _ in pieces])
    p = max(ids.shape[1] for _, ids, _ in pieces)
    prompt_ids, prompt_mask = [], []
    for o, ids, mask in pieces:
        rows = len(o["lengths"])
        pad = ((0, 0), (p - ids.shape[1], 0))
        prompt_ids.append(np.repeat(np.pad(ids, pad), n, axis=0)[:rows])
        prompt_mask.append(np.repeat(np.pad(mask, pad), n, axis=0)[:rows])
    prompt_mask = np.concatenate(prompt_mask)
    prompt_ids = np.where(prompt_mask == 1, np.concatenate(prompt_ids), pad_id).astype(np.int32)
    return RolloutResult(
        tokens=[row[:k].tolist() for row, k in zip(resp_ids, lengths)],
        logprobs=[row[:k].copy() for row, k in zip(logprob_array, lengths)],
        finish_reason=["stop" if s else "length" for s in stopped],
        response_ids=resp_ids, response_mask=resp_mask, logprob_array=logprob_array,
        response_lengths=lengths, prompt_ids=prompt_ids, prompt_mask=prompt_mask,
        prompt_index=np.arange(len(lengths), dtype=np.int32) // n)
