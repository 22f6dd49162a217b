"""Tests for RewardPool: order, per-answer timeouts, worker replacement, memory cap.

The scoring functions below are module-level so that spawned workers can unpickle them (spawn
passes the parent's sys.path, which holds this directory under pytest).
"""

import json
import os
import time

import numpy as np
import pytest

from rlvr_jax.rewards import RewardPool, compute_score


def _toy_score(response: str, ground_truth: str) -> float:
    """Exact match, with trigger strings for the failure modes under test."""
    if response == "hang":
        time.sleep(600)
    if response == "crash":
        os._exit(3)  # pylint: disable=protected-access
    if response == "hog":
        blocks = [bytearray(2**28) for _ in range(64)]  # 16 GiB: beyond the cap
        return float(len(blocks))
    return 1.0 if response == ground_truth else 0.0


@pytest.fixture(scope="module")
def verifier_pool():
    with RewardPool(num_workers=2, timeout_s=10.0) as pool:
        yield pool


@pytest.fixture(scope="module")
def toy_pool():
    with RewardPool(num_workers=2, timeout_s=1.0, memory_mb=512, score_fn=_toy_score) as pool:
        yield pool


def test_scores_match_in_process_and_keep_order(verifier_pool):
    responses = [r"\boxed{%d}" % i for i in range(40)]
    golds = [str(i if i % 3 else i + 1) for i in range(40)]
    scores = verifier_pool.score(responses, golds)
    expected = np.array([compute_score(r, g) for r, g in zip(responses, golds)], np.float32)
    assert scores.dtype == np.float32 and scores.shape == (40,)
    np.testing.assert_array_equal(scores, expected)


def test_require_box_per_call(verifier_pool):
    assert verifier_pool.score(["The answer is 5."], ["5"]).tolist() == [1.0]
    assert verifier_pool.score(["The answer is 5."], ["5"], require_box=True).tolist() == [0.0]
    assert verifier_pool.score([r"\boxed{5}"], ["5"], require_box=True).tolist() == [1.0]


def test_public_hang_and_injection_cases_finish_within_timeout(verifier_pool, shared_dir):
    with open(shared_dir / "verifier" / "public_cases.jsonl", encoding="utf-8") as f:
        cases = [json.loads(line) for line in f]
    cases = [c for c in cases if c["category"] in ("hang", "injection", "garbage")]
    timeouts_before = verifier_pool.stats.timeouts
    scores = verifier_pool.score([c["pred"] for c in cases], [c["gold"] for c in cases])
    assert [bool(s) for s in scores] == [c["equal"] for c in cases]
    assert verifier_pool.stats.timeouts == timeouts_before  # answered, not timed out


def test_timeout_scores_zero_and_replaces_worker(toy_pool):
    restarts = toy_pool.stats.restarts
    start = time.monotonic()
    scores = toy_pool.score(["a", "hang", "b", "c", "d"], ["a", "hang", "b", "x", "d"])
    assert time.monotonic() - start < 30
    np.testing.assert_array_equal(scores, [1, 0, 1, 0, 1])
    assert toy_pool.stats.timeouts >= 1
    assert toy_pool.stats.restarts == restarts + 1
    # The replacement worker serves the next batch.
    np.testing.assert_array_equal(toy_pool.score(["a"] * 6, ["a"] * 6), np.ones(6))


def test_crashed_worker_scores_zero_and_is_replaced(toy_pool):
    deaths = toy_pool.stats.worker_deaths
    scores = toy_pool.score(["a", "crash", "b"], ["a", "crash", "b"])
    np.testing.assert_array_equal(scores, [1, 0, 1])
    assert toy_pool.stats.worker_deaths == deaths + 1


def test_worker_killed_while_idle_is_replaced(toy_pool):
    victim = toy_pool._workers[0].process  # pylint: disable=protected-access
    victim.kill()
    victim.join()
    np.testing.assert_array_equal(toy_pool.score(["a", "b", "c"], ["a", "b", "x"]), [1, 1, 0])


def test_memory_cap_turns_blowup_into_zero(toy_pool):
    scores = toy_pool.score(["hog", "a"], ["hog", "a"])
    np.testing.assert_array_equal(scores, [0, 1])


def test_empty_and_mismatched_batches(toy_pool):
    assert toy_pool.score([], []).shape == (0,)
    with pytest.raises(ValueError):
        toy_pool.score(["a"], [])


def test_rejects_fork_start_method():
    with pytest.raises(ValueError):
        RewardPool(start_method="fork")
