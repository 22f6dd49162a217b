"""Rollout engine (`rlvr_jax.sampling`) against transformers' `generate`, full recomputation and NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from rlvr_jax import models, sampling
from rlvr_jax import sharding as shd
from rlvr_jax.sampling import api as sampling_api
from rlvr_jax.sampling import controls as ctl
from tests.hf_fixtures import make_hf_model
from tests.smollm2_fixture import smollm2_dir  # noqa: F401  (session fixture)

LENGTHS = (5, 13, 1, 9)  # different prompt lengths in one batch (bucket: 16)
# Tests share T, n and prompt shapes where they can: each new static configuration is a compile.
T = 8


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2")
    torch_model = make_hf_model("qwen2", path)
    cfg, params = models.load_hf(path)
    return torch_model, cfg, params


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    return [rng.integers(1, 97, size=k).tolist() for k in LENGTHS]


def _hf_greedy(model, prompts, max_new_tokens, eos=None):
    """transformers' greedy generate on the left-padded batch; returns each row's new tokens."""
    p = max(map(len, prompts))
    ids, mask = np.zeros((len(prompts), p), np.int64), np.zeros((len(prompts), p), np.int64)
    for i, q in enumerate(prompts):
        ids[i, p - len(q):], mask[i, p - len(q):] = q, 1
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=0)
    return out[:, p:].numpy()


def _forward_scaled_logprobs(params, cfg, res, temperature=1.0):
    """log_softmax(forward logits / T) `[N, T_resp, v]` predicting each response slot."""
    ids = np.concatenate([res.prompt_ids, res.response_ids], axis=1)
    mask = np.concatenate([res.prompt_mask, res.response_mask], axis=1)
    logits = models.forward(params, cfg, ids, mask)
    p = res.prompt_ids.shape[1]
    return np.asarray(jax.nn.log_softmax(logits[:, p - 1:-1] / temperature, axis=-1))


@pytest.mark.parametrize("kind,tie", [("qwen2", False), ("llama3", True)])
def test_greedy_matches_transformers_tiny(tmp_path, qwen, prompts, kind, tie):
    if kind == "qwen2":
        torch_model, cfg, params = qwen
    else:
        torch_model = make_hf_model(kind, tmp_path, tie=tie)
        cfg, params = models.load_hf(tmp_path)
    res = sampling.generate(params, cfg, prompts, max_new_tokens=T, greedy=True, progress=False)
    np.testing.assert_array_equal(np.array(res.tokens), _hf_greedy(torch_model, prompts, T))
    assert res.finish_reason == ["length"] * len(prompts)


def test_greedy_matches_transformers_smollm2_with_eos(smollm2_dir):
    # Chat prompts of different lengths, EOS on, 2 decode slots for 3 prompts: rows finish at different
    # steps and the third prompt is admitted into a freed slot mid-run.
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    questions = ["What is 2+2? Reply with the number only.", "Name a colour.",
                 "Say hello in French: one word, and nothing else at all, please. Thank you very much!"]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
               for q in questions]
    prompts = [list(p["input_ids"]) if hasattr(p, "keys") else list(p) for p in prompts]
    assert len({len(p) for p in prompts}) == 3
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    cfg, params = models.load_hf(smollm2_dir)
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    res = sampling.generate(params, cfg, prompts, max_new_tokens=24, greedy=True, stop_token_ids=[eos],
                            sub_batch_size=2, progress=False)
    hf = _hf_greedy(torch_model, prompts, 24, eos=eos)
    for r, row in enumerate(hf.tolist()):
        want = row[:row.index(eos) + 1] if eos in row else row
        assert res.tokens[r] == want
        assert res.finish_reason[r] == ("stop" if eos in row else "length")
    assert "stop" in res.finish_reason, "test is vacuous: no row reached EOS"


def test_greedy_cache_equals_recomputation(qwen, prompts):
    _, cfg, params = qwen
    t = T
    res = sampling.generate(params, cfg, prompts, max_new_tokens=t, greedy=True, progress=False)
    # Argmax of `forward` on the growing sequence, right-padded to one fixed length (one compile).
    p = max(map(len, prompts))
    ids, mask = np.zeros((len(prompts), p + t), np.int32), np.zeros((len(prompts), p + t), np.int32)
    for i, q in enumerate(prompts):
        ids[i, p - len(q):p], mask[i, p - len(q):p] = q, 1
    for j in range(t):
        logits = np.asarray(models.forward(params, cfg, ids, mask)[:, p + j - 1])
        ids[:, p + j], mask[:, p + j] = logits.argmax(-1), 1
    np.testing.assert_array_equal(np.array(res.tokens), ids[:, p:])
    # Greedy log-probs are those of the temperature-1 distribution.
    ref = _forward_scaled_logprobs(params, cfg, res)
    chosen = np.take_along_axis(ref, res.response_ids[..., None], -1)[..., 0]
    np.testing.assert_allclose(res.logprob_array, chosen, atol=1e-4)


def test_sampled_logprobs_match_forward(qwen, prompts):
    _, cfg, params = qwen
    res = sampling.generate(params, cfg, prompts, max_new_tokens=T, temperature=0.7, n=2, seed=3, progress=False)
    ref = _forward_scaled_logprobs(params, cfg, res, temperature=0.7)
    chosen = np.take_along_axis(ref, res.response_ids[..., None], -1)[..., 0]
    m = res.response_mask.astype(bool)
    np.testing.assert_allclose(res.logprob_array[m], chosen[m], atol=1e-3)
    assert np.all(res.logprob_array[~m] == 0)
    for r in range(len(res.tokens)):
        np.testing.assert_allclose(res.logprobs[r], chosen[r, :len(res.tokens[r])], atol=1e-3)


def test_bf16_rollout_logprobs_match_the_trainers_bf16_recomputation(qwen, prompts):
    """bf16 compute: the decode step and the whole-sequence pass round the same values to bf16.

    With the residual stream and matmul outputs in float32 (the default `residual_dtype`) only matmul
    inputs are rounded, identically on both paths: mean |difference| 1.5e-7 on this model. With every
    output rounded to bf16 (`residual_dtype="bfloat16"`, transformers' arithmetic) it was 6.3e-4: XLA
    fuses away some of those roundings in one program and not in the other (excess precision).
    """
    _, cfg, params = qwen
    cfg = cfg.replace(dtype="bfloat16", param_dtype="bfloat16")
    assert cfg.residual_dtype == "float32"
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    res = sampling.generate(params, cfg, prompts, max_new_tokens=2 * T, temperature=0.7, n=2, seed=3, progress=False)
    chosen = np.take_along_axis(_forward_scaled_logprobs(params, cfg, res, 0.7), res.response_ids[..., None], -1)[..., 0]
    m = res.response_mask.astype(bool)
    assert np.abs(res.logprob_array[m] - chosen[m]).mean() <= 1e-5


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.6), (20, 0.6)])
def test_truncation_never_leaves_allowed_set(qwen, prompts, top_k, top_p):
    _, cfg, params = qwen
    temp = 0.5  # sharpens the tiny model's near-uniform distribution so top-p keeps a real subset
    res = sampling.generate(params, cfg, prompts, max_new_tokens=T, temperature=temp, top_k=top_k, top_p=top_p,
                            n=2, seed=1, progress=False)
    logp = _forward_scaled_logprobs(params, cfg, res, temperature=temp)  # [N, T, v]
    order = np.argsort(-logp, axis=-1, kind="stable")
    sorted_p = np.exp(np.take_along_axis(logp, order, -1))
    k = top_k or logp.shape[-1]
    sorted_p[..., k:] = 0.0  # top-p acts on the top-k-truncated distribution
    sorted_p /= sorted_p.sum(-1, keepdims=True)
    mass_before = np.cumsum(sorted_p, -1) - sorted_p
    rank = np.argsort(order, axis=-1)  # rank of each token id
    tok_rank = np.take_along_axis(rank, res.response_ids[..., None], -1)[..., 0]
    tok_mass = np.take_along_axis(mass_before, tok_rank[..., None], -1)[..., 0]
    m = res.response_mask.astype(bool)
    kth = np.take_along_axis(logp, order[..., k - 1:k], -1)[..., 0]
    tok_logp = np.take_along_axis(logp, res.response_ids[..., None], -1)[..., 0]
    assert np.all(tok_logp[m] >= kth[m] - 1e-4)
    assert np.all(tok_mass[m] < top_p + 1e-4)
    nucleus = (mass_before < top_p).sum(-1)
    assert nucleus[m].min() < logp.shape[-1] // 2, "test is vacuous: the nucleus is the whole vocabulary"


def test_stop_tokens_end_rows(qwen, prompts):
    _, cfg, params = qwen
    free = sampling.generate(params, cfg, prompts, max_new_tokens=T, greedy=True, progress=False)
    stops = (free.tokens[0][3], free.tokens[1][6])  # row 0 stops at step 3 at the latest, row 1 at 6
    res = sampling.generate(params, cfg, prompts, max_new_tokens=T, greedy=True, stop_token_ids=stops,
                            pad_id=-1, progress=False)
    for r, (full, got) in enumerate(zip(free.tokens, res.tokens)):
        hits = [j for j, x in enumerate(full) if x in stops]
        if hits:
            assert res.finish_reason[r] == "stop" and got == full[:hits[0] + 1] and got[-1] in stops
            assert np.all(res.response_ids[r, hits[0] + 1:] == -1)
            assert np.all(res.response_mask[r, hits[0] + 1:] == 0)
        else:
            assert res.finish_reason[r] == "length" and got == full
    assert res.finish_reason[:2] == ["stop", "stop"]


def test_seed_reproducible(qwen, prompts):
    _, cfg, params = qwen
    run = lambda seed: sampling.generate(params, cfg, prompts, max_new_tokens=T, n=2, seed=seed, progress=False)
    a, b, c = run(7), run(7), run(8)
    assert a.tokens == b.tokens
    np.testing.assert_array_equal(a.logprob_array, b.logprob_array)
    assert a.tokens != c.tokens


def test_n_samples_are_prompt_major(qwen, prompts):
    _, cfg, params = qwen
    one = sampling.generate(params, cfg, prompts, max_new_tokens=T, greedy=True, progress=False)
    two = sampling.generate(params, cfg, prompts, max_new_tokens=T, greedy=True, n=2, progress=False)
    assert two.tokens == [t for t in one.tokens for _ in range(2)]
    np.testing.assert_array_equal(two.prompt_index, np.repeat(np.arange(len(prompts)), 2))
    sampled = sampling.generate(params, cfg, prompts, max_new_tokens=T, n=2, progress=False)
    for r in range(len(sampled.tokens)):
        q = prompts[r // 2]
        assert sampled.prompt_ids[r, -len(q):].tolist() == q and sampled.prompt_mask[r].sum() == len(q)
    assert all(sampled.tokens[r] != sampled.tokens[r + 1] for r in range(0, len(prompts) * 2, 2))


@pytest.mark.parametrize("greedy", [True, False])
def test_slot_count_does_not_change_samples(qwen, prompts, greedy):
    _, cfg, params = qwen
    kw = dict(max_new_tokens=T, greedy=greedy, n=2, seed=4, temperature=0.9)
    whole = sampling.generate(params, cfg, prompts, progress=False, **kw)
    # 6 -> 4 decode slots for 8 samples: four are admitted when the first ones finish; the bar runs.
    parts = sampling.generate(params, cfg, prompts, sub_batch_size=6, progress=greedy, **kw)
    assert parts.tokens == whole.tokens and parts.finish_reason == whole.finish_reason
    np.testing.assert_allclose(parts.logprob_array, whole.logprob_array, atol=1e-5)
    np.testing.assert_array_equal(parts.prompt_ids, whole.prompt_ids)


def test_sharded_matches_unsharded(qwen, prompts):
    _, cfg, params = qwen
    sharder = shd.Sharder(shd.make_mesh((2, 2, 2)))
    placed = jax.device_put(params, sharder.tree_shardings(models.param_logical_axes(cfg), params))
    kw = dict(max_new_tokens=T, n=2, seed=2, progress=False)
    ref = sampling.generate(params, cfg, prompts, **kw)
    got = sampling.generate(placed, cfg, prompts, sharder=sharder, **kw)
    assert got.tokens == ref.tokens
    np.testing.assert_allclose(got.logprob_array, ref.logprob_array, atol=1e-4)


def test_top_p_threshold_matches_sorted_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 300)).astype(np.float32) * 3
    probs = np.asarray(jax.nn.softmax(logits, -1))
    threshold = jax.jit(ctl.top_p_threshold)
    for top_p in (0.1, 0.5, 0.9, 0.99):
        keep = probs >= np.asarray(threshold(jnp.asarray(probs), top_p))[:, None]
        srt = -np.sort(-probs, -1)
        expect = ((np.cumsum(srt, -1) - srt) < top_p).sum(-1)
        np.testing.assert_array_equal(keep.sum(-1), expect)


def test_inverse_cdf_frequencies():
    v, draws = 1100, 20000  # v > 1024: the two-level (blocked) path
    ids = [3, 300, 700, 1099]
    w = np.zeros(v, np.float32)
    w[ids] = [0.1, 0.2, 0.3, 0.4]
    u = 1.0 - jax.random.uniform(jax.random.key(0), (draws,))
    idx = np.asarray(jax.jit(ctl.sample_inverse_cdf)(jnp.broadcast_to(jnp.asarray(w), (draws, v)), u))
    assert set(np.unique(idx)) <= set(ids)
    freq = np.array([(idx == i).mean() for i in ids])
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.015)


def test_buckets():
    assert [sampling.bucket_length(x) for x in (1, 16, 17, 24, 25, 33, 49, 100, 129)] == \
        [16, 16, 24, 24, 32, 48, 64, 128, 192]
    assert sampling.bucket_count(5) == 8 and sampling.bucket_count(5, cap=6) == 6
    assert sampling.bucket_count(3, multiple=8) == 8 and sampling.bucket_count(1) == 1


def test_sub_batch_memory_arithmetic(monkeypatch):
    # Qwen2.5-Math-1.5B shapes: 28 layers, 2 KV heads of 128. A 256 + 3,072-slot row of bf16 cache is
    # 95 MB, so 1,024 rows (~98 GB) do not fit an 80 GB GPU, while 256-row sub-batches take ~24 GB.
    cfg = models.ModelConfig(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                             num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128, dtype="bfloat16")
    assert sampling.kv_cache_bytes(cfg, 1024, 256 + 3072) == pytest.approx(97.7e9, rel=1e-2)
    assert sampling.rows_for_memory(cfg, 256 + 3072, 30e9) == 256

    class FakeDevice:  # 80 GB device with 25 GB in use (params + optimizer state of the trainer)
        def memory_stats(self):
            return {"bytes_limit": 80e9, "bytes_in_use": 25e9}

    monkeypatch.setattr(jax, "local_devices", lambda: [FakeDevice()])
    slots = sampling_api._auto_slots(cfg, [[1] * 200] * 128, 8, 3072, "bfloat16", 16, None)
    assert slots == 256  # 0.85 * 55 GB - 3.1 GB of bf16 weights -> 44 GB -> 256 slots (a power of two)
