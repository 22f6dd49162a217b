"""Per-token log-probs and entropy of response tokens, chunked so [tokens x vocab] never lives whole.

Layout of a batch (the same for rollout, reference, old-policy and update calls):

  input_ids      [b, P+R] int   prompt left-padded to P, then the response right-padded to R
  attention_mask [b, P+R] 0/1   which slots are real tokens (the model's mask)
  response_mask  [b, R]   0/1   which response tokens count in losses (may drop more than padding,
                                e.g. truncated responses); only its shape R is read here

The response token at slot `P + t` is predicted from the hidden state at slot `P + t - 1`, so
`logp[:, t] = log_softmax(logits(h[:, P + t - 1]) / temperature)[input_ids[:, P + t]]`.

Memory: logits exist only for one `[b_micro, chunk, v]` block at a time, in float32, and the block
is rematerialised in the backward pass (`jax.checkpoint` per chunk), so the update never stores
`[b, R, v]` either. For Qwen's v = 151,936 with b_micro = 8 and chunk = 512 a block is 2.5 GB.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from rlvr_jax import sharding as shd
from rlvr_jax.algorithms import entropy_from_logits
from rlvr_jax.models import transformer
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.training.rows import map_micro_batches

BATCH_KEYS = ("input_ids", "attention_mask", "response_mask")


def response_hidden(params, cfg: ModelConfig, input_ids_bt, attention_mask_bt, response_len: int, *, sharder=None):
    """Final-normed hidden states that predict each response token.

    Args:
      params: model params. cfg: its config (static).
      input_ids_bt: `[b, P+R]` token ids. attention_mask_bt: `[b, P+R]` 0/1.
      response_len: R (static).
      sharder: optional activation sharding.

    Returns:
      `[b, R, d]` hidden states (compute dtype): slots `P-1 .. P+R-2`.
    """
    t = input_ids_bt.shape[1]
    prompt_len = t - response_len
    if prompt_len < 1:
        raise ValueError(f"need at least one prompt slot: sequence {t}, response {response_len}")
    mask = attention_mask_bt.astype(jnp.int32)
    positions = transformer.positions_from_mask(mask)
    h_btd, _ = transformer.decoder_stack(params, cfg, input_ids_bt.astype(jnp.int32), positions, mask, sharder=sharder)
    return h_btd[:, prompt_len - 1 : t - 1]


def logprobs_from_hidden(
    h_brd, w, targets_br, *, temperature: float, chunk: int, with_entropy: bool, sharder=None, w_spec: str = "dv"
):
    """Log-probs of `targets` (and entropy) under `softmax(h @ w / temperature)`, chunked over R.

    Args:
      h_brd: `[b, R, d]` hidden states. w: the output projection (compute dtype), `[d, v]` or, with
        `w_spec="vd"`, `[v, d]` (a tied embedding as stored: `transformer.lm_head`).
      targets_br: `[b, R]` int token ids.
      temperature: the rollout temperature (logits are divided by it in float32).
      chunk: at most this many response positions per logits block.
      with_entropy: also return per-token entropy of the tempered distribution.
      sharder: optional; shards each logits block along the vocabulary.

    Returns:
      `(logp_br, entropy_br)` float32; `entropy_br` is None unless `with_entropy`.
    """
    b, r, d = h_brd.shape
    n = max(1, math.ceil(r / max(1, chunk)))
    c = max(1, math.ceil(r / n))  # n blocks of <= chunk positions, as even as can be: R = 768, chunk 512 -> 2 x 384
    pad = n * c - r  # pad R to whole blocks; padded outputs are sliced off below
    h = jnp.pad(h_brd, ((0, 0), (0, pad), (0, 0))).reshape(b, n, c, d).swapaxes(0, 1)
    y = jnp.pad(targets_br.astype(jnp.int32), ((0, 0), (0, pad))).reshape(b, n, c).swapaxes(0, 1)
    inv_temp = 1.0 / temperature

    # Remat: the backward pass recomputes one block's logits instead of storing all of them.
    @functools.partial(jax.checkpoint, prevent_cse=False)
    def block(h_bcd, y_bc):
        logits = jnp.einsum(f"bcd,{w_spec}->bcv", h_bcd, w, preferred_element_type=jnp.float32) * inv_temp
        logits = shd.constrain(sharder, logits, (shd.ACT_BATCH, shd.ACT_LENGTH, shd.ACT_VOCAB))
        lse = jax.nn.logsumexp(logits, axis=-1)
        # A masked sum instead of a gather: stays local when the vocabulary is sharded.
        vocab_ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2)
        target_logit = jnp.sum(jnp.where(vocab_ids == y_bc[..., None], logits, 0.0), axis=-1)
        ent = entropy_from_logits(logits) if with_entropy else None
        return target_logit - lse, ent

    def body(carry, xs):
        return carry, block(*xs)

    _, (logp_nbc, ent_nbc) = jax.lax.scan(body, None, (h, y))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(b, n * c)[:, :r]  # noqa: E731
    return unchunk(logp_nbc), (unchunk(ent_nbc) if with_entropy else None)


def response_logprobs(
    params, cfg: ModelConfig, input_ids_bt, attention_mask_bt, response_len: int, *,
    temperature: float, chunk: int, with_entropy: bool, sharder=None,
):
    """Differentiable per-token log-probs (and entropy) of the response tokens of one micro-batch.

    Args:
      params, cfg: the model. input_ids_bt, attention_mask_bt: `[b, P+R]`.
      response_len: R (static). temperature, chunk, with_entropy, sharder: as `logprobs_from_hidden`.

    Returns:
      `(logp_br, entropy_br or None)`, float32 `[b, R]` (padding positions hold finite garbage).
    """
    h_brd = response_hidden(params, cfg, input_ids_bt, attention_mask_bt, response_len, sharder=sharder)
    w, w_spec = transformer.lm_head(params, cfg)
    targets_br = input_ids_bt[:, input_ids_bt.shape[1] - response_len :]
    return logprobs_from_hidden(h_brd, w.astype(h_brd.dtype), targets_br, temperature=temperature, chunk=chunk,
                                with_entropy=with_entropy, sharder=sharder, w_spec=w_spec)


def params_shardings(cfg: ModelConfig, sharder: shd.Sharder, logical_axes=None, shapes=None):
    """Shardings of a params pytree by logical axes (the model's, unless given)."""
    logical_axes = logical_axes or transformer.param_logical_axes(cfg)
    shapes = shapes or jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, cfg.param_dtype), transformer.param_shapes(cfg), is_leaf=_is_shape
    )
    return sharder.tree_shardings(logical_axes, shapes)


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


@functools.lru_cache(maxsize=64)
def _logprob_program(cfg, batch_size, temperature, micro_batch_size, chunk, with_entropy, sharder):
    """A jitted `(params, ids, attn, resp_mask) -> {"logp", ["entropy"]}` for one batch size."""

    def run(params, input_ids, attention_mask, response_mask):
        r = response_mask.shape[1]

        def micro(ids, attn):
            logp, ent = response_logprobs(
                params, cfg, ids, attn, r, temperature=temperature, chunk=chunk, with_entropy=with_entropy,
                sharder=sharder,
            )
            return {"logp": logp} if ent is None else {"logp": logp, "entropy": ent}

        out = map_micro_batches(micro, (input_ids, attention_mask), micro_batch_size, sharder)
        valid = response_mask > 0
        return {k: jnp.where(valid, v, 0.0) for k, v in out.items()}

    if sharder is None:
        return jax.jit(run)
    rows = sharder.sharding((shd.ACT_BATCH,), (batch_size,))  # a prefix spec: batch dim only
    return jax.jit(
        run, in_shardings=(params_shardings(cfg, sharder), rows, rows, rows), out_shardings=rows
    )


def compute_logprobs(
    params,
    cfg: ModelConfig,
    batch: dict,
    *,
    temperature: float = 1.0,
    micro_batch_size: int | None = None,
    chunk: int = 512,
    with_entropy: bool = False,
    sharder: shd.Sharder | None = None,
    max_tokens_per_micro_batch: int | None = None,
    share_prompts: bool = False,
) -> dict:
    """Per-token log-probs (and entropy) of the response tokens; no gradient. Policy or reference.

    Use the rollout temperature for old, reference and rollout log-probs alike, so the first
    update's importance ratio is exactly 1.

    Args:
      params: model params (laid out by `param_logical_axes(cfg)` rules when a sharder is given).
      cfg: model config.
      batch: dict with `input_ids [B, P+R]`, `attention_mask [B, P+R]`, `response_mask [B, R]`
        (other keys are ignored).
      temperature: logits are divided by it (float32).
      micro_batch_size: rows per forward pass (a sequential loop over micro-batches); None: all.
      chunk: response positions per logits block.
      with_entropy: also return per-token entropy.
      sharder: mesh + rules; batch rows are sharded along `ACT_BATCH`.
      max_tokens_per_micro_batch: when given, sequences are packed into rows of real tokens with
        micro-batches of this many tokens (`packing.compute_logprobs_packed`; `micro_batch_size` unused).
      share_prompts: packed rows hold one copy of each prompt for all its sequences (`packing.plan_packing`).

    Returns:
      `{"logp": [B, R] float32}` (+ `"entropy": [B, R]`), zero where `response_mask` is 0.
    """
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise KeyError(f"compute_logprobs: batch lacks {missing}; needs {list(BATCH_KEYS)}")
    if max_tokens_per_micro_batch:
        from rlvr_jax.training.packing import compute_logprobs_packed  # packing builds on this module

        return compute_logprobs_packed(
            params, cfg, batch, temperature=temperature, max_tokens_per_micro_batch=max_tokens_per_micro_batch,
            chunk=chunk, with_entropy=with_entropy, sharder=sharder, share_prompts=share_prompts,
        )
    b = batch["input_ids"].shape[0]
    fn = _logprob_program(cfg, b, float(temperature), micro_batch_size, int(chunk), bool(with_entropy), sharder)
    return fn(params, *(jnp.asarray(batch[k]) for k in BATCH_KEYS))
