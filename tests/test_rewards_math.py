"""Tests for the math reward verifier (extraction, equivalence policy, safety, bounds)."""

import builtins
import json
import time

import pytest
import sympy
import sympy.parsing.sympy_parser

from rlvr_jax.rewards import compare, compute_score, extract_answer, is_equiv
from rlvr_jax.rewards import parse as parse_lib

# (response, ground truth, expected) per policy point of the verifier's spec.
POLICY_CASES = {
    "fractions": [
        (r"\boxed{\dfrac{3}{4}}", "0.75", True),
        (r"\boxed{\tfrac{3}{4}}", r"\frac34", True),
        (r"\boxed{3/4}", r"\frac{3}{4}", True),
        (r"\boxed{\cfrac{3}{4}}", "3/4", True),
        (r"\boxed{0.333}", r"\frac{1}{3}", False),
        (r"\boxed{0.3333333333333333}", r"\frac{1}{3}", True),
        (r"\boxed{1\frac{3}{4}}", r"\frac{7}{4}", True),
        (r"\boxed{-1\frac{1}{2}}", r"-\frac{3}{2}", True),
        (r"\boxed{2(0.5)}", "1", True),
        (r"\boxed{\frac{3}{-4}}", "-0.75", True),
    ],
    "radicals_pi_e": [
        (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", True),
        (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{\sqrt{2}}{2}", True),
        (r"\boxed{1.4142135623730951}", r"\sqrt{2}", True),
        (r"\boxed{1.414}", r"\sqrt{2}", False),
        (r"\boxed{\sqrt[3]{8}}", "2", True),
        (r"\boxed{3.14}", r"\pi", False),
        (r"\boxed{π/3}", r"\frac{\pi}{3}", True),
        (r"\boxed{pi/3}", r"\frac{\pi}{3}", True),
        (r"\boxed{e^2}", r"\exp(2)", True),
        (r"\boxed{2e}", "e", False),
    ],
    "degrees_percent": [
        (r"\boxed{45^{\circ}}", "45", True),
        (r"\boxed{45}", r"45^\circ", True),
        (r"\boxed{45°}", "45", True),
        (r"\boxed{30^\circ}", r"45^\circ", False),
        (r"\boxed{25\%}", "25", True),
        (r"\boxed{25\%}", r"25\%", True),
        (r"\boxed{0.25}", r"25\%", False),
        (r"\boxed{2500}", "25", False),
        (r"\boxed{12.5\%}", "12.5", True),
    ],
    "units": [
        (r"\boxed{12 \text{ cm}^2}", "12", True),
        (r"\boxed{12 \text{ cm}}", r"12\text{ m}", False),
        (r"\boxed{12\text{ inches}}", "12", True),
        (r"\boxed{\$5.00}", "5", True),
        (r"\boxed{18 \text{ square units}}", "18", True),
        (r"\boxed{4 \text{ meters}}", r"4\text{ m}", True),
        (r"\boxed{x \text{ cm}}", "x", True),
        (r"\boxed{2x}", "2", False),
        (r"\boxed{2 \pi r}", r"2\pi", False),
    ],
    "thousands": [
        (r"\boxed{1,234}", "1234", True),
        (r"\boxed{1{,}234{,}567}", "1234567", True),
        (r"\boxed{1,23}", "123", False),
        (r"\boxed{12,34}", "1234", False),
        (r"\boxed{1\,000}", "1000", True),
        (r"\boxed{1,234.56}", "1234.56", True),
        (r"\boxed{[1, 100]}", "[1,100]", True),
        (r"\boxed{0,5}", "5", False),
        (r"\boxed{32,\! 349}", "32349", True),
        (r"\boxed{32, 349}", "32349", False),
        (r"\boxed{1 000 000}", "1000000", True),
        (r"\boxed{1 23}", "123", False),
    ],
    "intervals_sets": [
        (r"\boxed{(-\infty, 3]}", r"(-\infty,3]", True),
        (r"\boxed{(-\infty, 3)}", r"(-\infty,3]", False),
        # A reference written as a set asks for the set: an inequality does not match it (the
        # other direction does; see docs/rewards.md and Math-Verify's default).
        (r"\boxed{x<3}", r"(-\infty,3)", False),
        (r"\boxed{x \in (-\infty,3)}", r"x<3", True),
        (r"\boxed{(-\infty,1) \cup (1, \infty)}", r"(1,\infty)\cup(-\infty,1)", True),
        (r"\boxed{\mathbb{R}}", r"(-\infty,\infty)", True),
        (r"\boxed{1 \le x < 3}", "[1,3)", False),
        (r"\boxed{[1,3)}", r"1 \le x < 3", True),
        (r"\boxed{\{1, 2, 3\}}", r"\{3,2,1\}", True),
        (r"\boxed{\{1, 2\}}", r"\{1,2,3\}", False),
        (r"\boxed{\pm 3}", "3, -3", True),
        (r"\boxed{3}", r"\pm 3", False),
        (r"\boxed{\emptyset}", r"\varnothing", True),
        (r"\boxed{2 \pm \sqrt{3}}", r"2+\sqrt3, 2-\sqrt 3", True),
        (r"\boxed{x \in \{1, 2\}}", "1, 2", True),
        (r"${1,3}$", "(1,3)", True),
        (r"${1,3}$", "(3,1)", False),
    ],
    "tuples_matrices": [
        (r"\boxed{(2, 1)}", "(1,2)", False),
        (r"\boxed{(1,3,2)}", "(1,2,3)", False),
        (r"\boxed{1, 2}", "(1,2)", True),
        (r"\boxed{2, 1}", "(1,2)", False),
        (r"\boxed{\\left(\\frac{1}{5}, \\frac{1}{6}\\right)}", "(0.2, 1/6)", True),
        (r"$\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix} + \begin{pmatrix}5 & 6 \\ 7 & 8\end{pmatrix}$",
         r"\begin{pmatrix}6 & 8 \\ 10 & 12\end{pmatrix}", True),
        (r"\boxed{(0.5, \frac{1}{3})}", r"(\frac12, \frac13)", True),
        (r"\boxed{\begin{bmatrix} 1 \\ 2 \end{bmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", True),
        (r"\boxed{\begin{pmatrix} 1 & 0 \\ 0 & 1 \end{pmatrix}}",
         r"\begin{pmatrix} 1 & 0 \\ 0 & 2 \end{pmatrix}", False),
    ],
    "relations": [
        (r"\boxed{y - 2x = 1}", "y = 2x + 1", True),
        (r"\boxed{2y = 4x + 2}", "y = 2x + 1", True),
        (r"\boxed{y = 2x}", "y = 2x + 1", False),
        (r"\boxed{y = 5}", "x=5", False),
        (r"\boxed{5}", "y = 5", True),
        (r"\boxed{x > 2}", "2 < x", True),
        (r"\boxed{x \geq 2}", "x > 2", False),
        (r"\boxed{-2x < 4}", "x > -2", True),
        (r"\boxed{x+y > 1}", "y > 1 - x", True),
        (r"\boxed{x+y > 1}", "y < 1 - x", False),
        (r"\boxed{5+5+1 = 11}", "11", True),
        (r"\boxed{x^2 = 4}", "4", False),
        (r"\boxed{x = 5+5+1 = 7 = 11}", "x = 11", True),
    ],
    "choices_text": [
        (r"\boxed{(A)}", "A", True),
        (r"\boxed{B}", "A", False),
        (r"\boxed{A, B}", "A", False),
        (r"\boxed{\textbf{(E)}}", "E", True),
        (r"\boxed{(D) 42}", "D", True),
        ("The answer is (C).", "C", True),
        (r"\boxed{tuesday}", r"\text{Tuesday}", True),
        (r"\boxed{\text{Monday}}", r"\text{Tuesday}", False),
    ],
    "numbers": [
        (r"\boxed{-0}", "0", True),
        (r"\boxed{+3}", "3", True),
        (r"\boxed{1.5e6}", "1500000", True),
        (r"\boxed{1e-20}", "0", False),
        (r"\boxed{10^{-20}}", "0", False),
        (r"\boxed{2^{64}}", "18446744073709551616", True),
        (r"\boxed{2^{64}}", "18446744073709551617", False),
        (r"\boxed{1000000000000000001}", "1000000000000000000", False),
        (r"\boxed{100000.0}", "100000", True),
        (r"\boxed{99999.99999999999}", "100000", False),
        (r"\boxed{\frac{1+i}{2}}", "0.5+0.5i", True),
        (r"\boxed{1-i}", "1+i", False),
        (r"\boxed{-\infty}", r"\infty", False),
    ],
    "expressions": [
        (r"\boxed{x^2-1}", "(x-1)(x+1)", True),
        (r"\boxed{x^2+1}", "(x-1)(x+1)", False),
        (r"\boxed{\sin^2 x + \cos^2 x}", "1", True),
        (r"\boxed{\sqrt{x^2}}", "x", False),
        (r"\boxed{a+b}", "A+B", False),
        (r"\boxed{\frac{n(n+1)}{2}}", r"\frac{n^2+n}{2}", True),
        (r"\boxed{x}", "y", False),
        (r"\boxed{\sin^2 x + \cos^2 x - 1}", "0", True),  # cancellation noise is not a mismatch
        (r"\boxed{\pi \cdot 10^{-60}}", "0", False),  # but a tiny value is not zero
        (r"\boxed{x^{200}}", "x^{201}", False),
    ],
    "bases": [
        (r"\boxed{1012_{5}}", "1012_5", True),
        (r"\boxed{1012}", "1012_5", True),
        (r"\boxed{1012_6}", "1012_5", False),
        (r"\boxed{132}", "1012_5", False),
    ],
    "extraction_hedging": [
        (r"\boxed 5", "5", True),
        (r"\boxed{\boxed{5}}", "5", True),
        (r"<think> \boxed{5}", "5", False),
        (r"Final Answer: The final answer is $\frac{1}{2}$. I hope it is correct.", "0.5", True),
        ("Answer: 12", "12", True),
        (r"\boxed{5}. Wait, actually \boxed{6}", "5", False),
        ('\\boxed{5}\n\n\\boxed{7}', "7", False),
        (r"We get $x=\boxed{2}$ and $y=\boxed{3}$", "2,3", True),
        (r"\boxed{5 \text{ or } 7}", "5", False),
        (r"\boxed{5}", "5,7", False),
        (r"\boxed{}", "5", False),
        (r"\boxed{0/0}", "0", False),
        (r"\boxed{asdf}", "5", False),
    ],
}


def _flat_cases():
    for group, cases in POLICY_CASES.items():
        for i, (response, gold, expected) in enumerate(cases):
            yield pytest.param(response, gold, expected, id=f"{group}-{i}")


@pytest.mark.parametrize("response,gold,expected", list(_flat_cases()))
def test_policy(response, gold, expected):
    assert compute_score(response, gold) == float(expected)


def _public_cases(shared_dir):
    with open(shared_dir / "verifier" / "public_cases.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_public_cases_accuracy(shared_dir):
    cases = _public_cases(shared_dir)
    failures = [
        (i, c["category"], c["pred"][:80], c["gold"][:80])
        for i, c in enumerate(cases)
        if (compute_score(c["pred"], c["gold"]) == 1.0) != c["equal"]
    ]
    assert len(cases) == 133
    assert failures == []


@pytest.mark.parametrize(
    "text,expected",
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\fbox{5}", "5"),
        (r"\boxed 7.", "7"),
        (r"\boxed{5", None),
        (r"\boxed{3} then \boxed{4", None),
        (r"<think>\boxed{3}</think> so \boxed{4}", "4"),
        (r"<think>\boxed{3}", None),
        (r"\boxed{1} and \boxed{-2}", "1, -2"),
        (r"\boxed{5}, wait, \boxed{7}", "7"),
        (r"\boxed{5} so again \boxed{5}", "5"),
        ("The final answer is $(0, 1)$. I hope it is correct.", "(0, 1)"),
        ("answer: 12", "12"),
        (r"We have $x = 2$ and then $y = \frac{1}{2}$", r"y = \frac{1}{2}"),
        ("3x + 4y + 14=0", "3x + 4y + 14=0"),
        ("the probability is 2/3. <|im_start|>user what is 5?", "2/3"),
        ("with $d = 90/n$ there are 12 sequences.", "12"),
        ("The answer is AZYUK2A.", None),
        (r"Final Answer: The largest $n$ is 34.", "34"),
        (r"Cost: $\frac{1}{2} \$ = \frac{10}{9}$", r"\frac{1}{2} \$ = \frac{10}{9}"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_require_box():
    assert compute_score("The answer is 5.", "5") == 1.0
    assert compute_score("The answer is 5.", "5", require_box=True) == 0.0
    assert compute_score(r"\boxed{5}", "5", require_box=True) == 1.0


def test_is_equiv_on_bare_answers():
    assert is_equiv(r"\frac{1}{2}", "0.5")
    assert not is_equiv("", "0")
    assert not is_equiv(None, "0")
    assert is_equiv("10^{10^{10}}", "10^{10^{10}}")  # identical text: no evaluation needed


INJECTIONS = [
    r"\boxed{__import__('os').system('touch {path}')}",
    r"\boxed{\text{__import__('os').system('touch {path}')}}",
    r"\boxed{[open('{path}', 'w')]}",
    r"\boxed{\mathrm{exec}(\text{open('{path}','w')})}",
    r"\boxed{eval(\"open('{path}','w')\")}",
    r"\boxed{x = lambda: open('{path}', 'w')}",
    r"\boxed{(__import__('pathlib').Path('{path}').touch())}",
]


@pytest.mark.parametrize("template", INJECTIONS)
def test_injection_does_not_run(tmp_path, template):
    target = tmp_path / "pwned"
    response = template.replace("{path}", str(target))
    for gold in ["5", r"\begin{pmatrix}5\end{pmatrix}", "[5]", "0", response]:
        compute_score(response, gold)
        compute_score(gold, response)
    assert not target.exists()


def test_no_string_reaches_eval(shared_dir, monkeypatch):
    """sympify / parse_expr / eval / exec never see a string (model text) on any public case."""
    calls = []

    def spy(name, fn):
        def wrapper(*args, **kwargs):
            if args and isinstance(args[0], str):
                calls.append((name, args[0][:60]))
            return fn(*args, **kwargs)

        return wrapper

    parser_module = sympy.parsing.sympy_parser  # sympify(str) imports parse_expr from here per call
    monkeypatch.setattr(parser_module, "parse_expr", spy("parse_expr", parser_module.parse_expr))
    monkeypatch.setattr(builtins, "eval", spy("eval", builtins.eval))
    monkeypatch.setattr(builtins, "exec", spy("exec", builtins.exec))
    for case in _public_cases(shared_dir):
        compute_score(case["pred"], case["gold"])
    for template in INJECTIONS:
        compute_score(template, "5")
    assert calls == []


HANG_CASES = [
    r"\boxed{10^{10^{10^{10}}}}",
    r"\boxed{(10^{100})!}",
    r"\boxed{9^{9^{9}}}",
    r"\boxed{100000!}",
    r"\boxed{e^{e^{e^{e^{10}}}}}",
    r"\boxed{\sum_{k=1}^{10^{10}} k}",
    r"\boxed{\prod_{k=1}^{10^{9}} k}",
    r"\boxed{(x+y+z)^{1000}}",
    r"\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}",
    r"\boxed{" + r"\sqrt{" * 3000 + "2" + "}" * 3000 + "}",
    r"\boxed{" + "1+" * 20000 + "1}",
    "a" * 40000,
    r"\boxed{" + "x" * 40000 + "}",
    r"\boxed{" + "-" * 500 + "1}",
    r"\boxed{" + ",".join(["1"] * 5000) + "}",
]


@pytest.mark.parametrize("response", HANG_CASES, ids=range(len(HANG_CASES)))
def test_costly_inputs_return_zero_quickly(response):
    for gold in ["1", "x", r"2^{2^{2^{2^{2^{2}}}}}"]:
        start = time.monotonic()
        assert compute_score(response, gold) == 0.0
        assert time.monotonic() - start < 2.0


def test_cost_guard_rejects_before_evaluation():
    with pytest.raises(parse_lib.TooCostly):
        parse_lib.evaluate(parse_lib.parse_latex(r"10^{10^{10}}"))
    assert parse_lib.evaluate(parse_lib.parse_latex(r"2^{2^{2^{2}}}")) == 65536


def test_symbolic_stage_runs_when_sampling_is_inconclusive():
    """Unknown functions cannot be sampled numerically: sympy must prove these."""
    f, x = sympy.Function("f"), sympy.Symbol("x")
    assert compare.symbolic_equal(f(x) + f(x), 2 * f(x)) is True
    assert compare.scalars_equal(f(x) * (x + 1), f(x) * x + f(x))
    assert not compare.scalars_equal(f(x) * (x + 1), f(x) * x)
    assert is_equiv("f(x)(x+1)", "x f(x) + f(x)")


def test_stage_error_is_inconclusive_not_false(monkeypatch):
    """A crash in the numeric stage must fall through to the symbolic proof, not score 0."""

    def broken(*args):
        raise TypeError("simulated internal error")

    monkeypatch.setattr(compare, "_sampled_equal", broken)
    monkeypatch.setattr(compare, "_numbers_equal", broken)
    assert is_equiv(r"(x+1)^2", "x^2+2x+1")
    assert is_equiv(r"\sqrt{117}", r"3\sqrt{13}")
    assert not is_equiv(r"(x+1)^2", "x^2+1")


def test_parse_decimal_is_exact():
    assert parse_lib.parse_decimal("0.1") + parse_lib.parse_decimal("0.2") == sympy.Rational(3, 10)
    assert parse_lib.parse_decimal("123456789012345678") == 123456789012345678
    with pytest.raises(parse_lib.ParseError):
        parse_lib.parse_decimal("1+1")
