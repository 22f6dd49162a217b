"""Qwen2 / Qwen3 / Llama-3 decoder as pure functions of a params pytree.

Params mirror HF names (`layers/self_attn/q_proj/kernel`) so loading is a table; per-layer params are
stacked along a leading `layers` axis and the stack is run with `lax.scan`, so compile time does not
grow with depth. Kernels are stored `[in, out]` (transposed from torch's `[out, in]`).

One function, `decoder_stack`, serves training (no cache), the reference model and sampling (with a KV cache).
Attention masks are built from *slots* (index in the padded sequence) and a key-validity mask; RoPE
uses separate *positions* (`cumsum(mask) - 1`), so left-padded prompts behave like unpadded ones.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import sharding as shd
from rlvr_jax.models.config import ModelConfig

L = shd  # short alias for logical axis names below

# Finite "minus infinity": fully masked rows (left-pad queries) stay NaN-free; they are discarded.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def param_shapes(cfg: ModelConfig) -> dict:
    """Shapes of every parameter, as a pytree of tuples."""
    d, f, l = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    qd, kd = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    attn = {
        "q_proj": {"kernel": (l, d, qd)},
        "k_proj": {"kernel": (l, d, kd)},
        "v_proj": {"kernel": (l, d, kd)},
        "o_proj": {"kernel": (l, qd, d)},
    }
    if cfg.attention_bias:
        attn["q_proj"]["bias"] = (l, qd)
        attn["k_proj"]["bias"] = (l, kd)
        attn["v_proj"]["bias"] = (l, kd)
    if cfg.qk_norm:  # Qwen3: one scale per head_dim channel, shared by all heads of a layer.
        attn["q_norm"] = {"scale": (l, cfg.head_dim)}
        attn["k_norm"] = {"scale": (l, cfg.head_dim)}
    shapes = {
        "embed_tokens": {"embedding": (cfg.vocab_size, d)},
        "layers": {
            "input_layernorm": {"scale": (l, d)},
            "self_attn": attn,
            "post_attention_layernorm": {"scale": (l, d)},
            "mlp": {
                "gate_proj": {"kernel": (l, d, f)},
                "up_proj": {"kernel": (l, d, f)},
                "down_proj": {"kernel": (l, f, d)},
            },
        },
        "norm": {"scale": (d,)},
    }
    if not cfg.tie_word_embeddings:
        shapes["lm_head"] = {"kernel": (d, cfg.vocab_size)}
    return shapes


def param_logical_axes(cfg: ModelConfig) -> dict:
    """Logical axis names of every parameter (same tree as `param_shapes`)."""
    proj_in = {"kernel": (L.LAYERS, L.EMBED, L.HEADS), "bias": (L.LAYERS, L.HEADS)}
    kv_in = {"kernel": (L.LAYERS, L.EMBED, L.KV_HEADS), "bias": (L.LAYERS, L.KV_HEADS)}
    axes = {
        "embed_tokens": {"embedding": (L.VOCAB, L.EMBED)},
        "layers": {
            "input_layernorm": {"scale": (L.LAYERS, L.NORM)},
            "self_attn": {
                "q_proj": dict(proj_in),
                "k_proj": dict(kv_in),
                "v_proj": dict(kv_in),
                "o_proj": {"kernel": (L.LAYERS, L.HEADS, L.EMBED)},
                "q_norm": {"scale": (L.LAYERS, L.NORM)},
                "k_norm": {"scale": (L.LAYERS, L.NORM)},
            },
            "post_attention_layernorm": {"scale": (L.LAYERS, L.NORM)},
            "mlp": {
                "gate_proj": {"kernel": (L.LAYERS, L.EMBED, L.MLP)},
                "up_proj": {"kernel": (L.LAYERS, L.EMBED, L.MLP)},
                "down_proj": {"kernel": (L.LAYERS, L.MLP, L.EMBED)},
            },
        },
        "norm": {"scale": (L.NORM,)},
        "lm_head": {"kernel": (L.EMBED, L.VOCAB)},
    }
    # Keep only the entries that exist for this config (biases, lm_head).
    return _prune_like(axes, param_shapes(cfg))


def init_params(cfg: ModelConfig, rng: jax.Array, std: float = 0.02) -> dict:
    """Random params (normal(0, std) matrices, unit norm scales, zero biases) in `cfg.param_dtype`."""
    shapes = param_shapes(cfg)
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=_is_shape)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)[0]]
    keys = jax.random.split(rng, len(leaves))
    out = []
    for path, shape, key in zip(paths, leaves, keys):
        if "scale" in path:
            out.append(jnp.ones(shape, cfg.param_dtype))
        elif "bias" in path:
            out.append(jnp.zeros(shape, cfg.param_dtype))
        else:
            out.append((std * jax.random.normal(key, shape, jnp.float32)).astype(cfg.param_dtype))
    return jax.tree.unflatten(treedef, out)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
    """A zeroed KV cache: `{"k": [l, b, s, k, e], "v": [l, b, s, k, e]}` in the compute dtype."""
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    dtype = dtype or cfg.dtype
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


CACHE_LOGICAL_AXES = (L.LAYERS, L.ACT_BATCH, L.CACHE_LENGTH, L.ACT_KV_HEADS, None)


def positions_from_mask(mask_bt: jax.Array) -> jax.Array:
    """RoPE positions of a left-padded batch: `cumsum(mask) - 1`, clipped at 0."""
    return jnp.maximum(jnp.cumsum(mask_bt.astype(jnp.int32), axis=-1) - 1, 0)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse RoPE frequencies `[e/2]`, with Llama-3 frequency-dependent scaling when configured."""
    e = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, e, 2, dtype=np.float64) / e))
    rs = cfg.rope_scaling
    if rs is None:
        return inv_freq.astype(np.float32)
    # Llama 3: long wavelengths are divided by `factor`, short ones kept, a smooth ramp in between.
    low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
    wavelen = 2 * np.pi / inv_freq
    smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
        rs.high_freq_factor - rs.low_freq_factor
    )
    mid = (1 - smooth) * inv_freq / rs.factor + smooth * inv_freq
    out = np.where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq)
    out = np.where((wavelen >= high_wavelen) & (wavelen <= low_wavelen), mid, out)
    return out.astype(np.float32)


def apply_rope(x_btne: jax.Array, positions_bt: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates the two halves of each head (HF's `rotate_half` convention), in float32."""
    angles = positions_bt[..., None].astype(jnp.float32) * inv_freq  # [b, t, e/2]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    x = x_btne.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_btne.dtype)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, scale_dtype=None) -> jax.Array:
    """RMSNorm in float32, returned in `x.dtype`; the scale is first rounded to `scale_dtype` (callers pass
    the compute dtype: every parameter is used as the sampler's cast copy holds it)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return normed.astype(x.dtype) * scale.astype(scale_dtype or x.dtype).astype(x.dtype)


def dense(x: jax.Array, p: dict, dtype, out_dtype) -> jax.Array:
    """`x @ kernel (+ bias)`: inputs and params in `dtype`, accumulated in float32, returned in `out_dtype`."""
    y = jnp.einsum("...i,io->...o", x.astype(dtype), p["kernel"].astype(dtype), preferred_element_type=jnp.float32)
    y = y.astype(out_dtype)
    return y + p["bias"].astype(dtype).astype(out_dtype) if "bias" in p else y


def embed(table: jax.Array, tokens: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Embedding rows, rounded to the compute dtype and carried in the residual dtype."""
    return jnp.take(table, tokens, axis=0).astype(cfg.dtype).astype(cfg.residual_dtype)


def attention(q_bthe, k_bske, v_bske, mask_bts, cfg: ModelConfig) -> jax.Array:
    """Grouped-query attention; query head `h` reads kv head `h // g` (HF's repeat_kv order).

    "cudnn": `jax.nn.dot_product_attention` takes q `[b, t, h, e]` and k/v `[b, s, k, e]` with
    `h % k == 0` (GQA natively, no repeat) and a boolean mask broadcastable to `[b, h, t, s]`,
    True = attend; `mask_bts[:, None]` is `[b, 1, t, s]`. It needs bf16/fp16 inputs and head_dim
    a multiple of 8 (<= 256 on Hopper). Query rows that see no key at all (left padding) are set
    to exactly 0: the kernel gives them garbage (possibly NaN), and `0 * NaN` in a masked loss
    would poison the gradient.
    """
    b, t, h, e = q_bthe.shape
    if cfg.attention_impl == "cudnn":
        out = jax.nn.dot_product_attention(
            q_bthe, k_bske, v_bske, mask=mask_bts[:, None], implementation="cudnn"
        )
        out = jnp.where(mask_bts.any(axis=-1)[:, :, None, None], out, jnp.zeros((), out.dtype))
        return out.reshape(b, t, h * e)
    k = cfg.num_kv_heads
    q = q_bthe.reshape(b, t, k, h // k, e)
    scores = jnp.einsum("btkge,bske->bkgts", q, k_bske, preferred_element_type=jnp.float32)
    scores = scores * (e**-0.5)
    scores = jnp.where(mask_bts[:, None, None], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bske.dtype)
    out = jnp.einsum("bkgts,bske->btkge", probs, v_bske, preferred_element_type=jnp.float32).astype(v_bske.dtype)
    return out.reshape(b, t, h * e)


def _layer(cfg: ModelConfig, sharder, h_btd, lp, positions_bt, mask_bts, kv_l, cache_index):
    """One decoder block. `kv_l` is this layer's (k, v) cache `[b, s, k, e]` or None.

    `h_btd` (the residual stream) and every matmul's output are in `cfg.residual_dtype`; what enters a
    matmul or the attention (q, k, v after RoPE) is in `cfg.dtype`.
    """
    dt, rt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.residual_dtype)
    b, t, _ = h_btd.shape
    attn_p = lp["self_attn"]
    x = rms_norm(h_btd, lp["input_layernorm"]["scale"], cfg.rms_norm_eps, dt)
    q = dense(x, attn_p["q_proj"], dt, rt).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = dense(x, attn_p["k_proj"], dt, rt).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = dense(x, attn_p["v_proj"], dt, rt).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:  # Qwen3 normalises each head before RoPE (so the cache holds normed keys).
        q = rms_norm(q, attn_p["q_norm"]["scale"], cfg.rms_norm_eps, dt)
        k = rms_norm(k, attn_p["k_norm"]["scale"], cfg.rms_norm_eps, dt)
    inv_freq = rope_inv_freq(cfg)
    q, k = apply_rope(q, positions_bt, inv_freq), apply_rope(k, positions_bt, inv_freq)
    q, k, v = q.astype(dt), k.astype(dt), v.astype(dt)
    new_kv = None
    if kv_l is not None:
        k_cache, v_cache = kv_l
        k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, cache_index, 0, 0))
        v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, cache_index, 0, 0))
        new_kv = (k_cache, v_cache)
        k, v = k_cache.astype(dt), v_cache.astype(dt)
    q = shd.constrain(sharder, q, (L.ACT_BATCH, L.ACT_LENGTH, L.ACT_HEADS, None))
    attn = attention(q, k, v, mask_bts, cfg)
    h_btd = h_btd + dense(attn, attn_p["o_proj"], dt, rt)
    x = rms_norm(h_btd, lp["post_attention_layernorm"]["scale"], cfg.rms_norm_eps, dt)
    mlp = lp["mlp"]
    gated = jax.nn.silu(dense(x, mlp["gate_proj"], dt, rt)) * dense(x, mlp["up_proj"], dt, rt)
    gated = shd.constrain(sharder, gated, (L.ACT_BATCH, L.ACT_LENGTH, L.ACT_MLP))
    h_btd = h_btd + dense(gated, mlp["down_proj"], dt, rt)
    h_btd = shd.constrain(sharder, h_btd, (L.ACT_BATCH, L.ACT_LENGTH, L.ACT_EMBED))
    return h_btd, new_kv


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def decoder_stack(
    params: dict,
    cfg: ModelConfig,
    tokens_bt: jax.Array,
    positions_bt: jax.Array,
    kv_mask_bs: jax.Array,
    *,
    cache: dict | None = None,
    cache_index: jax.Array | int = 0,
    sharder: shd.Sharder | None = None,
    attention_mask_bts: jax.Array | None = None,
) -> tuple[jax.Array, dict | None]:
    """Runs the decoder stack; returns final-normed hidden states and the updated cache.

    Args:
      params: the params pytree (see `param_shapes`).
      cfg: model config (static).
      tokens_bt: token ids `[b, t]`.
      positions_bt: RoPE positions `[b, t]`.
      kv_mask_bs: which key slots are real tokens. Without a cache `s == t` (the attention mask);
        with a cache `s` is the cache length (prompt padding mask, ones after it).
      cache: optional `init_cache` pytree; the `t` new keys/values are written at `cache_index`.
      cache_index: slot of the first token of `tokens_bt` in the cache.
      sharder: optional logical-axis sharder for activation constraints.
      attention_mask_bts: optional `[b, t, s]` bool mask replacing the slot-causal one built from
        `kv_mask_bs` (packed rows: `segment_attention_mask`).

    Returns:
      `(h_btd, new_cache)`: hidden states after the final norm (compute dtype) and the cache (or None).
    """
    dt = jnp.dtype(cfg.dtype)
    b, t = tokens_bt.shape
    # Gather the FSDP-split embed dim first: a lookup into a table split along d cannot give
    # batch-split rows, and XLA would fall back to replicating the activations.
    table = shd.constrain(sharder, params["embed_tokens"]["embedding"], (L.VOCAB, None))
    h = embed(table, tokens_bt, cfg)
    h = shd.constrain(sharder, h, (L.ACT_BATCH, L.ACT_LENGTH, L.ACT_EMBED))
    q_slots = cache_index + jnp.arange(t)
    k_slots = jnp.arange(kv_mask_bs.shape[1])
    mask_bts = (k_slots[None, None, :] <= q_slots[None, :, None]) & kv_mask_bs[:, None, :].astype(bool)
    if attention_mask_bts is not None:
        mask_bts = attention_mask_bts

    def body(h, xs):
        lp, kv_l = xs
        return _layer(cfg, sharder, h, lp, positions_bt, mask_bts, kv_l, cache_index)

    if cfg.remat != "none":
        body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
    kv = None if cache is None else (cache["k"], cache["v"])
    h, new_kv = jax.lax.scan(body, h, (params["layers"], kv))
    h = rms_norm(h, params["norm"]["scale"], cfg.rms_norm_eps, dt).astype(dt)
    new_cache = None if cache is None else {"k": new_kv[0], "v": new_kv[1]}
    return h, new_cache


def segment_attention_mask(segment_ids_bt: jax.Array, parent_ids_bt: jax.Array | None = None) -> jax.Array:
    """Block-diagonal causal mask of packed rows: `[b, t, s]`, True where key `s <= t` is in query `t`'s segment.

    Segment id 0 marks row padding: it attends nowhere and nothing attends to it. With `parent_ids_bt`
    a query also sees the keys of its parent segment (0: none): responses that share one copy of their
    prompt (`training.packing`, `share_prompts`) each see the prompt and themselves, not each other.
    This dense mask is the XLA path (cost `t^2` per row). Kernels that take segment ids directly (TPU
    splash attention's `SegmentIds`, varlen flash attention on GPU) plug in at `decoder_stack_packed`,
    which holds the ids (a shared prompt then needs the kernel's custom-mask form).
    """
    seg = segment_ids_bt.astype(jnp.int32)
    t = seg.shape[1]
    causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]  # [t, s]
    same = seg[:, :, None] == seg[:, None, :]
    if parent_ids_bt is not None:
        same = same | (parent_ids_bt.astype(jnp.int32)[:, :, None] == seg[:, None, :])
    return same & (seg[:, None, :] > 0) & causal[None]


def decoder_stack_packed(
    params: dict, cfg: ModelConfig, tokens_bt, positions_bt, segment_ids_bt, *, parent_ids_bt=None, sharder=None
) -> jax.Array:
    """Final-normed hidden states `[b, t, d]` of packed rows (several sequences per row, no cache).

    Args:
      tokens_bt: `[b, t]` token ids, sequences laid end to end. positions_bt: `[b, t]` RoPE position
        of each token within its own sequence. segment_ids_bt: `[b, t]` 1, 2, ... per sequence, 0 = padding.
      parent_ids_bt: optional `[b, t]` segment each token may also attend to (`segment_attention_mask`).
    """
    mask_bts = segment_attention_mask(segment_ids_bt, parent_ids_bt)
    h, _ = decoder_stack(params, cfg, tokens_bt, positions_bt, segment_ids_bt > 0, sharder=sharder,
                         attention_mask_bts=mask_bts)
    return h


def lm_head(params: dict, cfg: ModelConfig) -> tuple[jax.Array, str]:
    """`(weight, spec)`: the output projection as stored and its einsum operand spec.

    A tied model projects with its `[v, d]` embedding ("vd"), an untied one with its `[d, v]` kernel
    ("dv"). Matmuls read either in place; given `embedding.T`, XLA's CPU backend materialised a
    transposed copy of the whole table per use (chunked logits fwd+bwd: 2.5 s with it, 1.6 s without).
    """
    if cfg.tie_word_embeddings:
        return params["embed_tokens"]["embedding"], "vd"
    return params["lm_head"]["kernel"], "dv"


def lm_head_kernel(params: dict, cfg: ModelConfig) -> jax.Array:
    """The `[d, v]` output projection (the transposed embedding when tied); matmuls use `lm_head`."""
    w, spec = lm_head(params, cfg)
    return w.T if spec == "vd" else w


def logits_from_hidden(params: dict, cfg: ModelConfig, h_btd: jax.Array) -> jax.Array:
    """Float32 logits `[..., v]` from final hidden states (matmul in compute dtype, f32 accumulate)."""
    w, spec = lm_head(params, cfg)
    return jnp.einsum(f"...d,{spec}->...v", h_btd, w.astype(h_btd.dtype), preferred_element_type=jnp.float32)


@functools.partial(jax.jit, static_argnames=("cfg", "sharder"))
def _forward(params, cfg, input_ids, attention_mask, sharder=None):
    h, _ = decoder_stack(params, cfg, input_ids, positions_from_mask(attention_mask), attention_mask, sharder=sharder)
    return logits_from_hidden(params, cfg, h)


def forward(params: dict, cfg: ModelConfig, input_ids, attention_mask=None, *, sharder=None) -> jax.Array:
    """Full-sequence logits, float32 `[b, t, v]`.

    Args:
      params: params pytree. cfg: its ModelConfig.
      input_ids: int `[b, t]` (numpy or jax), left padding allowed.
      attention_mask: 0/1 `[b, t]`; all ones when omitted. Positions are `cumsum(mask) - 1`.
      sharder: optional `Sharder` for activation sharding constraints.
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    return _forward(params, cfg, input_ids, jnp.asarray(attention_mask, jnp.int32), sharder)


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def _prune_like(tree: dict, like: dict) -> dict:
    return {k: (_prune_like(tree[k], v) if isinstance(v, dict) else tree[k]) for k, v in like.items()}
