"""Tests for RewardPool: order, per-answer timeouts, worker replacement, memory cap, any caller.

The scoring functions below are module-level so that workers can import them by name (the pool
hands the workers the parent's sys.path, which holds the repository root under pytest).
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
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
        block = bytearray(2**30)  # 1 GiB: twice the cap; without the cap it succeeds and scores 1
        return float(len(block) == 2**30)
    return 1.0 if response == ground_truth else 0.0


def _dies_on_start(response: str, ground_truth: str) -> float:
    """A scorer that kills its worker during warm-up, after saying why on stderr."""
    sys.stderr.write("toy scorer: no verifier in this worker\n")
    sys.stderr.flush()
    os._exit(7)  # pylint: disable=protected-access


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


def _wait_until_all_ready(pool, limit_s=120.0):
    deadline = time.monotonic() + limit_s
    while not all(w.ready for w in pool._workers):  # pylint: disable=protected-access
        assert time.monotonic() < deadline, "workers never became ready"
        pool.score(["a"], ["a"])  # the pool reads ready signals while it scores


def test_worker_killed_while_idle_is_replaced(toy_pool):
    _wait_until_all_ready(toy_pool)  # a worker killed before it is ready is a start failure instead
    deaths, restarts = toy_pool.stats.worker_deaths, toy_pool.stats.restarts
    victim = toy_pool._workers[0].process  # pylint: disable=protected-access
    victim.kill()
    victim.wait()
    np.testing.assert_array_equal(toy_pool.score(["a", "b", "c"], ["a", "b", "x"]), [1, 1, 0])
    assert toy_pool.stats.worker_deaths == deaths + 1
    assert toy_pool.stats.restarts == restarts + 1


def test_memory_cap_turns_blowup_into_zero(toy_pool):
    before = dataclasses.replace(toy_pool.stats)
    scores = toy_pool.score(["hog", "a"], ["hog", "a"])
    np.testing.assert_array_equal(scores, [0, 1])
    # The cause is the cap (a MemoryError in the worker), not a timeout or a dead worker.
    assert toy_pool.stats.memory_errors == before.memory_errors + 1
    assert toy_pool.stats.timeouts == before.timeouts
    assert toy_pool.stats.worker_deaths == before.worker_deaths
    assert toy_pool.stats.restarts == before.restarts


def test_workers_that_cannot_start_raise_with_their_stderr():
    pool = RewardPool(num_workers=1, timeout_s=1.0, score_fn=_dies_on_start)
    try:
        with pytest.raises(RuntimeError) as info:
            pool.score(["a"], ["a"])
    finally:
        pool.close()
    message = str(info.value)
    assert "failed to start 3x" in message and "exit code 7" in message
    assert "toy scorer: no verifier in this worker" in message
    assert pool.stats.start_failures == 3 and pool.stats.restarts == 2


def test_score_fn_from_main_is_rejected():
    def local(response, ground_truth):
        return 0.0

    local.__module__ = "__main__"
    with pytest.raises(ValueError, match="__main__"):
        RewardPool(score_fn=local)
    with pytest.raises(ValueError, match="top-level"):
        RewardPool(score_fn=lambda r, g: 0.0)


# A plain script: no `if __name__ == "__main__":` guard, the pool created at module level.
_UNGUARDED_SCRIPT = textwrap.dedent("""
    from rlvr_jax.rewards import RewardPool
    print("main module ran")
    pool = RewardPool(2, 5.0)
    print(pool.score([r"\\boxed{4}", "the answer is 5", r"\\boxed{\\frac{1}{2}}"], ["4", "4", "0.5"]).tolist())
    pool.close()
""")


def _run_script(args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300,
                          check=False, **kwargs)


@pytest.mark.parametrize("fed_on_stdin", [False, True], ids=["script_file", "stdin"])
def test_unguarded_script_scores(tmp_path, fed_on_stdin):
    if fed_on_stdin:  # python - < script
        proc = _run_script(["-"], input=_UNGUARDED_SCRIPT, cwd=tmp_path)
    else:
        script = tmp_path / "score.py"
        script.write_text(_UNGUARDED_SCRIPT)
        proc = _run_script([str(script)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # The main module ran once: no worker imported it.
    assert proc.stdout.splitlines() == ["main module ran", "[1.0, 0.0, 1.0]"], proc.stdout


def test_pool_from_a_non_main_thread():
    results = {}

    def work():
        try:
            with RewardPool(num_workers=2, timeout_s=2.0, score_fn=_toy_score) as pool:
                results["scores"] = pool.score(["a", "b", "hang"], ["a", "x", "hang"]).tolist()
                results["timeouts"] = pool.stats.timeouts
        except Exception as e:  # pylint: disable=broad-except
            results["error"] = repr(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive() and "error" not in results, results
    assert results == {"scores": [1.0, 0.0, 0.0], "timeouts": 1}


def test_empty_and_mismatched_batches(toy_pool):
    assert toy_pool.score([], []).shape == (0,)
    with pytest.raises(ValueError):
        toy_pool.score(["a"], [])


def test_rejects_bad_sizes():
    with pytest.raises(ValueError):
        RewardPool(num_workers=0)
    with pytest.raises(ValueError):
        RewardPool(timeout_s=0)
