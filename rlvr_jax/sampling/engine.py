"""The rollout engine: bucketed prefill, then one jitted `lax.while_loop` of decode steps.

Per sub-batch of prompts (host loop in `generate`):
  1. Prompts are left-padded to a bucketed length `p`; the row count is bucketed too (dummy rows are
     marked finished from the start so they never keep the loop alive).
  2. One jitted program (`_rollout`) prefills each *prompt* once, copies its KV cache into the `n`
     rows of its samples, draws the first token from the last prompt position's logits, then runs a
     `while_loop` that stops when every row has finished or `max_new_tokens` tokens were drawn.
  3. The KV cache (per layer `[rows, k, p + max_new_tokens, e]`, see `decode_step`) is preallocated,
     sharded (rows over the batch axes, kv heads over `tensor`), donated to the program and returned,
     so consecutive sub-batches of the same shape reuse one buffer and the loop updates it in place.

Randomness: row `r` (prompt-major global sample index) draws step `i` from
`fold_in(fold_in(key(seed), r), i)`, so samples do not depend on the sub-batch size, the row bucket
or the mesh.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import sharding as shd
from rlvr_jax.models import transformer as tfm
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.sampling import decode_step as dstep
from rlvr_jax.sampling import progress as prog
from rlvr_jax.sampling.controls import Controls, select_tokens

L = shd


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "controls", "n", "max_new_tokens", "sharder", "progress_every"),
    donate_argnames=("cache",),
)
def _rollout(params, cache, prompt_ids_mp, prompt_mask_mp, active_b, row_ids_b, stop_ids, seed, temperature,
             top_p, sub_index, *, cfg, controls, n, max_new_tokens, sharder, progress_every):
    """Prefill + decode loop for one sub-batch of `m` prompts x `n` samples (`b = m * n` rows).

    Args:
      params: params pytree (stacked layers, any dtype; the decode loop uses a per-layer copy in
        `cfg.dtype`, see `decode_step.unstack_params`).
      cache: per-layer `[{"k", "v"}]`, each `[b, k, p + t, e]` (see `decode_step`; donated, overwritten).
      prompt_ids_mp, prompt_mask_mp: left-padded prompts `[m, p]` and their 0/1 mask.
      active_b: bool `[b]`, False for dummy (bucket padding) rows.
      row_ids_b: int32 `[b]`, global sample index of each row (PRNG stream id).
      stop_ids: int32 `[q]`, stop token ids padded with -1 (traced: a new stop set does not recompile).
      seed: uint32 scalar. temperature, top_p: float32 scalars.
      sub_index: int32 scalar, the sub-batch number (progress reporting only).

    Returns:
      `(out, cache)`: out holds `tokens` int32 `[b, t]`, `logprobs` float32 `[b, t]` (0 after the
      end), `lengths` int32 `[b]` and `stopped` bool `[b]`.
    """
    m, p = prompt_ids_mp.shape
    logits_bv, cache = _prefill(params, cfg, cache, prompt_ids_mp, prompt_mask_mp, n, sharder)
    prompt_len_b = jnp.repeat(jnp.sum(prompt_mask_mp, axis=-1, dtype=jnp.int32), n)
    kv_mask_bs = jnp.concatenate(
        [jnp.repeat(prompt_mask_mp, n, axis=0).astype(bool), jnp.ones((m * n, max_new_tokens), bool)], axis=1)
    kv_mask_bs = shd.constrain(sharder, kv_mask_bs, (L.ACT_BATCH, L.ACT_LENGTH))
    base_key = jax.random.key(seed)
    row_keys_b = jax.vmap(lambda r: jax.random.fold_in(base_key, r))(row_ids_b)
    select = functools.partial(select_tokens, temperature=temperature, top_p=top_p, controls=controls)
    tok_b, lp_b = select(logits_bv, _uniforms(row_keys_b, 0))
    state = _initial_state(cache, tok_b, lp_b, active_b, max_new_tokens, stop_ids)
    dparams = dstep.unstack_params(params, cfg)  # once per sub-batch, outside the loop

    def body(state):
        i = state["i"]  # tokens drawn so far; feed token i - 1 at slot p + i - 1
        last_b = jax.lax.dynamic_index_in_dim(state["tokens"], i - 1, axis=1, keepdims=False)
        logits_bv, cache = dstep.decode_step(dparams, cfg, last_b, prompt_len_b + i - 1, kv_mask_bs,
                                             state["cache"], p + i - 1, sharder=sharder)
        tok_b, lp_b = select(logits_bv, _uniforms(row_keys_b, i))
        state = _record(dict(state, cache=cache), tok_b, lp_b, stop_ids)
        if progress_every:
            prog.report_every(progress_every, sub_index, state["i"], state["done"])
        return state

    state = jax.lax.while_loop(lambda st: (st["i"] < max_new_tokens) & ~jnp.all(st["done"]), body, state)
    out = {k: state[k] for k in ("tokens", "logprobs", "lengths", "stopped")}
    return out, state["cache"]


def _prefill(params, cfg, cache, prompt_ids_mp, prompt_mask_mp, n, sharder):
    """Runs each prompt once (`transformer.decoder_stack`); copies its keys/values into its `n` sample rows.

    Returns the first-token logits `[m * n, v]` (only the last prompt position goes through the
    lm_head) and the cache with slots `[0, p)` filled.
    """
    m, p = prompt_ids_mp.shape
    ids = shd.constrain(sharder, prompt_ids_mp, (L.ACT_BATCH, L.ACT_LENGTH))
    prompt_cache = tfm.init_cache(cfg, m, p, dtype=cache[0]["k"].dtype)
    h_mpd, prompt_cache = tfm.decoder_stack(params, cfg, ids, tfm.positions_from_mask(prompt_mask_mp), prompt_mask_mp,
                                     cache=prompt_cache, cache_index=0, sharder=sharder)
    logits_mv = tfm.logits_from_hidden(params, cfg, h_mpd[:, -1])  # left padding: last slot is real
    return jnp.repeat(logits_mv, n, axis=0), dstep.fill_prefix(cache, prompt_cache, n, sharder)


def _uniforms(row_keys_b, step):
    """One uniform in `(0, 1]` per row for decode step `step` (independent of batch composition)."""
    return jax.vmap(lambda k: 1.0 - jax.random.uniform(jax.random.fold_in(k, step)))(row_keys_b)


def _initial_state(cache, tok_b, lp_b, active_b, t, stop_ids):
    b = tok_b.shape[0]
    state = {
        "i": jnp.int32(0),
        "cache": cache,
        "tokens": jnp.zeros((b, t), jnp.int32),
        "logprobs": jnp.zeros((b, t), jnp.float32),
        "lengths": jnp.zeros((b,), jnp.int32),
        "done": ~active_b,
        "stopped": jnp.zeros((b,), bool),
    }
    return _record(state, tok_b, lp_b, stop_ids)


def _record(state, tok_b, lp_b, stop_ids):
    """Writes token `i` for rows still running; marks rows that drew a stop token as done."""
    i, running_b = state["i"], ~state["done"]
    tok_b = jnp.where(running_b, tok_b, 0)
    lp_b = jnp.where(running_b, lp_b, 0.0)
    hit_b = running_b & jnp.any(tok_b[:, None] == stop_ids[None, :], axis=-1)
    return dict(
        state,
        i=i + 1,
        tokens=jax.lax.dynamic_update_slice_in_dim(state["tokens"], tok_b[:, None], i, axis=1),
        logprobs=jax.lax.dynamic_update_slice_in_dim(state["logprobs"], lp_b[:, None], i, axis=1),
        lengths=state["lengths"] + running_b.astype(jnp.int32),
        done=state["done"] | hit_b,
        stopped=state["stopped"] | hit_b,
    )


@functools.partial(jax.jit, static_argnames=("cfg", "rows", "length", "dtype", "sharder"))
def _alloc_cache(*, cfg: ModelConfig, rows: int, length: int, dtype: str, sharder):
    return dstep.init_cache(cfg, rows, length, dtype, sharder)


def cache_fits(cache, cfg: ModelConfig, rows: int, length: int, dtype: str) -> bool:
    """Whether a cache from a previous sub-batch can be reused for `rows` x `length` slots."""
    want = (rows, cfg.num_kv_heads, length, cfg.head_dim)
    return cache is not None and cache[0]["k"].shape == want and cache[0]["k"].dtype == jnp.dtype(dtype)


def run_sub_batch(params, cfg: ModelConfig, cache, prompts_mp, mask_mp, active_b, row_ids_b, *, stop_token_ids,
                  seed, temperature, top_p, sub_index, controls: Controls, n: int, max_new_tokens: int,
                  sharder=None, cache_dtype: str, progress_every: int = 0):
    """Allocates (or reuses) the cache and dispatches `_rollout` for one bucketed sub-batch (async).

    Args:
      cache: the cache returned by the previous call if `cache_fits` it, else None (the caller drops its
        reference first, so the old buffer is freed before a new one is allocated).
      prompts_mp, mask_mp: numpy `[m, p]` left-padded prompts and mask.
      stop_token_ids: sequence of ints (padded here to a bucket of >= 4 entries). Others: see `_rollout`.

    Returns:
      `(out, cache)` as device arrays (not yet synchronised).
    """
    m, p = prompts_mp.shape
    if cache is None:
        cache = _alloc_cache(cfg=cfg, rows=m * n, length=p + max_new_tokens, dtype=cache_dtype, sharder=sharder)
    stop_ids = np.full(max(4, 1 << (len(stop_token_ids) - 1).bit_length()), -1, np.int32)
    stop_ids[:len(stop_token_ids)] = stop_token_ids
    put = functools.partial(_put, sharder)
    return _rollout(
        params, cache, put(prompts_mp, (L.ACT_BATCH, L.ACT_LENGTH)), put(mask_mp, (L.ACT_BATCH, L.ACT_LENGTH)),
        put(active_b, (L.ACT_BATCH,)), put(row_ids_b, (L.ACT_BATCH,)), stop_ids, np.uint32(seed),
        np.float32(temperature), np.float32(top_p), np.int32(sub_index), cfg=cfg, controls=controls, n=n, max_new_tokens=max_new_tokens,
        sharder=sharder, progress_every=progress_every)


def _put(sharder, x, logical):
    if sharder is None:
        return jnp.asarray(x)
    return jax.device_put(x, sharder.sharding(logical, x.shape))
