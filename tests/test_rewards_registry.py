"""The reward registry: math / none / format / hapo and DAPO's overlong shaping, against NumPy."""

import json

import numpy as np
import pytest

from rlvr_jax.rewards import registry


def _gold_score(texts, answers):  # a stand-in verifier: exact text match of the box
    return [1.0 if f"\\boxed{{{a}}}" in t else 0.0 for t, a in zip(texts, answers)]


def test_registry_names_and_errors():
    assert {"math", "none", "format", "hapo"} <= set(registry.REWARDS)
    with pytest.raises(ValueError, match="unknown reward 'lenght'.*valid"):
        registry.build_reward("lenght")
    with pytest.raises(ValueError, match="max_len"):
        registry.build_reward("math", score_fn=_gold_score, overlong_cache_len=4)
    with pytest.raises(ValueError, match="cache_len"):
        registry.build_reward("math", score_fn=_gold_score, overlong_cache_len=9, max_len=8)


def test_math_none_format():
    texts = ["so \\boxed{4}", "so \\boxed{5}", "the answer is 4", "\\boxed{}", "\\boxed{x"]
    answers = ["4"] * 5
    math = registry.build_reward("math", score_fn=_gold_score)
    np.testing.assert_array_equal(math.score(texts, answers), [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(registry.build_reward("none").score(texts, answers), [0] * 5)
    # Format: a non-empty, closed box, right or wrong.
    np.testing.assert_array_equal(registry.build_reward("format").score(texts, answers), [1, 1, 0, 0, 0])
    rewards, metrics = math.shape(np.array([1.0, 0.0]), [3, 4], ["a", "a"])
    np.testing.assert_array_equal(rewards, [1.0, 0.0]) and not metrics


def np_hapo(batches, weight=1.0, floor=-0.7):
    """Reference HAPO run: list of (scores, lengths, keys) -> list of reward arrays."""
    history, out = {}, []
    for scores, lengths, keys in batches:
        rewards = []
        for s, n, k in zip(scores, lengths, keys):
            r_len = 0.0
            if k in history:
                h = history[k]
                f = np.cos(np.pi / 2 * n / h) if n < 2 * h else -1.0
                r_len = max(f, floor) if s >= 1 else min(f, 0.0)
            rewards.append(s + weight * r_len)
        for s, n, k in zip(scores, lengths, keys):
            if s >= 1:
                history[k] = min(history.get(k, n), n)
        out.append(np.array(rewards))
    return out


def test_hapo_matches_numpy_and_resumes_exactly():
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 2, 8).astype(float), rng.integers(5, 60, 8), list("aabbccdd"))
               for _ in range(5)]
    want = np_hapo(batches, weight=0.5)
    reward = registry.build_reward("hapo", score_fn=_gold_score, weight=0.5)
    got = [reward.shape(*b)[0] for b in batches]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    assert np.any(got[-1] != batches[-1][0])  # the length term is active once a history exists
    # Resume: a fresh reward restored from the JSON state after batch 3 continues identically.
    first = registry.build_reward("hapo", score_fn=_gold_score, weight=0.5)
    for b in batches[:3]:
        first.shape(*b)
    resumed = registry.build_reward("hapo", score_fn=_gold_score, weight=0.5)
    resumed.restore(json.loads(json.dumps(first.state())))
    for b, w in zip(batches[3:], want[3:]):
        np.testing.assert_allclose(resumed.shape(*b)[0], w, rtol=1e-6, atol=1e-6)


def test_hapo_length_reward_shape():
    f = registry.hapo_length_reward
    assert f(10, None, True) == 0.0  # no history yet
    assert f(0, 10, True) == pytest.approx(1.0) and f(10, 10, True) == pytest.approx(0.0, abs=1e-12)
    assert f(30, 10, True) == -0.7 and f(30, 10, False) == -1.0  # floor only for correct ones
    assert f(5, 10, False) == 0.0  # a short wrong answer is not punished


def test_overlong_composes_with_any_reward():
    texts, answers = ["\\boxed{4}", "\\boxed{5}", "no box", "\\boxed{4}"], ["4"] * 4
    lengths = np.array([6, 14, 16, 20])
    for name in ("math", "format", "none", "hapo"):
        base = registry.build_reward(name, score_fn=_gold_score)
        shaped = registry.build_reward(name, score_fn=_gold_score, overlong_cache_len=8, max_len=16)
        scores = base.score(texts, answers)
        np.testing.assert_array_equal(shaped.score(texts, answers), scores)
        keys = ["p"] * 4
        want = base.shape(scores, lengths, keys)[0] + np.array([0.0, -0.75, -1.0, -1.0])
        got, metrics = shaped.shape(scores, lengths, keys)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert metrics["reward/overlong_frac"] == 0.75
