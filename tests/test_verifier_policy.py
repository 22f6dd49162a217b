r"""The verifier's policy on the false-positive classes and capabilities of issue #18.

Each case is a (response, gold) pair with the verdict the policy in docs/rewards.md gives, checked
both with and without `require_box` where the response is boxed (the training reward must reject
the same wrong answers as the evaluation).
"""

import pytest

from rlvr_jax.rewards import compute_score, extract_answer, is_equiv

# A single-letter gold is a multiple-choice answer: only the letter alone, or a marked label
# `(B)`, `B.`, `B:` (optionally followed by the option's value), picks it.
CHOICE_CASES = [
    (r"\boxed{D + 1}", "D", 0.0),
    (r"\boxed{B = 3}", "B", 0.0),
    (r"\boxed{A \cdot x}", "A", 0.0),
    (r"\boxed{C^2}", "C", 0.0),
    (r"\boxed{(B) = 3}", "B", 0.0),
    (r"\boxed{E - F}", "E", 0.0),
    (r"\boxed{D}", "D", 1.0),
    (r"\boxed{(B)}", "B", 1.0),
    (r"\boxed{\textbf{(C) }12}", "C", 1.0),
    (r"\boxed{B: 12}", "B", 1.0),
    (r"\boxed{C \text{ or } D}", "C", 0.0),
]

# Degree marks: an angle answer drops its mark; inside a trig function the mark converts to radians.
DEGREE_CASES = [
    (r"\boxed{\sin 30^\circ}", r"\sin 30", 0.0),
    (r"\boxed{\cos 60^\circ}", r"\frac{1}{2}", 1.0),
    (r"\boxed{\cos 60^\circ}", r"\cos 60", 0.0),
    (r"\boxed{\sin(30^{\circ})}", "0.5", 1.0),
    (r"\boxed{\tan 45°}", "1", 1.0),
    (r"\boxed{30^\circ}", "30", 1.0),
    (r"\boxed{30^\circ}", r"\frac{\pi}{6}", 0.0),
]

# Relations and systems compared as what they describe.
STRUCTURE_CASES = [
    (r"$\boxed{z \in \left[-\frac{3}{2}, -1\right] \cup \left[1, \frac{3}{2}\right]}$",
     r"$1\leq|z|\leq \frac{3}{2}$", 1.0),
    (r"\boxed{[1, \frac{3}{2}]}", r"$1\leq|z|\leq \frac{3}{2}$", 0.0),
    (r"\boxed{(-1,3)}", r"|x-1|<2", 1.0),
    (r"\boxed{[-1,3]}", r"|x-1|<2", 0.0),
    (r"\boxed{(5,2),(7,2)}", r"p=5,q=2;p=7,q=2", 1.0),
    (r"\boxed{(7,2),(5,2)}", r"p=5,q=2;p=7,q=2", 1.0),
    (r"\boxed{(2,5),(7,2)}", r"p=5,q=2;p=7,q=2", 0.0),
    (r"\boxed{(5,2)}", r"p=5,q=2;p=7,q=2", 0.0),
    (r"\boxed{(0,1)}", "0<f(x)<1", 1.0),
    (r"\boxed{[0,1)}", "0<f(x)<1", 0.0),
    (r"\boxed{(0,2)}", "0<f(x)<1", 0.0),
    (r"\boxed{\begin{cases} x = 1 \\ y = 2 \end{cases}}", "x=1, y=2", 1.0),
    (r"\boxed{\begin{cases} x &= 1 \\ y &= 2 \end{cases}}", "(1,2)", 1.0),
    (r"\boxed{\begin{cases} x = 2 \\ y = 1 \end{cases}}", "x=1, y=2", 0.0),
    (r"\boxed{5\\}", "5", 1.0),
    (r"\boxed{5\\ }", "5", 1.0),
    (r"\boxed{6\\}", "5", 0.0),
    (r"\boxed{14 {, }916}", "14916", 1.0),
    (r"\boxed{14 {, }916}", "14,917", 0.0),
    (r"\boxed{14 {, }916}", "14 916", 1.0),
]


@pytest.mark.parametrize("response,gold,expected", CHOICE_CASES + DEGREE_CASES + STRUCTURE_CASES)
def test_policy_cases(response, gold, expected):
    assert compute_score(response, gold) == expected
    assert compute_score(response, gold, require_box=True) == expected


def test_single_letter_gold_needs_the_letter_alone_both_ways():
    assert not is_equiv("D + 1", "D")
    assert is_equiv(r"\text{(D)}", "D")


@pytest.mark.parametrize("response,gold,expected", [
    ("The total mass is 12.5kg.", "12", 0.0),
    ("The total mass is 12.5kg.", "12.5", 1.0),
    ("So the length is 3.25 m.", "3", 0.0),
    ("The count is 2x larger, so 7.", "7", 1.0),
    ("The value is 0.75.", "0.75", 1.0),
])
def test_fallback_reads_a_number_whole(response, gold, expected):
    assert compute_score(response, gold) == expected


def test_final_answer_statement_after_a_box_restates_it():
    text = r"First try: \boxed{3}. Wait, that misses a case. The final answer is $5$."
    assert extract_answer(text) == "5"
    assert compute_score(text, "5") == 1.0
    assert compute_score(text, "3") == 0.0
    # The training reward reads boxes only: the box stands.
    assert extract_answer(text, require_box=True) == "3"
    # Prose after the box that is not a final-answer statement never replaces it.
    prose = r"\boxed{3}. I hope the answer is right, since 5 = 2 + 3."
    assert extract_answer(prose) == "3"


def test_a_long_run_of_signs_is_refused_without_parsing():
    # `--1` is 1, but 500 prefix signs are not an answer anyone writes; the grammar would
    # backtrack over each of them, so the parser refuses the run up front (fail closed).
    assert compute_score(r"\boxed{--1}", "1") == 1.0
    assert compute_score(r"\boxed{" + "-" * 500 + "1}", "1") == 0.0
