"""Continuous batching: schedule-free samples against a full-recomputation static sampler, trainer log-probs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import models, sampling
from rlvr_jax.compile_counter import CompileCounter
from rlvr_jax import sharding as shd
from rlvr_jax.sampling import controls as ctl
from rlvr_jax.sampling import engine, scheduler
from rlvr_jax.training import logprobs as trainer_logprobs
from tests.hf_fixtures import make_hf_model

LENGTHS = (5, 13, 1, 9, 20)
T = 8


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2_cb")
    make_hf_model("qwen2", path)
    return models.load_hf(path)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(1)
    return [rng.integers(1, 97, size=k).tolist() for k in LENGTHS]


def _static_reference(params, cfg, prompts, n, t, seed, temperature, stop_ids):
    """The static schedule by full recomputation: every step runs `forward` over every row's whole sequence.

    Row `r` (prompt-major) draws its token `j` with the engine's key scheme `uniforms(seed, r, j)`.
    """
    rows = [q for q in prompts for _ in range(n)]
    p = max(map(len, prompts))
    ids, mask = np.zeros((len(rows), p + t), np.int32), np.zeros((len(rows), p + t), np.int32)
    for i, q in enumerate(rows):
        ids[i, p - len(q):p], mask[i, p - len(q):p] = q, 1
    tokens, logps, done = [[] for _ in rows], [[] for _ in rows], np.zeros(len(rows), bool)
    select = jax.jit(ctl.select_tokens, static_argnames=("controls",))
    for j in range(t):
        logits = models.forward(params, cfg, ids, mask)[:, p + j - 1]
        u = engine.uniforms(np.uint32(seed), np.arange(len(rows)), np.full(len(rows), j))
        tok, lp = map(np.asarray, select(logits, u, temperature, 1.0, controls=ctl.Controls()))
        for r in np.nonzero(~done)[0]:
            tokens[r].append(int(tok[r]))
            logps[r].append(float(lp[r]))
            done[r] = tok[r] in stop_ids
        ids[:, p + j], mask[:, p + j] = tok, 1
    return tokens, logps


def _record_prefills(monkeypatch, record):
    """Wraps `engine.prefill` so each call appends `record(ids, kwargs)` to the returned list."""
    seen, real = [], engine.prefill
    monkeypatch.setattr(engine, "prefill", lambda params, ids, *a, **kw: (seen.append(record(ids, kw)),
                                                                          real(params, ids, *a, **kw))[1])
    return seen


def _assert_static_samples(out, params, cfg, prompts, n, seed, temperature):
    """`out` (T new tokens, no stop ids) holds the static full-recomputation sampler's tokens and log-probs."""
    tokens, logps = _static_reference(params, cfg, prompts, n, T, seed, temperature, ())
    assert out.tokens == tokens
    for got, want in zip(out.logprobs, logps):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_continuous_equals_static_reference(model, prompts):
    cfg, params = model
    kw = dict(max_new_tokens=T, temperature=0.8, n=3, seed=5)
    free = sampling.generate(params, cfg, prompts, progress=False, **kw)
    # Stop ids drawn early by some rows, so rows end at different steps and free slots get refilled.
    stops = sorted({free.tokens[0][1], free.tokens[4][2], free.tokens[9][0]})
    ref_tokens, ref_logps = _static_reference(params, cfg, prompts, 3, T, 5, 0.8, stops)
    assert len({len(x) for x in ref_tokens}) > 2, "test is vacuous: rows end together"
    for slots in (2, 4, None):
        stats = sampling.Stats()
        got = sampling.generate(params, cfg, prompts, stop_token_ids=stops, sub_batch_size=slots, progress=False,
                                stats=stats, **kw)
        assert got.tokens == ref_tokens, slots
        for r, lp in enumerate(ref_logps):
            np.testing.assert_allclose(got.logprobs[r], lp, atol=1e-5)
        if slots == 2:
            assert stats.refills > len(ref_tokens) // 2  # slots really were reused


def test_small_dot_segments_sample_what_the_default_ones_do(model, prompts, monkeypatch):
    # Few slots per CPU device compile the decode segment without YNNPACK dots (`engine.SMALL_DOT_OPTIONS`):
    # a faster kernel choice, the same samples.
    cfg, params = model
    assert engine.small_dots(engine.SMALL_DOT_MAX_ROWS, "cpu")
    assert not engine.small_dots(engine.SMALL_DOT_MAX_ROWS + 1, "cpu") and not engine.small_dots(4, "gpu")
    kw = dict(max_new_tokens=T, temperature=0.8, n=3, seed=5, sub_batch_size=4, progress=False)
    got = {}
    for max_rows in (0, 64):
        monkeypatch.setattr(engine, "SMALL_DOT_MAX_ROWS", max_rows)
        engine.release_programs()
        got[max_rows] = sampling.generate(params, cfg, prompts, **kw)
        ran = (engine._segment._cache_size() > 0, engine._segment_small_dots._cache_size() > 0)
        assert ran == ((False, True) if max_rows else (True, False)), (max_rows, ran)
    engine.release_programs()
    assert got[0].tokens == got[64].tokens
    for a, b in zip(got[0].logprobs, got[64].logprobs):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_progress_callback_is_told_each_finished_row_once(model, prompts):
    """`progress=callable` (the evaluator's bar) hears of every row once, as slots finish, and changes nothing."""
    cfg, params = model
    kw = dict(max_new_tokens=T, temperature=0.8, n=3, seed=5, sub_batch_size=2)
    quiet = sampling.generate(params, cfg, prompts, progress=False, **kw)
    stops = sorted({quiet.tokens[0][1], quiet.tokens[4][2]})
    reported = []
    got = sampling.generate(params, cfg, prompts, stop_token_ids=stops, progress=reported.append, **kw)
    want = sampling.generate(params, cfg, prompts, stop_token_ids=stops, progress=False, **kw)
    assert got.tokens == want.tokens
    assert sum(reported) == len(prompts) * 3 and all(k > 0 for k in reported)
    assert len(reported) >= len(prompts) * 3 // 2  # reported per finishing segment, not once at the end


def test_sharded_slots_equal_unsharded(model, prompts):
    cfg, params = model
    sharder = shd.Sharder(shd.make_mesh((4, 1, 2)))  # slots over 4 data shards, heads over 2
    placed = jax.device_put(params, sharder.tree_shardings(models.param_logical_axes(cfg), params))
    kw = dict(max_new_tokens=T, n=2, seed=9, temperature=0.7, stop_token_ids=(3, 17, 40), progress=False)
    ref = sampling.generate(params, cfg, prompts, sub_batch_size=2, **kw)
    got = sampling.generate(placed, cfg, prompts, sharder=sharder, sub_batch_size=4, **kw)
    assert got.tokens == ref.tokens and got.finish_reason == ref.finish_reason
    np.testing.assert_allclose(got.logprob_array, ref.logprob_array, atol=1e-5)


def test_logprobs_equal_trainer_recomputation(model, prompts):
    cfg, params = model
    temperature = 0.6
    res = sampling.generate(params, cfg, prompts, max_new_tokens=T, temperature=temperature, n=2, seed=11,
                            stop_token_ids=(5, 50), sub_batch_size=4, progress=False)
    ids = np.concatenate([res.prompt_ids, res.response_ids], axis=1)
    mask = np.concatenate([res.prompt_mask, res.response_mask], axis=1)
    r = res.response_ids.shape[1]
    logp, _ = jax.jit(trainer_logprobs.response_logprobs, static_argnames=("cfg", "response_len", "chunk",
                                                                           "with_entropy"))(
        params, cfg, ids, mask, r, temperature=temperature, chunk=16, with_entropy=False)
    m = res.response_mask.astype(bool)
    np.testing.assert_allclose(res.logprob_array[m], np.asarray(logp)[m], atol=1e-5)


def test_window_and_compaction_shapes(model):
    # 1 long prompt among short ones: the window grows to the long row's bucket; once the queue is empty
    # the few live rows are compacted into fewer slots. Results still equal the static order's.
    cfg, params = model
    rng = np.random.default_rng(2)
    prompts = [rng.integers(1, 97, size=k).tolist() for k in (3, 40, 2, 4, 6, 3, 5, 2, 7, 3, 2, 9, 4, 3, 5, 6, 2)]
    kw = dict(max_new_tokens=40, temperature=1.0, seed=2, stop_token_ids=(7, 11, 13, 19, 23), progress=False)
    ref = sampling.generate(params, cfg, prompts, sub_batch_size=None, **kw)
    stats = sampling.Stats()
    got = sampling.generate(params, cfg, prompts, sub_batch_size=16, stats=stats, **kw)
    assert got.tokens == ref.tokens
    assert stats.compactions >= 1, stats
    assert 0 < stats.utilisation() <= 1


def test_prefill_parts():
    # Lengths longest first -> batch sizes: the longest split off while that computes <= 75% of the positions.
    parts = lambda lengths, shared=0, multiple=1: scheduler.prefill_parts(lengths, shared, multiple, 16)
    assert parts([431, 142, 106, 79, 78, 71, 49, 45]) == [1, 2, 5]  # 512 + 2 x 192 + 8 x 96 = 1,664 of 8 x 512
    assert parts([41] * 200, shared=28) == [200]  # all alike: one batch
    assert parts([60, 41, 7, 6, 5, 4, 3, 3, 2]) == [2, 7]  # 2 x 64 + 8 x 16 = 256 of 16 x 64
    assert parts([60, 7], multiple=2) == [2]  # two shards: 2 x 64 + 2 x 16 > 0.75 x 2 x 64
    assert parts([5]) == [1]
    assert parts([7, 5, 4, 3, 2]) == [5]  # one length bucket: never split for bucket-padding rows alone


def test_prompts_of_very_different_lengths_prefill_apart(model, monkeypatch):
    """The long prompts' prefill runs in a batch of its own; samples equal the full recomputation's."""
    cfg, params = model
    rng = np.random.default_rng(5)
    prompts = [rng.integers(1, 97, size=k).tolist() for k in (3, 60, 5, 2, 44, 7, 4)]
    shapes = _record_prefills(monkeypatch, lambda ids, kw: ids.shape)
    out = sampling.generate(params, cfg, prompts, max_new_tokens=T, temperature=0.9, n=2, seed=6, progress=False,
                            sub_batch_size=16)
    assert shapes == [(2, 64), (8, 16)], shapes
    _assert_static_samples(out, params, cfg, prompts, 2, 6, 0.9)


def test_schedule_counters_count_live_slots_only(model):
    # After a compaction the free slots' device rows are copies (their `fill` is not the host's 0): the segment
    # after it must not count their positions as decode steps. No segment runs more than max_new_tokens - 1
    # steps (each sample's first token comes from the prefill).
    cfg, params = model
    rng = np.random.default_rng(3)
    prompts = [rng.integers(1, 97, size=k).tolist() for k in (60, 3, 5, 2, 7, 41, 4, 6, 3)]
    stats = sampling.Stats()
    sampling.generate(params, cfg, prompts, max_new_tokens=12, temperature=1.0, n=2, seed=3,
                      stop_token_ids=(7, 11, 13, 19), sub_batch_size=16, progress=False, stats=stats)
    assert stats.compactions >= 1, stats
    assert stats.decode_steps <= stats.segments * 11, stats
    assert stats.slot_steps >= stats.tokens - stats.samples, stats


def test_release_programs_then_generate_the_same(model):
    cfg, params = model
    prompts = [[5, 6, 7], [8, 9]]
    kw = dict(max_new_tokens=6, temperature=1.0, seed=4, n=2, progress=False)
    first = sampling.generate(params, cfg, prompts, **kw)
    with CompileCounter() as kept:  # the same call again: every program is still compiled
        sampling.generate(params, cfg, prompts, **kw)
    sampling.release_programs()
    with CompileCounter() as again:
        second = sampling.generate(params, cfg, prompts, **kw)
    assert kept.count == 0, kept.summary()
    # Every engine program was dropped, so each one this call runs is compiled again.
    assert {"decode_segment", "prefill", "insert", "init_state"} <= {n.removeprefix("jit(").removesuffix(")") for n in again.names}, again.names
    assert second.tokens == first.tokens  # same samples


def test_compaction_levels():
    # Halves, never below MIN_SLOTS_PER_SHARD per batch shard, never an uneven split over the shards.
    assert scheduler.MIN_SLOTS_PER_SHARD == 8
    assert [scheduler._compact_below(s, 1) for s in (8, 12, 16, 24, 32, 64)] == [0, 0, 8, 12, 16, 32]
    assert [scheduler._compact_below(s, 2) for s in (16, 32, 64)] == [0, 16, 32]
    assert scheduler._compact_below(132, 6) == 66
    assert scheduler._compact_below(72, 6) == 0  # 36 slots: fewer than 8 per shard
    assert scheduler._compact_below(136, 8) == 0  # 68 slots would not split evenly over 8 shards
    # Several levels at once, as far as the live rows fit; nothing live or too many live: unchanged.
    assert [scheduler._compacted(64, live, 1) for live in (0, 3, 8, 9, 16, 17, 32, 33)] == \
        [64, 8, 8, 16, 16, 32, 32, 64]
    assert scheduler._compacted(64, 3, 2) == 16
    assert scheduler._compacted(8, 1, 1) == 8  # the demo's 8-slot rollouts are never compacted


def test_shared_prefix_length():
    assert engine.shared_prefix([[1] * 40 + [2], [1] * 40 + [3, 4]], multiple=16) == 32
    assert engine.shared_prefix([[1] * 40 + [2], [1] * 40 + [3, 4]], multiple=1) == 40
    assert engine.shared_prefix([[1] * 16, [1] * 16], multiple=16) == 0  # each prompt keeps a token of its own
    assert engine.shared_prefix([[1] * 17, [1] * 40], multiple=16) == 16
    assert engine.shared_prefix([[1] * 40], multiple=16) == 0  # one prompt: nothing to share
    assert engine.shared_prefix([[5] + [1] * 40, [1] * 41], multiple=1) == 0


def test_shared_prefix_prefill_equals_full_prefill(model):
    """Prefix run once and copied == every row run in full: keys/values and last-position logits (fp32)."""
    cfg, params = model
    rng = np.random.default_rng(3)
    system = rng.integers(1, 97, size=19).tolist()
    prompts = [system + rng.integers(1, 97, size=k).tolist() for k in (1, 6, 3)]
    p = 32
    ids = np.zeros((4, p), np.int32)  # the 4th row is bucket padding: one pad token
    lens = np.ones((4,), np.int32)
    for i, q in enumerate(prompts):
        ids[i, :len(q)], lens[i] = q, len(q)
    shared = engine.shared_prefix(prompts, multiple=8)
    assert shared == 16
    full_cache, full_logits = engine.prefill(params, ids, lens, cfg=cfg, cache_dtype="float32")
    cache, logits = engine.prefill(params, ids, lens, cfg=cfg, cache_dtype="float32", shared=shared)
    np.testing.assert_allclose(np.asarray(logits)[:3], np.asarray(full_logits)[:3], rtol=1e-5, atol=1e-5)
    for name in ("k", "v"):
        for i, q in enumerate(prompts):
            np.testing.assert_allclose(np.asarray(cache[name])[:, i, :len(q)], np.asarray(full_cache[name])[:, i, :len(q)],
                                       rtol=1e-5, atol=1e-5)


def test_prefill_length_buckets_the_unshared_part():
    assert scheduler.prefill_length(41, 28, 16) == 44  # 28 + 16, not the bucket 48
    assert scheduler.prefill_length(41, 0, 16) == 48
    assert scheduler.prefill_length(48, 4, 16) == 48  # 4 + bucket(44) = 52: capped at the bucket of 48
    assert scheduler.prefill_length(200, 100, 16) == 228


@pytest.mark.parametrize("system_len,shared,p", [(18, 16, 32), (30, 28, 44)])
def test_generate_with_a_shared_system_prompt_equals_the_static_reference(model, monkeypatch, system_len, shared, p):
    """The prefix path (prefix once, each row's own tokens in a buffer of `scheduler.prefill_length`) samples
    what the static reference does; (30, 28, 44): a buffer shorter than the prompts' bucket (48)."""
    cfg, params = model
    rng = np.random.default_rng(4)
    system = rng.integers(1, 97, size=system_len).tolist()
    prompts = [system + rng.integers(1, 97, size=k).tolist() for k in (3, 7, 1, 5)]
    assert engine.shared_prefix(prompts) == shared  # the engine's own multiple: the prefix path runs
    seen = _record_prefills(monkeypatch, lambda ids, kw: (ids.shape[1], kw["shared"]))
    out = sampling.generate(params, cfg, prompts, max_new_tokens=T, temperature=0.8, n=2, seed=9, progress=False,
                            sub_batch_size=4)
    assert {s for _, s in seen} == {shared} and (p, shared) in seen  # a refill of shorter prompts: shorter p
    _assert_static_samples(out, params, cfg, prompts, 2, 9, 0.8)


def test_shared_prefix_on_a_mesh_equals_unsharded(model):
    cfg, params = model
    sharder = shd.Sharder(shd.make_mesh((4, 1, 2)))
    placed = jax.device_put(params, sharder.tree_shardings(models.param_logical_axes(cfg), params))
    rng = np.random.default_rng(6)
    system = rng.integers(1, 97, size=20).tolist()
    prompts = [system + rng.integers(1, 97, size=k).tolist() for k in (2, 9, 4, 1, 6)]
    kw = dict(max_new_tokens=T, n=2, seed=2, temperature=0.7, progress=False)
    ref = sampling.generate(params, cfg, prompts, sub_batch_size=2, **kw)  # one prompt per refill: no sharing
    got = sampling.generate(placed, cfg, prompts, sharder=sharder, sub_batch_size=8, **kw)
    assert got.tokens == ref.tokens
    np.testing.assert_allclose(got.logprob_array, ref.logprob_array, atol=1e-5)


def test_decode_params_alias_the_stacked_weights_on_cpu(model, prompts, monkeypatch):
    """On one CPU device the per-layer decode weights are views of the stacked arrays (no second copy of the
    weights per rollout), sample exactly what the copy samples, and leave later donation of the params safe."""
    cfg, params = model
    own = lambda: jax.device_put(jax.tree.map(np.array, params), jax.devices("cpu")[0])  # fresh buffers to donate
    placed = own()
    assert cfg.dtype == "float32" and all(x.dtype == np.float32 for x in jax.tree.leaves(placed))
    views, copy = engine.decode_params(placed, cfg), engine.unstack_params(placed, cfg=cfg)
    stacked = jax.tree.leaves(placed["layers"])
    for i, layer in enumerate(views["layers"]):
        for view, copied, whole in zip(jax.tree.leaves(layer), jax.tree.leaves(copy["layers"][i]), stacked):
            assert view.unsafe_buffer_pointer() == whole.unsafe_buffer_pointer() + i * view.nbytes
            np.testing.assert_array_equal(view, copied)
    kw = dict(max_new_tokens=T, temperature=0.8, n=2, seed=3, stop_token_ids=(5, 50), sub_batch_size=4, progress=False)
    got = sampling.generate(placed, cfg, prompts, **kw)
    with monkeypatch.context() as m:
        m.setattr(engine, "decode_params", lambda p, c: engine.unstack_params(p, cfg=c))
        ref = sampling.generate(placed, cfg, prompts, **kw)
    assert got.tokens == ref.tokens
    np.testing.assert_array_equal(got.logprob_array, ref.logprob_array)
    # A donation while views exist copies instead of writing into the viewed buffer.
    before = np.asarray(views["layers"][1]["mlp"]["up_proj"]["kernel"]).copy()
    jax.jit(lambda p: jax.tree.map(lambda x: x * 0, p), donate_argnums=0)(placed)
    np.testing.assert_array_equal(views["layers"][1]["mlp"]["up_proj"]["kernel"], before)
    # Once the views are gone, the params donate again (nothing keeps an outside reference to them).
    later = own()
    engine.decode_params(later, cfg)
    jax.jit(lambda p: jax.tree.map(lambda x: x + 1, p), donate_argnums=0)(later["layers"])
    assert all(x.is_deleted() for x in jax.tree.leaves(later["layers"]))
    # A cast (bf16 compute over float32 weights) needs its own copy.
    fresh = own()
    cast = engine.decode_params(fresh, dataclasses.replace(cfg, dtype="bfloat16"))["layers"][1]["mlp"]["up_proj"]
    assert cast["kernel"].dtype == jnp.bfloat16
    assert cast["kernel"].unsafe_buffer_pointer() != fresh["layers"]["mlp"]["up_proj"]["kernel"].unsafe_buffer_pointer()

