"""Equivalence of evaluated scalar answers (numbers and expressions), and proportionality of two
expressions (how structures.py compares equations and inequalities).

Every comparison is tried cheapest first: structural equality, then numbers (exact for rationals,
high-precision evaluation otherwise), then random-point evaluation for expressions with
variables, and only when those are inconclusive (unknown functions, sums) a bounded symbolic
proof with `sympy.simplify`. A stage that cannot decide returns None so that the next stage
runs: an error inside one stage never turns a correct answer into a silent 0.

Tolerances: integers and other exact rationals compare exactly (`100001 != 100000`, 18-digit
integers never go through floats). A side written with decimals may match a non-integer exact
value to double precision (`0.3333333333333333 == 1/3`, `0.33 != 1/3`). Exact irrational
values must agree to 30 significant digits, which no rounding of a wrong answer does.
"""

import logging

import mpmath
import sympy
from sympy.core.relational import Relational

logger = logging.getLogger(__name__)

DOUBLE_REL_TOL = 4e-16  # ~2 ulp: the last printed digit of a double may be rounded
EXACT_REL_TOL = 1e-30
SAMPLE_REL_TOL = 1e-10  # random-point evaluation of two different formulas for the same function
_PRECISION = 50  # decimal digits for numeric evaluation
# Below this absolute difference, a near-zero value may be cancellation noise (sin^2+cos^2-1):
# the numeric stage abstains and the symbolic stage decides. pi*10^-40 vs 0 is still unequal.
_CANCELLATION_FLOOR = 1e-40
# Fixed complex sample points (in 1/10000ths, exact, so evaluation keeps all 50 digits): complex
# values separate branch-dependent forms (|x| vs x, sqrt(x^2) vs x) that agree on the reals > 0.
_SAMPLES = ((5183, 2917), (-12341, 7713), (8826, -14398), (17371, 4472))
_SYMBOLIC_MAX_OPS = 400  # simplify beyond this size is not worth the wait
_OPERATORS = (sympy.Sum, sympy.Product, sympy.Integral, sympy.Limit, sympy.Derivative)


def scalars_equal(a: sympy.Expr, b: sympy.Expr, decimal: bool = False) -> bool:
    """Whether two scalar expressions are equal (see module docstring)."""
    if _undefined(a) or _undefined(b):
        return False  # 0/0, 1/0: fail closed (even when both sides are undefined)
    if a == b:
        return True
    if _has_operator(a) or _has_operator(b):
        return False  # evaluating a sum / limit / integral may not terminate
    if a.free_symbols or b.free_symbols:
        # Sampling over the union of variables keeps `x` != `y` (they get different values)
        # while `sin(x)^2 + cos(x)^2` still equals 1.
        verdict = _guard(_sampled_equal, a, b)
    else:
        verdict = _guard(_numbers_equal, a, b, decimal)
    if verdict is None:
        verdict = _guard(symbolic_equal, a, b)
    return bool(verdict)


def _guard(stage, *args):
    """Runs one comparison stage; an internal error makes it inconclusive, not False."""
    try:
        return stage(*args)
    except Exception as e:  # pylint: disable=broad-except  # sympy raises many kinds
        logger.debug("comparison stage %s inconclusive: %r", stage.__name__, e)
        return None


def _undefined(e) -> bool:
    return e.has(sympy.nan, sympy.zoo) or e is sympy.nan


def _has_operator(e) -> bool:
    """Unevaluated operators (sums, products, limits, integrals, derivatives) compare only
    structurally: `evalf` / `simplify` would try to evaluate them, which is unbounded."""
    return e.has(*_OPERATORS)


def _numbers_equal(a, b, decimal: bool) -> bool | None:
    if a.is_Rational and b.is_Rational:
        if a.is_Integer or b.is_Integer or not decimal:
            return False  # already structurally different
        return _close(mpmath.mpf(a.p) / a.q, mpmath.mpf(b.p) / b.q, DOUBLE_REL_TOL)
    if a.has(sympy.oo, -sympy.oo) or b.has(sympy.oo, -sympy.oo):
        return False
    va, vb = _numeric(a), _numeric(b)
    if va is None or vb is None:
        return None
    return _verdict(va, vb, DOUBLE_REL_TOL if decimal else EXACT_REL_TOL)


def _numeric(e, subs=None):
    value = e.evalf(_PRECISION, subs=subs)
    re_part, im_part = value.as_real_imag()
    if not (re_part.is_Number and im_part.is_Number):
        return None
    if not (re_part.is_finite and im_part.is_finite):
        return None
    return mpmath.mpc(re_part._to_mpmath(_PRECISION * 4), im_part._to_mpmath(_PRECISION * 4))


def _close(x, y, rel_tol: float) -> bool:
    with mpmath.workdps(_PRECISION):
        scale = max(abs(x), abs(y))
        return abs(x - y) <= rel_tol * scale


def _verdict(x, y, rel_tol: float) -> bool | None:
    """Equal within `rel_tol`; None when both differ from each other only at noise level."""
    if _close(x, y, rel_tol):
        return True
    with mpmath.workdps(_PRECISION):
        return None if abs(x - y) < _CANCELLATION_FLOOR else False


def _sample_points(symbols):
    """One point per sample; each variable gets a different value (`x` != `y`)."""
    ordered = sorted(symbols, key=lambda s: s.name)
    for shift in range(len(_SAMPLES)):
        point = {}
        for k, s in enumerate(ordered):
            re_part, im_part = _SAMPLES[(shift + k) % len(_SAMPLES)]
            real = sympy.Rational(re_part + 3700 * k, 10000)
            point[s] = real + sympy.I * sympy.Rational(im_part - 1100 * k, 10000)
        yield point


def _sampled_equal(a, b) -> bool | None:
    """Evaluates both at fixed complex points: False on any clear mismatch, None if a point
    cannot be evaluated or decided, else True."""
    verdicts = []
    for point in _sample_points(a.free_symbols | b.free_symbols):
        va, vb = _numeric(a, point), _numeric(b, point)
        verdict = None if va is None or vb is None else _verdict(va, vb, SAMPLE_REL_TOL)
        if verdict is False:
            return False
        verdicts.append(verdict)
    return None if None in verdicts else True


def symbolic_equal(a, b) -> bool | None:
    """Bounded symbolic proof that a - b == 0; None when sympy cannot decide."""
    diff = a - b
    if diff == 0:
        return True
    if sympy.count_ops(diff) > _SYMBOLIC_MAX_OPS:
        return None
    if sympy.expand(diff) == 0 or sympy.simplify(diff) == 0:
        return True
    return None


def proportional(d1: sympy.Expr, d2: sympy.Expr, positive: bool) -> bool:
    """Whether d1 = c * d2 for a constant c != 0 (c > 0 if `positive`): same equation/inequality."""
    if _has_operator(d1) or _has_operator(d2) or _undefined(d1) or _undefined(d2):
        return False
    verdict = _guard(_sampled_ratio, d1, d2, positive)
    if verdict is None:
        verdict = _guard(_symbolic_ratio, d1, d2, positive)
    return bool(verdict)


def _sampled_ratio(d1, d2, positive: bool) -> bool | None:
    ratios = []
    for point in _sample_points(d1.free_symbols | d2.free_symbols):
        v1, v2 = _numeric(d1, point), _numeric(d2, point)
        if v1 is None or v2 is None:
            return None
        if v2 == 0 or v1 == 0:
            return None
        ratios.append(v1 / v2)
    if not all(_close(r, ratios[0], SAMPLE_REL_TOL) for r in ratios):
        return False
    r = ratios[0]
    if abs(r.imag) > SAMPLE_REL_TOL * abs(r):
        return False
    return r.real > 0 or not positive


def _symbolic_ratio(d1, d2, positive: bool) -> bool | None:
    if sympy.count_ops(d1) + sympy.count_ops(d2) > _SYMBOLIC_MAX_OPS:
        return None
    ratio = sympy.simplify(d1 / d2)
    if ratio.free_symbols or _undefined(ratio) or ratio == 0:
        return None
    return bool(ratio.is_positive) or not positive


def is_relation(v) -> bool:
    return isinstance(v, (Relational, sympy.And))
