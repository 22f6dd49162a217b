"""The sampler's decode step: one new token per row, layers unrolled, KV cache updated in place.

`transformer.decoder_stack` is built for training: layers run in a `lax.scan` over stacked params, with the
per-layer caches as scan inputs and outputs. In a token-by-token loop that layout costs memory traffic
that a decode step cannot afford (seen in the optimised HLO on CPU):
  * each layer's weights are `dynamic-slice`d out of the stack into a temporary before the matmul
    (read, write, read again: ~3x the weight bytes per token);
  * the whole cache is rewritten every step (scan outputs), and the `[b, s, k, e]` cache is
    transposed to `[b, k, s, e]` for the attention matmuls, another full copy per step.

So this path uses its own layouts, built once per `generate` call:
  * params: `unstack_params` gives a list of per-layer dicts in the compute dtype (one copy of the
    weights for the duration of the call; the matmuls then read each weight exactly once per token,
    in bf16 on accelerators rather than the fp32 masters);
  * cache: a list of per-layer `{"k", "v"}` of shape `[b, k, s, e]` (kv-head-major, the layout the
    attention matmuls want), carried by the `while_loop` and updated with `dynamic_update_slice`
    of only the new token's `[b, k, 1, e]`, in place on the donated buffer.
Unrolling the layers (instead of scanning) makes the decode step's compile time grow with depth;
it is a small graph, compiled once per bucket.

The arithmetic is `transformer._layer`'s (same public building blocks, dtypes and masking); the
tests check the logits against `forward` and greedy tokens against transformers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import sharding as shd
from rlvr_jax.models import transformer as tfm
from rlvr_jax.models.config import ModelConfig

L = shd
# Logical axes of one layer's `[b, k, s, e]` cache in this module's layout.
CACHE_AXES = (L.ACT_BATCH, L.ACT_KV_HEADS, L.CACHE_LENGTH, None)
# Same finite "minus infinity" as transformer.py: masked scores underflow to exactly 0 after softmax.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def unstack_params(params: dict, cfg: ModelConfig) -> dict:
    """Params for `decode_step`: per-layer dicts (a list) and the rest, all in `cfg.dtype`. Traceable."""
    dt = jnp.dtype(cfg.dtype)
    cast = lambda tree: jax.tree.map(lambda x: x.astype(dt), tree)
    out = {k: cast(v) for k, v in params.items() if k != "layers"}
    out["layers"] = [jax.tree.map(lambda x, i=i: x[i].astype(dt), params["layers"]) for i in range(cfg.num_layers)]
    return out


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype, sharder=None) -> list[dict]:
    """Zeroed per-layer caches `[{"k": [b, k, s, e], "v": ...}] * l` (traceable)."""
    shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
    zeros = lambda: shd.constrain(sharder, jnp.zeros(shape, dtype), CACHE_AXES)
    return [{"k": zeros(), "v": zeros()} for _ in range(cfg.num_layers)]


def fill_prefix(cache: list[dict], stacked_lbpke: dict, n: int, sharder=None) -> list[dict]:
    """Writes a prefill cache (`transformer` layout `[l, m, p, k, e]`) into slots `[0, p)`, `n` rows per prompt."""
    out = []
    for layer, c in enumerate(cache):
        new = {}
        for name in ("k", "v"):
            prefix_mkpe = jnp.swapaxes(stacked_lbpke[name][layer], 1, 2).astype(c[name].dtype)
            new[name] = shd.constrain(
                sharder, jax.lax.dynamic_update_slice(c[name], jnp.repeat(prefix_mkpe, n, axis=0), (0, 0, 0, 0)),
                CACHE_AXES)
        out.append(new)
    return out


def decode_step(dparams, cfg: ModelConfig, tokens_b, positions_b, kv_mask_bs, cache, slot, *, sharder=None):
    """Feeds one token per row, writes its keys/values at `slot`, returns the next-token logits.

    Args:
      dparams: `unstack_params(params, cfg)`.
      cfg: model config (static).
      tokens_b: int token ids `[b]`; positions_b: their RoPE positions `[b]`.
      kv_mask_bs: key-slot validity `[b, s]` (prompt padding mask, then ones).
      cache: per-layer `[{"k", "v"}]`, each `[b, k, s, e]`; updated in place.
      slot: cache slot of `tokens_b` (traced int32 scalar); the query attends to slots `<= slot`.
      sharder: optional logical-axis sharder.

    Returns:
      `(logits_bv float32, cache)`.
    """
    dt = jnp.dtype(cfg.dtype)
    h_b1d = jnp.take(dparams["embed_tokens"]["embedding"], tokens_b[:, None], axis=0).astype(dt)
    mask_bs = (jnp.arange(kv_mask_bs.shape[1]) <= slot)[None, :] & kv_mask_bs.astype(bool)
    new_cache = []
    for lp, layer_cache in zip(dparams["layers"], cache):
        h_b1d, layer_cache = _layer(cfg, sharder, h_b1d, lp, positions_b[:, None], mask_bs, layer_cache, slot)
        new_cache.append(layer_cache)
    h_b1d = tfm.rms_norm(h_b1d, dparams["norm"]["scale"], cfg.rms_norm_eps)
    return tfm.logits_from_hidden(dparams, cfg, h_b1d[:, 0]), new_cache


def _proj(x, p: dict, dt):
    # Same formula as transformer._dense (private there).
    y = jnp.einsum("...i,io->...o", x, p["kernel"].astype(dt))
    return y + p["bias"].astype(dt) if "bias" in p else y


def _layer(cfg, sharder, h_b1d, lp, positions_b1, mask_bs, layer_cache, slot):
    """One decoder block for one new token; `layer_cache` holds `[b, k, s, e]` keys and values."""
    dt = jnp.dtype(cfg.dtype)
    b = h_b1d.shape[0]
    attn_p = lp["self_attn"]
    x = tfm.rms_norm(h_b1d, lp["input_layernorm"]["scale"], cfg.rms_norm_eps)
    q = _proj(x, attn_p["q_proj"], dt).reshape(b, 1, cfg.num_heads, cfg.head_dim)
    k = _proj(x, attn_p["k_proj"], dt).reshape(b, 1, cfg.num_kv_heads, cfg.head_dim)
    v = _proj(x, attn_p["v_proj"], dt).reshape(b, 1, cfg.num_kv_heads, cfg.head_dim)
    inv_freq = tfm.rope_inv_freq(cfg)
    q, k = tfm.apply_rope(q, positions_b1, inv_freq), tfm.apply_rope(k, positions_b1, inv_freq)
    new = {}
    for name, x_b1ke in (("k", k), ("v", v)):
        c = layer_cache[name]
        c = jax.lax.dynamic_update_slice(c, jnp.swapaxes(x_b1ke, 1, 2).astype(c.dtype), (0, 0, slot, 0))
        new[name] = shd.constrain(sharder, c, CACHE_AXES)
    attn = _attend(q, new["k"].astype(dt), new["v"].astype(dt), mask_bs)
    h_b1d = h_b1d + _proj(attn, attn_p["o_proj"], dt)
    x = tfm.rms_norm(h_b1d, lp["post_attention_layernorm"]["scale"], cfg.rms_norm_eps)
    mlp = lp["mlp"]
    gated = jax.nn.silu(_proj(x, mlp["gate_proj"], dt)) * _proj(x, mlp["up_proj"], dt)
    gated = shd.constrain(sharder, gated, (L.ACT_BATCH, L.ACT_LENGTH, L.ACT_MLP))
    h_b1d = h_b1d + _proj(gated, mlp["down_proj"], dt)
    return shd.constrain(sharder, h_b1d, (L.ACT_BATCH, L.ACT_LENGTH, L.ACT_EMBED)), new


def _attend(q_b1he, k_bkse, v_bkse, mask_bs):
    """GQA for one query per row (query head `h` reads kv head `h // g`, HF's repeat_kv order)."""
    b, _, h, e = q_b1he.shape
    kv = k_bkse.shape[1]
    q_bkge = q_b1he.reshape(b, kv, h // kv, e)
    scores = jnp.einsum("bkge,bkse->bkgs", q_bkge, k_bkse, preferred_element_type=jnp.float32) * (e**-0.5)
    scores = jnp.where(mask_bs[:, None, None, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bkse.dtype)
    return jnp.einsum("bkgs,bkse->bkge", probs, v_bkse).reshape(b, 1, h * e)
