r"""The paper's evaluation grading semantics (`eval.grader="paper"`), written for this project.

The 1-shot RLVR paper reports numbers from the Qwen2.5-Math evaluation suite. This module grades
the way that suite does, so our evaluations can be set beside the paper's tables:

Extraction (its ``extract_answer`` for the ``qwen25-math-cot`` prompt), first that applies:
  1. "final answer is $X$. I hope" -> X;
  2. the LAST ``boxed`` in the text -> its braced content (or the text up to the next ``$``);
  3. text after the last "he answer is" / "final answer is";
  4. the last number in the text (commas removed).
  A trailing ".", "/" and a leading ":" are dropped; LaTeX is then cleaned up (our `normalize`:
  ``\dfrac`` -> ``\frac``, ``\left``, ``$``, degrees, percent signs, a trailing unit).

Equality (its ``math_equal``), first that holds:
  - the same text, ignoring case;
  - a reference choice letter A-E equals the last standalone A-E letter of the prediction (note:
    lenient -- ``D + 1`` picks D; the project's own verifier refuses that);
  - both are numbers (commas removed, a ``%`` divides by 100): equal within relative tolerance
    1e-4 to the reference, the reference / 100 or the reference * 100 (percentage forms);
  - after dropping ``{}()`` both texts are equal; bracketed tuples / intervals compare element by
    element, brackets ignored (``(1,2)`` == ``[1,2]`` here); matrices entry by entry;
  - equations ``a = b`` vs ``c = d``: (a - b) == +-(c - d); ``x = 3`` vs ``3`` when the left side
    is at most two characters;
  - symbolic: same parsed expression, ``simplify(a - b) == 0``, or numeric values within 1e-4.

Differences from the original code, all on the side of safety: model text is parsed only by
the project's safe LaTeX parser (the original also tries ``parse_expr``, which ``eval``s), with
its size limits, and symbolic simplification is bounded; timeouts come from `RewardPool`.
"""

import math
import re

import sympy

from rlvr_jax.rewards import compare, parse
from rlvr_jax.rewards.latex_scan import group_end, split_top_level
from rlvr_jax.rewards.normalize import normalize

__all__ = ["compute_score", "extract_answer", "math_equal"]

REL_TOL = 1e-4  # the suite's `numeric_equal`: math.isclose(reference, prediction, rel_tol=1e-4)
_LAST_NUMBER = re.compile(r"-?\d*\.?\d+")
_CHOICE = re.compile(r"\b(A|B|C|D|E)\b")
_COMMA = re.compile(",")
_MATRIX = re.compile(r"^\\begin\{[pb]matrix\}(.*)\\end\{[pb]matrix\}$", re.DOTALL)
_BRACKETED = re.compile(r"^[(\[].+[)\]]$", re.DOTALL)
_MAX_DEPTH = 4  # element-wise recursion (tuples of tuples) stops here


def compute_score(response: str, ground_truth: str, **unused) -> float:
    """1.0 if the paper's evaluation would mark `response` correct for `ground_truth`, else 0.0.

    Extra keyword arguments (``require_box`` from a `RewardPool` call) are ignored: the suite
    has no such setting. Picklable, for ``RewardPool(score_fn=compute_score)``.
    """
    del unused
    try:
        return 1.0 if math_equal(extract_answer(response), _clean(ground_truth)) else 0.0
    except (parse.ParseError, RecursionError, ValueError, TypeError, ArithmeticError):
        return 0.0


def extract_answer(text: str) -> str:
    """The suite's answer extraction (see module docstring); "" when nothing is found."""
    if not text:
        return ""
    if "final answer is $" in text and "$. I hope" in text:
        pred = text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()
    elif "boxed" in text:
        pred = _after_last_boxed(text.split("boxed")[-1])
    elif "he answer is" in text:
        pred = text.split("he answer is")[-1].strip()
    elif "final answer is" in text:
        pred = text.split("final answer is")[-1].strip()
    else:
        numbers = _LAST_NUMBER.findall(text.replace(",", ""))
        pred = numbers[-1] if numbers else ""
    pred = re.sub(r"\n\s*", "", pred)
    if pred.startswith(":"):
        pred = pred[1:]
    pred = pred[:-1] if pred.endswith((".", "/")) else pred
    return _clean(pred)


def _after_last_boxed(rest: str) -> str:
    if not rest:
        return ""
    if rest[0] == "{":
        end = group_end(rest, 0)
        return rest[1:end] if end >= 0 else rest[1:]  # an unclosed box keeps what it has
    return rest.split("$")[0].strip()


def _clean(answer: str) -> str:
    if not answer or len(answer) > 2000:
        return (answer or "").strip()
    return normalize(str(answer)).latex


def math_equal(pred: str, ref: str, depth: int = 0) -> bool:
    """The suite's `math_equal` with percentage forms and closeness on (see module docstring)."""
    if not pred or not ref or depth > _MAX_DEPTH:
        return False
    pred, ref = pred.strip(), ref.strip()
    if pred.lower() == ref.lower():
        return True
    if ref in ("A", "B", "C", "D", "E"):
        letters = _CHOICE.findall(pred.upper())
        if letters and letters[-1] == ref:
            return True
    p_num, r_num = _number(pred), _number(ref)
    if p_num is not None and r_num is not None:
        return any(math.isclose(r, p_num, rel_tol=REL_TOL) for r in (r_num / 100, r_num, r_num * 100))
    return _structured_equal(pred, ref, depth) or _symbolic_equal(pred, ref)


def _number(s: str) -> float | None:
    s = s.replace(",", "")
    scale = 1.0
    if s.endswith("%"):
        s, scale = s[:-1].rstrip("\\"), 0.01
    try:
        value = float(s) * scale
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _structured_equal(pred: str, ref: str, depth: int) -> bool:
    strip = lambda s: re.sub(r"[{}()]", "", s).lower()  # noqa: E731
    p, r = pred, ref
    if (pred.startswith("[") and pred.endswith("]") and not ref.startswith("(")) or (
            pred.startswith("(") and pred.endswith(")") and not ref.startswith("[")):
        p, r = pred.strip("[]()"), ref.strip("[]()")
    if strip(p) == strip(r):
        return True
    if _BRACKETED.match(pred) and _BRACKETED.match(ref):
        p_parts = split_top_level(pred[1:-1], _COMMA)
        r_parts = split_top_level(ref[1:-1], _COMMA)
        if len(p_parts) == len(r_parts) and all(
                math_equal(a, b, depth + 1) for a, b in zip(p_parts, r_parts)):
            return True
    mp, mr = _MATRIX.match(pred), _MATRIX.match(ref)
    if mp and mr and _matrix_equal(mp.group(1), mr.group(1), depth):
        return True
    return _equation_equal(pred, ref, depth)


def _matrix_equal(p_body: str, r_body: str, depth: int) -> bool:
    rows = lambda body: [line.strip() for line in body.split("\\\\") if line.strip()]  # noqa: E731
    p_rows, r_rows = rows(p_body), rows(r_body)
    if len(p_rows) != len(r_rows):
        return False
    for p_row, r_row in zip(p_rows, r_rows):
        p_cells, r_cells = p_row.split("&"), r_row.split("&")
        if len(p_cells) != len(r_cells) or not all(
                math_equal(a, b, depth + 1) for a, b in zip(p_cells, r_cells)):
            return False
    return True


def _equation_equal(pred: str, ref: str, depth: int) -> bool:
    if pred.count("=") == 1 and ref.count("=") == 1:
        p_lhs, p_rhs = pred.split("=")
        r_lhs, r_rhs = ref.split("=")
        p_diff, r_diff = f"{p_lhs} - ({p_rhs})", f"{r_lhs} - ({r_rhs})"
        return _symbolic_equal(p_diff, r_diff) or _symbolic_equal(f"-({p_diff})", r_diff)
    if pred.count("=") == 1 and len(pred.split("=")[0].strip()) <= 2 and "=" not in ref:
        return math_equal(pred.split("=")[1], ref, depth + 1)
    if ref.count("=") == 1 and len(ref.split("=")[0].strip()) <= 2 and "=" not in pred:
        return math_equal(pred, ref.split("=")[1], depth + 1)
    return False


def _symbolic_equal(pred: str, ref: str) -> bool:
    a, b = _parse(pred), _parse(ref)
    if a is None or b is None:
        return False
    if a == b or str(a) == str(b):
        return True
    if isinstance(a, sympy.MatrixBase) or isinstance(b, sympy.MatrixBase):
        return _matrices_close(a, b)
    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return False
    if compare._undefined(a) or compare._undefined(b):  # pylint: disable=protected-access
        return False
    if compare._has_operator(a) or compare._has_operator(b):  # pylint: disable=protected-access
        return False  # evaluating a sum / limit / integral may not terminate
    try:
        if compare.symbolic_equal(a, b):
            return True
        va, vb = complex(sympy.N(a)), complex(sympy.N(b))
    except (TypeError, ValueError, ArithmeticError, AttributeError):
        return False
    return va.imag == vb.imag == 0 and math.isclose(vb.real, va.real, rel_tol=REL_TOL)


def _matrices_close(a, b) -> bool:
    if not (isinstance(a, sympy.MatrixBase) and isinstance(b, sympy.MatrixBase)):
        return False
    if a.shape != b.shape:
        return False
    try:
        return all(round(float(x), 3) == round(float(y), 3) for x, y in zip(a, b))
    except (TypeError, ValueError):
        return False


def _parse(s: str):
    try:
        return parse.evaluate(parse.parse_latex(s.replace("\\\\", "\\") if "matrix" not in s else s))
    except parse.ParseError:
        return None
