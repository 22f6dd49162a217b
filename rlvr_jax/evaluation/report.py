"""Evaluation reports: a markdown table, a summary JSON and per-sample JSONL.

``results`` everywhere is ``{benchmark: {metric: value}}``. Float values are scores in [0, 1]
(shown as percentages in the table); integer values are counts (problems, responses) and are
shown as they are and never averaged.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import pathlib
from typing import Any, Iterable, Mapping, Sequence

from rlvr_jax.evaluation.metrics import benchmark_average, paper_average

Results = Mapping[str, Mapping[str, float | int]]

AVERAGE_ROW = "average"
# Table columns that frame the metric columns (everything else sits between them).
_LEAD_COLUMNS = ("metric", "score")
_TAIL_COLUMNS = ("truncated", "mean_tokens", "num_problems", "n", "decoding")


@dataclasses.dataclass(frozen=True)
class SampleRecord:
    """One graded response, a line of ``samples.jsonl``.

    Attributes:
      benchmark: Benchmark name.
      index: The problem's `Example.index`.
      sample: Which of the problem's n responses (0 for greedy).
      problem: The question text.
      response: The decoded response.
      extracted: The answer the verifier read from the response (None if none).
      gold: The reference answer.
      correct: The verifier's verdict.
    """

    benchmark: str
    index: int
    sample: int
    problem: str
    response: str
    extracted: str | None
    gold: str
    correct: bool


def averages(results: Results) -> dict[str, float]:
    """Per-metric unweighted mean over benchmarks, for float metrics every benchmark has."""
    if not results:
        return {}
    rows = list(results.values())
    common = [m for m in rows[0] if all(m in row for row in rows)]
    return {m: benchmark_average({b: r[m] for b, r in results.items()})
            for m in common if all(_is_score(row[m]) for row in rows)}


def markdown_table(results: Results, metrics: Sequence[str] | None = None,
                   percent: bool = True, digits: int = 1) -> str:
    """Benchmark x metric markdown table with an ``average`` row (the paper's "Avg.").

    Args:
      results: ``{benchmark: {metric: value}}``.
      metrics: Columns in order; None takes every metric, in first-seen order.
      percent: Show scores x100.
      digits: Decimals shown for scores.

    Returns:
      The table, ending with a newline.
    """
    if metrics is None:
        metrics = list(dict.fromkeys(m for row in results.values() for m in row))
    rows = dict(results)
    if len(results) > 1:
        rows[AVERAGE_ROW] = averages(results)
    lines = ["| benchmark | " + " | ".join(metrics) + " |",
             "|---|" + "---:|" * len(metrics)]
    for name, row in rows.items():
        cells = [_format(row.get(m), percent, digits) for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary(results: Results, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The summary as a JSON-able dict: ``{"benchmarks": ..., "average": ..., **meta}``."""
    out = {"benchmarks": {b: {m: _plain(v) for m, v in r.items()} for b, r in results.items()},
           AVERAGE_ROW: averages(results)}
    for key, value in (meta or {}).items():
        if key in out:
            raise ValueError(f"meta key {key!r} clashes with a summary key")
        out[key] = value
    return out


def write_report(out_dir: str | os.PathLike, results: Results,
                 meta: Mapping[str, Any] | None = None,
                 metrics: Sequence[str] | None = None) -> dict[str, pathlib.Path]:
    """Writes ``summary.json`` and ``results.md`` into ``out_dir``.

    Args:
      out_dir: Directory (created if needed).
      results: ``{benchmark: {metric: value}}``.
      meta: Extra top-level summary fields (checkpoint step, model path, ...).
      metrics: Table columns (see `markdown_table`).

    Returns:
      ``{"summary": path, "table": path}``.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out_dir / "summary.json", "table": out_dir / "results.md"}
    _write_text(paths["summary"], json.dumps(summary(results, meta), indent=2, sort_keys=False,
                                             ensure_ascii=False) + "\n")
    _write_text(paths["table"], markdown_table(results, metrics))
    return paths


def write_samples(path: str | os.PathLike,
                  records: Iterable[SampleRecord | Mapping[str, Any]]) -> int:
    """Writes graded responses as JSONL, one object per line; returns the count.

    Records may be `SampleRecord`s or dicts (which must hold at least ``problem``, ``response``,
    ``extracted`` and ``correct``).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            row = dataclasses.asdict(record) if isinstance(record, SampleRecord) else dict(record)
            missing = {"problem", "response", "extracted", "correct"} - set(row)
            if missing:
                raise ValueError(f"sample record {count} lacks {sorted(missing)}")
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, path)
    return count


def table_columns(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown-table column order: headline first, pass@k / maj@n, then diagnostics and counts."""
    seen = list(dict.fromkeys(m for row in results.values() for m in row))
    middle = [m for m in seen if m not in _LEAD_COLUMNS + _TAIL_COLUMNS]
    return [m for m in _LEAD_COLUMNS if m in seen] + middle + [m for m in _TAIL_COLUMNS
                                                              if m in seen]


def write_outputs(out_dir: str | os.PathLike, results: Results,
                  records: Mapping[str, Sequence[SampleRecord]],
                  meta: Mapping[str, Any] | None = None) -> dict[str, pathlib.Path]:
    """Writes ``samples/<benchmark>.jsonl``, ``summary.json`` and ``results.md`` into ``out_dir``.

    ``summary.json`` also holds ``paper_average`` (when all six paper benchmarks were evaluated)
    and ``meta``.

    Returns:
      ``{"summary": path, "table": path, "samples/<benchmark>": path, ...}``.
    """
    out_dir = pathlib.Path(out_dir)
    paths = {}
    for name, rows in records.items():
        paths[f"samples/{name}"] = out_dir / "samples" / f"{name}.jsonl"
        write_samples(paths[f"samples/{name}"], rows)
    meta = dict(meta or {})
    meta["paper_average"] = paper_average(results)
    paths.update(write_report(out_dir, results, meta, metrics=table_columns(results)))
    return paths


def _write_text(path: pathlib.Path, text: str) -> None:
    # Write-then-rename: a reader (or a preempted job) never sees half a report.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _is_score(value: Any) -> bool:
    # numbers.* so that numpy scalars count too (np.float32 is not a float subclass).
    return isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, which `json` can write."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if _is_score(value):
        return float(value)
    return value


def _format(value: Any, percent: bool, digits: int) -> str:
    if value is None:
        return ""
    if _is_score(value):
        return f"{value * 100 if percent else value:.{digits}f}"
    return str(value)
