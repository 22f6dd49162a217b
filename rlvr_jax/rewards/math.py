r"""Math answer reward: `compute_score(response, ground_truth)` -> 1.0 / 0.0.

Pipeline: `extract_answer` (extract.py) -> `normalize` (normalize.py) -> cheap string equality ->
multiple-choice letters and words -> items parsed to sympy (answer.py, parse.py) -> structural,
numeric, then symbolic equivalence (structures.py, compare.py). Every stage is bounded, and
anything that fails scores 0: an empty box, 0/0, unparseable text, a value too large to compute.

Security: model text only ever reaches the ANTLR LaTeX grammar, which builds sympy objects node
by node. Nothing calls `eval`, `exec`, `sympify` / `parse_expr` on a string, or `lambdify`.
"""

import logging
import re

from rlvr_jax.rewards import answer, parse
from rlvr_jax.rewards.extract import extract_answer
from rlvr_jax.rewards.latex_scan import nesting_depth
from rlvr_jax.rewards.normalize import Normalized, normalize

__all__ = ["extract_answer", "is_equiv", "compute_score"]

logger = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 2000  # longer "answers" are compared verbatim only (normalising is quadratic)
# A lone choice letter, as in `C`, `(C)`, `\text{(C)}`.
_GOLD_CHOICE = re.compile(r"^\(?([A-J])\)?$")
# A predicted letter, optionally followed by its value (AMC style `\textbf{(B) }12`). Only a letter
# marked as a label -- `(B)`, `B.`, `B:` -- may carry a value after it; a bare letter must stand
# alone, or `D + 1`, `B = 3` and `A \cdot x` (expressions in a variable named like the choice) would
# pass as the choice.
_PRED_CHOICE = re.compile(
    r"^(?:\(([A-Ja-j])\)\s*|([A-Ja-j])[.:]\s*|([A-Ja-j])$)(.*)$", re.DOTALL
)
# A label's value never starts with an operator or relation: `(B) = 3` is an equation in B.
_CONTINUES_EXPRESSION = re.compile(
    r"^(?:[-+*/^_=<>!|]|\\(?:cdot|times|div|le|ge|neq|pm|mp)(?![A-Za-z]))"
)
_SECOND_CHOICE = re.compile(r"(?<![A-Za-z\\])[A-J](?![A-Za-z])|(?<![A-Za-z])(?:or|and)(?![A-Za-z])|,")


def compute_score(response: str, ground_truth: str, require_box: bool = False) -> float:
    """Scores one response against its reference answer.

    Args:
      response: The model's full response text.
      ground_truth: The reference answer (a bare answer, or text with a `\\boxed{}` in it).
      require_box: Only a boxed answer counts (use for training rewards, so the policy learns the
        output format the evaluator extracts).

    Returns:
      1.0 if the extracted answer is equivalent to the reference, else 0.0.
    """
    try:
        pred = extract_answer(response, require_box=require_box)
        if pred is None or not ground_truth:
            return 0.0
        gold = extract_answer(ground_truth, require_box=True) or ground_truth
        return 1.0 if is_equiv(pred, gold) else 0.0
    except Exception:  # pylint: disable=broad-except
        # A reward function must never crash the trainer; log it so errors stay visible.
        logger.exception("compute_score failed; scoring 0")
        return 0.0


def is_equiv(pred: str | None, gold: str | None) -> bool:
    """Whether the answer `pred` is mathematically equivalent to the reference `gold`.

    Both arguments are bare answers (already extracted), e.g. `\\frac{1}{2}` and `0.5`.
    """
    if not pred or not gold or not pred.strip() or not gold.strip():
        return False
    try:
        return _is_equiv(pred, gold)
    except Exception:  # pylint: disable=broad-except
        # Fail closed, but loudly: a silent 0 would hide a verifier bug from the training signal.
        logger.exception("is_equiv failed on %r vs %r; scoring 0", pred[:100], gold[:100])
        return False


def _is_equiv(pred: str, gold: str) -> bool:
    if pred.strip() == gold.strip():
        return True  # identical text needs no parsing, even if it is a power tower
    if max(len(pred), len(gold)) > MAX_ANSWER_CHARS:
        return False
    if max(nesting_depth(pred), nesting_depth(gold)) > parse.MAX_NESTING:
        return False
    p, g = normalize(pred), normalize(gold)
    if not p.key or not g.key:
        return False
    if p.unit and g.unit and p.unit != g.unit:
        return False  # 5 km != 5 cm; a unit on one side only is dropped
    if p.key == g.key:
        return True
    choice = _GOLD_CHOICE.match(g.key)
    if choice is not None:
        return _predicted_choice(p) == choice.group(1)
    return answer.items_equal(answer.parse_items(p.latex), answer.parse_items(g.latex))


def _predicted_choice(p: Normalized) -> str | None:
    """The single letter a prediction picks, or None (no letter, or a hedge like `C or D`)."""
    m = _PRED_CHOICE.match(p.latex)
    if m is None:
        return None
    value = m.group(4).strip()
    if _SECOND_CHOICE.search(value) or _CONTINUES_EXPRESSION.match(value):
        return None
    return next(g for g in m.groups()[:3] if g is not None).upper()
