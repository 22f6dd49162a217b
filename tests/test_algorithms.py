"""Advantage estimators and losses against plain NumPy references (loops, written independently)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import algorithms as alg

MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def _right_padded_mask(rng, b, t, min_len=1):
    lengths = rng.integers(min_len, t + 1, size=b)
    return (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)


# ------------------------------------------------------------------ NumPy references


def np_group_advantages(rewards, group_ids, kind, eps=1e-6):
    out = np.zeros(len(rewards))
    for i, (r, g) in enumerate(zip(rewards, group_ids)):
        group = [rewards[j] for j in range(len(rewards)) if group_ids[j] == g]
        n = len(group)
        if n == 1:
            continue
        mean = sum(group) / n
        if kind == "grpo":
            std = (sum((x - mean) ** 2 for x in group) / (n - 1)) ** 0.5
            out[i] = (r - mean) / (std + eps)
        elif kind == "drgrpo":
            out[i] = r - mean
        else:  # rloo
            out[i] = r - (sum(group) - r) / (n - 1)
    return out


def np_aggregate(v, m, mode, max_len=None):
    b, t = v.shape
    if mode == "token-mean":
        return (v * m).sum() / m.sum()
    if mode == "seq-mean-token-sum":
        return np.mean([(v[i] * m[i]).sum() for i in range(b)])
    if mode == "seq-mean-token-mean":
        return np.mean([(v[i] * m[i]).sum() / m[i].sum() for i in range(b)])
    return (v * m).sum() / (b * (max_len or t))


def np_policy_loss(logp, old, adv_bt, m, clip_low, clip_high, clip_c, mode):
    b, t = logp.shape
    loss = np.zeros((b, t))
    clipped = np.zeros((b, t))
    for i in range(b):
        for j in range(t):
            a, ratio = adv_bt[i, j], np.exp(logp[i, j] - old[i, j])
            l1 = -a * ratio
            l2 = -a * min(max(ratio, 1 - clip_low), 1 + clip_high)
            loss[i, j] = max(l1, l2)
            clipped[i, j] = l2 > l1
            if clip_c is not None and a < 0:
                loss[i, j] = min(loss[i, j], -a * clip_c)
    clipfrac = (clipped * m).sum() / m.sum()
    approx_kl = ((old - logp) * m).sum() / m.sum()
    return np_aggregate(loss, m, mode), clipfrac, approx_kl


def np_gae(rewards, values, mask, gamma, lam):
    b, t = rewards.shape
    adv = np.zeros((b, t))
    for i in range(b):
        next_value, running = 0.0, 0.0
        for j in reversed(range(t)):
            if mask[i, j] == 0:
                adv[i, j] = running
                continue
            delta = rewards[i, j] + gamma * next_value - values[i, j]
            running = delta + gamma * lam * running
            next_value = values[i, j]
            adv[i, j] = running
    returns = (adv + values) * mask
    adv = adv * mask
    valid = adv[mask > 0]
    whitened = (adv - valid.mean()) / np.sqrt(valid.var(ddof=1) + 1e-8)
    return whitened * mask, returns


# ------------------------------------------------------------------ advantages


@pytest.mark.parametrize("kind", ["grpo", "drgrpo", "rloo"])
def test_group_advantages_match_numpy(kind):
    rng = np.random.default_rng(0)
    # Arbitrary ids (negative, sparse, huge), groups of different sizes, including singletons.
    group_ids = np.array([7, -3, 7, 10**6, -3, 7, 42, -3, 7, 99, 99, 99])
    rewards = rng.normal(size=group_ids.shape).astype(np.float32)
    rewards[-3:] = 1.0  # an all-equal group
    got = alg.get_advantage_estimator(kind)(rewards, group_ids)
    want = np_group_advantages(rewards.astype(np.float64), group_ids, kind)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got)[[3, 6]], 0.0)  # groups of one
    np.testing.assert_array_equal(np.asarray(got)[-3:], 0.0)  # all-equal group


def test_drgrpo_is_grpo_without_std():
    rng = np.random.default_rng(1)
    rewards, group_ids = rng.integers(0, 2, size=16).astype(np.float32), np.repeat(np.arange(4), 4)
    np.testing.assert_array_equal(
        np.asarray(alg.drgrpo_advantages(rewards, group_ids)),
        np.asarray(alg.grpo_advantages(rewards, group_ids, norm_by_std=False)),
    )


def test_group_of_one_gets_zero():
    for fn in (alg.grpo_advantages, alg.drgrpo_advantages, alg.rloo_advantages):
        np.testing.assert_array_equal(np.asarray(fn(np.array([3.0]), np.array([5]))), [0.0])
        np.testing.assert_array_equal(np.asarray(fn(np.array([1.0, 0.0]), np.array([0, 1]))), 0.0)


def test_grpo_under_jit_with_jax_inputs():
    rng = np.random.default_rng(2)
    rewards = jnp.asarray(rng.integers(0, 2, size=24), jnp.float32)
    # 1-shot style: one example repeated on 3 rows of 8 samples; each row its own group.
    group_ids = jnp.asarray(np.repeat([11, 4, 30], 8))
    got = jax.jit(alg.grpo_advantages)(rewards, group_ids)
    want = np_group_advantages(np.asarray(rewards, np.float64), np.asarray(group_ids), "grpo")
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    eager = alg.grpo_advantages(np.asarray(rewards), np.asarray(group_ids))
    np.testing.assert_allclose(np.asarray(got), np.asarray(eager), rtol=1e-6, atol=1e-6)


def test_gae_matches_python_loop():
    rng = np.random.default_rng(3)
    b, t = 5, 9
    mask = _right_padded_mask(rng, b, t)
    scores = rng.normal(size=b).astype(np.float32)
    rewards = np.asarray(alg.outcome_rewards_to_tokens(scores, mask))
    lengths = mask.sum(1).astype(int)
    for i in range(b):  # the score sits on the last response token only
        want_row = np.zeros(t, np.float32)
        want_row[lengths[i] - 1] = scores[i]
        np.testing.assert_array_equal(rewards[i], want_row)
    values = rng.normal(size=(b, t)).astype(np.float32)
    values[mask == 0] = np.nan  # padding garbage must not leak
    adv, ret = alg.gae_advantages(rewards, values, mask, gamma=0.99, lam=0.95)
    want_adv, want_ret = np_gae(rewards, np.nan_to_num(values), mask, 0.99, 0.95)
    np.testing.assert_allclose(np.asarray(adv), want_adv, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), want_ret, rtol=1e-4, atol=1e-5)
    assert "gae" in alg.VALUE_BASED_ESTIMATORS
    assert alg.get_advantage_estimator("gae") is alg.gae_advantages


def test_unknown_estimator_raises():
    with pytest.raises(ValueError, match="grpo"):
        alg.get_advantage_estimator("ppo2")


def test_outcome_advantages_pass_each_estimator_its_declared_inputs():
    rng = np.random.default_rng(5)
    group_ids = np.repeat(np.arange(3), 4)
    rewards, lengths = rng.normal(size=12), rng.integers(1, 30, size=12)
    inputs = dict(norm_by_std=False, token_counts=lengths)  # what the loop always offers
    assert alg.ESTIMATOR_INPUTS["grpo"] == ("norm_by_std",)
    assert alg.ESTIMATOR_INPUTS["reinforce_pp_baseline"] == ("token_counts",)
    assert alg.ESTIMATOR_INPUTS["drgrpo"] == alg.ESTIMATOR_INPUTS["rloo"] == ()
    # grpo honours norm_by_std=False (= Dr.GRPO); the others ignore inputs they did not declare.
    for name, ref in (("grpo", "drgrpo"), ("drgrpo", "drgrpo"), ("rloo", "rloo")):
        np.testing.assert_allclose(np.asarray(alg.outcome_advantages(name, rewards, group_ids, **inputs)),
                                   np_group_advantages(rewards, group_ids, ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(alg.outcome_advantages("grpo", rewards, group_ids)),
                               np_group_advantages(rewards, group_ids, "grpo"), rtol=1e-5, atol=1e-5)
    weighted = np.asarray(alg.outcome_advantages("reinforce_pp_baseline", rewards, group_ids, **inputs))
    np.testing.assert_array_equal(weighted, np.asarray(
        alg.reinforce_pp_baseline_advantages(rewards, group_ids, token_counts=lengths)))
    assert not np.allclose(weighted, alg.reinforce_pp_baseline_advantages(rewards, group_ids))
    with pytest.raises(ValueError, match="critic"):
        alg.outcome_advantages("gae", rewards, group_ids)


def test_registered_inputs_are_checked_and_passed(monkeypatch):
    from rlvr_jax.algorithms import advantages

    for registry in ("ADVANTAGE_ESTIMATORS", "ESTIMATOR_INPUTS"):  # register into throwaway copies
        monkeypatch.setattr(advantages, registry, dict(getattr(advantages, registry)))

    @advantages.register_advantage_estimator("by_length", inputs=("token_counts",))
    def by_length(rewards, group_ids, *, token_counts):  # token_counts required: a missed input fails
        return jnp.asarray(token_counts, jnp.float32)

    got = advantages.outcome_advantages("by_length", [1.0, 0.0], [0, 0], norm_by_std=False,
                                        token_counts=np.array([3, 5]))
    np.testing.assert_array_equal(np.asarray(got), [3.0, 5.0])
    with pytest.raises(ValueError, match="unknown inputs"):
        advantages.register_advantage_estimator("bad", inputs=("lengths",))
    with pytest.raises(ValueError, match="value-based"):
        advantages.register_advantage_estimator("bad", needs_values=True, inputs=("token_counts",))


# ------------------------------------------------------------------ KL, entropy, aggregation


def test_kl_penalty_kinds():
    rng = np.random.default_rng(4)
    logp = rng.normal(size=(3, 7)).astype(np.float32)
    ref = rng.normal(size=(3, 7)).astype(np.float32)
    d = logp.astype(np.float64) - ref
    want = {
        "k1": d,
        "abs": np.abs(d),
        "k2": d**2 / 2,
        "k3": np.clip(np.exp(-d) + d - 1, -10, 10),
        "low_var_kl": np.clip(np.exp(ref - logp) - (ref - logp) - 1, -10, 10),  # verl's form
    }
    for kind, w in want.items():
        got = np.asarray(alg.kl_penalty(logp, ref, kind))
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6, err_msg=kind)
    # The clamp holds on extreme values, and its gradient stays finite.
    extreme = jnp.array([-50.0, -3.0, 0.0, 20.0, 50.0])
    np.testing.assert_array_equal(np.asarray(alg.kl_penalty(extreme, 0.0, "k3"))[[0, 3, 4]], 10.0)
    grad = jax.grad(lambda x: alg.kl_penalty(x, 0.0, "k3").sum())(extreme)
    assert np.all(np.isfinite(np.asarray(grad)))
    with pytest.raises(ValueError, match="low_var_kl"):
        alg.kl_penalty(logp, ref, "k4")


def test_entropy_from_logits():
    rng = np.random.default_rng(5)
    logits = (rng.normal(size=(2, 3, 11)) * 5).astype(np.float32)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = -(p * np.log(p)).sum(-1)
    got = alg.entropy_from_logits(logits)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
    got_bf16 = alg.entropy_from_logits(jnp.asarray(logits, jnp.bfloat16))
    assert got_bf16.dtype == jnp.float32 and got_bf16.shape == (2, 3)
    # Huge logits are stable; -inf (masked vocabulary) entries contribute 0.
    big = jnp.array([[1e4, 1e4, -jnp.inf, 0.0]])
    np.testing.assert_allclose(np.asarray(alg.entropy_from_logits(big)), [np.log(2)], rtol=1e-5)
    grad = jax.grad(lambda z: alg.entropy_from_logits(z).sum())(big)
    assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_matches_numpy(mode):
    rng = np.random.default_rng(6)
    mask = _right_padded_mask(rng, 6, 10)
    values = rng.normal(size=(6, 10)).astype(np.float32)
    want = np_aggregate(values.astype(np.float64), mask, mode)
    values[mask == 0] = np.nan  # ignored, not multiplied by zero
    np.testing.assert_allclose(float(alg.aggregate(values, mask, mode)), want, rtol=1e-5)
    if mode == "seq-mean-token-sum-norm":
        want16 = np_aggregate(np.nan_to_num(values).astype(np.float64), mask, mode, max_len=16)
        np.testing.assert_allclose(float(alg.aggregate(values, mask, mode, 16)), want16, rtol=1e-5)
    denom = float(alg.aggregation_denominator(mask, mode, max_len=16))
    assert denom == {"token-mean": mask.sum(), "seq-mean-token-sum-norm": 6 * 16}.get(mode, 6)


def test_aggregate_bad_mode_raises():
    with pytest.raises(ValueError, match="token-mean"):
        alg.aggregate(np.zeros((2, 3)), np.ones((2, 3)), "mean")
    with pytest.raises(ValueError, match="seq-mean-token-mean"):
        alg.aggregation_denominator(np.ones((2, 3)), "sum")


# ------------------------------------------------------------------ policy and value losses


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("clip_c", [None, 3.0])
def test_policy_loss_matches_numpy(per_token, clip_c):
    rng = np.random.default_rng(7)
    b, t = 6, 8
    mask = _right_padded_mask(rng, b, t)
    old = rng.normal(-2, 1, size=(b, t)).astype(np.float32)
    logp = (old + rng.normal(0, 0.8, size=(b, t))).astype(np.float32)  # many clipped ratios
    adv = rng.normal(size=(b, t) if per_token else b).astype(np.float32)
    adv_bt = adv if per_token else np.repeat(adv[:, None], t, 1)
    for mode in MODES:
        loss, metrics = alg.policy_loss(
            logp, old, adv, mask, clip_low=0.2, clip_high=0.28, clip_c=clip_c, agg=mode
        )
        want, clipfrac, approx_kl = np_policy_loss(logp, old, adv_bt, mask, 0.2, 0.28, clip_c, mode)
        np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(metrics["clipfrac"]), clipfrac, rtol=1e-6)
        np.testing.assert_allclose(float(metrics["approx_kl"]), approx_kl, rtol=1e-5, atol=1e-6)
    assert 0 < float(metrics["clipfrac"]) < 1
    ratio = np.exp(logp - old)[mask > 0]
    np.testing.assert_allclose(float(metrics["ratio_max"]), ratio.max(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["ratio_min"]), ratio.min(), rtol=1e-5)


def test_policy_gradient_zero_on_clipped_tokens():
    # Tokens: (A, ratio) = (+1, 1.5) clipped; (-1, 0.5) clipped; (+1, 0.5) not clipped
    # (the unclipped term is larger); (+1, 1.1) inside the range; (-1, 1.1) inside.
    adv = jnp.array([[1.0, -1.0, 1.0, 1.0, -1.0]])
    old = jnp.zeros((1, 5))
    logp = jnp.log(jnp.array([[1.5, 0.5, 0.5, 1.1, 1.1]]))
    mask = jnp.ones((1, 5))
    grad_fn = jax.grad(lambda lp: alg.policy_loss(lp, old, adv, mask)[0])
    g = np.asarray(grad_fn(logp))[0]
    np.testing.assert_array_equal(g[:2], 0.0)
    # d(-A ratio)/dlogp = -A ratio, token-mean over 5 tokens.
    np.testing.assert_allclose(g[2:], [-0.5 / 5, -1.1 / 5, 1.1 / 5], rtol=1e-5)
    assert float(alg.policy_loss(logp, old, adv, mask)[1]["clipfrac"]) == pytest.approx(0.4)


def test_padding_garbage_does_not_leak():
    # Padding log-probs of -inf / nan must give a finite loss and a zero, finite gradient there.
    mask = jnp.array([[1.0, 1.0, 0.0, 0.0]])
    logp = jnp.array([[-1.0, -2.0, -jnp.inf, jnp.nan]])
    old = jnp.array([[-1.2, -1.9, 0.0, -jnp.inf]])
    cfg = alg.ActorLossConfig(kl_coef=0.1, kl_kind="k2", entropy_coeff=0.01)
    for mode in MODES:
        loss_fn = lambda lp: alg.actor_loss(
            lp, old, jnp.array([1.0]), mask, dataclasses.replace(cfg, agg=mode),
            entropy=jnp.ones((1, 4)), ref_logp=old,
        )[0]
        loss, g = jax.value_and_grad(loss_fn)(logp)
        assert np.isfinite(float(loss)), mode
        np.testing.assert_array_equal(np.asarray(g)[0, 2:], 0.0)
        assert np.all(np.isfinite(np.asarray(g))), mode


def test_dual_clip():
    # A < 0 with an exploded ratio: standard PPO would charge -A * ratio = 10; dual clip caps it
    # at -A * clip_c = 3 with zero gradient. Positive advantages are never dual-clipped.
    adv = jnp.array([[-1.0, -1.0, 2.0]])
    logp = jnp.log(jnp.array([[10.0, 1.1, 10.0]]))
    old, mask = jnp.zeros((1, 3)), jnp.ones((1, 3))
    loss_fn = lambda lp, c: alg.policy_loss(lp, old, adv, mask, agg="seq-mean-token-sum", clip_c=c)
    (loss, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(logp, 3.0)
    # Token losses: 3 (capped), 1.1 (inside range), -2 * 1.2 (clipped high).
    assert float(loss) == pytest.approx(3.0 + 1.1 - 2.4, rel=1e-5)
    assert float(metrics["clipfrac_lower"]) == pytest.approx(1 / 3)
    np.testing.assert_allclose(np.asarray(g)[0], [0.0, 1.1, 0.0], rtol=1e-5)
    assert float(loss_fn(logp, None)[0]) == pytest.approx(10.0 + 1.1 - 2.4, rel=1e-5)
    with pytest.raises(ValueError, match="clip_c"):
        alg.policy_loss(logp, old, adv, mask, clip_c=0.5)


def test_value_loss_matches_numpy():
    rng = np.random.default_rng(8)
    b, t, c = 4, 6, 0.2
    mask = _right_padded_mask(rng, b, t)
    v, v_old, ret = (rng.normal(size=(b, t)).astype(np.float32) for _ in range(3))
    err = np.maximum((v - ret) ** 2, (np.clip(v, v_old - c, v_old + c) - ret) ** 2)
    err_clipped = (np.clip(v, v_old - c, v_old + c) - ret) ** 2
    clipfrac = ((err_clipped > (v - ret) ** 2) * mask).sum() / mask.sum()
    for mode in MODES:
        loss, metrics = alg.value_loss(v, v_old, ret, mask, cliprange_value=c, agg=mode)
        np.testing.assert_allclose(float(loss), 0.5 * np_aggregate(err, mask, mode), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["vf_clipfrac"]), clipfrac, rtol=1e-6)


# ------------------------------------------------------------------ micro-batch accumulation


@pytest.mark.parametrize("mode", MODES)
def test_microbatch_accumulation_equals_full_batch(mode):
    rng = np.random.default_rng(9)
    b, t, max_len = 8, 12, 16
    # Very different lengths per micro-batch, so averaging micro-batch losses would be wrong.
    mask = _right_padded_mask(rng, b, t)
    mask[:4, 3:] = 0.0
    old = rng.normal(-2, 1, size=(b, t)).astype(np.float32)
    logp = jnp.asarray(old + rng.normal(0, 0.3, size=(b, t)), jnp.float32)
    ref = jnp.asarray(old + rng.normal(0, 0.3, size=(b, t)), jnp.float32)
    entropy = jnp.asarray(rng.uniform(0, 3, size=(b, t)), jnp.float32)
    adv = jnp.asarray(rng.normal(size=b), jnp.float32)
    cfg = alg.ActorLossConfig(
        clip_high=0.28, clip_c=3.0, entropy_coeff=0.01, kl_coef=0.1, agg=mode, max_len=max_len
    )

    def loss_fn(lp, rows, denom=None):
        return alg.actor_loss(
            lp, old[rows], adv[rows], mask[rows], cfg, entropy=entropy[rows], ref_logp=ref[rows],
            denom=denom,
        )[0]

    full_loss, full_grad = jax.value_and_grad(loss_fn)(logp, slice(None))
    denom = alg.aggregation_denominator(mask, mode, max_len)
    acc_loss, acc_grad = 0.0, []
    for rows in (slice(0, 2), slice(2, 5), slice(5, 8)):  # unequal micro-batches
        loss, grad = jax.value_and_grad(loss_fn)(logp[rows], rows, denom)
        acc_loss, acc_grad = acc_loss + loss, acc_grad + [grad]
    np.testing.assert_allclose(float(acc_loss), float(full_loss), rtol=1e-5)
    acc_grad = np.concatenate(acc_grad)
    np.testing.assert_allclose(acc_grad, np.asarray(full_grad), rtol=1e-5, atol=1e-8)


def test_actor_loss_terms_and_config_validation():
    rng = np.random.default_rng(10)
    mask = _right_padded_mask(rng, 3, 5)
    logp = rng.normal(size=(3, 5)).astype(np.float32)
    ref = rng.normal(size=(3, 5)).astype(np.float32)
    ent = rng.uniform(size=(3, 5)).astype(np.float32)
    adv = rng.normal(size=3).astype(np.float32)
    cfg = alg.ActorLossConfig(entropy_coeff=0.001, kl_coef=0.5, kl_kind="k2")
    loss, metrics = alg.actor_loss(logp, logp, adv, mask, cfg, entropy=ent, ref_logp=ref)
    pg = alg.policy_loss(logp, logp, adv, mask)[0]
    want = pg - 0.001 * np_aggregate(ent, mask, "token-mean") + 0.5 * np_aggregate(
        (logp - ref) ** 2 / 2, mask, "token-mean"
    )
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
    assert set(metrics) >= {"pg_loss", "entropy", "kl_loss", "clipfrac", "approx_kl"}
    with pytest.raises(ValueError, match="vanilla"):
        alg.ActorLossConfig(policy_loss="gspo2")
    with pytest.raises(ValueError, match="token-mean"):
        alg.ActorLossConfig(agg="seq-sum")
    with pytest.raises(ValueError, match="k3"):
        alg.ActorLossConfig(kl_kind="k5")
    with pytest.raises(ValueError, match="ref_logp"):
        alg.actor_loss(logp, logp, adv, mask, cfg)
