"""Packed rows that hold one copy of a prompt for all its responses (`share_prompts`) == padded rows, fp32.

References: the padded log-prob pass and update (tested against NumPy and transformers in
test_training_step.py), and a brute-force reading of the plan against the padded batch.
"""

import dataclasses

import jax
import numpy as np
import pytest

from rlvr_jax import sharding as shd
from rlvr_jax import training as tr
from rlvr_jax.models import ModelConfig
from rlvr_jax.training import packing
from tests.test_packing import _assert_same_update, _run
from tests.test_training_step import CFG, P, R, TEMP, params  # noqa: F401


def grouped_batch(groups=3, n=4, seed=0):
    """`groups` prompts x `n` responses each (GRPO's layout): equal prompts within a group, one empty response."""
    rng = np.random.default_rng(seed)
    b = groups * n
    ids = np.zeros((b, P + R), np.int32)
    attn = np.zeros((b, P + R), np.int32)
    for g in range(groups):
        prompt = rng.integers(1, CFG.vocab_size, rng.integers(2, P + 1))
        for i in range(g * n, (g + 1) * n):
            k = 0 if i == 1 else int(rng.integers(1, R + 1))
            ids[i, P - len(prompt):P], attn[i, P - len(prompt):P] = prompt, 1
            ids[i, P:P + k], attn[i, P:P + k] = rng.integers(1, CFG.vocab_size, k), 1
    return {"input_ids": ids, "attention_mask": attn, "response_mask": attn[:, P:].copy()}


def test_plan_lays_each_prompt_once_and_rebuilds_every_sequence():
    batch = grouped_batch(seed=1)
    ids, attn = batch["input_ids"], batch["attention_mask"]
    plan = packing.plan_packing(ids, attn, R, max_tokens_per_micro_batch=256, share_prompts=True)
    flat = packing.plan_packing(ids, attn, R, max_tokens_per_micro_batch=256)
    prompts = sum(int(attn[g * 4, :P].sum()) for g in range(3))
    assert plan.real_tokens == int(attn[:, P:].sum()) + prompts < flat.real_tokens == int(attn.sum())
    seen = set()
    for at in np.ndindex(plan.tokens.shape[:3]):
        tokens, seg, parent, pos = (getattr(plan, k)[at] for k in ("tokens", "segment_ids", "parent_ids", "positions"))
        for s in np.flatnonzero(plan.slot_valid[at]):
            i = int(plan.seq_index[at][s])
            seen.add(i)
            resp = attn[i, P:] > 0
            if not resp.any():
                continue
            # Each logit position predicts its response token; token 0 is predicted from the prompt's last
            # position, token t > 0 from the response's own token t - 1 (same segment, parent = the prompt's).
            q = [int(plan.logit_index[at][plan.resp_index[at][s, t]]) for t in np.flatnonzero(resp)]
            np.testing.assert_array_equal([plan.targets[at][plan.resp_index[at][s, t]] for t in np.flatnonzero(resp)],
                                          ids[i, P:][resp])
            n_p = int(attn[i, :P].sum())
            prompt_at = np.arange(q[0] - n_p + 1, q[0] + 1)  # the prompt copy this response reads
            np.testing.assert_array_equal(tokens[prompt_at], ids[i, :P][attn[i, :P] > 0])
            np.testing.assert_array_equal(pos[prompt_at], np.arange(n_p))
            own = np.arange(q[1] if len(q) > 1 else 0, (q[1] if len(q) > 1 else 0) + len(q) - 1)
            np.testing.assert_array_equal(tokens[own], ids[i, P:][resp][:-1])
            np.testing.assert_array_equal(pos[own], n_p + np.arange(len(q) - 1))
            if len(q) > 1:  # the response's tokens: one segment, which sees the prompt's (its parent, or itself)
                assert len(set(seg[own])) == 1
                assert parent[own[0]] in (0, seg[prompt_at[0]]) and (parent[own[0]] or seg[own[0]] == seg[prompt_at[0]])
    assert seen == set(range(12))


def _family(prompt: int, responses: list[int], pl: int = 64, rl: int = 64):
    """One GRPO group: `len(responses)` sequences with the same `prompt`-token prompt."""
    ids = np.zeros((len(responses), pl + rl), np.int32)
    attn = np.zeros_like(ids)
    ids[:, pl - prompt:pl], attn[:, pl - prompt:pl] = np.arange(1, prompt + 1), 1
    for i, k in enumerate(responses):
        ids[i, pl:pl + k], attn[i, pl:pl + k] = 100 + i, 1
    return ids, attn


def test_plan_weighs_row_lengths_by_their_cost():
    smollm2 = ModelConfig(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                          num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64)
    plan = lambda fam, budget=4096, **kw: packing.plan_packing(*fam, 64, max_tokens_per_micro_batch=budget,  # noqa: E731
                                                                share_prompts=True, **kw)
    # A long-tailed group (60-token prompt, 202 response tokens; longest sequence 119): the family fits one
    # row of 320 (256 logit positions), where rows of 256 (the shortest allowed) need two, each with its own
    # prompt copy.
    tail = _family(60, [14, 30, 18, 9, 23, 59, 41, 8])
    one = plan(tail, costs=packing.pass_costs(smollm2))
    assert one.tokens.shape == (1, 1, 1, 320) and one.real_tokens == 262 and one.logit_index.shape[-1] == 256
    two = plan(tail, budget=256, costs=packing.pass_costs(smollm2))  # the budget allows rows of 256 only
    assert two.tokens.shape == (1, 1, 2, 256) and two.real_tokens == 2 * 60 + 202  # two micro-batches of one row
    # Every response at the cap (41 + 8 x 64 tokens): rows of 320 hold 4 responses each (640 slots), rows of
    # 256 hold 3 (768 slots): token slots alone choose 320, an attention-heavy cost the shorter rows.
    capped = _family(41, [64] * 8)
    assert plan(capped, costs=(1.0, 0.0, 0.0)).tokens.shape == (2, 1, 1, 320)
    assert plan(capped, costs=(1.0, 1.0, 0.0)).tokens.shape == (3, 1, 1, 256)
    # SmolLM2's costs choose 320 (~13% cheaper), unless rows of 256 are compiled already and 320 are not.
    assert plan(capped, costs=packing.pass_costs(smollm2)).tokens.shape == (2, 1, 1, 320)
    known = plan(capped, costs=packing.pass_costs(smollm2), known_shapes={(3, 256)})
    assert known.tokens.shape == (3, 1, 1, 256)
    ratchet = packing.ShapeRatchet()
    ratchet(known)
    assert ratchet.shapes == {(3, 256)}


def test_shared_mask_sees_prompt_and_self_only():
    seg = np.array([[1, 1, 2, 2, 3, 3, 4, 0]])
    parent = np.array([[0, 0, 1, 1, 1, 1, 0, 0]])
    mask = np.asarray(jax.jit(tr.packing.transformer.segment_attention_mask)(seg, parent))[0]
    expected = np.zeros((8, 8), bool)
    for q, k in [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2), (3, 3),
                 (4, 0), (4, 1), (4, 4), (5, 0), (5, 1), (5, 4), (5, 5), (6, 6)]:
        expected[q, k] = True
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("budget", [16, 64, 4096])
def test_shared_logprobs_equal_padded(params, budget):
    batch = grouped_batch(seed=2)
    padded = tr.compute_logprobs(params, CFG, batch, temperature=TEMP, with_entropy=True, chunk=4)
    shared = tr.compute_logprobs(params, CFG, batch, temperature=TEMP, with_entropy=True, chunk=4,
                                 max_tokens_per_micro_batch=budget, share_prompts=True)
    for k in ("logp", "entropy"):
        np.testing.assert_allclose(np.asarray(shared[k]), np.asarray(padded[k]), rtol=1e-5, atol=1e-5)


def _rl(params, seed):
    batch = grouped_batch(seed=seed)
    logp = np.asarray(tr.compute_logprobs(params, CFG, batch, temperature=TEMP)["logp"])
    rng = np.random.default_rng(seed)
    batch["old_logp"] = (logp + 0.3 * rng.normal(size=logp.shape)).astype(np.float32)
    batch["ref_logp"] = (logp + 0.3 * rng.normal(size=logp.shape)).astype(np.float32)
    batch["advantages"] = rng.normal(size=(12, R)).astype(np.float32)
    return batch


def test_shared_update_equals_padded(params):
    batch = _rl(params, 3)
    ucfg = tr.UpdateConfig(temperature=TEMP, agg_mode="seq-mean-token-mean", entropy_coeff=0.01, use_kl_loss=True,
                           micro_batch_size=3, logprob_chunk=4, clip_c=3.0, mini_batch_size=6)
    shared = _run(params, batch, dataclasses.replace(ucfg, max_tokens_per_micro_batch=24, share_prompts=True))
    _assert_same_update(_run(params, batch, ucfg), shared)
    assert 0 < shared[1]["pack_fill"] <= 1


def test_shared_update_on_a_mesh_equals_padded(params):
    batch = _rl(params, 4)
    ucfg = tr.UpdateConfig(temperature=TEMP, entropy_coeff=0.01, use_kl_loss=True, logprob_chunk=4)
    sharder = shd.Sharder(shd.make_mesh((2, 4, 1)))
    placed = jax.device_put(params, tr.params_shardings(CFG, sharder))
    shared = _run(placed, batch, dataclasses.replace(ucfg, max_tokens_per_micro_batch=64, share_prompts=True), sharder)
    _assert_same_update(_run(params, batch, ucfg), shared)
