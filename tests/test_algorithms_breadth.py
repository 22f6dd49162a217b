"""GSPO, CISPO, importance weights, REINFORCE++ baseline, overlong penalty, TIS and KL-in-reward
against NumPy references written from the papers' formulas: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import algorithms as alg

MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def _batch(seed, b=5, t=7, spread=0.3, per_token=False):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, size=b)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float64)
    old = rng.normal(-2, 1, size=(b, t))
    logp = old + rng.normal(0, spread, size=(b, t))
    adv = rng.normal(size=(b, t) if per_token else b)
    adv_bt = adv if per_token else np.repeat(adv[:, None], t, 1)
    w = rng.uniform(0.2, 2.0, size=(b, t))
    return logp, old, adv, adv_bt, mask, w


def np_agg_weights(m, mode):
    """d aggregate / d v_it for each aggregation mode (the aggregate is linear in v)."""
    b, t = m.shape
    if mode == "token-mean":
        return m / m.sum()
    if mode == "seq-mean-token-sum":
        return m / b
    if mode == "seq-mean-token-mean":
        return m / (b * m.sum(1, keepdims=True))
    return m / (b * t)


def np_vanilla(logp, old, adv_bt, m, w, lo, hi, mode):
    """PPO-clip with per-token IS weights: (loss, analytic d loss / d logp)."""
    c = np_agg_weights(m, mode)
    loss, grad = 0.0, np.zeros_like(logp)
    for i in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not m[i, t]:
                continue
            a, r = adv_bt[i, t], np.exp(logp[i, t] - old[i, t])
            l1, l2 = -a * r, -a * min(max(r, 1 - lo), 1 + hi)
            loss += c[i, t] * w[i, t] * max(l1, l2)
            grad[i, t] = 0.0 if l2 > l1 else c[i, t] * w[i, t] * (-a * r)
    return loss, grad


def np_gspo(logp, old, adv_bt, m, w, lo, hi, mode):
    """GSPO-token: s_i = exp(mean_t log ratio); loss and analytic gradient (s_i per own token)."""
    c = np_agg_weights(m, mode)
    loss, grad = 0.0, np.zeros_like(logp)
    for i in range(logp.shape[0]):
        n = m[i].sum()
        s = np.exp(sum((logp[i, t] - old[i, t]) for t in range(logp.shape[1]) if m[i, t]) / n)
        for t in range(logp.shape[1]):
            if not m[i, t]:
                continue
            a = adv_bt[i, t]
            l1, l2 = -a * s, -a * min(max(s, 1 - lo), 1 + hi)
            loss += c[i, t] * w[i, t] * max(l1, l2)
            grad[i, t] = 0.0 if l2 > l1 else c[i, t] * w[i, t] * (-a * s)
    return loss, grad


def np_gspo_sequence_objective(logp, old, adv, m, lo, hi):
    """GSPO's sequence objective (paper eq. 5): mean_i max(-A_i s_i, -A_i clip(s_i))."""
    total = 0.0
    for i in range(logp.shape[0]):
        s = np.exp(((logp[i] - old[i]) * m[i]).sum() / m[i].sum())
        total += max(-adv[i] * s, -adv[i] * min(max(s, 1 - lo), 1 + hi))
    return total / logp.shape[0]


def np_cispo(logp, old, adv_bt, m, w, lo, hi, mode):
    """CISPO: -sg(clip(r)) A logp; gradient -clip(r) A on every token."""
    c = np_agg_weights(m, mode)
    loss, grad = 0.0, np.zeros_like(logp)
    for i in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not m[i, t]:
                continue
            r = np.exp(logp[i, t] - old[i, t])
            k = min(max(r, 1 - lo), 1 + hi)
            loss += c[i, t] * w[i, t] * (-k * adv_bt[i, t] * logp[i, t])
            grad[i, t] = c[i, t] * w[i, t] * (-k * adv_bt[i, t])
    return loss, grad


REFERENCES = {"vanilla": (np_vanilla, 0.2, 0.28, 0.3), "gspo": (np_gspo, 3e-4, 4e-4, 1e-3),
              "cispo": (np_cispo, 0.2, 0.28, 0.3)}


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_policy_losses_values_and_gradients_match_numpy(name, per_token, weighted):
    ref, lo, hi, spread = REFERENCES[name]
    fn = alg.get_policy_loss(name)
    logp, old, adv, adv_bt, mask, w = _batch(3, spread=spread, per_token=per_token)
    w = w if weighted else np.ones_like(w)
    for mode in MODES:
        def loss_of(lp):
            return fn(lp, jnp.asarray(old, jnp.float32), jnp.asarray(adv, jnp.float32), mask,
                      clip_low=lo, clip_high=hi, agg=mode, is_weights=w if weighted else None)

        (loss, metrics), grad = jax.value_and_grad(loss_of, has_aux=True)(jnp.asarray(logp, jnp.float32))
        want, want_grad = ref(logp, old, adv_bt, mask, w, lo, hi, mode)
        np.testing.assert_allclose(float(loss), want, rtol=2e-5, atol=1e-6, err_msg=(name, mode))
        np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=2e-4, atol=1e-6, err_msg=(name, mode))
        assert float(metrics["num_tokens"]) == mask.sum()
    assert 0 <= float(metrics["clipfrac"]) <= 1


def test_gspo_gradient_is_the_sequence_objectives_finite_difference():
    # Independent check of the stop-gradient construction: with per-sequence advantages and
    # seq-mean-token-mean, GSPO-token's gradient equals the finite difference of GSPO's sequence
    # objective, taken in float64 NumPy.
    logp, old, adv, _, mask, _ = _batch(12, spread=1e-3)
    lo, hi = 3e-4, 4e-4
    fn = alg.get_policy_loss("gspo")
    grad = jax.grad(lambda lp: fn(lp, old, adv, mask, clip_low=lo, clip_high=hi, agg="seq-mean-token-mean")[0])(
        jnp.asarray(logp, jnp.float32))
    fd = np.zeros_like(logp)
    eps = 1e-7
    for idx in zip(*np.nonzero(mask)):
        up, down = logp.copy(), logp.copy()
        up[idx] += eps
        down[idx] -= eps
        fd[idx] = (np_gspo_sequence_objective(up, old, adv, mask, lo, hi)
                   - np_gspo_sequence_objective(down, old, adv, mask, lo, hi)) / (2 * eps)
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-3, atol=1e-6)
    assert np.any(fd != 0) and np.any((fd == 0) & (mask > 0))  # some sequences clipped, some not


def test_vanilla_gradient_matches_finite_difference():
    logp, old, adv, adv_bt, mask, w = _batch(5)
    fn = alg.get_policy_loss("vanilla")
    grad = jax.grad(lambda lp: fn(lp, old, adv, mask, clip_low=0.2, clip_high=0.28, agg="token-mean",
                                  is_weights=w)[0])(jnp.asarray(logp, jnp.float32))
    eps = 1e-6
    fd = np.zeros_like(logp)
    for idx in zip(*np.nonzero(mask)):
        up, down = logp.copy(), logp.copy()
        up[idx] += eps
        down[idx] -= eps
        fd[idx] = (np_vanilla(up, old, adv_bt, mask, w, 0.2, 0.28, "token-mean")[0]
                   - np_vanilla(down, old, adv_bt, mask, w, 0.2, 0.28, "token-mean")[0]) / (2 * eps)
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-3, atol=1e-6)


def test_cispo_keeps_gradient_where_ppo_clip_drops_it():
    # (A, ratio) = (+1, 1.5): PPO-clip's gradient is 0; CISPO's is -clip(1.5) * A = -1.28.
    logp, old, mask = jnp.log(jnp.array([[1.5]])), jnp.zeros((1, 1)), jnp.ones((1, 1))
    kw = dict(clip_low=0.2, clip_high=0.28, agg="token-mean")
    g_ppo = jax.grad(lambda lp: alg.get_policy_loss("vanilla")(lp, old, jnp.ones(1), mask, **kw)[0])(logp)
    g_cispo = jax.grad(lambda lp: alg.get_policy_loss("cispo")(lp, old, jnp.ones(1), mask, **kw)[0])(logp)
    assert float(g_ppo[0, 0]) == 0.0
    assert float(g_cispo[0, 0]) == pytest.approx(-1.28, rel=1e-6)


def test_padding_garbage_does_not_leak_into_new_losses():
    mask = jnp.array([[1.0, 1.0, 0.0, 0.0]])
    logp = jnp.array([[-1.0, -2.0, -jnp.inf, jnp.nan]])
    old = jnp.array([[-1.2, -1.9, 0.0, -jnp.inf]])
    weights = jnp.array([[1.0, 0.5, jnp.nan, jnp.inf]])
    for name in ("gspo", "cispo", "vanilla"):
        for mode in MODES:
            fn = lambda lp: alg.get_policy_loss(name)(lp, old, jnp.array([1.0]), mask, clip_low=0.2,
                                                      clip_high=0.2, agg=mode, is_weights=weights)[0]
            loss, g = jax.value_and_grad(fn)(logp)
            assert np.isfinite(float(loss)), (name, mode)
            np.testing.assert_array_equal(np.asarray(g)[0, 2:], 0.0)


def test_loss_registry_and_config_validation():
    assert {"vanilla", "gspo", "cispo"} <= set(alg.POLICY_LOSSES)
    with pytest.raises(ValueError, match="unknown policy loss"):
        alg.get_policy_loss("ppo2")
    with pytest.raises(ValueError, match="dual clip"):
        alg.ActorLossConfig(policy_loss="gspo", clip_c=3.0)
    with pytest.raises(ValueError, match="clip_c"):
        alg.get_policy_loss("cispo")(jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.ones(1), jnp.ones((1, 1)),
                                     clip_low=0.2, clip_high=0.2, agg="token-mean", clip_c=3.0)
    # actor_loss threads is_weights through to the registered loss.
    logp, old, adv, adv_bt, mask, w = _batch(2)
    cfg = alg.ActorLossConfig(policy_loss="cispo", clip_low=0.2, clip_high=0.28)
    loss, _ = alg.actor_loss(jnp.asarray(logp, jnp.float32), old, adv, mask, cfg, is_weights=w)
    np.testing.assert_allclose(float(loss), np_cispo(logp, old, adv_bt, mask, w, 0.2, 0.28, "token-mean")[0],
                               rtol=2e-5)


# ------------------------------------------------------------------ advantages


def np_reinforce_pp_baseline(rewards, group_ids, lengths=None, eps=1e-8):
    centered = []
    for r, g in zip(rewards, group_ids):
        group = [rewards[j] for j in range(len(rewards)) if group_ids[j] == g]
        centered.append(r - (sum(group) / len(group) if len(group) > 1 else 0.0))
    if lengths is None:
        values = np.array(centered)
    else:  # every token of sequence i carries A'_i: whiten over the batch's tokens
        values = np.concatenate([[a] * n for a, n in zip(centered, lengths)])
    mean, var = values.mean(), values.var(ddof=1)
    return (np.array(centered) - mean) / np.sqrt(var + eps)


@pytest.mark.parametrize("with_lengths", [False, True])
def test_reinforce_pp_baseline_matches_numpy(with_lengths):
    rng = np.random.default_rng(4)
    rewards = rng.integers(0, 2, size=12).astype(np.float64) + rng.normal(0, 0.1, 12)
    group_ids = np.array([0, 0, 0, 0, 5, 5, 5, 5, 9, 9, 9, 2])  # the last is a group of one
    lengths = rng.integers(1, 20, size=12)
    est = alg.get_advantage_estimator("reinforce_pp_baseline")
    got = est(rewards, group_ids, token_counts=lengths if with_lengths else None)
    want = np_reinforce_pp_baseline(rewards, group_ids, lengths if with_lengths else None)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ shaping


def test_overlong_penalty_matches_dapo_piecewise():
    max_len, cache = 20, 8

    def ref(length):
        if length <= max_len - cache:
            return 0.0
        if length <= max_len:
            return ((max_len - cache) - length) / cache
        return -1.0

    lengths = np.arange(0, 26)
    np.testing.assert_allclose(np.asarray(alg.overlong_penalty(lengths, max_len, cache)),
                               [ref(x) for x in lengths], rtol=1e-6, atol=1e-7)
    assert float(alg.overlong_penalty([20], 20, 20)[0]) == pytest.approx(-1.0)
    for bad in (0, -1, 21):
        with pytest.raises(ValueError, match="cache_len"):
            alg.overlong_penalty(lengths, max_len, bad)


def test_truncated_is_weights_match_numpy():
    rng = np.random.default_rng(8)
    mask = (np.arange(6)[None, :] < np.array([[6], [3], [1]])).astype(np.float32)
    old = rng.normal(-1, 1, (3, 6))
    rollout = old + rng.normal(0, 0.8, (3, 6))
    w, m = alg.truncated_is_weights(old, rollout, mask, cap=2.0)
    raw = np.exp(old - rollout)
    np.testing.assert_allclose(np.asarray(w), np.minimum(raw, 2.0) * mask, rtol=1e-5)
    valid = raw[mask > 0]
    np.testing.assert_allclose(float(m["tis_weight_mean"]), np.minimum(valid, 2.0).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(m["tis_weight_max"]), valid.max(), rtol=1e-5)
    np.testing.assert_allclose(float(m["tis_weight_min"]), valid.min(), rtol=1e-5)
    np.testing.assert_allclose(float(m["tis_capped_frac"]), (valid > 2.0).mean(), rtol=1e-6)
    # The weight is a constant: no gradient flows into either log-prob.
    g = jax.grad(lambda o: jnp.sum(alg.truncated_is_weights(o, rollout, mask, 2.0)[0]))(jnp.asarray(old))
    np.testing.assert_array_equal(np.asarray(g), 0.0)
    with pytest.raises(ValueError, match="cap"):
        alg.truncated_is_weights(old, rollout, mask, 0.0)


def test_kl_in_reward_matches_numpy():
    rng = np.random.default_rng(9)
    mask = (np.arange(5)[None, :] < np.array([[5], [2]])).astype(np.float32)
    scores = np.array([1.0, 0.0])
    token_rewards = np.asarray(alg.outcome_rewards_to_tokens(scores, mask))
    old, ref = rng.normal(-1, 1, (2, 5)), rng.normal(-1, 1, (2, 5))
    shaped, metrics = alg.kl_in_reward(token_rewards, old, ref, mask, coef=0.001)
    want = np.zeros((2, 5))
    for i in range(2):
        for t in range(5):
            if mask[i, t]:
                want[i, t] = token_rewards[i, t] - 0.001 * (old[i, t] - ref[i, t])
    np.testing.assert_allclose(np.asarray(shaped), want, rtol=1e-5, atol=1e-7)
    seq_kl = [((old[i] - ref[i]) * mask[i]).sum() / mask[i].sum() for i in range(2)]
    np.testing.assert_allclose(float(metrics["kl"]), np.mean(seq_kl), rtol=1e-5)
    with pytest.raises(ValueError, match="coefficient"):
        alg.kl_in_reward(token_rewards, old, ref, mask, coef=-1.0)
