"""Equivalence of structured answers: relations, sets and intervals, tuples, matrices.

Scalars are delegated to `compare.scalars_equal`. Conventions:
  - `x = 3` (or `(p,q) = (3,2)`, `S_1:S = 7:32`) matches the bare value when the other side is not
    a relation: the left side only names the answer. A worked computation between constants
    (`5+5+1 = 11`) stands for its result.
  - Equations are equal up to rearrangement and a non-zero factor; inequalities up to a positive
    factor, so direction and strictness matter. One-variable linear relations are also compared
    as the sets they describe: a predicted `x in [-2, 7]` matches a reference `-2 <= x <= 7`, but
    not the other way round (a reference written as a set asks for the set; Math-Verify's default).
  - A function definition's argument is a dummy: `f(y) = y` == `f(x) = x`.
  - Sets are unordered; intervals compare endpoints and bracket types; tuples and matrices are
    ordered. An open interval `(a, b)` is also an ordered pair (the notation is ambiguous).
"""

import sympy
from latex2sympy2_extended import latex2sympy2 as l2s
from sympy.core.function import AppliedUndef
from sympy.core.relational import Relational

from rlvr_jax.rewards import compare

_LESS = {sympy.StrictLessThan: "<", sympy.LessThan: "<="}
_GREATER = {sympy.StrictGreaterThan: "<", sympy.GreaterThan: "<="}


def values_equal(a, b, decimal: bool = False) -> bool:
    """Whether two evaluated answers (any supported kind) are equal."""
    if compare.is_relation(a) != compare.is_relation(b):
        a, b = assigned_value(a), assigned_value(b)
    if compare.is_relation(a) or compare.is_relation(b):
        return relations_equal(a, b, decimal)
    if isinstance(a, sympy.MatrixBase) or isinstance(b, sympy.MatrixBase):
        return _matrices_equal(a, b, decimal)
    if isinstance(a, sympy.FiniteSet) and isinstance(b, sympy.FiniteSet):
        return unordered_equal(list(a.args), list(b.args), decimal)
    if isinstance(a, sympy.Set) and isinstance(b, sympy.Set):
        return sets_equal(a, b, decimal)
    pair_a, pair_b = as_sequence(a), as_sequence(b)
    if pair_a is not None and pair_b is not None:
        return ordered_equal(pair_a, pair_b, decimal)
    if isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr):
        return compare.scalars_equal(a, b, decimal)
    return False


def assigned_value(v):
    """`x = 3` -> 3 when one side of an equation only names the answer; otherwise `v`."""
    if not isinstance(v, sympy.Eq):
        return v
    if _is_constant(v.lhs) and _is_constant(v.rhs):
        return v.rhs  # a worked computation `5+5+1 = 11`: its result
    if _is_name(v.lhs):
        return v.rhs
    if _is_name(v.rhs) and not _is_name(v.lhs):
        return v.lhs
    return v


def _is_constant(e) -> bool:
    return isinstance(e, sympy.Expr) and not e.free_symbols


def _is_name(e) -> bool:
    if isinstance(e, (sympy.Symbol, AppliedUndef)):
        return True
    if isinstance(e, (sympy.Tuple, sympy.Interval)):
        ends = [x for x in e.args if not isinstance(x, sympy.logic.boolalg.BooleanAtom)]
        return all(isinstance(x, sympy.Symbol) for x in ends)
    return isinstance(e, sympy.Expr) and bool(e.free_symbols) and l2s.is_expr_of_only_symbols(e)


def as_sequence(v) -> list | None:
    """Elements of an ordered pair/tuple (an open interval counts as a pair), else None."""
    if isinstance(v, sympy.Tuple):
        return list(v.args)
    if isinstance(v, sympy.Interval) and v.left_open and v.right_open:
        return [v.start, v.end]
    if isinstance(v, sympy.MatrixBase) and 1 in v.shape:
        return list(v)
    return None


def ordered_equal(xs: list, ys: list, decimal: bool) -> bool:
    return len(xs) == len(ys) and all(values_equal(x, y, decimal) for x, y in zip(xs, ys))


def unordered_equal(xs: list, ys: list, decimal: bool, eq=None) -> bool:
    """Set equality of two lists of answers (duplicates collapse, order is free)."""
    eq = eq or (lambda x, y: values_equal(x, y, decimal))
    xs, ys = _dedupe(xs, eq), _dedupe(ys, eq)
    if len(xs) != len(ys):
        return False
    unmatched = list(ys)
    for x in xs:
        hit = next((i for i, y in enumerate(unmatched) if eq(x, y)), None)
        if hit is None:
            return False
        unmatched.pop(hit)
    return True


def _dedupe(xs: list, eq) -> list:
    kept = []
    for x in xs:
        if not any(eq(x, k) for k in kept):
            kept.append(x)
    return kept


def _matrices_equal(a, b, decimal: bool) -> bool:
    if isinstance(a, sympy.MatrixBase) and isinstance(b, sympy.MatrixBase):
        if a.shape != b.shape:
            return False
        return all(values_equal(x, y, decimal) for x, y in zip(a, b))
    seq_a, seq_b = as_sequence(a), as_sequence(b)  # a column vector written as a tuple
    return seq_a is not None and seq_b is not None and ordered_equal(seq_a, seq_b, decimal)


def sets_equal(a: sympy.Set, b: sympy.Set, decimal: bool) -> bool:
    """Interval / union / finite-set equality, component by component."""
    if a == b:
        return True
    parts_a, parts_b = _components(a), _components(b)
    if parts_a is None or parts_b is None:
        return False
    return unordered_equal(parts_a, parts_b, decimal, eq=lambda x, y: _parts_equal(x, y, decimal))


def _components(s) -> list | None:
    if s is sympy.S.EmptySet:
        return []
    if isinstance(s, sympy.Interval):
        return [s]
    if isinstance(s, sympy.FiniteSet):
        return [("point", x) for x in s.args]
    if isinstance(s, sympy.Union):
        parts = [_components(x) for x in s.args]
        return None if any(p is None for p in parts) else [x for p in parts for x in p]
    return None


def _parts_equal(x, y, decimal: bool) -> bool:
    if isinstance(x, tuple) and isinstance(y, tuple):
        return values_equal(x[1], y[1], decimal)
    if isinstance(x, sympy.Interval) and isinstance(y, sympy.Interval):
        return (
            x.left_open == y.left_open
            and x.right_open == y.right_open
            and compare.scalars_equal(x.start, y.start, decimal)
            and compare.scalars_equal(x.end, y.end, decimal)
        )
    return False


def relations_equal(a, b, decimal: bool) -> bool:
    """Equations, inequalities and chains of them (see module docstring). `a` is the prediction."""
    if _is_inequality(a) and _is_set_answer(b):
        return False  # a set was asked for (the reference is one): an inequality is not that answer
    set_a, set_b = relation_as_set(a), relation_as_set(b)
    if not (compare.is_relation(a) and compare.is_relation(b)):
        other_a = set_a[1] if set_a else a
        other_b = set_b[1] if set_b else b
        both_sets = isinstance(other_a, sympy.Set) and isinstance(other_b, sympy.Set)
        return both_sets and sets_equal(other_a, other_b, decimal)
    if set_a is not None and set_b is not None and set_a[0] == set_b[0]:
        return sets_equal(set_a[1], set_b[1], decimal)
    if isinstance(a, sympy.And) or isinstance(b, sympy.And):
        if not (isinstance(a, sympy.And) and isinstance(b, sympy.And)):
            return False
        return unordered_equal(list(a.args), list(b.args), decimal)
    a, b = _rename_function_arguments(a), _rename_function_arguments(b)
    if a == b:
        return True
    if not all(isinstance(x, sympy.Expr) for x in (a.lhs, a.rhs, b.lhs, b.rhs)):
        return type(a) is type(b) and ordered_equal([a.lhs, a.rhs], [b.lhs, b.rhs], decimal)
    op_a, d_a = _canonical(a)
    op_b, d_b = _canonical(b)
    if op_a != op_b:
        return False
    return compare.proportional(d_a, d_b, positive=op_a in ("<", "<="))


def _is_inequality(v) -> bool:
    if isinstance(v, sympy.And):
        return all(_is_inequality(r) for r in v.args)
    return isinstance(v, Relational) and not isinstance(v, (sympy.Eq, sympy.Ne))


def _is_set_answer(v) -> bool:
    """A set, or membership `x \\in S`, with infinitely many elements (an interval or union)."""
    if isinstance(v, sympy.Eq) and isinstance(v.rhs, sympy.Set):
        v = v.rhs
    return isinstance(v, sympy.Set) and not isinstance(v, sympy.FiniteSet)


def _canonical(rel: Relational) -> tuple[str, sympy.Expr]:
    """(op, d) with the relation equivalent to `d op 0`, op in {=, !=, <, <=}."""
    kind = type(rel)
    if kind in _LESS:
        return _LESS[kind], rel.lhs - rel.rhs
    if kind in _GREATER:
        return _GREATER[kind], rel.rhs - rel.lhs
    return ("=" if kind is sympy.Eq else "!="), rel.lhs - rel.rhs


def _rename_function_arguments(rel):
    """`f(y) = y` -> `f(_0) = _0`: the argument of a function definition is a dummy."""
    if isinstance(rel, sympy.Eq) and isinstance(rel.lhs, AppliedUndef):
        if all(isinstance(x, sympy.Symbol) for x in rel.lhs.args):
            mapping = {x: sympy.Symbol(f"_arg{i}") for i, x in enumerate(rel.lhs.args)}
            return rel.xreplace(mapping)
    return rel


def relation_as_set(rel) -> tuple[sympy.Symbol, sympy.Set] | None:
    """(x, S) for `x in S` or a linear relation / chain in the single variable x, else None."""
    if isinstance(rel, sympy.Eq) and isinstance(rel.rhs, sympy.Set):
        return (rel.lhs, rel.rhs) if isinstance(rel.lhs, sympy.Symbol) else None
    if isinstance(rel, sympy.And):
        parts = [relation_as_set(r) for r in rel.args]
        if any(p is None for p in parts) or len({p[0] for p in parts}) != 1:
            return None
        return parts[0][0], sympy.Intersection(*[p[1] for p in parts])
    if not isinstance(rel, Relational) or isinstance(rel, sympy.Eq):
        return None  # equations are compared as equations
    op, d = _canonical(rel)
    subject, d = _subject(d)
    if subject is None:
        return None
    x = next(iter(d.free_symbols))
    try:
        poly = sympy.Poly(d, x)
    except Exception:  # pylint: disable=broad-except  # not a polynomial in x
        return _absolute_value_set(subject, op, d, x)
    if poly.degree() != 1:
        return None
    slope, offset = poly.all_coeffs()
    if not (slope.is_real and offset.is_real) or slope == 0:
        return None
    return subject, _linear_solution_set(op, -offset / slope, bool(slope.is_positive))


def _subject(d: sympy.Expr) -> tuple[object, sympy.Expr]:
    """(what the relation constrains, d in one variable standing for it), or (None, d).

    A relation constrains one variable (`0 < y < 1`), or one named quantity such as `f(x)` in
    `0 < f(x) < 1`: the name is what the answer describes, so it is replaced by a variable.
    """
    names = d.atoms(AppliedUndef)
    if len(names) == 1:
        (name,) = names
        stand_in = sympy.Dummy("named")
        replaced = d.xreplace({name: stand_in})
        if replaced.free_symbols == {stand_in}:
            return name, replaced
        return None, d
    if names or len(d.free_symbols) != 1:
        return None, d
    return next(iter(d.free_symbols)), d


_ABS_MAX_OPS = 30  # solving is only attempted for small expressions (|z|, |2x-1|)


def _absolute_value_set(subject, op: str, d: sympy.Expr, x: sympy.Symbol):
    """The real solution set of `d op 0` when d is linear in x inside absolute values: an
    inequality is a statement about real numbers, so `1 <= |z| <= 3/2` is [-3/2,-1] u [1,3/2]."""
    if not d.has(sympy.Abs) or sympy.count_ops(d) > _ABS_MAX_OPS:
        return None
    real = sympy.Dummy("real", real=True)
    expr = d.xreplace({x: real})
    plain = expr.replace(sympy.Abs, lambda a: a)
    try:
        if sympy.Poly(plain, real).degree() != 1:
            return None
        relation = {"<": sympy.StrictLessThan, "<=": sympy.LessThan}.get(op)
        if relation is None:
            return None
        solution = sympy.solveset(relation(expr, 0), real, sympy.S.Reals)
    except Exception:  # pylint: disable=broad-except  # sympy cannot solve it: no set form
        return None
    return (subject, solution) if isinstance(solution, (sympy.Interval, sympy.Union,
                                                        sympy.FiniteSet)) or \
        solution is sympy.S.EmptySet else None


def _linear_solution_set(op: str, root, increasing: bool) -> sympy.Set:
    if op == "!=":
        return sympy.Union(sympy.Interval.open(-sympy.oo, root), sympy.Interval.open(root, sympy.oo))
    strict = op == "<"
    if increasing:  # slope * (x - root) op 0  <=>  x op root
        return sympy.Interval(-sympy.oo, root, right_open=strict)
    return sympy.Interval(root, sympy.oo, left_open=strict)
