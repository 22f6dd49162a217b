"""Reward-verifier throughput: MATH500 reference solutions scored against their reference answers.

The 500 MATH500 solutions are cycled to `--n` responses (1,024 by default) and scored through
`RewardPool` with `--workers` processes; the same inputs go through Math-Verify (`parse` +
`verify`, gold wrapped in `\\boxed{}` as verl does) on a spawn pool of the same size, in the same
run. Printed per scorer: responses/s, wall time (pool start-up separately) and the fraction scored
correct (every reference solution is correct, so 1.0 is the right answer). Matching answers are
mostly caught by the cheap string stage; `--mismatched` pairs each solution with the next
problem's answer instead, so every pair goes through parsing and numeric comparison (the right
answer is then ~0.0). `--cases` adds accuracy on a labelled pairs file such as the public cases.

    python bench/verifier.py
    python bench/verifier.py --path ../shared/data/eval/math500/test.jsonl --n 1024 --workers 2
    python bench/verifier.py --mismatched
    python bench/verifier.py --cases ../shared/verifier/public_cases.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import time

import numpy as np

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

from rlvr_jax.rewards import RewardPool, compute_score  # noqa: E402

DEFAULT_PATH = os.path.join(REPO, "..", "shared", "data", "eval", "math500", "test.jsonl")


def math_verify_score(pair: tuple[str, str]) -> float:
    """Math-Verify's verdict (verl's usage: the gold is boxed so its LaTeX extractor finds it)."""
    from math_verify import parse, verify  # pylint: disable=import-outside-toplevel

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs each timeout with the input
    response, gold = pair
    try:
        return float(verify(parse("\\boxed{" + gold + "}"), parse(response)))
    except Exception:  # pylint: disable=broad-except
        return 0.0


def load_pairs(path: str, n: int, mismatched: bool) -> tuple[list[str], list[str]]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    shift = 1 if mismatched else 0
    responses = [rows[i % len(rows)]["solution"] for i in range(n)]
    golds = [rows[(i + shift) % len(rows)]["answer"] for i in range(n)]
    return responses, golds


def run_ours(responses, golds, workers: int, timeout_s: float) -> dict:
    start = time.perf_counter()
    with RewardPool(num_workers=workers, timeout_s=timeout_s) as pool:
        pool.score(responses[:workers], golds[:workers])  # wait until every worker is up
        ready = time.perf_counter()
        scores = pool.score(responses, golds)
        done = time.perf_counter()
        stats = pool.stats
    return {"name": f"rlvr_jax RewardPool ({workers} workers)", "startup_s": ready - start,
            "seconds": done - ready, "scores": scores, "timeouts": stats.timeouts}


def run_math_verify(responses, golds, workers: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with ctx.Pool(workers) as pool:
        pool.map(math_verify_score, list(zip(responses[:workers], golds[:workers])), chunksize=1)
        ready = time.perf_counter()
        scores = pool.map(math_verify_score, list(zip(responses, golds)), chunksize=8)
        done = time.perf_counter()
    return {"name": f"Math-Verify ({workers} processes)", "startup_s": ready - start,
            "seconds": done - ready, "scores": np.asarray(scores, np.float32), "timeouts": None}


def run_in_process(responses, golds) -> dict:
    compute_score(responses[0], golds[0])
    start = time.perf_counter()
    scores = np.array([compute_score(r, g) for r, g in zip(responses, golds)], np.float32)
    return {"name": "rlvr_jax compute_score (1 process)", "startup_s": 0.0,
            "seconds": time.perf_counter() - start, "scores": scores, "timeouts": None}


def report(result: dict, n: int) -> None:
    print(f"{result['name']:<40} {n / result['seconds']:>9.0f} responses/s  {result['seconds']:6.2f} s"
          f"  (+{result['startup_s']:.1f} s start-up)  correct={result['scores'].mean():.4f}"
          + (f"  timeouts={result['timeouts']}" if result["timeouts"] is not None else ""))


def labelled_accuracy(path: str, workers: int, timeout_s: float) -> None:
    with open(path, encoding="utf-8") as f:
        cases = [json.loads(line) for line in f if line.strip()]
    preds, golds = [c["pred"] for c in cases], [c["gold"] for c in cases]
    labels = np.array([c["equal"] for c in cases])
    with RewardPool(num_workers=workers, timeout_s=timeout_s) as pool:
        ours = pool.score(preds, golds) == 1.0
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        theirs = np.array(pool.map(math_verify_score, list(zip(preds, golds)), chunksize=1)) == 1.0
    for name, verdicts in (("rlvr_jax", ours), ("Math-Verify", theirs)):
        wrong = [i for i in range(len(cases)) if verdicts[i] != labels[i]]
        print(f"{name:<12} accuracy on {len(cases)} labelled pairs: {1 - len(wrong) / len(cases):.4f}"
              f"  wrong: {wrong}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--path", default=DEFAULT_PATH, help="MATH500 jsonl (problem, solution, answer)")
    parser.add_argument("--n", type=int, default=1024, help="responses scored (the file is cycled)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=5.0, help="RewardPool per-answer timeout")
    parser.add_argument("--cases", default=None, help="labelled pairs jsonl (pred, gold, equal)")
    parser.add_argument("--mismatched", action="store_true", help="pair solutions with other answers")
    parser.add_argument("--skip-math-verify", action="store_true")
    args = parser.parse_args()

    responses, golds = load_pairs(args.path, args.n, args.mismatched)
    kind = "mismatched" if args.mismatched else "matching"
    print(f"{args.n} responses ({kind} answers) from {os.path.normpath(args.path)}, "
          f"{os.cpu_count()} CPUs visible")
    report(run_ours(responses, golds, args.workers, args.timeout_s), args.n)
    report(run_in_process(responses, golds), args.n)
    if not args.skip_math_verify:
        report(run_math_verify(responses, golds, args.workers), args.n)
    if args.cases:
        labelled_accuracy(args.cases, args.workers, args.timeout_s)


if __name__ == "__main__":
    main()
