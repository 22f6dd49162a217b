"""The verifier on labelled answer pairs from another project's grader tests.

`tests/data/external_grader_cases.jsonl` holds (gold, pred, expected) pairs transcribed as data from
the parametrized tests of
  - huggingface/Math-Verify (Apache-2.0, commit 5d148cfaaf99214c2e4ffb4bc497ab042c592a7a,
    `tests/`), each row naming its test function and the extraction targets that test used;
  - NVIDIA/NeMo-Skills (Apache-2.0, commit 0b012df8a09cd4730d31b16e90a0d8f13d145fb8,
    `tests/test_math_equal.py`), bare answer pairs checked in both directions (match_types null);
  - hendrycks/math (MIT, commit 985bdc1696e88e8643f081a0ff4719da39f2ae2a,
    `modeling/math_equivalence_test.py`), graded by normalised string equality
    (match_types "string"). Zero false positives matters more than recall: a wrong answer
rewarded is a training signal pointing the wrong way.
"""

import json
import pathlib

from rlvr_jax.rewards import compute_score

_CASES = pathlib.Path(__file__).parent / "data" / "external_grader_cases.jsonl"


def _cases(default_only: bool):
    rows = [json.loads(line) for line in _CASES.read_text(encoding="utf-8").splitlines() if line]
    if default_only:  # the targets Math-Verify's `parse` uses unless told otherwise
        rows = [r for r in rows
                if r["match_types"] is None or sorted(r["match_types"]) == ["expr", "latex"]]
    return rows


def test_no_false_positive_and_high_accuracy_on_default_cases():
    rows = _cases(default_only=True)
    scores = [compute_score(r["pred"], r["gold"]) for r in rows]
    false_positives = [r for r, s in zip(rows, scores) if s and not r["expected"]]
    assert not false_positives
    accuracy = sum((s > 0) == bool(r["expected"]) for r, s in zip(rows, scores)) / len(rows)
    assert accuracy >= 0.95, accuracy


def test_false_positives_only_where_the_sources_grade_differently_by_design():
    """The only disagreements with a 0 label, each a deliberate policy (docs/rewards.md):
    - Math-Verify's LaTeX-only extraction finds no answer in `Answer $ \\n 9 \\n $`; ours reads
      the number after "Answer" (as the Qwen2.5-Math evaluation does);
    - hendrycks/math compares strings, so `4, 10, -2` != `10, 4, -2`; an unbracketed list is a set
      of answers for us, as for Math-Verify (its numina cases accept reordered lists)."""
    rows = _cases(default_only=False)
    false_positives = [r["pred"] for r in rows
                       if not r["expected"] and compute_score(r["pred"], r["gold"])]
    assert false_positives == ["Answer $ \n 9 \n $", "Answer \\( \n 9 \n \\)",
                               "4, 10, -2", "4, .1, 2"]
