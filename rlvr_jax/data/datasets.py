"""Math datasets -> a list of `Example`s.

Three on-disk shapes are understood, detected per row so one loader serves training and evaluation:

* **verl parquet schema** (the paper's training files): ``prompt`` is a list of
  ``{role, content}`` messages, the answer is ``reward_model.ground_truth``, plus ``data_source``
  and ``extra_info.index``.
* **plain jsonl / json / parquet** rows with a question under ``prompt`` / ``question`` /
  ``problem`` and an answer under ``answer`` / ``ground_truth`` / ``final_answer``.
* **solution-only rows** (Minerva-Math): no answer field, the answer is the last ``\\boxed{}`` of
  ``solution``; it is extracted with the reward verifier's own extractor so that evaluation grades
  against exactly what the verifier would read.

Every malformed row raises ``DatasetError`` naming the file and the row, because a silently
skipped or mis-parsed row changes benchmark denominators.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from typing import Any, Iterator, Mapping, Sequence

QUESTION_KEYS = ("prompt", "question", "problem")
ANSWER_KEYS = ("answer", "ground_truth", "final_answer")
SOLUTION_KEY = "solution"

# A `$` not preceded by a backslash: a LaTeX math delimiter, not a dollar sign (`\$18.90`).
_MATH_DOLLAR = re.compile(r"(?<!\\)\$")


class DatasetError(ValueError):
    """A dataset file is missing, of an unknown kind, or holds a malformed row."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One math problem with its reference answer.

    Attributes:
      question: The problem text (for chat-format sources, the last user message).
      answer: The reference answer as a string, e.g. ``"12.8"`` or ``"\\frac{4}{3}"``.
      messages: The source's chat messages as ``((role, content), ...)`` when it has them (verl
        schema), else None. Tuples keep the dataclass immutable and hashable.
      index: ``extra_info.index`` when the source carries one (the example's id in its parent
        dataset, e.g. 124 for pi1 in the DSR subset), else the row number in the file.
      source: ``data_source`` of the row, else the name given to the loader, else the file stem.
    """

    question: str
    answer: str
    messages: tuple[tuple[str, str], ...] | None = None
    index: int = 0
    source: str = ""

    def chat_messages(self) -> list[dict[str, str]]:
        """Messages as the list of dicts that `apply_chat_template` expects."""
        if self.messages is None:
            return [{"role": "user", "content": self.question}]
        return [{"role": role, "content": content} for role, content in self.messages]


def load_dataset(
    path: str | os.PathLike,
    *,
    question_key: str | None = None,
    answer_key: str | None = None,
    answer_from_solution: bool = False,
    source: str | None = None,
    limit: int | None = None,
    allow_empty_answer: bool = True,
) -> list[Example]:
    """Loads a dataset of math examples from a ``.parquet``, ``.jsonl`` or ``.json`` file.

    Args:
      path: The file. ``.json`` holds a list of row objects; ``.jsonl`` one object per line.
      question_key: Field holding the question; None tries ``prompt``, ``question``, ``problem``.
      answer_key: Field holding the answer; None tries ``reward_model.ground_truth``, then
        ``answer``, ``ground_truth``, ``final_answer``, then falls back to the last ``\\boxed{}``
        of ``solution``.
      answer_from_solution: The answer field (``answer_key``, default ``solution``) is a worked
        solution: take its last ``\\boxed{}`` content as the answer.
      source: Name recorded in `Example.source` for rows without ``data_source``.
      limit: Keep only the first ``limit`` rows (quick runs).
      allow_empty_answer: Keep rows whose answer is an empty string. On by default because real
        training files have them (row 265 of the paper's DSR subset; it simply never earns
        reward); evaluation sets turn it off, where an empty reference would be a bug.

    Returns:
      The examples in file order.

    Raises:
      DatasetError: missing file, unknown extension, or a malformed row (message names both).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    if answer_from_solution and answer_key is None:
        answer_key = SOLUTION_KEY
    default_source = source or path.stem
    examples = []
    for row_num, (where, row) in enumerate(_read_rows(path)):
        if limit is not None and row_num >= limit:
            break
        try:
            examples.append(
                _parse_row(row, row_num, question_key, answer_key, answer_from_solution,
                           default_source, allow_empty_answer))
        except (KeyError, TypeError, ValueError) as e:
            # str(KeyError) quotes its message; args[0] is the text we wrote.
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise DatasetError(f"{path}: {where}: {message}") from None
    return examples


def _read_rows(path: pathlib.Path) -> Iterator[tuple[str, Any]]:
    """Yields ``(location, row)`` pairs; location reads like ``row 3`` or ``row 3 (line 5)``."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # Lazy: keeps `import rlvr_jax.data` light.

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"row {i}", row
    elif suffix == ".jsonl":
        row_num = 0
        with open(path, encoding="utf-8") as f:
            for line_num, line in enumerate(f, start=1):
                if not line.strip():
                    continue  # Trailing blank lines are common; they are not rows.
                where = f"row {row_num} (line {line_num})"
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}: {where}: invalid JSON: {e}") from None
                row_num += 1
    elif suffix == ".json":
        with open(path, encoding="utf-8") as f:
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}: invalid JSON: {e}") from None
        if not isinstance(rows, list):
            raise DatasetError(f"{path}: a .json dataset must hold a list of rows, "
                               f"got {type(rows).__name__}")
        for i, row in enumerate(rows):
            yield f"row {i}", row
    else:
        raise DatasetError(f"{path}: unknown dataset extension {suffix!r} "
                           "(expected .parquet, .jsonl or .json)")


def _parse_row(row: Any, row_num: int, question_key: str | None, answer_key: str | None,
               answer_from_solution: bool, default_source: str,
               allow_empty_answer: bool) -> Example:
    """Turns one raw row into an `Example`; raises ValueError / TypeError / KeyError on bad rows."""
    if not isinstance(row, Mapping):
        raise TypeError(f"expected an object, got {type(row).__name__}")
    question, messages = _question(row, question_key)
    answer = _answer(row, answer_key, answer_from_solution)
    if not answer and not allow_empty_answer:
        raise ValueError("empty answer")
    index = row_num
    extra = row.get("extra_info")
    if isinstance(extra, Mapping) and isinstance(extra.get("index"), int):
        index = extra["index"]
    source = row.get("data_source")
    return Example(question=question, answer=answer, messages=messages, index=index,
                   source=source if isinstance(source, str) and source else default_source)


def _question(row: Mapping, key: str | None) -> tuple[str, tuple[tuple[str, str], ...] | None]:
    """Returns ``(question, messages)``; messages only for chat-format (list) prompts."""
    key = key or _first_present(row, QUESTION_KEYS, "question")
    value = row.get(key)
    if value is None:
        raise KeyError(f"missing question field {key!r}")
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"empty question in field {key!r}")
        return value, None
    if isinstance(value, (list, tuple)):
        messages = _messages(value, key)
        users = [content for role, content in messages if role == "user"]
        if not users:
            raise ValueError(f"field {key!r} has no user message")
        return users[-1], messages
    raise TypeError(f"question field {key!r} must be a string or a list of messages, "
                    f"got {type(value).__name__}")


def _messages(value: Sequence, key: str) -> tuple[tuple[str, str], ...]:
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise TypeError(f"{key}[{i}] must be a {{role, content}} object, "
                            f"got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise TypeError(f"{key}[{i}] needs string 'role' and 'content', got "
                            f"role={type(role).__name__}, content={type(content).__name__}")
        messages.append((role, content))
    return tuple(messages)


def _answer(row: Mapping, key: str | None, from_solution: bool) -> str:
    """Reference answer of a row as a normalised string."""
    if key is None:
        reward_model = row.get("reward_model")
        if isinstance(reward_model, Mapping) and "ground_truth" in reward_model:
            return _answer_text(reward_model["ground_truth"], "reward_model.ground_truth")
        present = [k for k in ANSWER_KEYS if row.get(k) is not None]
        if present:
            key = present[0]
        elif isinstance(row.get(SOLUTION_KEY), str):
            key, from_solution = SOLUTION_KEY, True
        else:
            raise KeyError(f"missing answer field: none of reward_model.ground_truth, "
                           f"{', '.join(ANSWER_KEYS)} or {SOLUTION_KEY!r} is present")
    if row.get(key) is None:
        raise KeyError(f"missing answer field {key!r}")
    if from_solution:
        solution = row[key]
        if not isinstance(solution, str):
            raise TypeError(f"solution field {key!r} must be a string, "
                            f"got {type(solution).__name__}")
        boxed = last_boxed_answer(solution)
        if not boxed:
            raise ValueError(f"no \\boxed{{}} answer in field {key!r}")
        return boxed
    return _answer_text(row[key], key)


def _answer_text(value: Any, key: str) -> str:
    """Normalises a raw answer value to a string.

    Integral floats print without ``.0`` (AMC23 stores 27.0 for 27, which would otherwise be
    graded as the string "27.0"); lists (OlympiadBench's ``final_answer``) are joined with ", ";
    LaTeX ``$`` delimiters are dropped since the answer is already math.
    """
    if isinstance(value, bool):
        raise TypeError(f"answer field {key!r} is a boolean")
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"answer field {key!r} is {value}")
        text = str(int(value)) if value.is_integer() else repr(value)
    elif isinstance(value, str):
        text = _MATH_DOLLAR.sub("", value).strip()
    elif isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"answer field {key!r} is an empty list")
        text = ", ".join(_answer_text(v, key) for v in value)
    else:
        raise TypeError(f"answer field {key!r} must be a string, number or list, "
                        f"got {type(value).__name__}")
    return text


def last_boxed_answer(solution: str) -> str | None:
    """The boxed answer of a worked solution, read by the reward verifier's own extractor.

    That is the last ``\\boxed{}`` (or a run of boxes joined by "and"/"or", returned as a comma
    list, which is how the verifier would read the same text in a response). The import is
    deferred so `rlvr_jax.data` imports without the verifier (and its sympy).
    """
    from rlvr_jax.rewards.math import extract_answer

    # require_box: a solution without a box has no stated answer (no last-number guessing).
    return extract_answer(solution, require_box=True)


def _first_present(row: Mapping, keys: Sequence[str], what: str) -> str:
    for key in keys:
        if row.get(key) is not None:
            return key
    raise KeyError(f"missing {what} field: none of {', '.join(keys)} is present")
