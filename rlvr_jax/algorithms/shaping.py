"""Reward and weight shaping around the losses: DAPO's overlong penalty, truncated importance
sampling weights, and PPO's KL-in-reward.

All three are pure functions of host or device arrays; formulas and papers in docs/algorithms.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def overlong_penalty(lengths, max_len: int, cache_len: int) -> jax.Array:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, eq. 13).

    ``0`` when ``L <= max_len - cache_len``; ``((max_len - cache_len) - L) / cache_len`` (from 0
    down to -1) when ``max_len - cache_len < L <= max_len``; ``-1`` beyond ``max_len``. It is added
    to the task reward.

    Args:
        lengths: [B] response lengths in tokens.
        max_len: ``L_max``, the longest response that is not fully punished.
        cache_len: ``L_cache``, the punishment interval before ``max_len``; 0 < cache_len <= max_len.

    Returns:
        [B] float32 penalties in [-1, 0].

    Raises:
        ValueError: cache_len outside (0, max_len].
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"overlong cache_len must be in (0, max_len={max_len}], got {cache_len}")
    len_b = jnp.asarray(lengths, jnp.float32)
    expected = float(max_len - cache_len)
    ramp_b = (expected - len_b) / float(cache_len)
    return jnp.where(len_b <= expected, 0.0, jnp.where(len_b <= max_len, ramp_b, -1.0))


def truncated_is_weights(old_logp, rollout_logp, mask, cap: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings
    you off-policy RL training"): ``w_t = min(exp(old_logp_t - rollout_logp_t), cap)``.

    ``old_logp`` comes from the trainer's forward pass, ``rollout_logp`` from the sampler that drew
    the tokens; the weight corrects the gradient for their mismatch (different kernels, dtypes,
    batch shapes) and the cap bounds its variance.

    Args:
        old_logp: [B, T] trainer log-probs of the rollout policy.
        rollout_logp: [B, T] sampler log-probs of the same tokens.
        mask: [B, T] 0/1 response mask.
        cap: truncation constant C > 0 (the paper uses 2).

    Returns:
        (w_bt, metrics): [B, T] float32 weights, 0 on padding, no gradient; metrics over valid
        tokens: ``tis_weight_mean``, ``tis_weight_min``, ``tis_weight_max`` (before the cap) and
        ``tis_capped_frac`` (share of tokens whose weight was capped).
    """
    if not cap > 0:
        raise ValueError(f"truncated IS cap must be > 0, got {cap}")
    m_bt = jnp.asarray(mask, jnp.float32)
    valid_bt = m_bt > 0
    d_bt = jnp.where(valid_bt, jnp.asarray(old_logp, jnp.float32) - jnp.asarray(rollout_logp, jnp.float32), 0.0)
    raw_bt = jnp.exp(jnp.clip(d_bt, -20.0, 20.0))
    w_bt = jax.lax.stop_gradient(jnp.where(valid_bt, jnp.minimum(raw_bt, cap), 0.0))
    n = jnp.maximum(jnp.sum(m_bt), 1.0)
    any_valid = jnp.any(valid_bt)
    metrics = {
        "tis_weight_mean": jnp.sum(w_bt) / n,
        "tis_weight_min": jnp.where(any_valid, jnp.min(jnp.where(valid_bt, raw_bt, jnp.inf)), 1.0),
        "tis_weight_max": jnp.where(any_valid, jnp.max(jnp.where(valid_bt, raw_bt, -jnp.inf)), 1.0),
        "tis_capped_frac": jnp.sum(jnp.where(valid_bt & (raw_bt > cap), 1.0, 0.0)) / n,
    }
    return w_bt, jax.tree.map(jax.lax.stop_gradient, metrics)


def kl_in_reward(token_rewards, old_logp, ref_logp, mask, coef: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO's KL penalty in the reward (verl with ``use_kl_in_reward``; InstructGPT's per-token KL).

    ``r'_t = r_t - coef * k1_t`` with ``k1_t = old_logp_t - ref_logp_t`` on valid tokens: the
    rollout policy's divergence from the reference, charged token by token, so GAE propagates it.

    Args:
        token_rewards: [B, T] token rewards (outcome score on the last response token).
        old_logp: [B, T] log-probs of the rollout policy.
        ref_logp: [B, T] log-probs of the frozen reference.
        mask: [B, T] 0/1 response mask.
        coef: KL coefficient beta >= 0 (verl's fixed controller default: 0.001).

    Returns:
        (rewards_bt, metrics): [B, T] float32 shaped rewards (0 on padding); ``kl`` is the batch
        mean of each sequence's token-mean k1 (verl's ``actor/reward_kl_penalty``) and
        ``kl_coef`` the coefficient.
    """
    if coef < 0:
        raise ValueError(f"KL-in-reward coefficient must be >= 0, got {coef}")
    m_bt = jnp.asarray(mask, jnp.float32)
    valid_bt = m_bt > 0
    k1_bt = jnp.where(valid_bt, jnp.asarray(old_logp, jnp.float32) - jnp.asarray(ref_logp, jnp.float32), 0.0)
    r_bt = jnp.where(valid_bt, jnp.asarray(token_rewards, jnp.float32), 0.0)
    seq_kl_b = jnp.sum(k1_bt, axis=-1) / jnp.maximum(jnp.sum(m_bt, axis=-1), 1.0)
    metrics = {"kl": jnp.mean(seq_kl_b), "kl_coef": jnp.asarray(coef, jnp.float32)}
    return r_bt - coef * k1_bt, metrics
