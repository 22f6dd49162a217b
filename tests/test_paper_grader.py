r"""`eval.grader="paper"`: the Qwen2.5-Math evaluation suite's grading semantics.

Expected verdicts follow the suite's documented rules (extraction order, relative tolerance 1e-4,
percentage forms, bracket-blind tuples, short-name assignments, symbolic equality); cases where it
is more lenient than our verifier are asserted as such, so the difference stays visible.
"""

import pytest

from rlvr_jax.rewards import compute_score as verifier_score
from rlvr_jax.rewards import paper_grader
from rlvr_jax.rewards.pool import RewardPool


@pytest.mark.parametrize("response,gold,expected", [
    (r"so \boxed{12.8}", "12.8", 1.0),
    (r"so \boxed{12.8001}", "12.8", 1.0),  # |diff| / 12.8 < 1e-4
    (r"so \boxed{12.81}", "12.8", 0.0),
    (r"\boxed{50\%}", "0.5", 1.0),  # percentage forms: the reference / 100 ...
    (r"\boxed{0.5}", "50", 1.0),  # ... and * 100
    (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
    (r"\boxed{\pi}", "3.1416", 1.0),
    (r"\boxed{\pi}", "3.15", 0.0),
    (r"\boxed{(1,2)}", "[1,2]", 1.0),  # brackets are ignored element-wise
    (r"\boxed{(1,3)}", "[1,2]", 0.0),
    (r"\boxed{x=3}", "3", 1.0),
    (r"\boxed{y = 2x+1}", "2x - y + 1 = 0", 1.0),
    (r"\boxed{\begin{pmatrix}1\\2\end{pmatrix}}", r"\begin{pmatrix}1\\2\end{pmatrix}", 1.0),
    ("The answer is 7.", "7", 1.0),
    ("first 3, then 5", "5", 1.0),  # the last number
    (r"The final answer is $4$. I hope it is correct. \boxed{5}", "4", 1.0),
    (r"\boxed{10^{10^{10^{10}}}}", "1", 0.0),  # bounded: no tower is computed
    (r"\boxed{}", "1", 0.0),
])
def test_paper_semantics(response, gold, expected):
    assert paper_grader.compute_score(response, gold) == expected


def test_paper_grader_is_more_lenient_than_the_verifier_where_the_suite_is():
    # The suite reads the last standalone choice letter; the verifier refuses an expression.
    assert paper_grader.compute_score(r"\boxed{D + 1}", "D") == 1.0
    assert verifier_score(r"\boxed{D + 1}", "D") == 0.0
    # 1e-4 relative tolerance on numbers vs exact rationals in the verifier.
    assert paper_grader.compute_score(r"\boxed{0.33334}", "0.33333") == 1.0
    assert verifier_score(r"\boxed{0.33334}", "0.33333") == 0.0


def test_paper_grader_runs_in_the_reward_pool():
    with RewardPool(num_workers=1, timeout_s=30.0, score_fn=paper_grader.compute_score) as pool:
        scores = pool.score([r"\boxed{50\%}", r"\boxed{3}"], ["0.5", "4"], require_box=True)
    assert scores.tolist() == [1.0, 0.0]
