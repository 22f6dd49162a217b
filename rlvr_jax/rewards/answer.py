r"""An answer's top-level structure: a list of items, each a word, a number in a base, or math.

A comma, semicolon, "and" or "or" outside brackets separates items (thousands separators were
already removed by the normaliser, so `2,3` is a pair and `1,234` one number). Lists compare as
sets: every gold item must be matched and nothing extra may be given, so "5 or 7" is a hedge that
fails against 7, and 1728 is a strict subset of "1331 and 1728". A list is compared in order
against a tuple, and as a set against a `\{...\}` set or a `\pm` pair. When semicolons separate
groups that each hold commas (`p=5,q=2; p=7,q=2`), the semicolon is the outer separator: each
group is one solution tuple.
"""

import dataclasses
import functools
import re

import sympy

from rlvr_jax.rewards import parse, structures
from rlvr_jax.rewards.latex_scan import split_top_level

MAX_ITEMS = 64
_SEPARATORS = re.compile(r",|;|(?<![A-Za-z\\])(?:or|and)(?![A-Za-z])")
_SEMICOLON = re.compile(";")
_COMMA = re.compile(",")
_WORD_ITEM = re.compile(r"^[A-Za-z][A-Za-z '\-]*$")
_MATH_WORDS = frozenset("sin cos tan cot sec csc log ln exp sqrt pi infty".split())
_BASE_NUMBER = re.compile(r"^([0-9A-Za-z]+)_\{?(\d{1,2})\}?$")
_DECIMAL = re.compile(r"(?<![\d.])\d*\.\d")


@dataclasses.dataclass(frozen=True)
class Item:
    """One answer item. kind: "text" (a word), "base" (digits, base), "math" or "bad"."""

    kind: str
    value: object = None
    decimal: bool = False  # written with a decimal point: double-precision tolerance applies


@functools.lru_cache(maxsize=4096)  # a GRPO group shares one reference answer
def parse_items(latex: str) -> tuple[Item, ...]:
    """Splits normalised LaTeX into items and parses each (unparseable items are "bad")."""
    groups = _tuple_groups(latex)
    if groups is not None:
        return groups
    pieces = [p.strip() for p in split_top_level(latex, _SEPARATORS)]
    pieces = [p for p in pieces if p]
    if not pieces or len(pieces) > MAX_ITEMS:
        return (Item("bad"),)
    items = []
    for piece in pieces:
        item = _parse_item(piece)
        if len(pieces) > 1 and item.kind == "math" and isinstance(item.value, sympy.FiniteSet) and (
            "\\pm" in piece or "\\mp" in piece
        ):
            items.extend(Item("math", x, item.decimal) for x in item.value.args)
        else:
            items.append(item)
    return tuple(items)


def _tuple_groups(latex: str) -> tuple[Item, ...] | None:
    """`p=5,q=2; p=7,q=2`: semicolons separate solutions and commas the components of each, so
    each group is one tuple (of the assigned values). None when the answer is not so written."""
    groups = [g.strip() for g in split_top_level(latex, _SEMICOLON)]
    groups = [g for g in groups if g]
    if len(groups) < 2 or len(groups) > MAX_ITEMS:
        return None
    split = [[c.strip() for c in split_top_level(g, _COMMA)] for g in groups]
    if not all(len(parts) > 1 for parts in split):
        return None
    items = []
    for parts in split:
        values = [_parse_item(c) for c in parts]
        if any(v.kind != "math" for v in values):
            return (Item("bad"),)
        items.append(Item("math", sympy.Tuple(*(structures.assigned_value(v.value) for v in values)),
                          any(v.decimal for v in values)))
    return tuple(items)


def _parse_item(piece: str) -> Item:
    if _WORD_ITEM.match(piece) and any(
        len(w) >= 3 and w.lower() not in _MATH_WORDS for w in re.findall(r"[A-Za-z]+", piece)
    ):
        return Item("text", " ".join(piece.lower().replace("-", " ").split()))
    base = _base_number(piece)
    if base is not None:
        return Item("base", base)
    try:
        value = parse.evaluate(parse.parse_latex(piece))
    except parse.ParseError:
        return Item("bad")
    return Item("math", value, bool(_DECIMAL.search(piece)))


def _base_number(piece: str) -> tuple[str, int] | None:
    m = _BASE_NUMBER.match(piece)
    if m is None or not any(c.isdigit() for c in m.group(1)):
        return None
    digits, base = m.group(1).upper().lstrip("0") or "0", int(m.group(2))
    if not 2 <= base <= 36:
        return None
    try:
        int(digits, base)
    except ValueError:
        return None
    return digits, base


def items_equal(pred: tuple[Item, ...], gold: tuple[Item, ...]) -> bool:
    """Whether two parsed answers are equal (see module docstring)."""
    if any(i.kind == "bad" for i in pred + gold):
        return False
    if len(pred) == 1 and len(gold) == 1:
        return _item_equal(pred[0], gold[0])
    (kind_p, pred), (kind_g, gold) = _as_collection(pred), _as_collection(gold)
    if {kind_p, kind_g} == {"set", "tuple"}:
        return False
    if "tuple" in (kind_p, kind_g):
        return len(pred) == len(gold) and all(map(_item_equal, pred, gold))
    return structures.unordered_equal(pred, gold, False, eq=_item_equal)


def _as_collection(items: tuple[Item, ...]) -> tuple[str, list[Item]]:
    """("list" | "set" | "tuple", elements); a single set / tuple item is opened up."""
    if len(items) > 1 or items[0].kind != "math":
        return "list", list(items)
    value, decimal = structures.assigned_value(items[0].value), items[0].decimal
    if isinstance(value, sympy.FiniteSet):
        return "set", [Item("math", x, decimal) for x in value.args]
    sequence = structures.as_sequence(value)
    if sequence is not None:
        return "tuple", [Item("math", x, decimal) for x in sequence]
    return "list", list(items)


def _item_equal(p: Item, g: Item) -> bool:
    if p.kind == "text" or g.kind == "text":
        return p.kind == g.kind and p.value == g.value
    if p.kind == "base" and g.kind == "base":
        return int(p.value[0], p.value[1]) == int(g.value[0], g.value[1])
    if g.kind == "base":  # the subscript was left off: the digits must match
        plain = structures.assigned_value(p.value)
        return isinstance(plain, sympy.Integer) and str(plain) == g.value[0]
    if p.kind == "base":  # an explicit base against a plain number: compare values
        plain = structures.assigned_value(g.value)
        return isinstance(plain, sympy.Integer) and int(p.value[0], p.value[1]) == int(plain)
    return structures.values_equal(p.value, g.value, p.decimal or g.decimal)
