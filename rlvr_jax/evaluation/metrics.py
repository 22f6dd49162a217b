"""Evaluation metrics: unbiased pass@k, avg@k, maj@k, the paper's benchmark average, and the
per-benchmark and trainer-validation metrics the evaluator reports from them.

Conventions: a *correct matrix* is ``correct_pn`` -- one row per problem, one column per sampled
response (bool or {0, 1}); rows may differ in length when given as a list of lists. Scores are
fractions in [0, 1]; reports multiply by 100.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

from rlvr_jax.evaluation.benchmarks import PAPER_BENCHMARKS, Benchmark
from rlvr_jax.rewards.normalize import normalize

EquivFn = Callable[[str, str], bool]

# Longer answers are voted on verbatim: normalising is quadratic (the verifier's own cut-off).
_MAX_VOTE_CHARS = 2000


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate for one problem: ``1 - C(n-c, k) / C(n, k)``.

    The probability that at least one of k responses drawn without replacement from n sampled
    responses, c of them correct, is correct (Chen et al. 2021). Computed in exact integer
    arithmetic and rounded once -- ``(C(n,k) - C(n-c,k)) / C(n,k)`` with Python's correctly
    rounded int division -- so there is neither overflow nor the cancellation of ``1 - ratio``
    when pass@k is tiny; n = 10,000 costs about a millisecond at worst (k near n/2).

    Args:
      n: Responses sampled for the problem.
      c: How many of them are correct, ``0 <= c <= n``.
      k: The k of pass@k, ``1 <= k <= n``.

    Returns:
      pass@k in [0, 1].

    Raises:
      ValueError: arguments out of range; TypeError: non-integers.
    """
    n, c, k = (_as_int(v, name) for v, name in ((n, "n"), (c, "c"), (k, "k")))
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got n={n}, k={k}")
    total = math.comb(n, k)
    return (total - math.comb(n - c, k)) / total


def mean_pass_at_k(correct_pn: Sequence[Sequence[bool]] | np.ndarray, k: int) -> float:
    """pass@k averaged over problems, from a correct matrix (see module docstring)."""
    rows = _rows(correct_pn)
    return float(np.mean([pass_at_k(len(row), int(np.sum(row)), k) for row in rows]))


def avg_at_k(correct_pn: Sequence[Sequence[bool]] | np.ndarray, k: int | None = None) -> float:
    """avg@k: accuracy averaged over the first k responses of each problem, then over problems.

    The paper's AIME24 / AIME25 / AMC23 score is avg@8 (temperature 0.6); greedy benchmarks are
    the k = 1 case.

    Args:
      correct_pn: Correct matrix, [problems, responses].
      k: Responses per problem to use; None uses all of each row.

    Returns:
      Mean accuracy in [0, 1].
    """
    rows = _rows(correct_pn)
    if k is not None:
        if k < 1:
            raise ValueError(f"avg_at_k needs k >= 1, got {k}")
        short = [i for i, row in enumerate(rows) if len(row) < k]
        if short:
            raise ValueError(f"avg@{k}: problems {short[:5]} have fewer than {k} responses")
        rows = [row[:k] for row in rows]
    return float(np.mean([np.mean(row) for row in rows]))


def majority_answer(answers: Sequence[str | None], k: int | None = None,
                    equiv: EquivFn | None = None) -> str | None:
    """The most frequent of the first k answers, up to equivalence.

    Answers are clustered greedily: each joins the first earlier cluster whose representative
    (its first member) it is equivalent to. The largest cluster wins; ties go to the cluster
    that appeared first. ``None`` (no answer could be extracted) never votes.

    Args:
      answers: Extracted answers of one problem's responses, in sampling order.
      k: Use the first k; None uses all.
      equiv: ``equiv(a, b) -> bool``, e.g. the reward verifier's ``is_equiv``; None means
        string equality after stripping whitespace.

    Returns:
      The winning cluster's representative, or None when no response had an answer.
    """
    if k is not None:
        if k < 1:
            raise ValueError(f"majority vote needs k >= 1, got {k}")
        answers = answers[:k]
    equiv = equiv or _string_equal
    representatives: list[str] = []
    counts: list[int] = []
    for answer in answers:
        if answer is None:
            continue
        for i, rep in enumerate(representatives):
            if equiv(answer, rep):
                counts[i] += 1
                break
        else:
            representatives.append(answer)
            counts.append(1)
    if not counts:
        return None
    # list.index of the max returns the first maximal cluster: ties -> earliest first occurrence.
    return representatives[counts.index(max(counts))]


def maj_at_k(answers: Sequence[str | None], gold: str, k: int | None = None,
             equiv: EquivFn | None = None) -> bool:
    """maj@k for one problem: is the majority answer of the first k responses correct?

    Args:
      answers: Extracted answers, in sampling order (None for no answer).
      gold: Reference answer.
      k: Responses to vote over; None uses all.
      equiv: Equivalence used both to cluster votes and to grade the winner against ``gold``
        (argument order ``(candidate, gold)``); None means stripped string equality.

    Returns:
      Whether the voted answer is equivalent to ``gold`` (False when nothing was extracted).
    """
    equiv = equiv or _string_equal
    winner = majority_answer(answers, k, equiv)
    return winner is not None and bool(equiv(winner, gold))


def benchmark_average(scores: Mapping[Hashable, float],
                      names: Sequence[Hashable] | None = None) -> float:
    """Unweighted mean of per-benchmark scores (the paper's six-benchmark average).

    Each benchmark counts once, whatever its size (MATH500's 500 problems weigh the same as
    AIME24's 30), which is how the paper's "Avg." column is computed.

    Args:
      scores: ``{benchmark: score}``.
      names: Benchmarks that must all be present (e.g. `benchmarks.PAPER_BENCHMARKS`); None
        averages whatever ``scores`` holds.

    Returns:
      The mean score.

    Raises:
      ValueError: no scores, or a benchmark of ``names`` is missing (a partial average would
        not be comparable with the paper's).
    """
    if names is None:
        names = list(scores)
    missing = [name for name in names if name not in scores]
    if missing:
        raise ValueError(f"benchmark_average: missing scores for {missing}")
    if not names:
        raise ValueError("benchmark_average: no scores")
    return float(np.mean([float(scores[name]) for name in names]))


def benchmark_metrics(correct_pn: np.ndarray, answers_pn: np.ndarray,
                      benchmark: Benchmark) -> dict[str, Any]:
    """Scores of one benchmark from its verdicts.

    Args:
      correct_pn: bool [P, n] verdicts.
      answers_pn: object [P, n] extracted answers (None: no answer), for the majority vote.
      benchmark: The resolved benchmark (its ``n`` and ``metric``).

    Returns:
      ``{"metric": "acc" | "avg@n", "score": headline}``; with n > 1 also ``pass@k`` for every
      power of two k <= n (and n itself) and ``maj@n``.
    """
    out: dict[str, Any] = {"metric": benchmark.metric, "score": avg_at_k(correct_pn)}
    n = correct_pn.shape[1]
    if n > 1:
        for k in pass_ks(n):
            out[f"pass@{k}"] = mean_pass_at_k(correct_pn, k)
        out[f"maj@{n}"] = float(np.mean([majority_correct(answers, correct) for answers, correct
                                          in zip(answers_pn, correct_pn)]))
    return out


def pass_ks(n: int) -> list[int]:
    """Powers of two up to n, plus n: the k of the reported pass@k."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else ks + [n]


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """maj@n of one problem: is the most common extracted answer a correct one?

    Votes are compared by their normalised text (``\\dfrac12`` and ``\\frac{1}{2}`` are one
    vote); the winner's verdict is the verifier's verdict on a response that gave it, so no
    extra (possibly slow) equivalence check runs outside the timed-out worker pool.
    """
    keys = [None if a is None else _vote_key(a) for a in answers]
    winner = majority_answer(keys)
    return winner is not None and bool(correct[keys.index(winner)])


def _vote_key(answer: str) -> str:
    if len(answer) > _MAX_VOTE_CHARS:
        return answer.strip()
    try:
        norm = normalize(answer)
    except Exception:  # pylint: disable=broad-except
        return answer.strip()  # A vote must never crash an evaluation.
    return f"{norm.key}|{norm.unit}"


def paper_average(results: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The paper's six-benchmark "Avg." of headline scores, or None unless all six are present."""
    if not all(name in results for name in PAPER_BENCHMARKS):
        return None
    return benchmark_average({name: results[name]["score"] for name in PAPER_BENCHMARKS},
                             PAPER_BENCHMARKS)


def validation_metrics(results: Mapping[str, Mapping[str, Any]],
                       prefix: str = "eval") -> dict[str, float]:
    """Flat float metrics for the trainer's log: ``<prefix>/<set>/accuracy`` and friends.

    ``accuracy`` is the headline score (greedy accuracy, or avg@n for sampled sets); sampled sets
    add their ``pass@k`` and ``maj@n``; every set adds ``response_length`` and ``truncated``.
    With several sets, ``<prefix>/average/accuracy`` is their unweighted mean.
    """
    out = {}
    for name, row in results.items():
        out[f"{prefix}/{name}/accuracy"] = float(row["score"])
        for key, value in row.items():
            if key.startswith(("pass@", "maj@")):
                out[f"{prefix}/{name}/{key}"] = float(value)
        out[f"{prefix}/{name}/response_length"] = float(row["mean_tokens"])
        out[f"{prefix}/{name}/truncated"] = float(row["truncated"])
    if len(results) > 1:
        out[f"{prefix}/average/accuracy"] = benchmark_average(
            {name: row["score"] for name, row in results.items()})
    return out


def _string_equal(a: str, b: str) -> bool:
    return a.strip() == b.strip()


def _as_int(value, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got a bool")
    try:
        return operator.index(value)  # Accepts numpy integers; refuses 3.0.
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def _rows(correct_pn) -> list[np.ndarray]:
    rows = [np.asarray(row, dtype=np.float64).reshape(-1) for row in correct_pn]
    if not rows:
        raise ValueError("empty correct matrix: no problems")
    empty = [i for i, row in enumerate(rows) if row.size == 0]
    if empty:
        raise ValueError(f"problems {empty[:5]} have no responses")
    return rows
