"""The training side of an RL step: log-probs, optimizer, update step (GRPO and PPO), on tiny models.

References are independent: NumPy log-softmax / entropy of `forward` logits, a NumPy AdamW, the
same update with one micro-batch, and the same update on one device.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import algorithms
from rlvr_jax import sharding as shd
from rlvr_jax import training as tr
from rlvr_jax.models import ModelConfig, forward, init_params, param_logical_axes

CFG = ModelConfig(
    model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
    num_heads=4, num_kv_heads=2, head_dim=16,
)
P, R, TEMP = 6, 10, 0.7
# lr 1 / eps 1 Adam: the first update is ~g / (|g| + 1), so params after one step compare gradients
# closely (with the usual eps a step is ~lr * sign(g), blind to gradient errors).
GRAD_PROBE = tr.OptimizerConfig(learning_rate=1.0, eps=1.0, weight_decay=0.0, grad_clip=None)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0))


def make_batch(b=8, seed=0):
    """Random prompts (left-padded to P) + responses (right-padded to R); one row has an empty response."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, CFG.vocab_size, (b, P + R)).astype(np.int32)
    attn = np.ones((b, P + R), np.int32)
    for i in range(b):
        prompt_len, resp_len = rng.integers(1, P + 1), (0 if i == 3 else rng.integers(1, R + 1))
        attn[i, : P - prompt_len] = 0
        attn[i, P + resp_len :] = 0
    ids = ids * attn
    return {"input_ids": ids, "attention_mask": attn, "response_mask": attn[:, P:].copy()}


def rl_batch(params, b=8, seed=0, noise=0.0):
    """A full actor batch: old/ref log-probs from the model (+ noise), random advantages."""
    batch = make_batch(b, seed)
    logp = np.asarray(tr.compute_logprobs(params, CFG, batch, temperature=TEMP)["logp"])
    rng = np.random.default_rng(seed + 1)
    batch["old_logp"] = (logp + noise * rng.normal(size=logp.shape)).astype(np.float32)
    batch["ref_logp"] = (logp + noise * rng.normal(size=logp.shape)).astype(np.float32)
    batch["advantages"] = rng.normal(size=(b,)).astype(np.float32)
    return batch


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def to_np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


def run_update(params, batch, ucfg, opt_cfg=GRAD_PROBE, sharder=None):
    axes = param_logical_axes(CFG) if sharder else None
    state = tr.create_train_state(params, opt_cfg, sharder, logical_axes=axes)
    state, metrics = tr.make_update_fn(CFG, ucfg, opt_cfg, sharder)(state, batch)
    return state, {k: float(v) for k, v in metrics.items()}


# --------------------------------------------------------------------------------------- log-probs


def test_logprobs_and_entropy_match_numpy(params):
    batch = make_batch()
    out = tr.compute_logprobs(params, CFG, batch, temperature=TEMP, chunk=3, micro_batch_size=2, with_entropy=True)
    logits = np.asarray(forward(params, CFG, batch["input_ids"], batch["attention_mask"]), np.float64) / TEMP
    logits_brv = logits[:, P - 1 : P + R - 1]  # position P+t-1 predicts response token t
    logp_brv = np_log_softmax(logits_brv)
    mask = batch["response_mask"].astype(bool)
    ref_logp = np.take_along_axis(logp_brv, batch["input_ids"][:, P:, None], -1)[..., 0]
    ref_ent = -np.sum(np.exp(logp_brv) * logp_brv, -1)
    np.testing.assert_allclose(np.asarray(out["logp"])[mask], ref_logp[mask], atol=2e-5)
    np.testing.assert_allclose(np.asarray(out["entropy"])[mask], ref_ent[mask], atol=2e-5)
    assert np.all(np.asarray(out["logp"])[~mask] == 0)


def test_chunked_equals_unchunked(params):
    batch = make_batch()
    kw = dict(temperature=TEMP, with_entropy=True)
    whole = tr.compute_logprobs(params, CFG, batch, chunk=R, **kw)
    chunked = tr.compute_logprobs(params, CFG, batch, chunk=4, micro_batch_size=4, **kw)  # 4 does not divide R
    for k in whole:
        np.testing.assert_allclose(np.asarray(chunked[k]), np.asarray(whole[k]), atol=1e-6)


# --------------------------------------------------------------------------------------- optimizer


def test_adamw_step_matches_numpy():
    cfg = tr.OptimizerConfig(learning_rate=0.1, weight_decay=0.01, grad_clip=1.0)
    p0 = {"w": jnp.asarray(np.linspace(-1, 1, 12).reshape(3, 4), jnp.float32)}
    state = tr.create_train_state(p0, cfg)
    tx = tr.make_optimizer(cfg)
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(3, 4)) * s for s in (2.0, 0.05)]  # first is clipped, second is not
    w, m, v = np.asarray(p0["w"], np.float64), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        state = tr.apply_gradients(state, {"w": jnp.asarray(g, jnp.float32)}, tx)
        g = g * min(1.0, 1.0 / np.linalg.norm(g))
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        m_hat, v_hat = m / (1 - 0.9**t), v / (1 - 0.999**t)
        w = w - 0.1 * (m_hat / (np.sqrt(v_hat) + 1e-8) + 0.01 * w)
    np.testing.assert_allclose(np.asarray(state.params["w"]), w, rtol=1e-5, atol=1e-6)
    assert int(state.step) == 2


def test_optimizer_step_needs_no_params_sized_temporary():
    """The clip is one scalar multiply that XLA folds into the moments' updates: with the state donated the
    step runs in place (optax's divide-under-select clip materialised the clipped gradients: temporaries
    the size of the params)."""
    cfg = tr.OptimizerConfig(learning_rate=0.1, grad_clip=1.0)
    shapes = {"a": (8, 256, 128), "b": (512, 256), "c": (256,)}
    params = {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in shapes.items()}
    tx = tr.make_optimizer(cfg)
    state = tr.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                          opt_state=jax.eval_shape(tx.init, params), rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    step = jax.jit(lambda s, g: tr.apply_gradients(s, g, tx), donate_argnums=0)
    temp = step.lower(state, params).compile().memory_analysis().temp_size_in_bytes
    param_bytes = sum(np.prod(v) * 4 for v in shapes.values())
    assert temp < 0.05 * param_bytes, (temp, param_bytes)


def test_skipped_step_keeps_the_whole_state():
    cfg = tr.OptimizerConfig(learning_rate=0.1)
    state = tr.create_train_state({"w": jnp.ones((3, 4), jnp.float32)}, cfg)
    tx = tr.make_optimizer(cfg)
    state = tr.apply_gradients(state, {"w": jnp.full((3, 4), 0.5, jnp.float32)}, tx)  # non-zero moments
    before = to_np(state)
    grads = {"w": jnp.full((3, 4), 2.0, jnp.float32)}
    apply = jax.jit(lambda s, g, skip: tr.apply_gradients(s, g, tx, skip=skip))
    skipped = to_np(apply(state, grads, jnp.asarray(True)))
    jax.tree.map(np.testing.assert_array_equal, skipped, before)  # params, moments, counts, step
    taken = to_np(apply(state, grads, jnp.asarray(False)))
    unskipped = to_np(jax.jit(lambda s, g: tr.apply_gradients(s, g, tx))(state, grads))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), taken, unskipped)  # fusion order
    assert int(taken.step) == int(before.step) + 1


def test_create_train_state_donates_only_when_asked():
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    cfg = tr.OptimizerConfig()
    kept = {"w": jnp.asarray(w)}
    tr.create_train_state(kept, cfg)
    assert not kept["w"].is_deleted()  # the default copies: a reference model may share these weights
    given = {"w": jnp.asarray(w)}
    state = tr.create_train_state(given, cfg, donate=True)
    assert given["w"].is_deleted()
    np.testing.assert_array_equal(np.asarray(state.params["w"]), w)


def test_bf16_first_moment():
    rng = np.random.default_rng(1)
    p0 = {"w": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32)}
    grads = [{"w": jnp.asarray(rng.normal(size=(8, 8)) * 0.1, jnp.float32)} for _ in range(3)]
    runs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = tr.OptimizerConfig(learning_rate=1e-2, mu_dtype=dtype)
        state, tx = tr.create_train_state(p0, cfg), tr.make_optimizer(cfg)
        trail = []
        for g in grads:
            state = tr.apply_gradients(state, g, tx)
            trail.append(np.asarray(state.params["w"]))
        mu = jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
        assert [x.mu["w"].dtype for x in mu if hasattr(x, "mu")] == [jnp.dtype(dtype)]
        runs[dtype] = trail
    # Step 1 uses the float32 moment before it is stored: identical; later steps differ by bf16 rounding.
    np.testing.assert_array_equal(runs["bfloat16"][0], runs["float32"][0])
    np.testing.assert_allclose(runs["bfloat16"][2], runs["float32"][2], rtol=0, atol=1e-4)
    assert not np.array_equal(runs["bfloat16"][2], runs["float32"][2])
    with pytest.raises(ValueError, match="mu_dtype"):
        tr.OptimizerConfig(mu_dtype="float16")


def test_schedules():
    def lr(**kw):
        schedule = tr.make_schedule(tr.OptimizerConfig(learning_rate=1.0, **kw))
        return [float(schedule(s)) for s in (0, 2, 4, 8)]

    assert lr() == [1.0, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(lr(schedule="linear_warmup", warmup_steps=4), [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(
        lr(schedule="cosine", warmup_steps=4, total_steps=8, min_lr_ratio=0.1), [0.0, 0.5, 1.0, 0.1], atol=1e-6
    )
    with pytest.raises(ValueError, match="unknown lr schedule"):
        tr.OptimizerConfig(schedule="step")


# --------------------------------------------------------------------------------------- update


def test_micro_batch_accumulation_matches_full_batch(params):
    """Update level, seq-mean-token-mean (per-sequence means: the mode most easily broken)."""
    batch = rl_batch(params, noise=0.2)
    base = tr.UpdateConfig(
        temperature=TEMP, agg_mode="seq-mean-token-mean", entropy_coeff=0.01, use_kl_loss=True, kl_coef=0.1,
        logprob_chunk=4,
    )
    full, m_full = run_update(params, batch, base)
    micro, m_micro = run_update(params, batch, dataclasses.replace(base, micro_batch_size=2))
    assert max_diff(to_np(full.params), to_np(micro.params)) < 2e-6
    for k in ("loss", "pg_loss", "entropy", "kl", "clipfrac", "approx_kl", "ratio_mean", "ratio_max", "grad_norm"):
        np.testing.assert_allclose(m_micro[k], m_full[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert m_full["clipfrac"] > 0  # the noisy old log-probs exercise the clipped branch


def test_micro_batch_gradients_sum_to_full_batch_all_modes(params):
    """Loss level, every aggregation mode in one compiled program: micro-batch shares computed with
    the mini-batch denominator sum to the full-batch loss and gradient."""
    batch = {k: jnp.asarray(v) for k, v in rl_batch(params, noise=0.2).items()}
    modes = sorted(algorithms.AGG_MODES)

    @jax.jit
    def grads_by_mode(params):
        out = {}
        for mode in modes:
            ucfg = tr.UpdateConfig(temperature=TEMP, agg_mode=mode, entropy_coeff=0.01, use_kl_loss=True)
            grad_fn = jax.grad(lambda p, b, d: tr.make_actor_loss_fn(CFG, ucfg)(p, b, d)[0])
            denom = algorithms.aggregation_denominator(batch["response_mask"], mode)
            halves = [{k: v[i::2] for k, v in batch.items()} for i in range(2)]
            micro = jax.tree.map(jnp.add, *(grad_fn(params, h, denom) for h in halves))
            out[mode] = (grad_fn(params, batch, denom), micro)
        return out

    for mode, (full, micro) in grads_by_mode(params).items():
        scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(to_np(full)))
        assert max_diff(to_np(full), to_np(micro)) < 1e-5 * scale, mode


def test_mesh_update_matches_single_device(params):
    """(data=2, fsdp=2, tensor=2) with 2 micro-batches == one device with one full micro-batch
    (token-mean accumulation is checked here too)."""
    batch = rl_batch(params, noise=0.2)
    ucfg = tr.UpdateConfig(temperature=TEMP, entropy_coeff=0.01, use_kl_loss=True, logprob_chunk=4)
    single, m_single = run_update(params, batch, ucfg)
    sharder = shd.Sharder(shd.make_mesh((2, 2, 2)))
    sharded_params = jax.device_put(params, tr.params_shardings(CFG, sharder))
    sharded, m_sharded = run_update(
        sharded_params, batch, dataclasses.replace(ucfg, micro_batch_size=4), sharder=sharder
    )
    assert sharded.params["layers"]["mlp"]["up_proj"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor"
    )
    assert max_diff(to_np(single.params), to_np(sharded.params)) < 1e-5
    for k in ("loss", "entropy", "kl", "clipfrac", "grad_norm"):
        np.testing.assert_allclose(m_sharded[k], m_single[k], rtol=1e-5, atol=1e-7, err_msg=k)
    lp_single = tr.compute_logprobs(params, CFG, batch, temperature=TEMP)["logp"]
    lp_sharded = tr.compute_logprobs(sharded_params, CFG, batch, temperature=TEMP, micro_batch_size=4, sharder=sharder)
    np.testing.assert_allclose(np.asarray(lp_sharded["logp"]), np.asarray(lp_single), atol=1e-5)


@pytest.fixture(scope="module")
def grpo_update():
    """One compiled GRPO update (batch of 4) shared by the tests below; returns a fresh-state runner."""
    opt = tr.OptimizerConfig(learning_rate=1e-3)
    update = tr.make_update_fn(CFG, tr.UpdateConfig(temperature=TEMP), opt)

    def run(params, batch):
        state, metrics = update(tr.create_train_state(params, opt), batch)
        return state, {k: float(v) for k, v in metrics.items()}

    return run


def sign_batch(params):
    batch = make_batch(b=4, seed=3)
    batch["old_logp"] = np.asarray(tr.compute_logprobs(params, CFG, batch, temperature=TEMP)["logp"])
    batch["advantages"] = np.array([1.0, -1.0, 0.0, 0.0], np.float32)  # row 3 is empty anyway
    return batch


def test_advantage_sign_moves_logprob(params, grpo_update):
    batch = sign_batch(params)
    state, metrics = grpo_update(params, batch)
    new = np.asarray(tr.compute_logprobs(state.params, CFG, batch, temperature=TEMP)["logp"])
    seq_before, seq_after = batch["old_logp"].sum(-1), new.sum(-1)
    assert seq_after[0] > seq_before[0] + 1e-3
    assert seq_after[1] < seq_before[1] - 1e-3
    # First update: old log-probs came from the same function at the same temperature.
    assert abs(metrics["ratio_min"] - 1) < 1e-5 and abs(metrics["ratio_max"] - 1) < 1e-5
    assert metrics["clipfrac"] == 0 and abs(metrics["approx_kl"]) < 1e-6
    assert metrics["finite"] == 1 and int(state.step) == 1


def test_non_finite_update_keeps_state(params, grpo_update):
    batch = sign_batch(params)
    batch["advantages"][0] = np.nan
    state, metrics = grpo_update(params, batch)
    assert metrics["finite"] == 0 and metrics["num_skipped"] == 1
    assert int(state.step) == 0
    assert max_diff(to_np(state.params), to_np(params)) == 0


def test_epochs_mini_batches_and_shuffle(params):
    batch = rl_batch(params)
    ucfg = tr.UpdateConfig(temperature=TEMP, ppo_epochs=2, mini_batch_size=4, micro_batch_size=2, shuffle=True)
    opt = tr.OptimizerConfig(learning_rate=1e-3)
    state, metrics = run_update(params, batch, ucfg, opt)
    assert int(state.step) == 4 and metrics["num_steps"] == 4 and metrics["finite"] == 1
    assert metrics["num_tokens"] == 2 * batch["attention_mask"].sum()
    assert metrics["ratio_max"] > 1 + 1e-6  # later mini-batches see moved params
    with pytest.raises(ValueError, match="multiple of mini_batch_size"):
        run_update(params, batch, dataclasses.replace(ucfg, mini_batch_size=3), opt)


# --------------------------------------------------------------------------------------- PPO critic


def test_ppo_critic_and_gae(params):
    batch = make_batch(seed=5)
    critic = tr.critic_params_from_model(params, CFG, jax.random.PRNGKey(1), std=0.02)
    values = tr.compute_values(critic, CFG, batch, micro_batch_size=4)
    assert values.shape == (8, R) and np.all(np.asarray(values)[batch["response_mask"] == 0] == 0)
    scores = np.arange(8, dtype=np.float32) % 2
    rewards = algorithms.outcome_rewards_to_tokens(scores, batch["response_mask"])
    adv, returns = algorithms.gae_advantages(rewards, values, batch["response_mask"], gamma=1.0, lam=0.95)
    batch.update(old_values=values, returns=returns, advantages=adv)
    batch["old_logp"] = tr.compute_logprobs(params, CFG, batch, temperature=TEMP)["logp"]

    opt = tr.OptimizerConfig(learning_rate=1e-3)
    ucfg = tr.UpdateConfig(temperature=TEMP, micro_batch_size=4, cliprange_value=10.0)
    critic_update = tr.make_critic_update_fn(CFG, ucfg, opt)
    state = tr.create_train_state(critic, opt)
    losses = []
    for _ in range(3):
        state, metrics = critic_update(state, batch)
        losses.append(float(metrics["vf_loss"]))
    assert losses[-1] < losses[0] and metrics["finite"] == 1
    actor_state, actor_metrics = run_update(params, batch, ucfg, opt)  # per-token advantages
    assert actor_metrics["finite"] == 1 and int(actor_state.step) == 1
