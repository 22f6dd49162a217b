"""Sequence packing: the plan (first-fit-decreasing, budgets, buckets) and packed == padded in float32.

References: a brute-force check of the plan against the padded batch, the padded log-prob pass and
update (themselves tested against NumPy and transformers in test_training_step.py).
"""

import dataclasses

import jax
import numpy as np
import pytest

from rlvr_jax import sharding as shd
from rlvr_jax import training as tr
from rlvr_jax.algorithms import AGG_MODES
from rlvr_jax.models import param_logical_axes
from rlvr_jax.training import packing
from tests.test_training_step import CFG, GRAD_PROBE, P, R, TEMP, make_batch, max_diff, params, rl_batch, to_np  # noqa: F401


def test_first_fit_decreasing_matches_brute_force_rule():
    lengths = [5, 9, 3, 9, 7, 1, 4, 6]
    bins = packing.first_fit_decreasing(lengths, 10)
    # Brute force: visit items longest-first (ties by index), put each in the first bin it fits.
    expected, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        j = next((j for j, f in enumerate(free) if f >= lengths[i]), None)
        if j is None:
            expected.append([]), free.append(10)
            j = len(free) - 1
        expected[j].append(i)
        free[j] -= lengths[i]
    assert bins == expected
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    with pytest.raises(ValueError, match="does not fit"):
        packing.first_fit_decreasing([11], 10)


def test_plan_rebuilds_every_sequence_and_respects_the_budget():
    batch = make_batch(12, seed=3)
    plan = packing.plan_packing(batch["input_ids"], batch["attention_mask"], R, max_tokens_per_micro_batch=64,
                                row_multiple=2)
    rows, g, m, t = plan.tokens.shape
    assert rows % 2 == 0 and rows * t <= 2 * 64 and t >= P + R and g == 1 and m & (m - 1) == 0
    assert packing.row_layout(300, 8192, 4) == (320, 100) and packing.row_layout(20, 100, 2) == (64, 2)
    assert packing.row_layout(300, 8192, 4, bins=9) == (320, 12)  # 3 rows per device (bucketed), not 25
    assert [packing._row_bucket(n) for n in (3, 9, 100, 256, 257, 300, 385, 513)] == [4, 10, 112, 256, 320, 320, 448, 640]
    assert packing.row_candidates(300, 8192, upto=500) == [320, 384, 448, 512]
    assert packing.row_candidates(300, 8192, upto=5000) == [320, 384, 448, 512, 640]  # at most twice the shortest
    assert packing.row_candidates(300, 400, upto=5000) == [320, 384] and packing.row_candidates(900, 600) == [1024]
    assert [packing._bucket(n) for n in (1, 2, 3, 5, 7, 9, 13, 17)] == [1, 2, 3, 6, 8, 12, 16, 24]
    seen = set()
    for at in np.ndindex(rows, g, m):
        for s in np.flatnonzero(plan.slot_valid[at]):
            i = int(plan.seq_index[at][s])
            seen.add(i)
            seg = plan.segment_ids[at] == s + 1
            real = batch["attention_mask"][i] > 0
            np.testing.assert_array_equal(plan.tokens[at][seg], batch["input_ids"][i][real])
            np.testing.assert_array_equal(plan.positions[at][seg], np.arange(real.sum()))
            # resp_index -> logit_index points at the token just before each response token, and the
            # logit positions are exactly the row's response-predicting ones (no prompt, no padding).
            for tt in np.flatnonzero(batch["attention_mask"][i, P:]):
                j = plan.logit_index[at][plan.resp_index[at][s, tt]]
                assert plan.tokens[at][j + 1] == batch["input_ids"][i, P + tt] and plan.segment_ids[at][j] == s + 1
        n_resp = int(sum(batch["attention_mask"][i, P:].sum() for i in plan.seq_index[at][plan.slot_valid[at]]))
        assert plan.logit_index.shape[-1] >= n_resp and not plan.logit_index[at][n_resp:].any()
        assert len(set(plan.logit_index[at][:n_resp].tolist())) == n_resp
    assert seen == set(range(12)) and plan.real_tokens == int(batch["attention_mask"].sum())
    with pytest.raises(ValueError, match="no prompt token"):
        bad = dict(batch, attention_mask=batch["attention_mask"].copy())
        bad["attention_mask"][0, :P] = 0
        packing.plan_packing(bad["input_ids"], bad["attention_mask"], R, max_tokens_per_micro_batch=64)


@pytest.mark.parametrize("budget", [16, 64, 4096])
def test_packed_logprobs_equal_padded(params, budget):
    batch = make_batch(8, seed=1)
    padded = tr.compute_logprobs(params, CFG, batch, temperature=TEMP, with_entropy=True, chunk=4)
    packed = tr.compute_logprobs(params, CFG, batch, temperature=TEMP, with_entropy=True, chunk=4,
                                 max_tokens_per_micro_batch=budget)
    for k in ("logp", "entropy"):
        np.testing.assert_allclose(np.asarray(packed[k]), np.asarray(padded[k]), rtol=1e-5, atol=1e-5)


def test_packed_logprobs_sharded_equal_single_device(params):
    batch = make_batch(8, seed=2)
    sharder = shd.Sharder(shd.make_mesh((2, 4, 1)))
    placed = jax.device_put(params, tr.params_shardings(CFG, sharder))
    single = tr.compute_logprobs(params, CFG, batch, temperature=TEMP, max_tokens_per_micro_batch=64)
    sharded = tr.compute_logprobs(placed, CFG, batch, temperature=TEMP, max_tokens_per_micro_batch=64,
                                  sharder=sharder)
    np.testing.assert_allclose(np.asarray(sharded["logp"]), np.asarray(single["logp"]), rtol=1e-5, atol=1e-5)


def _run(params, batch, ucfg, sharder=None):
    axes = param_logical_axes(CFG) if sharder else None
    state = tr.create_train_state(params, GRAD_PROBE, sharder, logical_axes=axes)
    state, metrics = tr.make_update_fn(CFG, ucfg, GRAD_PROBE, sharder)(state, batch)
    return to_np(state.params), {k: float(v) for k, v in metrics.items()}


def _assert_same_update(a, b, skip=("pack_fill",)):
    (pa, ma), (pb, mb) = a, b
    assert max_diff(pa, pb) < 2e-5  # lr 1 / eps 1 Adam: params after one step compare gradients
    for k in ma:
        if k not in skip:
            assert mb[k] == pytest.approx(ma[k], rel=1e-5, abs=2e-6), k


@pytest.mark.parametrize("mode", sorted(AGG_MODES))
def test_packed_update_equals_padded_every_mode(params, mode):
    batch = rl_batch(params, b=8, seed=4, noise=0.3)
    batch["advantages"] = np.random.default_rng(5).normal(size=(8, R)).astype(np.float32)  # per-token too
    ucfg = tr.UpdateConfig(temperature=TEMP, agg_mode=mode, entropy_coeff=0.01, use_kl_loss=True,
                           micro_batch_size=2, logprob_chunk=4, clip_c=3.0)
    padded = _run(params, batch, ucfg)
    packed = _run(params, batch, dataclasses.replace(ucfg, max_tokens_per_micro_batch=24))
    _assert_same_update(padded, packed)
    assert 0 < packed[1]["pack_fill"] <= 1


def test_packed_update_epochs_and_mini_batches_equal_padded(params):
    batch = rl_batch(params, b=8, seed=6, noise=0.2)
    ucfg = tr.UpdateConfig(temperature=TEMP, ppo_epochs=2, mini_batch_size=4, micro_batch_size=2,
                           entropy_coeff=0.01, logprob_chunk=4)
    _assert_same_update(_run(params, batch, ucfg),
                        _run(params, batch, dataclasses.replace(ucfg, max_tokens_per_micro_batch=32)))
    with pytest.raises(ValueError, match="shuffle"):
        dataclasses.replace(ucfg, max_tokens_per_micro_batch=32, shuffle=True)


def test_packed_update_skips_exactly_the_non_finite_mini_batch(params):
    """One of two mini-batches has a NaN advantage: its optimizer step is not taken, the other's is, as in
    the padded update (whose in-program skip is tested in test_training_step.py)."""
    batch = rl_batch(params, b=8, seed=9, noise=0.2)
    batch["advantages"] = np.asarray(batch["advantages"], np.float32).copy()
    batch["advantages"][1] = np.nan  # row 1: mini-batch 1 of the strided split (rows 1, 3, 5, 7)
    ucfg = tr.UpdateConfig(temperature=TEMP, mini_batch_size=4, micro_batch_size=2, logprob_chunk=4)
    padded = _run(params, batch, ucfg)
    packed = _run(params, batch, dataclasses.replace(ucfg, max_tokens_per_micro_batch=32))
    assert max_diff(padded[0], packed[0]) < 2e-5
    for k, v in padded[1].items():  # NaN where the bad mini-batch enters a mean (loss, advantages), in both
        if k != "pack_fill":
            assert packed[1][k] == pytest.approx(v, rel=1e-5, abs=2e-6, nan_ok=True), k
    assert packed[1]["finite"] == 0 and packed[1]["num_skipped"] == 1 and packed[1]["num_steps"] == 2
    # Every mini-batch bad: nothing moves, not even the optimizer's step count.
    batch["advantages"][0] = np.nan
    state = tr.create_train_state(params, GRAD_PROBE)
    before = to_np(state)
    after, metrics = tr.make_update_fn(CFG, dataclasses.replace(ucfg, max_tokens_per_micro_batch=32),
                                       GRAD_PROBE)(state, batch)
    after = to_np(after)
    jax.tree.map(np.testing.assert_array_equal, after.params, before.params)
    jax.tree.map(np.testing.assert_array_equal, after.opt_state, before.opt_state)
    assert int(after.step) == int(before.step) and float(metrics["num_skipped"]) == 2


def test_packed_update_on_a_mesh_equals_padded_single_device(params):
    batch = rl_batch(params, b=8, seed=7, noise=0.2)
    ucfg = tr.UpdateConfig(temperature=TEMP, entropy_coeff=0.01, use_kl_loss=True, logprob_chunk=4)
    sharder = shd.Sharder(shd.make_mesh((2, 4, 1)))
    placed = jax.device_put(params, tr.params_shardings(CFG, sharder))
    packed = _run(placed, batch, dataclasses.replace(ucfg, max_tokens_per_micro_batch=64), sharder)
    _assert_same_update(_run(params, batch, ucfg), packed)


@pytest.mark.parametrize("budget", [None, 32])
def test_fused_old_logp_equals_separate_pass(params, budget):
    batch = rl_batch(params, b=8, seed=8, noise=0.0)  # old_logp from a separate forward of the same params
    ucfg = tr.UpdateConfig(temperature=TEMP, entropy_coeff=0.01, use_kl_loss=True, micro_batch_size=4,
                           logprob_chunk=4, max_tokens_per_micro_batch=budget)
    separate = _run(params, batch, ucfg)
    fused_batch = {k: v for k, v in batch.items() if k != "old_logp"}
    fused = _run(params, fused_batch, dataclasses.replace(ucfg, fuse_old_logp=True))
    _assert_same_update(separate, fused)
    assert fused[1]["ratio_min"] == fused[1]["ratio_max"] == 1.0 and fused[1]["clipfrac"] == 0.0
    with pytest.raises(ValueError, match="ppo_epochs"):
        dataclasses.replace(ucfg, fuse_old_logp=True, ppo_epochs=2)
    with pytest.raises(ValueError, match="one mini-batch"):
        _run(params, fused_batch, dataclasses.replace(ucfg, fuse_old_logp=True, mini_batch_size=4))


def test_training_run_packed_equals_padded(tmp_path):
    """launch/train.py on configs/tiny.py with actor.packing true vs false: the same metrics."""
    import json

    from rlvr_jax.experiment import train
    from tests.test_train_e2e import _tiny

    runs = {}
    for packed in (True, False):
        overrides = {"actor.packing": packed, "actor.max_tokens_per_micro_batch": 64, "trainer.save_every": 0,
                     "trainer.eval_every": 0, "actor.recompute_old_logp": True, "actor.fuse_old_logp": packed}
        train(_tiny(**overrides), tmp_path / str(packed))
        rows = [json.loads(x) for x in (tmp_path / str(packed) / "metrics.jsonl").read_text().splitlines()]
        runs[packed] = [r for r in rows if "actor/loss" in r]
    assert len(runs[True]) == len(runs[False]) == 3
    for a, b in zip(runs[True], runs[False]):
        for key, value in b.items():
            if key.startswith(("actor/", "reward/", "response/")) and key != "actor/pack_fill":
                assert a[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (a["step"], key)
        assert 0 < a["actor/pack_fill"] <= 1 and "rollout/logp_abs_diff" in b


def test_dry_run_memory_plan_follows_the_token_budget():
    from configs import qwen15b_1shot
    from rlvr_jax.experiment import memory_plan

    c = qwen15b_1shot.get_config()
    key = "activations (one micro-batch, remat)"
    c.actor.max_tokens_per_micro_batch = 8192  # two 4096-token rows (prompt 1024 + response 3072) per device
    small = memory_plan(c)["bytes_per_device"][key]
    c.actor.max_tokens_per_micro_batch = 16384
    big = memory_plan(c)["bytes_per_device"][key]
    assert big == pytest.approx(2 * small, rel=1e-6)


@pytest.mark.parametrize("policy_loss", ["gspo", "cispo"])
def test_packed_update_equals_padded_other_policy_losses_with_tis(params, policy_loss):
    batch = rl_batch(params, b=8, seed=9, noise=0.3)
    batch["rollout_logp"] = batch["old_logp"] + np.random.default_rng(10).normal(0, 0.2, batch["old_logp"].shape)
    ucfg = tr.UpdateConfig(temperature=TEMP, policy_loss=policy_loss, tis_cap=2.0, entropy_coeff=0.01,
                           micro_batch_size=4, logprob_chunk=4)
    # seq_ratio_mean is a per-micro-batch sequence mean that both layouts re-weight by token counts,
    # so it depends on which sequences share a micro-batch; losses and gradients do not.
    _assert_same_update(_run(params, batch, ucfg),
                        _run(params, batch, dataclasses.replace(ucfg, max_tokens_per_micro_batch=32)),
                        skip=("pack_fill", "seq_ratio_mean"))


def test_shape_ratchet_pads_plans_to_the_largest_seen(params):
    ratchet = packing.ShapeRatchet()
    dense, sparse = make_batch(8, seed=11), make_batch(8, seed=12)
    sparse["attention_mask"][0] = 1  # one full-length row keeps the row length that of `dense`
    sparse["attention_mask"][1:, P + 2:] = 0  # short responses: more sequences per row
    sparse["response_mask"] = sparse["attention_mask"][:, P:].copy()
    plan = lambda b: packing.plan_packing(b["input_ids"], b["attention_mask"], R, max_tokens_per_micro_batch=16)  # noqa: E731
    first, second = ratchet(plan(sparse)), ratchet(plan(dense))
    assert first.tokens.shape[-1] == second.tokens.shape[-1] == 16
    assert second.tokens.shape[2] >= plan(dense).tokens.shape[2] and second.resp_index.shape == tuple(
        max(a, b) for a, b in zip(first.resp_index.shape, plan(dense).resp_index.shape))
    assert second.logit_index.shape[-1] == max(first.logit_index.shape[-1], plan(dense).logit_index.shape[-1])
    padded = tr.compute_logprobs(params, CFG, dense, temperature=TEMP)
    packed = packing.compute_logprobs_packed(params, CFG, dense, temperature=TEMP, max_tokens_per_micro_batch=16,
                                             ratchet=ratchet)
    np.testing.assert_allclose(np.asarray(packed["logp"]), np.asarray(padded["logp"]), rtol=1e-5, atol=1e-5)
