r"""String-level normalisation of an extracted answer into parseable LaTeX.

Only rewrites whose meaning is unambiguous happen here: notation (`\dfrac` -> `\frac`, `pi` ->
`\pi`, unicode minus), decoration (`\left`, `$`, `\!`, `\text{}` wrappers, degrees, percent signs)
and a trailing unit, which is split off and kept so that `5 km` and `5 cm` stay different.
Whether something is a list, a set, a relation or a number is decided later by the parser.
"""

import dataclasses
import re

from rlvr_jax.rewards.latex_scan import group_end, paren_end, unwrap_commands

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u221a": "\\sqrt", "\u221e": "\\infty ",
    "\u03c0": "\\pi ", "\u00d7": "\\times ", "\u00b7": "\\cdot ", "\u22c5": "\\cdot ",
    "\u2264": "\\le ", "\u2265": "\\ge ", "\u2260": "\\neq ", "\u222a": "\\cup ", "\u2229": "\\cap ",
    "\u00b0": "^\\circ", "\u00f7": "\\div ", "\u00b2": "^2", "\u00b3": "^3", "\u2208": "\\in ",
    "\u00a0": " ", "\u2009": " ", "\u200b": "",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
# Pure decoration: delimiters, sizing commands and negative / thin spaces, which may sit inside a
# number (`16,\!386`, `1\,000`), so they vanish without leaving a space.
_DECORATION = re.compile(
    r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg|middle)(?![A-Za-z])"
    r"|\\(?:displaystyle|textstyle|scriptstyle|limits|nolimits)(?![A-Za-z])"
    r"|\\[!,]|\\\$|\$|\\\(|\\\)|\\\[|\\\]"
)
_SPACING = re.compile(r"\\[;:> ]|\\q?quad(?![A-Za-z])|\\(?:hspace|vspace)\*?\{[^{}]*\}|~")
_OVERESCAPED = re.compile(r"\\\\(?=[A-Za-z])")
_ROW_BREAK = re.compile(r"\\\\")  # `\\` (a matrix row break) is one token, never `\` + `\ `
_COMMAND_ALIASES = [
    (re.compile(r"\\[dtc]frac(?![A-Za-z])"), r"\\frac"),
    (re.compile(r"\\(?:leq|leqslant)(?![A-Za-z])"), r"\\le"),
    (re.compile(r"\\(?:geq|geqslant)(?![A-Za-z])"), r"\\ge"),
    (re.compile(r"\\(?:ne|not\s*=)(?![A-Za-z])"), r"\\neq"),
    (re.compile(r"\\varnothing(?![A-Za-z])"), r"\\emptyset"),
    (re.compile(r"!="), r"\\neq "),
    (re.compile(r"<="), r"\\le "),
    (re.compile(r">="), r"\\ge "),
    (re.compile(r"\\(?:dots|ldots|cdots)(?![A-Za-z])"), ""),
]
_DEGREES = re.compile(
    r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![A-Za-z])|\\degree(?![A-Za-z])"
    r"|(?<=\d)\s*\\?(?:text|mbox)?\{?\s*degrees?\s*\}?(?![A-Za-z])"
)
# Inside a trigonometric function a degree mark is a unit conversion (`\cos 60^\circ` = 1/2), so the
# marked value becomes radians there; elsewhere an answer in degrees is compared as a plain number.
_TRIG = re.compile(
    r"\\(?:arc)?(?:sin|cos|tan|cot|sec|csc)(?![A-Za-z])|(?<![\\A-Za-z])(?:sin|cos|tan)(?=\s*[(\d])"
)
_MARKED_DEGREES = re.compile(
    r"(\d+(?:\.\d+)?|[A-Za-z]|\{[^{}]*\})\s*(?:\^\s*\{?\s*\\circ\s*\}?|\\degree(?![A-Za-z]))"
)
_PERCENT = re.compile(
    r"\s*(?:\\%|%|\\(?:text|mbox|mathrm)\s*\{\s*(?:\\?%|percent(?:age)?s?)\s*\}"
    r"|(?<![A-Za-z])(?:percent(?:age)?s?|pct)(?![A-Za-z]))"
)
_ORDINAL = re.compile(
    r"(?<=\d)\s*(?:\^\s*\{?)?(?:\\(?:text|mathrm)\s*\{)?(?:st|nd|rd|th)\}?\}?(?![A-Za-z])"
)
_TEXT_COMMANDS = (
    "text", "textbf", "textit", "textrm", "textnormal", "textsf", "texttt", "mathrm", "mathbf",
    "mathit", "mathsf", "mathtt", "mbox", "boldsymbol", "bm", "emph", "rm",
)
# Trailing unit: a text macro (any word) or a plain unit word after a number-like value.
_UNIT_MACRO = re.compile(
    r"^(?P<value>.*?\S)\s*\\(?:text|textnormal|textrm|textbf|textit|mbox|mathrm|rm)\s*\{\s*"
    r"(?P<unit>[A-Za-z][A-Za-z ./]*?)\s*\}"
    r"\s*(?P<pow>\^\s*\{?\s*\d\s*\}?)?\s*\.?$",
    re.DOTALL,
)
_UNIT_WORDS = re.compile(
    r"^(?P<value>.*?[\d})])(?P<space>\s*)(?P<unit>(?:(?:square|sq\.?|cubic|cu\.?)\s+)?[A-Za-z]{2,}"
    r"(?:\s+[A-Za-z]{3,})?)\s*(?P<pow>\^\s*\{?\s*\d\s*\}?)?\s*\.?$",
    re.DOTALL,
)
# Two-letter units that are accepted as words; longer words count as units unless they are math.
_SHORT_UNITS = frozenset("cm mm km ft yd mi kg mg lb oz ml hr yr sq in".split())
_MATH_WORDS = frozenset(
    "sin cos tan cot sec csc log ln exp sqrt pi max min lim det gcd lcm mod and or inf infty "
    "arcsin arccos arctan sinh cosh tanh deg".split()
)
_UNIT_ALIASES = {
    "centimeter": "cm", "centimetre": "cm", "meter": "m", "metre": "m", "kilometer": "km",
    "kilometre": "km", "millimeter": "mm", "millimetre": "mm", "inch": "in", "inche": "in",
    "foot": "ft", "feet": "ft", "yard": "yd", "mile": "mi", "gram": "g", "kilogram": "kg",
    "milligram": "mg", "pound": "lb", "ounce": "oz", "liter": "l", "litre": "l", "second": "s",
    "sec": "s", "minute": "min", "hour": "h", "hr": "h", "year": "yr", "dollar": "$",
    "degree": "deg", "unit": "", "squnit": "",
}
_THOUSANDS = re.compile(
    r"(?<![\d.,])(-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?)(?!,?\d)"  # 1,234,567.5
    r"|(?<![\d.,\w ])(-?[1-9]\d{0,2}(?: \d{3})+(?:\.\d+)?)(?![\d\w.]| \d)"  # 1 234 567 (SI style)
)
_SCI = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])")
_PLAIN_FUNC = re.compile(
    r"(?<![\\A-Za-z])(arcsin|arccos|arctan|sinh|cosh|tanh|sin|cos|tan|cot|sec|csc|ln|log|exp)"
    r"(?=\s*[(\d])"
)
_PLAIN_PI = re.compile(r"(?<![\\A-Za-z])pi(?![A-Za-z])")
_PLAIN_INF = re.compile(r"(?<![\\A-Za-z])(?:infinity|inf)(?![A-Za-z])")
_PLAIN_SQRT = re.compile(r"(?<![A-Za-z])\\?sqrt\s*\(")
_MIXED = re.compile(r"(?<![\w.^_}\\])(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}")


_TRAILING_BREAK = re.compile(r"(?:\s*\\+\s*)+$")
# A system of equations written as a layout environment is the list of its rows: `\begin{cases}
# x=1 \\ y=2 \end{cases}` is `x=1, y=2`. Alignment marks `&` carry no meaning there.
_SYSTEM = re.compile(
    r"\\begin\{(cases|aligned|align\*?|gathered|gather\*?|array)\}(?:\{[^{}]*\})?(.*?)\\end\{\1\}",
    re.DOTALL,
)


def _system_as_list(s: str) -> str:
    def rows(m: re.Match) -> str:
        if m.group(1) == "array" and "=" not in m.group(2):
            return m.group()  # an array of values is a matrix, not a system
        parts = [r.replace("&", " ").strip() for r in re.split(r"\\\\", m.group(2))]
        return ", ".join(p.rstrip(",;.") for p in parts if p.strip())

    return _SYSTEM.sub(rows, s)


@dataclasses.dataclass(frozen=True)
class Normalized:
    """An answer after normalisation.

    Attributes:
      latex: LaTeX ready for the parser.
      key: `latex` without spaces (kept between two digits), for the cheap exact comparison.
      unit: Canonical trailing unit ("" for none), compared separately from the value.
    """

    latex: str
    key: str
    unit: str


def normalize(answer: str) -> Normalized:
    """Normalises an extracted answer (see the module docstring for what is rewritten)."""
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group()], answer)
    s = unwrap_commands(s, ("boxed", "fbox"))
    s = _system_as_list(s)
    s = _TRAILING_BREAK.sub("", s)  # `5\\` or `5\`: a line break left at the end of a box
    if "matrix" not in s and "array" not in s:
        s = _OVERESCAPED.sub(r"\\", s)  # `\\frac` from a doubly escaped string is `\frac`
    s = re.sub(r"(?<=\d),\s*\\!\s*(?=\d{3}(?!\d))", "", s)  # `16,\!386`: a comma pulled tight
    s = " \\\\ ".join(_SPACING.sub(" ", _DECORATION.sub("", part)) for part in _ROW_BREAK.split(s))
    for pattern, repl in _COMMAND_ALIASES:
        s = pattern.sub(repl, s)
    s = _PERCENT.sub("", s)
    if _TRIG.search(s):
        s = _MARKED_DEGREES.sub(r"(\\frac{\\pi}{180}\\cdot {\1})", s)
    s = _DEGREES.sub("", s)
    s = _ORDINAL.sub("", s)
    s, unit = _split_unit(s.strip())
    s = unwrap_commands(s, _TEXT_COMMANDS)
    s = _join_thousands(s)
    s = _plain_to_latex(s)
    s = _brace_arguments(s)
    s = _MIXED.sub(r"(\1+\\frac{\2}{\3})", s)
    s = _strip_outer_group(re.sub(r"\s+", " ", s).strip().rstrip(".,;").strip())
    # The key drops spaces, except between digits: `1 23` is not `123`.
    return Normalized(latex=s, key=re.sub(r"(?<!\d) | (?!\d)", "", s), unit=unit)


def _strip_outer_group(s: str) -> str:
    """`{1,3}` is a TeX group, not a set (that is `\\{1,3\\}`): drop braces around everything."""
    while s.startswith("{") and group_end(s, 0) == len(s) - 1:
        s = s[1:-1].strip()
    return s


def _split_unit(s: str) -> tuple[str, str]:
    m = _UNIT_MACRO.match(s)
    if m is not None and not _is_math_word(m.group("unit")):
        return m.group("value"), _canonical_unit(m.group("unit"), m.group("pow"))
    m = _UNIT_WORDS.match(s)
    if m is not None and _is_unit_word(m.group("unit"), spaced=bool(m.group("space"))):
        return m.group("value"), _canonical_unit(m.group("unit"), m.group("pow"))
    return s, ""


def _is_math_word(words: str) -> bool:
    return words.strip().lower() in _MATH_WORDS


def _is_unit_word(words: str, spaced: bool) -> bool:
    """A known unit anywhere; another word only after a space (`2abc` is a product)."""
    last = words.split()[-1].lower().rstrip(".")
    if last in _MATH_WORDS:
        return False
    singular = last[:-1] if last.endswith("s") else last
    known = last in _SHORT_UNITS or last in _UNIT_ALIASES or singular in _UNIT_ALIASES
    return known or (spaced and len(last) >= 3)


def _canonical_unit(words: str, power: str | None) -> str:
    parts = words.lower().replace(".", " ").split()
    exponent = re.sub(r"\D", "", power or "")
    if parts and parts[0] in ("square", "sq") and len(parts) > 1:
        parts, exponent = parts[1:], "2"
    elif parts and parts[0] in ("cubic", "cu") and len(parts) > 1:
        parts, exponent = parts[1:], "3"
    singular = []
    for word in parts:
        if word.endswith("s") and len(word) > 3 and not word.endswith("ss"):
            word = word[:-1]
        singular.append(_UNIT_ALIASES.get(word, word))
    name = " ".join(w for w in singular if w)
    return f"{name}^{exponent}" if name and exponent not in ("", "1") else name


def _join_thousands(s: str) -> str:
    """Drops thousands separators, only in valid 3-digit groups outside any bracket."""
    # `14{,}916` / `14 {, }916` is explicit thousands notation (a comma with no spacing after it).
    s = re.sub(r"(?<=\d)\s*\{\s*,\s*\}\s*(?=\d{3}(?!\d))", "", s)
    depth = 0
    depth_at = []
    for c in s:
        depth += c in "([{"
        depth -= c in ")]}"
        depth_at.append(depth)
    out, pos = [], 0
    for m in _THOUSANDS.finditer(s):
        if depth_at[m.start()] == 0:
            out.append(s[pos : m.start()] + m.group().replace(",", "").replace(" ", ""))
            pos = m.end()
    out.append(s[pos:])
    return "".join(out)


def _plain_to_latex(s: str) -> str:
    """Rewrites calculator-style math (`sqrt(3)/3`, `2*pi`, `exp(16)`, `1.5e6`) as LaTeX."""
    while (m := _PLAIN_SQRT.search(s)) is not None:
        end = paren_end(s, m.end() - 1)
        if end < 0:
            break
        s = s[: m.start()] + "\\sqrt{" + s[m.end() : end] + "}" + s[end + 1 :]
    s = _PLAIN_FUNC.sub(r"\\\1", s)
    s = _PLAIN_PI.sub(r"\\pi ", s)
    s = _PLAIN_INF.sub(r"\\infty ", s)
    s = s.replace("**", "^").replace("*", " \\cdot ")
    return _SCI.sub(r"\1\\times 10^{\2}", s)


def _brace_arguments(s: str) -> str:
    r"""Braces single-token arguments: `\frac13` -> `\frac{1}{3}`, `\sqrt3` -> `\sqrt{3}`."""
    out = []
    pos = 0
    for m in re.finditer(r"\\(frac|binom|sqrt)(?![A-Za-z])", s):
        if m.start() < pos:
            continue
        out.append(s[pos : m.end()])
        i = m.end()
        if m.group(1) == "sqrt":
            opt = re.match(r"\s*\[[^\[\]]*\]", s[i:])
            if opt is not None:
                out.append(opt.group())
                i += opt.end()
        for _ in range(1 if m.group(1) == "sqrt" else 2):
            arg, i = _read_argument(s, i)
            if arg is None:
                break
            out.append("{" + _brace_arguments(arg) + "}")  # depth is bounded by the caller
        pos = i
    out.append(s[pos:])
    return "".join(out)


def _read_argument(s: str, i: int) -> tuple[str | None, int]:
    """Reads one macro argument at `i`: a `{group}`, a `(group)`, a command or one character."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return None, i
    if s[i] == "{":
        end = group_end(s, i)
    elif s[i] == "(":
        end = paren_end(s, i)
    else:
        m = re.match(r"\\[A-Za-z]+|[^\\{}()\s]", s[i:])
        return (m.group(), i + m.end()) if m else (None, i)
    if end < 0:
        return None, i
    return s[i + 1 : end], end + 1
