"""Per-token losses and their aggregation: PPO-clip policy loss, clipped value loss, KL, entropy.

Every loss is a [B, T] matrix reduced by ``aggregate`` in one of the ``AGG_MODES``. Each mode is
a *sum form*: ``aggregate = numerator(values, mask) / denominator``, where the numerator is a sum
over sequences. Gradient accumulation therefore works in every mode: compute the denominator
once for the whole mini-batch (``aggregation_denominator``), pass it as ``denom`` to every
micro-batch, and SUM (do not average) the micro-batch losses and gradients; the result is the
full mini-batch loss and gradient exactly, however the micro-batches differ in token counts.

Masked positions may hold garbage (even inf/nan log-probs from padding); they are removed with
``jnp.where`` before any arithmetic so neither the loss nor its gradient sees them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

# ---------------------------------------------------------------------------------------------
# KL penalty estimators, as functions of d = logp - ref_logp (Schulman's k1/k2/k3).


def _kl_k1(d):
    return d


def _kl_abs(d):
    return jnp.abs(d)


def _kl_k2(d):
    return 0.5 * jnp.square(d)


def _kl_k3(d):
    # Pre-clamping d to [-20, 20] does not change any value after the final clamp (|d| > 12
    # already gives > 10 on both sides) but keeps exp finite, so the backward pass of the
    # clamp never multiplies a zero cotangent by inf (which would give nan).
    d = jnp.clip(d, -20.0, 20.0)
    return jnp.clip(jnp.exp(-d) + d - 1.0, -10.0, 10.0)


# "kl" and "mse" are verl's names for k1 and k2; "low_var_kl" is verl's name for k3.
KL_ESTIMATORS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "k1": _kl_k1,
    "kl": _kl_k1,
    "abs": _kl_abs,
    "k2": _kl_k2,
    "mse": _kl_k2,
    "k3": _kl_k3,
    "low_var_kl": _kl_k3,
}


def kl_penalty(logp, ref_logp, kind: str) -> jax.Array:
    """Per-token KL(policy || reference) estimate from sampled-token log-probs.

    With ``d = logp - ref_logp``: ``k1 = d``, ``abs = |d|``, ``k2 = d^2 / 2``,
    ``k3 = low_var_kl = exp(-d) + d - 1`` clamped to [-10, 10] (unbiased and always >= 0).

    Args:
        logp: [...] policy log-probs of the sampled tokens.
        ref_logp: [...] reference-policy log-probs of the same tokens.
        kind: a key of ``KL_ESTIMATORS``.

    Returns:
        [...] float32 per-token KL estimates.

    Raises:
        ValueError: ``kind`` is not a known estimator.
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; valid: {sorted(KL_ESTIMATORS)}")
    d = jnp.asarray(logp, jnp.float32) - jnp.asarray(ref_logp, jnp.float32)
    return KL_ESTIMATORS[kind](d)


def entropy_from_logits(logits) -> jax.Array:
    """Entropy of the softmax distribution, ``logsumexp(z) - sum(softmax(z) * z)``, in float32.

    Callers pass one chunk of the sequence at a time (logits divided by the rollout temperature);
    a whole batch of [tokens x vocab] float32 logits does not fit in memory.

    Args:
        logits: [..., V] logits of any float dtype; -inf entries (masked vocab) are allowed.

    Returns:
        [...] float32 entropies.
    """
    z = jnp.asarray(logits).astype(jnp.float32)
    # Entropy is shift-invariant; centring on the max avoids cancelling two huge terms below.
    z = z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    lse = jax.nn.logsumexp(z, axis=-1)
    p = jnp.exp(z - lse[..., None])
    # -inf logits have p = 0; 0 * -inf would be nan, so multiply by a finite stand-in instead.
    z_finite = jnp.where(jnp.isfinite(z), z, 0.0)
    return lse - jnp.sum(p * z_finite, axis=-1)


# ---------------------------------------------------------------------------------------------
# Aggregation of [B, T] per-token matrices.


@dataclasses.dataclass(frozen=True)
class AggMode:
    """One aggregation mode in sum form: ``aggregate = numerator(vm, m) / denominator(m, L)``.

    Attributes:
        numerator: (masked values [B, T], mask [B, T]) -> scalar; a sum over sequences, so
            micro-batch numerators add up to the mini-batch numerator.
        denominator: (mask [B, T], max_len int) -> scalar normaliser for a whole batch.
    """

    numerator: Callable[[jax.Array, jax.Array], jax.Array]
    denominator: Callable[[jax.Array, int], jax.Array]


def _token_sum(vm_bt, m_bt):
    del m_bt
    return jnp.sum(vm_bt)


def _seq_token_mean_sum(vm_bt, m_bt):
    # An empty row contributes 0 instead of 0/0 (it still counts in the sequence denominator).
    return jnp.sum(jnp.sum(vm_bt, axis=-1) / jnp.maximum(jnp.sum(m_bt, axis=-1), 1.0))


def _num_sequences(m_bt, max_len):
    del max_len
    return jnp.asarray(m_bt.shape[0], jnp.float32)


AGG_MODES: dict[str, AggMode] = {
    # DAPO / verl default: every valid token weighs the same.
    "token-mean": AggMode(_token_sum, lambda m_bt, max_len: jnp.sum(m_bt)),
    "seq-mean-token-sum": AggMode(_token_sum, _num_sequences),
    # Original GRPO: every sequence weighs the same; long responses dilute per-token gradients.
    "seq-mean-token-mean": AggMode(_seq_token_mean_sum, _num_sequences),
    # Dr.GRPO: a constant normaliser (B x max response length) removes the length bias.
    "seq-mean-token-sum-norm": AggMode(
        _token_sum, lambda m_bt, max_len: jnp.asarray(m_bt.shape[0] * max_len, jnp.float32)
    ),
}


def _agg_mode(mode: str) -> AggMode:
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid: {sorted(AGG_MODES)}")
    return AGG_MODES[mode]


def aggregation_denominator(mask, mode: str, max_len: int | None = None) -> jax.Array:
    """The normaliser of ``mode`` for a whole (mini-)batch, to pass as ``denom``.

    ``token-mean``: number of valid tokens; ``seq-mean-token-sum`` and ``seq-mean-token-mean``:
    number of sequences B; ``seq-mean-token-sum-norm``: ``B * max_len``.

    Args:
        mask: [B, T] 0/1 response mask of the whole mini-batch.
        mode: a key of ``AGG_MODES``.
        max_len: the maximum response length (static); defaults to T.

    Returns:
        float32 scalar.
    """
    spec = _agg_mode(mode)
    m_bt = jnp.asarray(mask, jnp.float32)
    return spec.denominator(m_bt, m_bt.shape[-1] if max_len is None else max_len)


def aggregate(values, mask, mode: str, max_len: int | None = None, *, denom=None) -> jax.Array:
    """Reduces a per-token matrix to a scalar.

    ``token-mean = sum(v m) / sum(m)``; ``seq-mean-token-sum = mean_b sum_t v m``;
    ``seq-mean-token-mean = mean_b (sum_t v m / sum_t m)``;
    ``seq-mean-token-sum-norm = sum(v m) / (B * max_len)``.

    Args:
        values: [B, T] per-token values (masked positions may hold anything, even nan).
        mask: [B, T] 0/1 mask (bool, int or float).
        mode: a key of ``AGG_MODES``.
        max_len: maximum response length for ``seq-mean-token-sum-norm`` (static); defaults to T.
        denom: optional global normaliser (``aggregation_denominator`` of the whole mini-batch).
            With it, the results of disjoint row-slices of a batch sum to the batch's result.

    Returns:
        float32 scalar; 0 when the normaliser is 0 (e.g. no valid tokens).

    Raises:
        ValueError: unknown ``mode``.
    """
    spec = _agg_mode(mode)
    m_bt = jnp.asarray(mask, jnp.float32)
    vm_bt = jnp.where(m_bt > 0, jnp.asarray(values, jnp.float32) * m_bt, 0.0)
    if denom is None:
        denom = spec.denominator(m_bt, m_bt.shape[-1] if max_len is None else max_len)
    denom = jnp.asarray(denom, jnp.float32)
    return spec.numerator(vm_bt, m_bt) / jnp.where(denom > 0, denom, 1.0)


def _token_mean(x_bt, m_bt):
    """Token-mean over this call's mask: the convention for logged statistics."""
    return jax.lax.stop_gradient(aggregate(x_bt, m_bt, "token-mean"))


# ---------------------------------------------------------------------------------------------
# Policy and value losses.


def policy_inputs(logp, old_logp, advantages, mask):
    """Shared preparation of a policy loss's inputs, padding made harmless.

    Args:
        logp: [B, T] current-policy log-probs (differentiated).
        old_logp: [B, T] rollout-policy log-probs.
        advantages: [B] per-sequence or [B, T] per-token advantages.
        mask: [B, T] 0/1 response mask.

    Returns:
        (m_bt, valid_bt, adv_bt, logp_bt, log_ratio_bt): float mask, bool mask, [B, T] advantages
        (0 on padding), log-probs and ``logp - old_logp`` with padding zeroed (it may hold -inf,
        whose exp or gradient would poison the loss).
    """
    m_bt = jnp.asarray(mask, jnp.float32)
    valid_bt = m_bt > 0
    adv = jnp.asarray(advantages, jnp.float32)
    adv_bt = jnp.where(valid_bt, jnp.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, m_bt.shape), 0.0)
    logp_bt = jnp.where(valid_bt, jnp.asarray(logp, jnp.float32), 0.0)
    old_bt = jnp.where(valid_bt, jnp.asarray(old_logp, jnp.float32), 0.0)
    return m_bt, valid_bt, adv_bt, logp_bt, logp_bt - old_bt


def apply_is_weights(loss_bt, is_weights, valid_bt):
    """Multiplies per-token losses by importance weights (constants: no gradient flows into them).

    Args:
        loss_bt: [B, T] per-token losses.
        is_weights: [B, T] weights or None (no reweighting).
        valid_bt: [B, T] bool mask; padding weights are ignored.

    Returns:
        [B, T] reweighted losses.
    """
    if is_weights is None:
        return loss_bt
    w_bt = jax.lax.stop_gradient(jnp.where(valid_bt, jnp.asarray(is_weights, jnp.float32), 0.0))
    return loss_bt * w_bt


def ratio_metrics(ratio_bt, log_ratio_bt, m_bt, valid_bt) -> dict[str, jax.Array]:
    """Ratio statistics every policy loss logs (no gradient)."""
    return {
        "approx_kl": _token_mean(-log_ratio_bt, m_bt),
        "ratio_mean": _token_mean(ratio_bt, m_bt),
        "ratio_min": _masked_extreme(ratio_bt, valid_bt, jnp.min, jnp.inf),
        "ratio_max": _masked_extreme(ratio_bt, valid_bt, jnp.max, -jnp.inf),
        "num_tokens": jnp.sum(m_bt),
    }


def policy_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float | None = None,
    agg: str = "token-mean",
    is_weights=None,
    max_len: int | None = None,
    denom=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO-clip policy loss with asymmetric clipping (DAPO clip-higher) and optional dual clip.

    ``ratio = exp(logp - old_logp)``;
    ``l = max(-A ratio, -A clip(ratio, 1 - clip_low, 1 + clip_high))``; with ``clip_c``,
    ``l = min(l, -A clip_c)`` where ``A < 0`` (caps the loss of a negative-advantage token whose
    ratio exploded). Where the clipped term wins, the gradient is exactly zero. With
    ``is_weights`` each token's ``l`` is multiplied by its (constant) weight before aggregation.

    Args:
        logp: [B, T] current-policy log-probs of the sampled tokens (differentiated).
        old_logp: [B, T] log-probs under the rollout policy.
        advantages: [B] per-sequence or [B, T] per-token advantages.
        mask: [B, T] 0/1 response mask.
        clip_low: lower clip range epsilon.
        clip_high: upper clip range epsilon.
        clip_c: dual-clip constant (> 1), or None.
        agg: aggregation mode (a key of ``AGG_MODES``).
        is_weights: [B, T] per-token importance weights (e.g. truncated IS), or None.
        max_len: static max response length for ``seq-mean-token-sum-norm``.
        denom: global normaliser for micro-batch accumulation (see ``aggregate``).

    Returns:
        (loss, metrics): float32 scalar loss; metrics (no gradient) over this call's mask:
        token-means ``clipfrac`` (the clipped term is the larger), ``clipfrac_lower`` (dual clip
        active), ``approx_kl`` (mean of old_logp - logp, verl's ppo_kl) and ``ratio_mean``;
        ``ratio_min`` / ``ratio_max``; ``num_tokens`` to weight them across micro-batches.
    """
    if clip_c is not None and not clip_c > 1.0:
        raise ValueError(f"dual-clip constant clip_c must be > 1, got {clip_c}")
    m_bt, valid_bt, adv_bt, _, log_ratio_bt = policy_inputs(logp, old_logp, advantages, mask)
    ratio_bt = jnp.exp(jnp.clip(log_ratio_bt, -20.0, 20.0))  # as verl: no overflow on wild ratios

    unclipped_bt = -adv_bt * ratio_bt
    clipped_bt = -adv_bt * jnp.clip(ratio_bt, 1.0 - clip_low, 1.0 + clip_high)
    is_clipped_bt = clipped_bt > unclipped_bt
    # `where`, not `maximum`: the chosen branch alone gets the gradient (zero for a clipped one).
    loss_bt = jnp.where(is_clipped_bt, clipped_bt, unclipped_bt)
    dual_bt = jnp.zeros_like(valid_bt)
    if clip_c is not None:
        cap_bt = -adv_bt * clip_c
        dual_bt = (adv_bt < 0) & (loss_bt > cap_bt)
        loss_bt = jnp.where(dual_bt, jax.lax.stop_gradient(cap_bt), loss_bt)

    loss_bt = apply_is_weights(loss_bt, is_weights, valid_bt)
    loss = aggregate(loss_bt, m_bt, agg, max_len, denom=denom)
    metrics = {
        "clipfrac": _token_mean(is_clipped_bt, m_bt),
        "clipfrac_lower": _token_mean(dual_bt, m_bt),
        **ratio_metrics(ratio_bt, log_ratio_bt, m_bt, valid_bt),
    }
    return loss, metrics


def _masked_extreme(x_bt, valid_bt, reduce, fill):
    """min/max over valid entries; 1.0 (the neutral ratio) when there are none."""
    x = reduce(jnp.where(valid_bt, x_bt, fill))
    return jax.lax.stop_gradient(jnp.where(jnp.any(valid_bt), x, 1.0))


def value_loss(
    values,
    old_values,
    returns,
    mask,
    *,
    cliprange_value: float = 0.5,
    agg: str = "token-mean",
    max_len: int | None = None,
    denom=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped value loss (PPO critic): ``0.5 * agg(max((V-R)^2, (clip(V, V_old±c)-R)^2))``.

    Args:
        values: [B, T] current value predictions (differentiated).
        old_values: [B, T] value predictions of the rollout.
        returns: [B, T] targets (GAE advantages + old values).
        mask: [B, T] 0/1 response mask.
        cliprange_value: how far V may move from V_old before its error stops counting.
        agg: aggregation mode.
        max_len: static max response length for ``seq-mean-token-sum-norm``.
        denom: global normaliser for micro-batch accumulation (see ``aggregate``).

    Returns:
        (loss, metrics): float32 scalar; metrics ``vf_clipfrac`` and ``vpred_mean`` are
        token-means over this call's mask, ``num_tokens`` weights them across micro-batches.
    """
    m_bt = jnp.asarray(mask, jnp.float32)
    valid_bt = m_bt > 0
    # Zero padding first: a nan there would leak into the gradient through the square.
    v_bt, old_bt, ret_bt = (
        jnp.where(valid_bt, jnp.asarray(x, jnp.float32), 0.0) for x in (values, old_values, returns)
    )
    v_clipped_bt = jnp.clip(v_bt, old_bt - cliprange_value, old_bt + cliprange_value)
    err_bt = jnp.square(v_bt - ret_bt)
    err_clipped_bt = jnp.square(v_clipped_bt - ret_bt)
    is_clipped_bt = err_clipped_bt > err_bt
    loss_bt = jnp.where(is_clipped_bt, err_clipped_bt, err_bt)
    loss = 0.5 * aggregate(loss_bt, m_bt, agg, max_len, denom=denom)
    metrics = {
        "vf_clipfrac": _token_mean(is_clipped_bt, m_bt),
        "vpred_mean": _token_mean(v_bt, m_bt),
        "num_tokens": jnp.sum(m_bt),
    }
    return loss, metrics


# Policy losses by name (verl's ``loss_mode`` names). Each has the signature of ``policy_loss``:
# ``fn(logp, old_logp, advantages, mask, *, clip_low, clip_high, agg, is_weights=None, clip_c=None,
# max_len=None, denom=None) -> (loss, metrics)``. GSPO and CISPO register in ``policy_losses.py``.
POLICY_LOSSES: dict[str, Callable] = {"vanilla": policy_loss}


def register_policy_loss(name: str) -> Callable:
    """Decorator that registers a policy loss under ``name`` (the ``actor.policy_loss`` word)."""

    def decorator(fn: Callable) -> Callable:
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered")
        POLICY_LOSSES[name] = fn
        return fn

    return decorator


def get_policy_loss(name: str) -> Callable:
    """Returns the policy loss registered as ``name``; ValueError listing the valid names."""
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; valid: {sorted(POLICY_LOSSES)}")
    return POLICY_LOSSES[name]


# ---------------------------------------------------------------------------------------------
# The actor objective used by the update step.


@dataclasses.dataclass(frozen=True)
class ActorLossConfig:
    """Settings of the actor objective; validated on construction (start-up), not per step.

    Attributes:
        policy_loss: key of ``POLICY_LOSSES``.
        clip_low: lower PPO clip epsilon.
        clip_high: upper PPO clip epsilon (DAPO's clip-higher uses e.g. 0.28).
        clip_c: dual-clip constant (> 1) or None.
        entropy_coeff: weight of the entropy bonus; positive rewards higher entropy.
        kl_coef: weight of the KL-to-reference loss; 0 disables it.
        kl_kind: key of ``KL_ESTIMATORS``.
        agg: key of ``AGG_MODES``; used for the policy, entropy and KL terms alike.
        max_len: max response length for ``seq-mean-token-sum-norm`` (None: the T dimension).
    """

    policy_loss: str = "vanilla"
    clip_low: float = 0.2
    clip_high: float = 0.2
    clip_c: float | None = None
    entropy_coeff: float = 0.0
    kl_coef: float = 0.0
    kl_kind: str = "low_var_kl"
    agg: str = "token-mean"
    max_len: int | None = None

    def __post_init__(self):
        get_policy_loss(self.policy_loss)
        _agg_mode(self.agg)
        if self.kl_kind not in KL_ESTIMATORS:
            raise ValueError(
                f"unknown KL estimator {self.kl_kind!r}; valid: {sorted(KL_ESTIMATORS)}"
            )
        if self.clip_c is not None and not self.clip_c > 1.0:
            raise ValueError(f"dual-clip constant clip_c must be > 1, got {self.clip_c}")
        if self.clip_c is not None and self.policy_loss != "vanilla":
            raise ValueError(f"the dual clip (clip_c) belongs to the vanilla PPO loss, not {self.policy_loss!r}")


def actor_loss(
    logp,
    old_logp,
    advantages,
    mask,
    config: ActorLossConfig,
    *,
    entropy=None,
    ref_logp=None,
    is_weights=None,
    denom=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``pg_loss - entropy_coeff * agg(entropy) + kl_coef * agg(kl)``, one aggregation mode for all.

    Args:
        logp: [B, T] current-policy log-probs of the sampled tokens.
        old_logp: [B, T] rollout-policy log-probs.
        advantages: [B] or [B, T] advantages.
        mask: [B, T] 0/1 response mask.
        config: the objective's settings.
        entropy: [B, T] per-token entropy (``entropy_from_logits``), or None to skip the term.
        ref_logp: [B, T] reference log-probs; required when ``config.kl_coef`` > 0.
        is_weights: [B, T] importance weights of the policy loss (truncated IS), or None.
        denom: global normaliser for micro-batch accumulation; shared by all three terms
            because they use the same mask and mode.

    Returns:
        (loss, metrics): the policy-loss metrics plus ``pg_loss``, ``entropy`` and ``kl_loss``.
        With ``denom`` the last three are micro-batch shares: sum them over micro-batches.
    """
    if config.kl_coef > 0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp")
    agg_kw = dict(mode=config.agg, max_len=config.max_len, denom=denom)
    pg_loss, metrics = get_policy_loss(config.policy_loss)(
        logp, old_logp, advantages, mask, clip_low=config.clip_low, clip_high=config.clip_high,
        clip_c=config.clip_c, agg=config.agg, is_weights=is_weights, max_len=config.max_len, denom=denom,
    )
    loss = pg_loss
    metrics = dict(metrics, pg_loss=jax.lax.stop_gradient(pg_loss))
    if entropy is not None:
        ent = aggregate(entropy, mask, **agg_kw)
        loss = loss - config.entropy_coeff * ent
        metrics["entropy"] = jax.lax.stop_gradient(ent)
    if ref_logp is not None:
        # Zero padding first: k2's gradient d * 0 is nan where padding holds an inf log-prob.
        valid_bt = jnp.asarray(mask) > 0
        logp_bt, ref_bt = (jnp.where(valid_bt, x, 0.0) for x in (logp, ref_logp))
        kl_bt = kl_penalty(logp_bt, ref_bt, config.kl_kind)
        kl = aggregate(kl_bt, mask, **agg_kw)
        loss = loss + config.kl_coef * kl
        metrics["kl_loss"] = jax.lax.stop_gradient(kl)
    return loss, metrics
