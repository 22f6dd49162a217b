r"""Safe, bounded LaTeX -> sympy conversion.

The parser is latex2sympy2_extended's ANTLR grammar, which builds sympy objects node by node and
never hands text to `eval`. Two of its paths do reach sympy's string parser (which `eval`s):
`parse_number` (`sympy.Number(text)`) and the whole-string comma-number shortcut in `parse`; both
are replaced below, so no model text ever reaches `sympify` / `parse_expr`.

Cost is bounded before anything is evaluated: answers are length- and nesting-capped, the parse
tree is depth- and size-capped, and `check_cost` estimates the size of every power, factorial and
exponential from the unevaluated tree, rejecting towers such as `10^{10^{10}}` or `(10^{100})!`
before sympy would try to compute them. Only then does `evaluate` rebuild the tree with sympy's
ordinary (eager) evaluation.
"""

import math
import re

import sympy
from latex2sympy2_extended import latex2sympy2 as l2s

MAX_PARSE_CHARS = 600  # longer answers are compared as strings only
MAX_NESTING = 24  # deeper bracket nesting is compared as a string only
MAX_TREE_DEPTH = 120  # keeps every recursive walk below Python's recursion limit
MAX_TREE_NODES = 4000
# Largest exact number (in decimal digits) we let sympy build. Python refuses to print ints over
# 4300 digits, and no competition answer comes close.
MAX_DIGITS = 4000
MAX_SYMBOLIC_EXPONENT = 100  # (x+y)^{1000} would make expand/simplify explode

MAX_SIGN_RUN = 16
_SIGN_RUN = re.compile(r"(?:[-+]\s*){%d,}" % (MAX_SIGN_RUN + 1))
_NUMBER_TEXT = re.compile(r"^(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$")
# Plain numbers and simple fractions skip the ANTLR parser (milliseconds per call when cold).
_SIMPLE_NUMBER = re.compile(r"^(-?)\s*(\d+(?:\.\d+)?)$")
_SIMPLE_FRACTION = re.compile(r"^(-?)\s*(?:\\frac\{(\d+)\}\{(\d+)\}|(\d+)\s*/\s*(\d+))$")
_FACTORIAL_LIKE = (
    sympy.factorial, sympy.factorial2, sympy.subfactorial, sympy.gamma, sympy.binomial,
    sympy.RisingFactorial, sympy.FallingFactorial,
)
_CONVERSION = l2s.ConversionConfig(
    interpret_as_mixed_fractions=False,  # see _SafeConverter.convert_postfix_list
    interpret_simple_eq_as_assignment=False,
    interpret_contains_as_eq=True,
    lowercase_symbols=False,  # `A` and `a` are different variables
)
_IMAGINARY = sympy.Symbol("i")


class ParseError(ValueError):
    """The answer is not parseable math, or too large / deep to handle safely."""


class TooCostly(ParseError):
    """Evaluating the answer exactly would take unbounded time or memory."""


class _SafeConverter(l2s._Latex2Sympy):  # pylint: disable=protected-access
    """latex2sympy2's converter with the two string-evaluating paths replaced."""

    def parse_number(self, text):
        return parse_decimal(text)

    def parse(self, latex_str):
        if l2s.comma_number_regex.match(latex_str):  # upstream calls sympy.Number(text) here
            return parse_decimal(latex_str.replace(",", "").strip())
        return super().parse(latex_str)

    def convert_postfix_list(self, arr, i=0):
        """Juxtaposition is multiplication: upstream reads any `2 (1/2)` as the mixed number 2 1/2
        (whatever its config says); the normaliser rewrites genuine `2\\frac{1}{2}` itself."""
        res = self.convert_postfix(arr[i])
        if not isinstance(res, (sympy.Expr, sympy.MatrixBase)):
            return super().convert_postfix_list(arr, i)  # derivative notation
        if i == len(arr) - 1:
            return res
        rh = self.convert_postfix_list(arr, i + 1)
        if isinstance(res, sympy.MatrixBase) or isinstance(rh, sympy.MatrixBase):
            return self.mat_mul_flat(res, rh)
        return self.mul_flat(res, rh)


def parse_decimal(text: str) -> sympy.Rational:
    """Exact value of a decimal literal: `0.1` -> 1/10 (so 0.1 + 0.2 == 0.3 exactly)."""
    m = _NUMBER_TEXT.match(text.replace(",", "").replace(" ", ""))
    if m is None or not (m.group(1) or m.group(2)):
        raise ParseError(f"not a number: {text[:40]!r}")
    whole, frac, exp = m.group(1) or "0", m.group(2) or "", int(m.group(3) or 0)
    if len(whole) + len(frac) > MAX_DIGITS or abs(exp) > MAX_DIGITS:
        raise TooCostly("number literal too long")
    value = sympy.Rational(int(whole + frac), 10 ** len(frac))
    return value * sympy.Integer(10) ** exp if exp else value


def parse_latex(latex: str):
    """Parses normalised LaTeX into an unevaluated sympy object (Expr, relation, set, Matrix...).

    Raises:
      ParseError: unparseable, or beyond the size limits.
    """
    if not latex or len(latex) > MAX_PARSE_CHARS:
        raise ParseError("empty or too long")
    if _SIGN_RUN.search(latex):
        # The grammar backtracks over each prefix sign (a run of 500 takes seconds); no answer
        # writes more than a few in a row.
        raise TooCostly("run of prefix signs")
    simple = _parse_simple(latex)
    if simple is not None:
        return simple
    try:
        return _SafeConverter(config=_CONVERSION).parse(latex)
    except RecursionError as e:
        raise TooCostly("too deeply nested") from e
    except ParseError:
        raise
    except Exception as e:  # the ANTLR error listener raises a bare Exception
        raise ParseError(str(e).split("\n", 1)[0]) from e


def _parse_simple(latex: str) -> sympy.Rational | None:
    """`-12`, `0.5`, `\\frac{3}{4}`, `3/4` without the grammar (same values it would build)."""
    m = _SIMPLE_NUMBER.match(latex)
    if m is not None:
        value = parse_decimal(m.group(2))
        return -value if m.group(1) else value
    m = _SIMPLE_FRACTION.match(latex)
    if m is not None:
        num, den = (m.group(2), m.group(3)) if m.group(2) else (m.group(4), m.group(5))
        if len(num) + len(den) > MAX_DIGITS or int(den) == 0:
            return None  # let the general path produce (and reject) zoo / nan
        value = sympy.Rational(int(num), int(den))
        return -value if m.group(1) else value
    return None


def check_shape(obj) -> None:
    """Rejects parse trees too deep or too large to walk recursively."""
    stack = [(obj, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > MAX_TREE_DEPTH or nodes > MAX_TREE_NODES:
            raise TooCostly("expression tree too large")
        stack.extend((child, depth + 1) for child in _children(node))


def _children(node):
    if isinstance(node, sympy.MatrixBase):
        return list(node)
    return getattr(node, "args", ())


def check_cost(obj) -> None:
    """Raises TooCostly if exact evaluation of `obj` could blow up (see module docstring)."""
    check_shape(obj)
    for node in [obj] if not isinstance(obj, sympy.MatrixBase) else list(obj):
        if isinstance(node, sympy.Basic):
            _log10_size(node)


def _log10_size(e) -> float:
    """Rough log10 of |e| (symbols count as ~1), raising TooCostly on oversized results."""
    if isinstance(e, sympy.Rational):
        return _int_log10(e.p) - _int_log10(e.q)
    if isinstance(e, sympy.Float):
        return float(sympy.log(abs(e), 10)) if e else 0.0
    if not e.args:
        return 0.5  # symbols, pi, e, i, oo
    sizes = [_log10_size(a) for a in e.args if isinstance(a, sympy.Basic)]
    if isinstance(e, sympy.Pow):
        return _pow_size(e, sizes[0], sizes[1])
    if isinstance(e, sympy.MatPow) and _bounded_value(sizes[1]) > MAX_SYMBOLIC_EXPONENT:
        raise TooCostly("matrix power too large")
    if isinstance(e, _FACTORIAL_LIKE):
        n = _bounded_value(max(sizes))
        digits = n * max(1.0, math.log10(n + 1))
        return _checked(digits)
    if isinstance(e, sympy.exp):
        return _checked(_bounded_value(sizes[0]) * 0.4343)
    if isinstance(e, sympy.Mul):
        return _checked(sum(sizes))
    if isinstance(e, sympy.Add):
        return _checked(max(sizes) + math.log10(len(sizes)))
    return _checked(max(sizes + [0.0]))


def _pow_size(e: sympy.Pow, base_size: float, exp_size: float) -> float:
    exponent = _bounded_value(exp_size)
    if e.base.free_symbols and exponent > MAX_SYMBOLIC_EXPONENT:
        raise TooCostly("symbolic power too large to expand")
    if e.base in (sympy.S.One, sympy.S.NegativeOne, sympy.S.Zero):
        return 0.0
    return _checked(exponent * max(abs(base_size), 0.3))


def _bounded_value(log10_size: float) -> float:
    if log10_size > 6:  # exponents / factorial arguments above a million
        raise TooCostly("argument too large")
    return 10.0 ** max(log10_size, 0.0)


def _checked(digits: float) -> float:
    if abs(digits) > MAX_DIGITS:
        raise TooCostly("value too large to compute exactly")
    return digits


def _int_log10(n) -> float:
    return int(abs(n)).bit_length() * 0.30103


def evaluate(obj):
    """Rebuilds an unevaluated parse tree with sympy's normal evaluation (after `check_cost`).

    Relations stay unevaluated (so `2 = 2` keeps its sides); a chain of equalities
    `x = 5+5+1 = 7 = 11` becomes its first and last members, `x = 11`; the letter `i` is the
    imaginary unit.
    """
    check_cost(obj)
    result = _rebuild(obj)
    if isinstance(result, sympy.MatrixExpr):
        result = result.doit()  # sums / products of explicit matrices; `check_cost` bounded powers
    return result


def _rebuild(e):
    if isinstance(e, sympy.MatrixBase):
        return e.applyfunc(_rebuild)
    if isinstance(e, sympy.UnevaluatedExpr):
        return _rebuild(e.args[0])
    if e == _IMAGINARY:
        return sympy.I
    if isinstance(e, sympy.And) and hasattr(e, "_unsorted_args"):
        return _rebuild_chain(list(e._unsorted_args))  # pylint: disable=protected-access
    if not isinstance(e, sympy.Basic) or not e.args:
        return e
    args = [_rebuild(a) for a in e.args]
    if isinstance(e, sympy.core.relational.Relational):
        return e.func(*args, evaluate=False)
    return e.func(*args)


def _rebuild_chain(relations):
    if all(isinstance(r, sympy.Eq) for r in relations):
        return sympy.Eq(_rebuild(relations[0].lhs), _rebuild(relations[-1].rhs), evaluate=False)
    return sympy.And(*[_rebuild(r) for r in relations], evaluate=False)
