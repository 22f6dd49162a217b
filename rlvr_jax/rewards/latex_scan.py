"""Brace-aware scanning of LaTeX strings.

Everything here is linear in the input and iterative (no recursion), because it runs on raw model
text before any length or nesting limit has been applied.
"""

import re

# A backslash escapes the next character (`\{`, `\}`, `\\`), so only bare braces group.
_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.DOTALL)
_OPENERS = frozenset("([{")
_CLOSERS = frozenset(")]}")


def group_end(s: str, open_idx: int) -> int:
    """Returns the index of the `}` closing the `{` at `open_idx`, or -1 if it is never closed."""
    depth = 0
    for m in _BRACE_TOKENS.finditer(s, open_idx):
        tok = m.group()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth == 0:
                return m.start()
    return -1


def paren_end(s: str, open_idx: int) -> int:
    """Returns the index of the `)` closing the `(` at `open_idx`, or -1."""
    depth = 0
    for i in range(open_idx, len(s)):
        c = s[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


def unwrap_commands(s: str, names: tuple[str, ...]) -> str:
    r"""Replaces `\name{body}` by `body` for each listed command (nested uses included).

    An unterminated group is left as it is: the parser will then reject the string.
    """
    pattern = re.compile(r"\\(?:%s)\s*\{" % "|".join(names))
    pos = 0
    while (m := pattern.search(s, pos)) is not None:
        end = group_end(s, m.end() - 1)
        if end < 0:
            break
        s = s[: m.start()] + s[m.end() : end] + s[end + 1 :]
        pos = m.start()  # the body may hold further wrapped commands
    return s


def nesting_depth(s: str) -> int:
    """Maximum bracket nesting depth, counting (, [ and { alike (intervals mix them)."""
    depth = best = 0
    for c in s:
        if c in _OPENERS:
            depth += 1
            best = max(best, depth)
        elif c in _CLOSERS:
            depth -= 1
    return best


def split_top_level(s: str, separators: re.Pattern) -> list[str]:
    """Splits `s` at matches of `separators` that lie outside all brackets.

    Brackets of any kind count alike so that half-open intervals such as `[0,1)` stay whole.
    """
    depth_at = []
    depth = 0
    for c in s:
        if c in _OPENERS:
            depth += 1
        elif c in _CLOSERS:
            depth -= 1
        depth_at.append(depth)
    parts = []
    start = 0
    for m in separators.finditer(s):
        if depth_at[m.start()] == 0:
            parts.append(s[start : m.start()])
            start = m.end()
    parts.append(s[start:])
    return parts
