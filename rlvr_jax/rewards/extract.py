r"""Final-answer extraction from a model response.

Policy, in order:
  1. Text after a chat-template control token (`<|im_start|>`, ...) is a hallucinated next turn
     and is dropped. After a `</think>` only the part after it counts; an open `<think>` with no
     close means the response was truncated while reasoning: no answer.
  2. The last `\boxed{...}` / `\boxed x` / `\fbox{...}` wins. An unterminated box (a truncated
     generation) is no answer, even if an earlier box is complete. Boxes just before it that are
     joined to it by a plain conjunction ("\boxed{1} and \boxed{-2}") are part of the answer and
     come back as a comma list; a self-correction ("\boxed{5}, wait, \boxed{7}") is not a join.
     Without `require_box`, an explicit "final answer is $X$" written after the last box
     restates the answer and wins over it.
  3. Without a box: the answer after the last "final answer is" / "answer:" / "answer is"; else a
     response that is itself a bare answer (`3x + 4y = 0`, no prose); else the last math span
     (`$...$`, `\(...\)`, `\[...\]`), unless a plain number is written after it ("... so there are
     12 ways."), which then wins.
"""

import re

from rlvr_jax.rewards.latex_scan import group_end

_TEMPLATE_TOKEN = re.compile(r"<\|(?:im_start|im_end|endoftext|eot_id|end_of_text)\|>|</s>")
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# Words that may sit between two boxes that together form one answer ("x = \boxed{2} or ...").
_CONJUNCTIONS = frozenset({"and", "or"})
# Words that signal the writer replaced an earlier answer: never join across them.
_CORRECTION_WORDS = frozenset(
    "wait but actually no not instead sorry correction rather hmm oops however mistake "
    "recheck check checking again incorrect wrong".split()
)
_JOIN_MAX_CHARS = 60  # a join is a short connective, not a paragraph
_JOIN_MAX_OTHER_WORDS = 2  # e.g. unit words in "\boxed{1} papers and \boxed{2} bins"
_PHRASES = (
    re.compile(r"final\s+answer\s*(?:is|:)\s*:?", re.IGNORECASE),
    re.compile(r"\banswer\s*(?:is|:)\s*:?", re.IGNORECASE),
)
# `\$` is an escaped dollar sign (currency), not a math delimiter.
_MATH_SPAN = re.compile(
    r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL
)
_MATH_SPAN_START = re.compile(r"\s*(?:\$\$|\$|\\\(|\\\[)")
# A number standing alone (not the `2` of `AZYUK2A`), with an optional /denominator or percent.
# A number is read whole or not at all: `12.5kg` is never the `12` before its decimal point (the
# lookaheads forbid stopping inside a longer number). Letters glued to it disqualify it (a product
# or a name), unless they are a common unit (`12.5kg`, `3cm`), which is left off the answer.
_GLUED_UNITS = "km|cm|mm|kg|mg|ml|ft|yd|mi|lb|oz|hr|min|s|m|g|h|l"
_NUMBER = re.compile(
    r"(?<![A-Za-z\d.])-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?"
    r"(?![\d,.]\d|(?!(?:%s)(?![A-Za-z\d]))[A-Za-z\d])"
    r"(?:\s*(?:\\?%%|percent))?" % _GLUED_UNITS
)
_PROSE_WORD = re.compile(r"[A-Za-z]{3,}")
# A command, or an environment delimiter whose name is not prose (`\begin{bmatrix}`).
_LATEX_COMMAND = re.compile(r"\\(?:begin|end)\{[A-Za-z]+\*?\}|\\[A-Za-z]+")
_BARE_ANSWER_MAX_CHARS = 200


def extract_answer(text: str | None, require_box: bool = False) -> str | None:
    """Returns the final answer written in `text`, or None if it has none.

    Args:
      text: A model response (or any string).
      require_box: If True, only a boxed answer counts (the training-reward setting).
    """
    if not text:
        return None
    text = _strip_control(text)
    if text is None:
        return None
    boxes = _find_boxes(text)
    if boxes is None:
        return None  # unterminated box
    if boxes:
        if not require_box:
            restated = _final_answer_after(text[boxes[-1][1] :])
            if restated is not None:
                return restated
        return _last_boxed_answer(text, boxes)
    if require_box:
        return None
    return _fallback(text)


def _final_answer_after(rest: str) -> str | None:
    """A "final answer is ..." statement after the last box supersedes it (the writer restated the
    answer, often after a correction). Only an explicit final-answer phrase followed by math counts:
    "... the answer is right, since 5 = 2+3" does not replace the box."""
    matches = list(_PHRASES[0].finditer(rest))
    if not matches:
        return None
    after = rest[matches[-1].end() :]
    if _MATH_SPAN_START.match(after):
        m = _MATH_SPAN.search(after)
        return _span_content(m) if m is not None else None
    sentence = re.split(r"\n|\.(?:\s|$)", after.strip(), maxsplit=1)[0].strip()
    return sentence if sentence and _looks_like_math(sentence) else None


def _strip_control(text: str) -> str | None:
    m = _TEMPLATE_TOKEN.search(text)
    if m is not None:
        text = text[: m.start()]
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        return None
    return text


def _find_boxes(text: str) -> list[tuple[int, int, str]] | None:
    """All top-level boxes as (start, end, content); None if one is unterminated."""
    boxes = []
    pos = 0
    while (m := _BOX.search(text, pos)) is not None:
        i = m.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            end = group_end(text, i)
            if end < 0:
                return None
            boxes.append((m.start(), end + 1, text[i + 1 : end].strip()))
            pos = end + 1
            continue
        # `\boxed 5`: the argument runs to the next space or math delimiter.
        arg = re.match(r"[^\s$]+", text[i:])
        if arg is None:
            return None
        content = arg.group().rstrip(".,;")
        if content.startswith("\\)") or not content:
            return None
        boxes.append((m.start(), i + arg.end(), content))
        pos = i + arg.end()
    return boxes


def _last_boxed_answer(text: str, boxes: list[tuple[int, int, str]]) -> str:
    answer = [boxes[-1][2]]
    for (_, end, content), (start, _, _) in zip(reversed(boxes[:-1]), reversed(boxes[1:])):
        if not _is_join(text[end:start]):
            break
        if content != answer[0]:  # a repeated box is one answer
            answer.insert(0, content)
    return ", ".join(answer)


def _is_join(between: str) -> bool:
    if len(between) > _JOIN_MAX_CHARS:
        return False
    cleaned = _LATEX_COMMAND.sub(" ", between.replace("\\(", " ").replace("\\)", " "))
    words = re.findall(r"[A-Za-z]+", cleaned.lower())
    if any(w in _CORRECTION_WORDS for w in words):
        return False
    others = [w for w in words if w not in _CONJUNCTIONS]
    has_link = len(others) < len(words) or "," in between or ";" in between or not words
    return has_link and len(others) <= _JOIN_MAX_OTHER_WORDS


def _fallback(text: str) -> str | None:
    for phrase in _PHRASES:
        matches = list(phrase.finditer(text))
        if matches:
            found = _answer_after(text[matches[-1].end() :])
            if found:
                return found
    stripped = text.strip()
    bare = len(stripped) <= _BARE_ANSWER_MAX_CHARS and not _MATH_SPAN.search(text)
    if bare and _looks_like_math(stripped):
        return stripped.rstrip(".").strip() or None  # the whole response is a bare answer
    return _last_math_or_number(text)


def _answer_after(rest: str) -> str | None:
    """The answer that follows an "answer is" phrase: a math span, else the rest of the sentence."""
    if _MATH_SPAN_START.match(rest):
        m = _MATH_SPAN.search(rest)
        if m is not None:
            return _span_content(m)
    sentence = re.split(r"\n|\.(?:\s|$)|\s+I hope", rest.strip(), maxsplit=1)[0].strip()
    if sentence and _looks_like_math(sentence) and not _MATH_SPAN.search(sentence):
        return sentence
    return _last_math_or_number(sentence)


def _last_math_or_number(text: str) -> str | None:
    """Whichever comes last: the last math span, or a plain number written after it."""
    spans = list(_MATH_SPAN.finditer(text))
    tail_start = spans[-1].end() if spans else 0
    numbers = _NUMBER.findall(text, tail_start)
    if numbers:
        return numbers[-1].strip()
    return _span_content(spans[-1]) if spans else None


def _span_content(m: re.Match) -> str | None:
    return next(g for g in m.groups() if g is not None).strip() or None


def _looks_like_math(s: str) -> bool:
    return _PROSE_WORD.search(_LATEX_COMMAND.sub(" ", s)) is None
