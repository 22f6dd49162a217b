"""The sampler's decode step: one new token per slot, layers unrolled, per-slot cache positions.

`transformer.decoder_stack` is built for training: layers run in a `lax.scan` over stacked params, with the
per-layer caches as scan inputs and outputs. In a token-by-token loop that layout costs memory traffic
that a decode step cannot afford (seen in the optimised HLO on CPU):
  * each layer's weights are `dynamic-slice`d out of the stack into a temporary before the matmul
    (read, write, read again: ~3x the weight bytes per token);
  * the whole cache is rewritten every step (scan outputs), and the `[b, s, k, e]` cache is
    transposed to `[b, k, s, e]` for the attention matmuls, another full copy per step.

So this path uses its own layouts:
  * params: `unstack_params` gives a list of per-layer dicts in the compute dtype (one copy of the
    weights per `generate` call; the matmuls then read each weight exactly once per token). On a CPU
    device with no cast, `engine.decode_params` makes those per-layer arrays views of the stacked ones;
  * cache: a list of per-layer `{"k": [b, k, e, w], "v": [b, k, w, e]}` (kv-head-major; keys stored
    transposed, so both attention products are plain row-major ones, `[g, e] x [e, w]` then `[g, w] x
    [w, e]`, with no transposed operand: 1.1-2x faster attention on a CPU at 16-64 slots,
    `bench/decode_dots.py --attention`). Slot `b` holds one sample left-aligned: its prompt in
    `[0, len)`, then its tokens; `fill_b` is the next free position, which is also the RoPE position of the token
    fed there (no padding inside a row). `w` is the *window*: the engine sizes the cache buffer to
    a bucket of the longest live row, so attention reads only what can hold data.
The new token's keys/values are scattered at `(b, fill_b)`, in place on the loop-carried buffer.

The arithmetic is `transformer._layer`'s (same public building blocks, dtypes and masking: matmul inputs
in `cfg.dtype`, their outputs and the residual stream in `cfg.residual_dtype`); the tests check tokens and
log-probs against `forward` and greedy tokens against transformers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import sharding as shd
from rlvr_jax.models import transformer as tfm
from rlvr_jax.models.config import ModelConfig

L = shd
# Logical axes of one layer's cache in this module's layout (slots over the batch axes): keys `[b, k, e, w]`,
# values `[b, k, w, e]`. WINDOW_AXIS: where each one's window (`w`) axis is.
CACHE_AXES = {"k": (L.ACT_BATCH, L.ACT_KV_HEADS, None, L.CACHE_LENGTH),
              "v": (L.ACT_BATCH, L.ACT_KV_HEADS, L.CACHE_LENGTH, None)}
WINDOW_AXIS = {"k": 3, "v": 2}
# Same finite "minus infinity" as transformer.py: masked scores underflow to exactly 0 after softmax.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def unstack_params(params: dict, cfg: ModelConfig) -> dict:
    """Params for `decode_step`: per-layer dicts (a list) and the rest, all in `cfg.dtype`. Traceable."""
    dt = jnp.dtype(cfg.dtype)
    cast = lambda tree: jax.tree.map(lambda x: x.astype(dt), tree)
    out = {k: cast(v) for k, v in params.items() if k != "layers"}
    out["layers"] = [jax.tree.map(lambda x, i=i: x[i].astype(dt), params["layers"]) for i in range(cfg.num_layers)]
    return out


def init_cache(cfg: ModelConfig, slots: int, window: int, dtype, sharder=None) -> list[dict]:
    """Zeroed per-layer caches `[{"k": [b, k, e, w], "v": [b, k, w, e]}] * l` (traceable)."""
    kv, e = cfg.num_kv_heads, cfg.head_dim
    shapes = {"k": (slots, kv, e, window), "v": (slots, kv, window, e)}
    zeros = lambda name: shd.constrain(sharder, jnp.zeros(shapes[name], dtype), CACHE_AXES[name])
    return [{"k": zeros("k"), "v": zeros("v")} for _ in range(cfg.num_layers)]


def window(cache: list[dict]) -> int:
    """The cache's window `w` (positions each slot can hold)."""
    return cache[0]["v"].shape[WINDOW_AXIS["v"]]


def decode_step(dparams, cfg: ModelConfig, tokens_b, fill_b, cache, *, sharder=None):
    """Feeds one token per slot at position `fill_b`, returns the next-token logits.

    Args:
      dparams: `unstack_params(params, cfg)`.
      cfg: model config (static).
      tokens_b: int32 token ids `[b]`.
      fill_b: int32 `[b]`, each slot's filled length: the token goes to cache position `fill_b`
        (clipped to the window: finished slots keep computing until refilled, harmlessly) and
        attends to positions `<= fill_b`.
      cache: per-layer `[{"k": [b, k, e, w], "v": [b, k, w, e]}]`; updated in place.
      sharder: optional logical-axis sharder.

    Returns:
      `(logits_bv float32, cache)`.
    """
    dt = jnp.dtype(cfg.dtype)
    w = window(cache)
    write_b = jnp.minimum(fill_b, w - 1)
    h_b1d = tfm.embed(dparams["embed_tokens"]["embedding"], tokens_b[:, None], cfg)
    mask_bw = jnp.arange(w)[None, :] <= write_b[:, None]
    new_cache = []
    for lp, layer_cache in zip(dparams["layers"], cache):
        h_b1d, layer_cache = _layer(cfg, sharder, h_b1d, lp, write_b, mask_bw, layer_cache)
        new_cache.append(layer_cache)
    h_b1d = tfm.rms_norm(h_b1d, dparams["norm"]["scale"], cfg.rms_norm_eps, dt).astype(dt)
    return tfm.logits_from_hidden(dparams, cfg, h_b1d[:, 0]), new_cache


def _layer(cfg, sharder, h_b1d, lp, write_b, mask_bw, layer_cache):
    """One decoder block for one new token per slot; `layer_cache` holds `[b, k, e, w]` keys, `[b, k, w, e]` values."""
    dt, rt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.residual_dtype)
    b = h_b1d.shape[0]
    attn_p = lp["self_attn"]
    x = tfm.rms_norm(h_b1d, lp["input_layernorm"]["scale"], cfg.rms_norm_eps, dt)
    q = tfm.dense(x, attn_p["q_proj"], dt, rt).reshape(b, 1, cfg.num_heads, cfg.head_dim)
    k = tfm.dense(x, attn_p["k_proj"], dt, rt).reshape(b, 1, cfg.num_kv_heads, cfg.head_dim)
    v = tfm.dense(x, attn_p["v_proj"], dt, rt).reshape(b, 1, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:  # Qwen3: per-head RMSNorm before RoPE, as in `transformer._layer`.
        q = tfm.rms_norm(q, attn_p["q_norm"]["scale"], cfg.rms_norm_eps, dt)
        k = tfm.rms_norm(k, attn_p["k_norm"]["scale"], cfg.rms_norm_eps, dt)
    inv_freq = tfm.rope_inv_freq(cfg)
    q, k = tfm.apply_rope(q, write_b[:, None], inv_freq), tfm.apply_rope(k, write_b[:, None], inv_freq)
    q, k, v = q.astype(dt), k.astype(dt), v.astype(dt)
    rows = jnp.arange(b)
    new = {}
    for name, x_b1ke in (("k", k), ("v", v)):
        c = layer_cache[name]
        # Advanced indices on the slot and window axes (slices between): the update is `[b, k, e]` either way.
        at = c.at[rows, :, :, write_b] if name == "k" else c.at[rows, :, write_b, :]
        c = at.set(x_b1ke[:, 0].astype(c.dtype), unique_indices=True)
        new[name] = shd.constrain(sharder, c, CACHE_AXES[name])
    attn = _attend(q, new["k"].astype(dt), new["v"].astype(dt), mask_bw)
    h_b1d = h_b1d + tfm.dense(attn, attn_p["o_proj"], dt, rt)
    x = tfm.rms_norm(h_b1d, lp["post_attention_layernorm"]["scale"], cfg.rms_norm_eps, dt)
    mlp = lp["mlp"]
    gated = jax.nn.silu(tfm.dense(x, mlp["gate_proj"], dt, rt)) * tfm.dense(x, mlp["up_proj"], dt, rt)
    gated = shd.constrain(sharder, gated, (L.ACT_BATCH, L.ACT_LENGTH, L.ACT_MLP))
    h_b1d = h_b1d + tfm.dense(gated, mlp["down_proj"], dt, rt)
    return shd.constrain(sharder, h_b1d, (L.ACT_BATCH, L.ACT_LENGTH, L.ACT_EMBED)), new


def _attend(q_b1he, k_bkew, v_bkwe, mask_bw):
    """GQA for one query per slot (query head `h` reads kv head `h // g`, HF's repeat_kv order)."""
    b, _, h, e = q_b1he.shape
    kv = k_bkew.shape[1]
    q_bkge = q_b1he.reshape(b, kv, h // kv, e)
    scores = jnp.einsum("bkge,bkew->bkgw", q_bkge, k_bkew, preferred_element_type=jnp.float32) * (e**-0.5)
    scores = jnp.where(mask_bw[:, None, None, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bkwe.dtype)
    out = jnp.einsum("bkgw,bkwe->bkge", probs, v_bkwe, preferred_element_type=jnp.float32).astype(v_bkwe.dtype)
    return out.reshape(b, 1, h * e)
