"""The rollout engine's device programs: slot state, prefill, insert, a K-step decode segment, reshape.

Continuous batching keeps a fixed number of decode *slots* (the `s` axis, sharded over the mesh's
batch axes). The host loop in `scheduler` alternates:
  1. `prefill`: runs each newly admitted *prompt* once (`transformer.decoder_stack`, right-padded to a
     bucketed `[m, p]`) and returns its keys/values and the logits of its last prompt position; a
     prefix common to all of them (a system prompt) runs once and is copied to every row;
  2. `insert`: copies a prompt's keys/values into each slot that takes one of its samples (a prompt
     with n samples is prefilled once and copied into n slots), draws each sample's first token;
  3. `segment`: a jitted `lax.while_loop` of up to `steps` decode steps over all slots, which exits
     early once enough slots have finished to be worth refilling (or when a row would outgrow the
     window);
  4. `reshape`: moves slots (compaction when the queue is empty) and cuts or extends the cache
     window (`w`, bucketed to the longest live row), so attention reads only what can hold data.

State (a dict, every array's leading axis is the slot):
  cache: per-layer `[{"k": [s, k, e, w], "v": [s, k, w, e]}]` (see `decode_step`).
  tok: int32 `[s]`, the last drawn token (fed at the next step). fill: int32 `[s]`, positions filled.
  count: int32 `[s]`, tokens drawn. row: int32 `[s]`, the global sample index (prompt-major).
  done: bool `[s]` (free slots are done). stopped: bool `[s]`, ended by a stop token.
  out_tok int32 / out_lp float32 `[s, t]`: the sample's tokens and log-probs so far.

Randomness: sample `row` draws its token number `count` from `fold_in(fold_in(key(seed), row), count)`,
so a sample depends on (seed, prompt, sample index, params) only, never on its slot, the schedule or
the mesh.
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
from rlvr_jax.sampling.controls import Controls, select_tokens

L = shd
_SLOT = (L.ACT_BATCH,)
_SLOT_T = (L.ACT_BATCH, None)
# A common prompt prefix is prefilled once when it spans at least this many tokens (and is rounded down to
# a multiple of it): a system prompt and a question template, shared by every prompt of an evaluation. The
# prefix is a static argument (one program per value), found once per `generate` call over all its prompts,
# so a fine multiple costs few programs; at 16 the demo's held-out prompts (28 tokens in common) shared only
# 16 and every row recomputed the other 12.
SHARED_PREFIX_MULTIPLE = 4
# XLA's CPU compiler hands matrix products to YNNPACK by default. At a decode step's few rows per device
# its threaded kernels run slower than the Eigen dot it replaced: a SmolLM2 layer stack ran 1.45-1.5x
# faster with YNNPACK off at 8 and 16 rows, 0.9x at 32, 1.0x at 64 (one process, interleaved;
# bench/decode_dots.py). So decode segments of at most this many slots per CPU device
# compile without it (the whole 16-row decode: ~1.1x, as attention and the vocabulary projection stay).
SMALL_DOT_MAX_ROWS = 16
SMALL_DOT_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _slot_constrain(sharder, state: dict) -> dict:
    out = {k: shd.constrain(sharder, v, _SLOT if v.ndim == 1 else _SLOT_T) for k, v in state.items() if k != "cache"}
    out["cache"] = [{k: shd.constrain(sharder, v, dstep.CACHE_AXES[k]) for k, v in c.items()} for c in state["cache"]]
    return out


@functools.partial(jax.jit, static_argnames=("cfg", "slots", "window", "max_new_tokens", "cache_dtype", "sharder"))
def init_state(*, cfg: ModelConfig, slots: int, window: int, max_new_tokens: int, cache_dtype: str, sharder=None):
    """All slots free (`done`), cache zeroed."""
    zeros = lambda dt: jnp.zeros((slots,), dt)
    state = dict(tok=zeros(jnp.int32), fill=zeros(jnp.int32), count=zeros(jnp.int32), row=zeros(jnp.int32),
                 done=jnp.ones((slots,), bool), stopped=zeros(bool),
                 out_tok=jnp.zeros((slots, max_new_tokens), jnp.int32),
                 out_lp=jnp.zeros((slots, max_new_tokens), jnp.float32),
                 cache=dstep.init_cache(cfg, slots, window, cache_dtype, sharder))
    return _slot_constrain(sharder, state)


unstack_params = jax.jit(dstep.unstack_params, static_argnames=("cfg",))


def decode_params(params, cfg: ModelConfig) -> dict:
    """`decode_step.unstack_params(params, cfg)`, as views instead of a copy where the buffers allow it.

    The copy is a second set of weights for the whole rollout (0.5 GB of the CPU demo's ~3 GB). On a CPU
    device, when the compute dtype is the stored one, each layer's weights can instead alias the stacked
    arrays: `device_put` of a NumPy view of a CPU buffer is zero-copy (aligned slices of a row-major stack
    are). The views keep the stacked buffers alive; a donation of those while views exist falls back to a
    copy (JAX never writes into a buffer with an outside reference). Accelerators, sharded params and
    casts take the jitted copy.
    """
    dt = jnp.dtype(cfg.dtype)
    leaves = jax.tree.leaves(params)
    devices = {d for x in leaves if isinstance(x, jax.Array) for d in x.sharding.device_set}
    if (len(devices) != 1 or next(iter(devices)).platform != "cpu"
            or not all(isinstance(x, jax.Array) and x.dtype == dt for x in leaves)):
        return unstack_params(params, cfg=cfg)
    device = next(iter(devices))
    out = {k: v for k, v in params.items() if k != "layers"}
    stacked = jax.tree.map(np.asarray, params["layers"])  # zero-copy host views of the CPU buffers
    out["layers"] = [jax.tree.map(lambda x, i=i: jax.device_put(x[i], device), stacked) for i in range(cfg.num_layers)]
    return out


@functools.partial(jax.jit, static_argnames=("window", "sharder"))
def reshape(state: dict, src_s, *, window: int, sharder=None) -> dict:
    """Slot `i` of the result is slot `src_s[i]` of `state` (-1: a free slot); cache window -> `window`.

    Args:
      state: the slot state (donated).
      src_s: int32 `[s_new]` source slots.
      window: new cache window; positions beyond the old one are zero, beyond the new one dropped.
    """
    valid = src_s >= 0
    idx = jnp.maximum(src_s, 0)
    out = {k: v[idx] for k, v in state.items() if k != "cache"}
    out["done"] = jnp.where(valid, out["done"], True)
    cache = []
    for layer in state["cache"]:
        new = {}
        for name, c in layer.items():
            axis = dstep.WINDOW_AXIS[name]
            c = jax.lax.slice_in_dim(c[idx], 0, min(window, c.shape[axis]), axis=axis)
            pad = [(0, 0)] * c.ndim
            pad[axis] = (0, window - c.shape[axis])
            new[name] = jnp.pad(c, pad)
        cache.append(new)
    out["cache"] = cache
    return _slot_constrain(sharder, out)


@functools.partial(jax.jit, static_argnames=("cfg", "cache_dtype", "sharder", "shared"))
def prefill(params, ids_mp, len_m, *, cfg: ModelConfig, cache_dtype: str, sharder=None, shared: int = 0):
    """Runs `m` right-padded prompts once.

    Args:
      params: the params pytree (stacked layers).
      ids_mp: int32 `[m, p]`, prompt `i` in `[i, :len_m[i]]` (any padding after).
      len_m: int32 `[m]` prompt lengths (>= 1).
      shared: the first `shared` tokens are the same in every real prompt and each is longer (see
        `shared_prefix`): they run once, for one row, and their keys/values are copied to all `m` rows;
        the rest of each prompt attends to them through the cache. 0: every row runs all its tokens.

    Returns:
      `(prefix, logits_mv)`: keys/values `{"k", "v"}` each `[l, m, p, k, e]` (positions `>= len` are
      padding) and the float32 next-token logits at each prompt's last position.
    """
    m, p = ids_mp.shape
    ids_mp = shd.constrain(sharder, ids_mp, (L.ACT_BATCH, L.ACT_LENGTH))
    mask_mp = jnp.arange(p)[None, :] < len_m[:, None]
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (m, p))
    cache = tfm.init_cache(cfg, m, p, dtype=cache_dtype)
    if shared:
        one = tfm.init_cache(cfg, 1, shared, dtype=cache_dtype)
        _, one = tfm.decoder_stack(params, cfg, ids_mp[:1, :shared], positions[:1, :shared],
                                   jnp.ones((1, shared), bool), cache=one, cache_index=0)
        cache = {k: cache[k].at[:, :, :shared].set(jnp.broadcast_to(one[k], (v.shape[0], m) + v.shape[2:]))
                 for k, v in one.items()}
    h_mpd, cache = tfm.decoder_stack(params, cfg, ids_mp[:, shared:], positions[:, shared:], mask_mp, cache=cache,
                                     cache_index=shared, sharder=sharder)
    # Bucket-padding rows (one pad token) may be shorter than `shared`; their logits are never read.
    last = jnp.maximum(len_m - 1 - shared, 0)
    h_md = jnp.take_along_axis(h_mpd, last[:, None, None], axis=1)[:, 0]
    return cache, tfm.logits_from_hidden(params, cfg, h_md)


def shared_prefix(prompts, multiple: int = SHARED_PREFIX_MULTIPLE) -> int:
    """Leading tokens common to every prompt (two or more), rounded down to a multiple of `multiple`
    (fewer compiled programs) and leaving each prompt at least one token of its own; 0 if none."""
    if len(prompts) < 2:
        return 0
    first, shortest = prompts[0], min(len(q) for q in prompts)
    common = 0
    while common < shortest - 1 and all(q[common] == first[common] for q in prompts[1:]):
        common += 1
    return common // multiple * multiple


@functools.partial(jax.jit, static_argnames=("controls", "sharder"), donate_argnames=("state",))
def insert(state, prefix, logits_mv, len_m, slot_r, src_r, row_r, seed, temperature, top_p, stop_ids, *,
           controls: Controls, sharder=None):
    """Starts `r` samples: slot `slot_r[i]` takes sample `row_r[i]` of prefilled prompt `src_r[i]`.

    Args:
      state: slot state (donated); its window must be >= the prefill length `p`.
      prefix, logits_mv: `prefill` outputs; len_m: int32 `[m]` prompt lengths.
      slot_r: int32 `[r]` target slots; entries `>= s` are bucket padding (dropped).
      src_r: int32 `[r]` index into the prefilled prompts. row_r: int32 `[r]` global sample index.
      seed: uint32; temperature, top_p: float32; stop_ids: int32 `[q]` padded with -1.
    """
    p = prefix["k"].shape[2]
    t = state["out_tok"].shape[1]
    tok_r, lp_r = select_tokens(logits_mv[src_r], uniforms(seed, row_r, jnp.zeros_like(row_r)),
                                temperature, top_p, controls)
    hit_r = jnp.any(tok_r[:, None] == stop_ids[None, :], axis=-1)
    put = lambda x, v: x.at[slot_r].set(v, mode="drop")
    first = lambda v, dt: jnp.zeros((len(slot_r), t), dt).at[:, 0].set(v)
    out = dict(state, tok=put(state["tok"], tok_r), fill=put(state["fill"], len_m[src_r]),
               count=put(state["count"], jnp.ones_like(tok_r)), row=put(state["row"], row_r),
               done=put(state["done"], hit_r | (t == 1)), stopped=put(state["stopped"], hit_r),
               out_tok=put(state["out_tok"], first(tok_r, jnp.int32)),
               out_lp=put(state["out_lp"], first(lp_r, jnp.float32)))
    cache = []
    for layer, c in enumerate(state["cache"]):
        new = {}
        for name, x in c.items():
            rows_rkpe = jnp.swapaxes(prefix[name][layer], 1, 2)[src_r].astype(x.dtype)
            if name == "k":  # keys are stored `[s, k, e, w]`
                new[name] = x.at[slot_r, :, :, :p].set(jnp.swapaxes(rows_rkpe, 2, 3), mode="drop")
            else:
                new[name] = x.at[slot_r, :, :p, :].set(rows_rkpe, mode="drop")
        cache.append(new)
    out["cache"] = cache
    return _slot_constrain(sharder, out)


def segment(dparams, state, free_target, seed, temperature, top_p, stop_ids, *, cfg: ModelConfig,
            controls: Controls, steps: int, sharder=None, small_dots: bool = False):
    """Up to `steps` decode steps over every slot, in one `while_loop`.

    Exits early once `free_target` slots are done (so the host can refill them) or when a running
    slot has filled the window (so the host can extend it). Finished slots keep computing (their
    results are masked out) until the host refills them: the price of fixed shapes.

    Args:
      dparams: `decode_step.unstack_params(params, cfg)`.
      state: slot state (donated).
      free_target: int32 scalar. Others: see `insert`.
      small_dots: compile with `SMALL_DOT_OPTIONS` (a CPU program of few rows per device: `small_dots`).
    """
    program = _segment_small_dots if small_dots else _segment
    return program(dparams, state, free_target, seed, temperature, top_p, stop_ids, cfg=cfg, controls=controls,
                   steps=steps, sharder=sharder)


def small_dots(slots_per_device: int, platform: str) -> bool:
    """Whether a decode segment of this many rows per device should compile with `SMALL_DOT_OPTIONS`."""
    return platform == "cpu" and slots_per_device <= SMALL_DOT_MAX_ROWS


def decode_segment(dparams, state, free_target, seed, temperature, top_p, stop_ids, *, cfg: ModelConfig,
                   controls: Controls, steps: int, sharder=None):
    """`segment`'s traced body, jitted twice below (XLA's default dots, and `SMALL_DOT_OPTIONS`)."""
    w = dstep.window(state["cache"])
    t = state["out_tok"].shape[1]

    def cond(carry):
        i, st = carry
        room = jnp.all(st["done"] | (st["fill"] < w))
        return (i < steps) & (jnp.sum(st["done"], dtype=jnp.int32) < free_target) & room

    def body(carry):
        i, st = carry
        logits_sv, cache = dstep.decode_step(dparams, cfg, st["tok"], st["fill"], st["cache"], sharder=sharder)
        tok_s, lp_s = select_tokens(logits_sv, uniforms(seed, st["row"], st["count"]), temperature, top_p, controls)
        return i + 1, _record(dict(st, cache=cache), tok_s, lp_s, stop_ids, t, sharder)

    _, state = jax.lax.while_loop(cond, body, (jnp.int32(0), state))
    return state


_SEGMENT_JIT = dict(static_argnames=("cfg", "controls", "steps", "sharder"), donate_argnames=("state",))
_segment = jax.jit(decode_segment, **_SEGMENT_JIT)
_segment_small_dots = jax.jit(decode_segment, compiler_options=SMALL_DOT_OPTIONS, **_SEGMENT_JIT)


def _record(st, tok_s, lp_s, stop_ids, t, sharder):
    """Appends each running slot's new token; marks slots that drew a stop token or `t` tokens done."""
    run_s = ~st["done"]
    col_s = jnp.where(run_s, st["count"], t)  # finished slots write out of range: dropped
    rows = jnp.arange(run_s.shape[0])
    hit_s = run_s & jnp.any(tok_s[:, None] == stop_ids[None, :], axis=-1)
    count = st["count"] + run_s.astype(jnp.int32)
    out = dict(st, tok=jnp.where(run_s, tok_s, st["tok"]), fill=st["fill"] + run_s.astype(jnp.int32), count=count,
               out_tok=st["out_tok"].at[rows, col_s].set(tok_s, mode="drop"),
               out_lp=st["out_lp"].at[rows, col_s].set(lp_s, mode="drop"),
               done=st["done"] | hit_s | (count >= t), stopped=st["stopped"] | hit_s)
    return _slot_constrain(sharder, out)


def release_programs() -> None:
    """Drops every compiled engine program (all shapes, every caller's); the next call compiles again.

    Each program is held for the life of the process, and on a CPU a decode segment holds 25-40 MiB
    of host memory (its layers are unrolled). An evaluation's shapes (a batch of benchmark prompts) are
    not the training rollout's, so after one a trainer may hand them back (`eval.release_programs`).
    """
    for program in (init_state, unstack_params, reshape, prefill, insert, _segment, _segment_small_dots):
        program.clear_cache()


def uniforms(seed, row_b, count_b):
    """One uniform in `(0, 1]` per sample for its token number `count_b` (slot- and schedule-free)."""
    base = jax.random.key(seed)
    draw = lambda r, c: 1.0 - jax.random.uniform(jax.random.fold_in(jax.random.fold_in(base, r), c))
    return jax.vmap(draw)(row_b, count_b)


def stop_array(stop_token_ids) -> np.ndarray:
    """Stop ids padded with -1 to a power-of-two length >= 4 (traced: a new stop set does not recompile)."""
    ids = sorted({int(t) for t in stop_token_ids})
    out = np.full(max(4, 1 << max(len(ids) - 1, 0).bit_length()), -1, np.int32)
    out[:len(ids)] = ids
    return out
