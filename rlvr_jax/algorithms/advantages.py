"""Advantage estimators: group-relative (GRPO, Dr.GRPO, RLOO) and critic-based (GAE).

Outcome estimators map one scalar score per sequence and a group id per sequence to one
advantage per sequence (the policy loss broadcasts it over the response tokens). A *group* is
the ``n`` samples drawn for one prompt row; in 1-shot RLVR the same example fills many rows, and
each row is still its own group, so callers pass row indices (not example ids) as group ids.

GAE works per token: it needs the critic's values and the rewards placed on tokens
(``outcome_rewards_to_tokens`` puts the outcome score on the last response token).

Estimators are registered by name in ``ADVANTAGE_ESTIMATORS``; names in
``VALUE_BASED_ESTIMATORS`` take ``(rewards_bt, values_bt, mask_bt, *, gamma, lam)`` instead of
``(rewards_b, group_ids_b)``. An outcome estimator also declares, at registration, which of the
``OUTCOME_INPUTS`` it takes by keyword (``ESTIMATOR_INPUTS``); ``outcome_advantages`` passes it
exactly those, so a caller never has to know one estimator's signature from another's.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
# Estimators that need a critic (token-level values); the update step must run a value head.
VALUE_BASED_ESTIMATORS: set[str] = set()
# What `outcome_advantages` can give an outcome estimator beyond (rewards, group_ids), by keyword:
# norm_by_std (bool, `algorithm.norm_by_std`) and token_counts ([B] response lengths in tokens).
OUTCOME_INPUTS = ("norm_by_std", "token_counts")
# Outcome estimator name -> the OUTCOME_INPUTS it takes (declared when it is registered).
ESTIMATOR_INPUTS: dict[str, tuple[str, ...]] = {}


def register_advantage_estimator(name: str, *, needs_values: bool = False,
                                 inputs: tuple[str, ...] = ()) -> Callable:
    """Decorator that registers an advantage estimator under ``name``.

    Args:
        name: registry key (the name a config uses to select the estimator).
        needs_values: True for critic-based estimators (signature of ``gae_advantages``).
        inputs: for outcome estimators, the ``OUTCOME_INPUTS`` the function takes as keywords
            (``outcome_advantages`` passes exactly these).

    Returns:
        A decorator that records the function and returns it unchanged.
    """
    unknown = sorted(set(inputs) - set(OUTCOME_INPUTS))
    if unknown:
        raise ValueError(f"advantage estimator {name!r}: unknown inputs {unknown}; valid: {OUTCOME_INPUTS}")
    if needs_values and inputs:
        raise ValueError(f"advantage estimator {name!r}: a value-based estimator takes no outcome inputs")

    def decorator(fn: Callable) -> Callable:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        if needs_values:
            VALUE_BASED_ESTIMATORS.add(name)
        else:
            ESTIMATOR_INPUTS[name] = tuple(inputs)
        return fn

    return decorator


def get_advantage_estimator(name: str) -> Callable:
    """Returns the estimator registered as ``name``; ValueError listing the valid names."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown advantage estimator {name!r}; valid: {sorted(ADVANTAGE_ESTIMATORS)}"
        ) from None


def outcome_advantages(name: str, rewards, group_ids, *, norm_by_std: bool = True,
                       token_counts=None) -> jax.Array:
    """Runs the outcome estimator ``name`` with the inputs it declared (``ESTIMATOR_INPUTS``).

    Args:
        name: a registered estimator that is not value-based.
        rewards: [B] scores.
        group_ids: [B] integer group ids.
        norm_by_std: GRPO's std division (``algorithm.norm_by_std``); for estimators that take it.
        token_counts: [B] response lengths in tokens; for estimators that take them.

    Returns:
        [B] float32 advantages.

    Raises:
        ValueError: unknown name, or a value-based estimator (it needs the critic's values).
    """
    estimator = get_advantage_estimator(name)
    if name in VALUE_BASED_ESTIMATORS:
        raise ValueError(f"advantage estimator {name!r} needs a critic's values, not outcome scores alone")
    available = {"norm_by_std": norm_by_std, "token_counts": token_counts}
    return estimator(rewards, group_ids, **{key: available[key] for key in ESTIMATOR_INPUTS[name]})


def _dense_group_ids(group_ids_b, num_b: int) -> jax.Array:
    """Remaps arbitrary integer group ids to dense ids in [0, B).

    Group ids may be negative, sparse or huge; ``jnp.unique`` with a static ``size`` keeps the
    shape static, so this works under jit, and ``segment_sum`` then needs only B segments. That is
    O(B log B), unlike a [B, B] one-hot (268 MB at B = 8192).
    """
    group_ids_b = jnp.asarray(group_ids_b)
    _, dense_b = jnp.unique(group_ids_b, return_inverse=True, size=num_b)
    return dense_b.reshape(num_b)


def _group_stats(rewards_b: jax.Array, group_ids_b) -> tuple[jax.Array, ...]:
    """Per-sequence group count, sum and dense group id, gathered back to each sequence.

    Args:
        rewards_b: [B] float32 scores.
        group_ids_b: [B] integer group ids.

    Returns:
        (count_b, sum_b, dense_b): [B] float32 group size and sum of the sequence's own group,
        and its [B] int32 dense group id.
    """
    num_b = rewards_b.shape[0]
    dense_b = _dense_group_ids(group_ids_b, num_b)
    count_g = jax.ops.segment_sum(jnp.ones_like(rewards_b), dense_b, num_segments=num_b)
    sum_g = jax.ops.segment_sum(rewards_b, dense_b, num_segments=num_b)
    count_b, sum_b = count_g[dense_b], sum_g[dense_b]
    return count_b, sum_b, dense_b


@register_advantage_estimator("grpo", inputs=("norm_by_std",))
def grpo_advantages(
    rewards, group_ids, *, norm_by_std: bool = True, eps: float = 1e-6
) -> jax.Array:
    """GRPO: reward minus its group mean, divided by the group's unbiased std.

    ``A = (r - mean) / (std + eps)`` with ``std`` using ddof=1. A group of one has no baseline and
    gets 0 (verl would give ``r / (1 + eps)`` there; a lone sample carries no relative signal).
    A group whose rewards are all equal gets 0, so it adds no policy gradient.

    Args:
        rewards: [B] scores, numpy or jax, any float/int dtype.
        group_ids: [B] integer group ids (arbitrary values; equal id = same group).
        norm_by_std: divide by the group std; False gives Dr.GRPO.
        eps: added to the std so all-equal groups do not divide by zero.

    Returns:
        [B] float32 advantages.
    """
    rewards_b = jnp.asarray(rewards, jnp.float32)
    count_b, sum_b, dense_b = _group_stats(rewards_b, group_ids)
    centered_b = rewards_b - sum_b / count_b
    if norm_by_std:
        # Two-pass variance (sum of centred squares) stays accurate for any reward scale.
        sq_g = jax.ops.segment_sum(centered_b**2, dense_b, num_segments=rewards_b.shape[0])
        # Bessel correction; a group of one would divide by zero and is zeroed below anyway.
        var_b = sq_g[dense_b] / jnp.maximum(count_b - 1.0, 1.0)
        centered_b = centered_b / (jnp.sqrt(var_b) + eps)
    return jnp.where(count_b > 1, centered_b, 0.0)


@register_advantage_estimator("drgrpo")
def drgrpo_advantages(rewards, group_ids, *, eps: float = 1e-6) -> jax.Array:
    """Dr.GRPO: ``A = r - group mean`` (no std division, which biases toward easy/hard prompts).

    Args:
        rewards: [B] scores.
        group_ids: [B] integer group ids.
        eps: unused (no std division); accepted so calls written for ``grpo`` also work.

    Returns:
        [B] float32 advantages; 0 for a group of one.
    """
    return grpo_advantages(rewards, group_ids, norm_by_std=False, eps=eps)


@register_advantage_estimator("rloo")
def rloo_advantages(rewards, group_ids) -> jax.Array:
    """RLOO: reward minus the mean of the *other* samples in its group (leave-one-out baseline).

    ``A_i = r_i - (S - r_i) / (n - 1)`` where ``S`` is the group sum and ``n`` its size; the
    baseline does not depend on ``r_i``, so the estimator stays unbiased.

    Args:
        rewards: [B] scores.
        group_ids: [B] integer group ids.

    Returns:
        [B] float32 advantages; 0 for a group of one (no other sample to compare with).
    """
    rewards_b = jnp.asarray(rewards, jnp.float32)
    count_b, sum_b, _ = _group_stats(rewards_b, group_ids)
    others_mean_b = (sum_b - rewards_b) / jnp.maximum(count_b - 1.0, 1.0)
    return jnp.where(count_b > 1, rewards_b - others_mean_b, 0.0)


@register_advantage_estimator("reinforce_pp_baseline", inputs=("token_counts",))
def reinforce_pp_baseline_advantages(
    rewards, group_ids, *, token_counts=None, eps: float = 1e-8
) -> jax.Array:
    """REINFORCE++ with baseline (Hu et al., arXiv 2501.03262): group-mean baseline, then global whitening.

    ``A'_i = r_i - mean_{group(i)} r`` (a group of one keeps ``r_i``: REINFORCE++ without a
    baseline), then ``A_i = (A'_i - mean_batch A') / sqrt(var_batch A' + eps)``. The paper
    normalises the advantage of every token of the batch (its eq. for ``A^norm_{q,o_t}``); with one
    outcome advantage per sequence that is a whitening weighted by each sequence's token count,
    which ``token_counts`` gives (the unbiased variance over tokens, as verl's ``masked_whiten``).
    Without it, every sequence weighs the same.

    Args:
        rewards: [B] scores.
        group_ids: [B] integer group ids.
        token_counts: [B] response lengths in tokens (weights of the batch statistics), or None.
        eps: added to the variance.

    Returns:
        [B] float32 advantages; all 0 when the batch holds no token.
    """
    rewards_b = jnp.asarray(rewards, jnp.float32)
    count_b, sum_b, _ = _group_stats(rewards_b, group_ids)
    centered_b = rewards_b - jnp.where(count_b > 1, sum_b / count_b, 0.0)
    w_b = jnp.ones_like(rewards_b) if token_counts is None else jnp.asarray(token_counts, jnp.float32)
    total = jnp.sum(w_b)
    mean = jnp.sum(w_b * centered_b) / jnp.maximum(total, 1.0)
    var = jnp.sum(w_b * (centered_b - mean) ** 2) / jnp.maximum(total - 1.0, 1.0)
    return jnp.where(total > 0, (centered_b - mean) * jax.lax.rsqrt(var + eps), 0.0)


def outcome_rewards_to_tokens(scores_b, mask_bt) -> jax.Array:
    """Places each sequence's outcome score on its last valid response token.

    Args:
        scores_b: [B] outcome scores.
        mask_bt: [B, T] response mask, right-padded (valid tokens first).

    Returns:
        [B, T] float32 token rewards, zero except at index ``len - 1``; all zero for empty rows.
    """
    mask_bt = jnp.asarray(mask_bt)
    scores_b = jnp.asarray(scores_b, jnp.float32)
    len_b = jnp.sum(mask_bt > 0, axis=-1)
    is_last_bt = jnp.arange(mask_bt.shape[-1])[None, :] == (len_b - 1)[:, None]
    return jnp.where(is_last_bt, scores_b[:, None], 0.0)


def masked_whiten(values_bt, mask_bt, *, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
    """Whitens values over the valid tokens of the whole batch (as verl's ``masked_whiten``).

    Uses the unbiased variance over valid tokens; padded positions come back as 0.

    Args:
        values_bt: [B, T] values.
        mask_bt: [B, T] 0/1 mask.
        shift_mean: if False, add the mean back after scaling.
        eps: added to the variance before the rsqrt.

    Returns:
        [B, T] float32 whitened values.
    """
    m_bt = jnp.asarray(mask_bt, jnp.float32)
    v_bt = jnp.where(m_bt > 0, jnp.asarray(values_bt, jnp.float32), 0.0)
    count = jnp.sum(m_bt)
    mean = jnp.sum(v_bt * m_bt) / jnp.maximum(count, 1.0)
    var = jnp.sum(((v_bt - mean) ** 2) * m_bt) / jnp.maximum(count - 1.0, 1.0)
    out_bt = (v_bt - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out_bt = out_bt + mean
    return jnp.where(m_bt > 0, out_bt, 0.0)


@register_advantage_estimator("gae", needs_values=True)
def gae_advantages(
    rewards_bt, values_bt, mask_bt, *, gamma: float, lam: float, whiten: bool = True
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over right-padded response tokens (PPO).

    Reverse scan over time: ``delta_t = r_t + gamma V_{t+1} - V_t``,
    ``A_t = delta_t + gamma lam A_{t+1}``. Masked (padding) steps carry the next value and the
    running advantage through unchanged, so a right-padded sequence bootstraps from 0 after its
    last token. ``returns = A + V`` is computed before whitening (it is the value target).

    Args:
        rewards_bt: [B, T] token rewards (outcome score on the last response token).
        values_bt: [B, T] critic values of the rollout (old values).
        mask_bt: [B, T] 0/1 response mask.
        gamma: discount.
        lam: GAE lambda.
        whiten: whiten the advantages over valid tokens (verl does; the returns are not whitened).

    Returns:
        (advantages_bt, returns_bt): [B, T] float32 each, zero on padding.
    """
    m_bt = jnp.asarray(mask_bt, jnp.float32)
    r_bt = jnp.where(m_bt > 0, jnp.asarray(rewards_bt, jnp.float32), 0.0)
    v_bt = jnp.where(m_bt > 0, jnp.asarray(values_bt, jnp.float32), 0.0)

    def step(carry, inputs):
        next_value_b, next_adv_b = carry
        r_b, v_b, m_b = inputs
        delta_b = r_b + gamma * next_value_b - v_b
        adv_b = delta_b + gamma * lam * next_adv_b
        # Padding tokens are not environment steps: pass the carry through them untouched.
        next_value_b = m_b * v_b + (1.0 - m_b) * next_value_b
        next_adv_b = m_b * adv_b + (1.0 - m_b) * next_adv_b
        return (next_value_b, next_adv_b), next_adv_b

    zeros_b = jnp.zeros(m_bt.shape[:1], jnp.float32)
    _, adv_tb = jax.lax.scan(step, (zeros_b, zeros_b), (r_bt.T, v_bt.T, m_bt.T), reverse=True)
    adv_bt = adv_tb.T * m_bt
    returns_bt = (adv_bt + v_bt) * m_bt
    if whiten:
        adv_bt = masked_whiten(adv_bt, m_bt)
    return adv_bt, returns_bt
