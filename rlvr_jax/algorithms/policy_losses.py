"""Policy losses beyond PPO-clip: GSPO (sequence-level ratio) and CISPO (clipped IS-weight REINFORCE).

Both share the contract of ``losses.policy_loss`` (registered as ``"vanilla"``) and register
themselves in ``POLICY_LOSSES`` under the ``actor.policy_loss`` word:

  fn(logp, old_logp, advantages, mask, *, clip_low, clip_high, agg, is_weights=None, clip_c=None,
     max_len=None, denom=None) -> (loss, metrics)

``is_weights`` multiplies the per-token loss (no gradient), so truncated importance sampling
composes with every loss. ``clip_c`` (the dual clip) belongs to PPO-clip; these losses reject it.
Formulas and the papers' equations are in docs/algorithms.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlvr_jax.algorithms.losses import (
    _token_mean,
    aggregate,
    apply_is_weights,
    policy_inputs,
    ratio_metrics,
    register_policy_loss,
)

# exp() of a log-ratio beyond this overflows float32 gradients; PPO-clip uses the same bound.
_LOG_RATIO_BOUND = 20.0


def _no_dual_clip(name: str, clip_c) -> None:
    if clip_c is not None:
        raise ValueError(f"{name} has no dual clip; clip_c must be None, got {clip_c}")


@register_policy_loss("gspo")
def gspo_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    agg: str = "seq-mean-token-mean",
    is_weights=None,
    clip_c: float | None = None,
    max_len: int | None = None,
    denom=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GSPO-token (Zheng et al. 2025, arXiv 2507.18071, eqs. 5-7 and 11-13).

    ``s_i = exp(sum_t m_it (logp_it - old_it) / sum_t m_it)`` is the length-normalised sequence
    ratio; it is used token-wise as ``s_it = sg(s_i) exp(logp_it - sg(logp_it))`` (value ``s_i``,
    gradient ``s_i grad logp_it``), and the per-token loss is
    ``max(-A s_it, -A clip(s_it, 1 - clip_low, 1 + clip_high))``. With one advantage per sequence
    and ``seq-mean-token-mean`` this is exactly the gradient of GSPO's sequence objective
    ``mean_i max(-A_i s_i, -A_i clip(s_i, ...))``; the clip decision is per sequence.

    Args:
        logp: [B, T] current-policy log-probs (differentiated).
        old_logp: [B, T] rollout-policy log-probs.
        advantages: [B] or [B, T] advantages.
        mask: [B, T] 0/1 response mask.
        clip_low: lower clip of the sequence ratio (the paper: 3e-4).
        clip_high: upper clip of the sequence ratio (the paper: 4e-4).
        agg: aggregation mode; GSPO's objective is ``seq-mean-token-mean``.
        is_weights: [B, T] per-token importance weights or None.
        clip_c: must be None (PPO's dual clip does not apply).
        max_len: static max response length for ``seq-mean-token-sum-norm``.
        denom: global normaliser for micro-batch accumulation.

    Returns:
        (loss, metrics): ``clipfrac`` (token share of clipped sequences), ``clipfrac_lower`` (0),
        ``seq_ratio_mean`` (mean of s_i over non-empty sequences), and the token-ratio statistics
        of ``ratio_metrics``.
    """
    _no_dual_clip("gspo", clip_c)
    m_bt, valid_bt, adv_bt, logp_bt, log_ratio_bt = policy_inputs(logp, old_logp, advantages, mask)
    len_b = jnp.sum(m_bt, axis=-1)
    log_seq_b = jnp.sum(log_ratio_bt, axis=-1) / jnp.maximum(len_b, 1.0)
    log_seq_b = jnp.clip(jax.lax.stop_gradient(log_seq_b), -_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
    # Value s_i on every token of sequence i; the derivative w.r.t. logp_it is s_i (own token only).
    s_bt = jnp.exp(log_seq_b[:, None] + logp_bt - jax.lax.stop_gradient(logp_bt))
    unclipped_bt = -adv_bt * s_bt
    clipped_bt = -adv_bt * jnp.clip(s_bt, 1.0 - clip_low, 1.0 + clip_high)
    is_clipped_bt = clipped_bt > unclipped_bt
    loss_bt = jnp.where(is_clipped_bt, clipped_bt, unclipped_bt)
    loss_bt = apply_is_weights(loss_bt, is_weights, valid_bt)
    loss = aggregate(loss_bt, m_bt, agg, max_len, denom=denom)
    nonempty_b = (len_b > 0).astype(jnp.float32)
    seq_mean = jnp.sum(jnp.exp(log_seq_b) * nonempty_b) / jnp.maximum(jnp.sum(nonempty_b), 1.0)
    ratio_bt = jnp.exp(jnp.clip(log_ratio_bt, -_LOG_RATIO_BOUND, _LOG_RATIO_BOUND))
    metrics = {
        "clipfrac": _token_mean(is_clipped_bt, m_bt),
        "clipfrac_lower": jnp.zeros((), jnp.float32),
        "seq_ratio_mean": jax.lax.stop_gradient(seq_mean),
        **ratio_metrics(ratio_bt, log_ratio_bt, m_bt, valid_bt),
    }
    return loss, metrics


@register_policy_loss("cispo")
def cispo_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    agg: str = "token-mean",
    is_weights=None,
    clip_c: float | None = None,
    max_len: int | None = None,
    denom=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CISPO (MiniMax-M1, arXiv 2506.13585, eqs. 4-5): clip the IS weight, never drop a token.

    Per-token loss ``-sg(clip(r_t, 1 - clip_low, 1 + clip_high)) A_t logp_t`` with
    ``r_t = exp(logp_t - old_t)``: the clipped ratio is a constant weight, so every token keeps its
    REINFORCE gradient ``-clip(r_t) A_t grad logp_t`` (PPO-clip zeroes the gradient of clipped
    tokens). The paper aggregates with ``token-mean``.

    Args:
        logp: [B, T] current-policy log-probs (differentiated).
        old_logp: [B, T] rollout-policy log-probs.
        advantages: [B] or [B, T] advantages.
        mask: [B, T] 0/1 response mask.
        clip_low: lower clip of the IS weight (the paper effectively sets no lower bound: use a
            value >= 1 to disable it, since ratios are positive).
        clip_high: upper clip of the IS weight.
        agg: aggregation mode.
        is_weights: [B, T] per-token importance weights or None.
        clip_c: must be None.
        max_len: static max response length for ``seq-mean-token-sum-norm``.
        denom: global normaliser for micro-batch accumulation.

    Returns:
        (loss, metrics): ``clipfrac`` (share of tokens whose weight was clipped), ``clipfrac_lower``
        (0) and the ratio statistics of ``ratio_metrics``.
    """
    _no_dual_clip("cispo", clip_c)
    m_bt, valid_bt, adv_bt, logp_bt, log_ratio_bt = policy_inputs(logp, old_logp, advantages, mask)
    ratio_bt = jnp.exp(jnp.clip(log_ratio_bt, -_LOG_RATIO_BOUND, _LOG_RATIO_BOUND))
    weight_bt = jax.lax.stop_gradient(jnp.clip(ratio_bt, 1.0 - clip_low, 1.0 + clip_high))
    loss_bt = -weight_bt * adv_bt * logp_bt
    loss_bt = apply_is_weights(loss_bt, is_weights, valid_bt)
    loss = aggregate(loss_bt, m_bt, agg, max_len, denom=denom)
    is_clipped_bt = (ratio_bt < 1.0 - clip_low) | (ratio_bt > 1.0 + clip_high)
    metrics = {
        "clipfrac": _token_mean(is_clipped_bt, m_bt),
        "clipfrac_lower": jnp.zeros((), jnp.float32),
        **ratio_metrics(ratio_bt, log_ratio_bt, m_bt, valid_bt),
    }
    return loss, metrics
