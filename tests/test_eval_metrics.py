"""Evaluation: pass@k / avg@k / maj@k against independent references, benchmarks, reports."""

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest

import rlvr_jax.evaluation as ev
from rlvr_jax.rewards.math import compute_score
from rlvr_jax.evaluation import (PAPER_BENCHMARKS, Benchmark, avg_at_k, benchmark_average,
                                 get_benchmark, load_benchmark, maj_at_k, majority_answer,
                                 mean_pass_at_k, pass_at_k)

COUNTS = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "minerva_math": 272,
          "olympiadbench": 675}


@pytest.fixture(scope="module")
def eval_dir(shared_dir):
    return shared_dir / "data" / "eval"


# ----------------------------------------------------------------------------- pass@k


def test_pass_at_k_matches_subset_enumeration():
    for n in range(1, 11):
        for c in range(n + 1):
            outcomes = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                hits = sum(any(s) for s in subsets)
                # Both sides are correctly rounded values of the same rational: exactly equal.
                assert pass_at_k(n, c, k) == float(Fraction(hits, len(subsets))), (n, c, k)


@pytest.mark.parametrize("c, k", [(1, 1), (1, 10), (3, 1000), (50, 64), (200, 5000),
                                  (9000, 2), (9999, 1)])
def test_pass_at_k_exact_at_n_10000(c, k):
    n = 10_000
    # Independent reference: the product form 1 - prod_{i=n-c+1}^{n} (1 - k/i), in Fractions.
    miss = Fraction(1)
    for i in range(n - c + 1, n + 1):
        miss *= Fraction(i - k, i) if i > k else 0
    assert pass_at_k(n, c, k) == float(1 - miss)


def test_pass_at_k_edges_and_validation():
    assert pass_at_k(10_000, 1, 1) == 1e-4  # No cancellation for tiny values.
    assert pass_at_k(10_000, 0, 5_000) == 0.0 and pass_at_k(10_000, 9_000, 2_000) == 1.0
    assert pass_at_k(np.int64(8), np.int64(2), 4) == pytest.approx(1 - 15 / 70)
    for args in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(*args)
    with pytest.raises(TypeError):
        pass_at_k(8.0, 2, 1)
    with pytest.raises(TypeError):
        pass_at_k(8, True, 1)
    assert ev.pass_at_k is pass_at_k  # The public API contract.


def test_mean_pass_at_k():
    correct = [[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
    assert mean_pass_at_k(correct, 1) == pytest.approx((0.25 + 0 + 1) / 3)
    assert mean_pass_at_k(np.array(correct, bool), 2) == pytest.approx((0.5 + 0 + 1) / 3)


# ----------------------------------------------------------------------------- avg@k, maj@k


def test_avg_at_k():
    correct = np.array([[1, 1, 0, 0, 0, 0, 0, 0], [1] * 8, [0] * 8], dtype=bool)
    assert avg_at_k(correct) == pytest.approx((0.25 + 1 + 0) / 3)
    assert avg_at_k(correct, k=2) == pytest.approx((1 + 1 + 0) / 3)
    assert avg_at_k([[1], [0], [1], [1]]) == 0.75  # Greedy: k = 1 is plain accuracy.
    assert avg_at_k([[1, 0], [1]]) == pytest.approx(0.75)  # Ragged: per-problem mean first.
    with pytest.raises(ValueError, match="fewer than 3"):
        avg_at_k([[1, 0], [1]], k=3)
    with pytest.raises(ValueError, match="no problems"):
        avg_at_k([])


def test_majority_vote():
    assert majority_answer(["1", "2", "2", "1", "3"]) == "1"  # Tie -> first occurrence.
    assert majority_answer(["1", "2", "2", "1", "2"]) == "2"
    assert majority_answer(["1", "2", "2", "1", "2"], k=4) == "1"
    assert majority_answer([None, None, "7"]) == "7"  # No answer never votes.
    assert majority_answer([None, None]) is None
    assert maj_at_k(["3", "4", "4"], "4") and not maj_at_k(["3", "3", "4"], "4")
    assert not maj_at_k([None], "4")

    def numeric(a, b):
        return float(Fraction(a)) == float(Fraction(b))

    # Equivalence clusters "1/2", "0.5" and "2/4"; its representative is the first one seen.
    answers = ["0.25", "1/2", "0.5", "1/4", "2/4"]
    assert majority_answer(answers, equiv=numeric) == "1/2"
    assert maj_at_k(answers, "0.50", equiv=numeric)
    assert not maj_at_k(answers, "0.50")  # String equality: 5 singletons -> "0.25" wins.


def test_benchmark_average_is_unweighted():
    scores = {"math500": 0.744, "aime24": 0.167, "amc23": 0.5}
    assert benchmark_average(scores) == pytest.approx((0.744 + 0.167 + 0.5) / 3)
    with pytest.raises(ValueError, match="missing scores"):
        benchmark_average(scores, PAPER_BENCHMARKS)
    full = {name: 0.1 * (i + 1) for i, name in enumerate(PAPER_BENCHMARKS)}
    assert benchmark_average(full, PAPER_BENCHMARKS) == pytest.approx(0.35)


# ----------------------------------------------------------------------------- benchmarks


def test_registry_protocols():
    assert set(PAPER_BENCHMARKS) <= set(ev.benchmark_names())
    for name in ("math500", "minerva_math", "olympiadbench"):
        b = get_benchmark(name)
        assert b.greedy and b.n == 1 and b.metric == "acc"
    for name in ("aime24", "aime25", "amc23"):
        b = get_benchmark(name)
        assert (b.temperature, b.top_p, b.n, b.metric) == (0.6, 1.0, 8, "avg@8")
    assert {get_benchmark(n).max_new_tokens for n in PAPER_BENCHMARKS} == {3072}
    assert {get_benchmark(n).template for n in PAPER_BENCHMARKS} == {"qwen_math_cot"}
    assert len(load_benchmark("math500")) == 500  # no data_dir: the package's own copy
    with pytest.raises(ValueError, match="unknown benchmark"):
        get_benchmark("gsm9k")
    with pytest.raises(ValueError, match="greedy"):
        Benchmark("x", "x.jsonl", n=4)


@pytest.mark.parametrize("name", [n for n in PAPER_BENCHMARKS if n != "minerva_math"])
def test_paper_benchmarks_load(eval_dir, name):
    examples = load_benchmark(name, data_dir=eval_dir)
    assert len(examples) == COUNTS[name]
    assert all(e.answer and e.question.strip() for e in examples)
    assert {e.source for e in examples} == {name}
    assert not any("$" in e.answer.replace("\\$", "") for e in examples if name != "math500")
    if name == "amc23":
        assert examples[0].answer == "27" and all(not e.answer.endswith(".0") for e in examples)
    if name == "olympiadbench":
        assert examples[1].answer == "\\frac{1}{2 n+2}"


def test_minerva_loads(eval_dir):
    examples = load_benchmark("minerva_math", data_dir=eval_dir)
    assert len(examples) == COUNTS["minerva_math"]
    assert all(e.answer for e in examples)
    assert examples[0].answer == "1.6"


def test_any_jsonl_is_a_benchmark(tmp_path):
    path = tmp_path / "mine" / "test.jsonl"
    path.parent.mkdir()
    path.write_text('{"question": "1+1?", "answer": 2}\n')
    bench = get_benchmark(str(path))
    assert bench.name == "mine" and bench.greedy
    assert [(e.question, e.answer) for e in load_benchmark(str(path))] == [("1+1?", "2")]
    assert load_benchmark("mine/test.jsonl", data_dir=tmp_path)[0].source == "mine"


def _score_references(compute_score, examples, solutions):
    failures = [(e.index, e.answer) for e, s in zip(examples, solutions)
                if float(compute_score(s, e.answer)) < 1.0]
    return 1 - len(failures) / len(examples), failures


@pytest.mark.parametrize("name", ["math500", "minerva_math"])
def test_reference_solutions_grade_correct(eval_dir, name):
    """Each benchmark's own worked solution must earn reward against its own answer."""
    examples = load_benchmark(name, data_dir=eval_dir)
    with open(eval_dir / name / "test.jsonl", encoding="utf-8") as f:
        solutions = [json.loads(line)["solution"] for line in f if line.strip()]
    accuracy, failures = _score_references(compute_score, examples, solutions)
    print(f"{name}: {accuracy:.2%} of reference solutions graded correct; failures "
          f"(index, answer): {failures}")
    assert accuracy >= 0.99, failures


# ----------------------------------------------------------------------------- reports


def test_report_files(tmp_path):
    results = {"math500": {"acc": 0.75, "n": 500}, "aime24": {"acc": np.float32(0.25), "n": 30}}
    table = ev.markdown_table(results)
    assert table.splitlines()[0] == "| benchmark | acc | n |"
    assert "| math500 | 75.0 | 500 |" in table and "| average | 50.0 |  |" in table
    paths = ev.write_report(tmp_path / "eval", results, meta={"step": 100})
    summary = json.loads(paths["summary"].read_text())
    assert summary["average"] == {"acc": 0.5} and summary["step"] == 100
    assert summary["benchmarks"]["aime24"] == {"acc": 0.25, "n": 30}
    assert paths["table"].read_text() == table
    records = [ev.SampleRecord("aime24", 3, 0, "p", "r \\boxed{5}", "5", "5", True),
               {"problem": "p2", "response": "r2", "extracted": None, "correct": False}]
    assert ev.write_samples(tmp_path / "samples.jsonl", records) == 2
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert rows[0]["extracted"] == "5" and rows[0]["correct"] is True
    assert rows[1] == records[1]
    with pytest.raises(ValueError, match="lacks"):
        ev.write_samples(tmp_path / "bad.jsonl", [{"problem": "p"}])
    assert math.isclose(ev.averages(results)["acc"], 0.5)
