"""Evaluating every checkpoint of a run: the paper's curves and best-checkpoint numbers.

`sweep_checkpoints` evaluates each requested step into ``<out_dir>/step_<N>/`` (the layout of a
single-step `launch/eval.py` call), skipping steps whose ``summary.json`` already holds every
requested benchmark, so an interrupted sweep resumes where it stopped. It then writes one table
(``sweep.md``, ``sweep.json``: step x benchmark score plus the average) and a PNG curve per
benchmark (``curves/<benchmark>.png``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable, Sequence

from rlvr_jax.evaluation.report import AVERAGE_ROW

# Evaluates one checkpoint step, writing `<out_dir>/step_<N>/summary.json` (e.g. `rlvr_jax.experiment.evaluate`).
EvaluateStep = Callable[[int, pathlib.Path], Any]


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """The scores of a sweep.

    Attributes:
      steps: evaluated steps, ascending.
      scores: ``{step: {benchmark: headline score}}`` (and ``average`` over the benchmarks).
      metrics: ``{benchmark: metric name}`` (``acc`` or ``avg@n``).
      evaluated: steps computed by this call; the others were read from earlier summaries.
      paths: ``{"table": sweep.md, "json": sweep.json, "<benchmark>": its PNG}``.
    """

    steps: tuple[int, ...]
    scores: dict[int, dict[str, float]]
    metrics: dict[str, str]
    evaluated: tuple[int, ...]
    paths: dict[str, pathlib.Path]

    def best(self, key: str | None = None) -> tuple[int, float]:
        """(step, score) of the best checkpoint by `key`: a benchmark name, or None for the average
        over the benchmarks (the only benchmark when there is one); the earliest step wins ties."""
        key = key or next(iter(self.scores[self.steps[0]]) if len(self.metrics) == 1 else [AVERAGE_ROW])
        step = max(self.steps, key=lambda s: (self.scores[s][key], -s))
        return step, self.scores[step][key]


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
    """Finished checkpoint steps of a training workdir, ascending.

    Orbax writes a step into a temporary folder and renames it to the bare step number when done,
    so only all-digit folder names are complete checkpoints.
    """
    directory = pathlib.Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"{workdir}: no checkpoints/ folder (not a training workdir)")
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def parse_steps(spec: str, available: Sequence[int]) -> list[int]:
    """``all`` or a comma list (``20,40,60``) -> ascending steps, each of which must exist.

    Raises:
      ValueError: an empty or malformed list, or steps with no checkpoint (names them and the
        ones there are).
    """
    available = sorted(available)
    if spec.strip() == "all":
        if not available:
            raise ValueError("--steps=all: the run has no checkpoints")
        return available
    try:
        steps = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError as e:
        raise ValueError(f"--steps={spec!r}: expected `all` or comma-separated step numbers") from e
    if not steps:
        raise ValueError(f"--steps={spec!r}: no steps given")
    missing = [s for s in steps if s not in available]
    if missing:
        raise ValueError(f"--steps: no checkpoint for step(s) {missing}; the run has {available} "
                         "(train with trainer.keep=0 to keep every checkpoint)")
    return steps


def step_dir(out_dir: str | os.PathLike, step: int) -> pathlib.Path:
    return pathlib.Path(out_dir) / f"step_{step}"


def finished_summary(out_dir, step: int, benchmarks: Sequence[str]) -> dict | None:
    """The step's summary if it holds every benchmark in `benchmarks`, else None (evaluate again)."""
    path = step_dir(out_dir, step) / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if set(benchmarks) <= set(summary.get("benchmarks", {})) else None


def sweep_checkpoints(steps: Sequence[int], benchmarks: Sequence[str], evaluate_step: EvaluateStep,
                      out_dir: str | os.PathLike, *, progress: bool = True, plot: bool = True) -> SweepResult:
    """Evaluates each step (resuming), then writes the step x benchmark table and curves.

    Args:
      steps: checkpoint steps to evaluate.
      benchmarks: benchmark names as they appear in ``summary.json`` (the table's columns).
      evaluate_step: ``fn(step, step_out_dir)`` writing ``summary.json`` into ``step_out_dir``.
      out_dir: sweep folder; steps go to ``step_<N>/``.
      progress: tqdm bar over steps.
      plot: write ``curves/<benchmark>.png`` (needs matplotlib).

    Returns:
      The `SweepResult`.
    """
    from tqdm.auto import tqdm

    out_dir = pathlib.Path(out_dir)
    steps = sorted(steps)
    summaries, evaluated = {}, []
    bar = tqdm(steps, desc="checkpoints", unit="ckpt", disable=not progress)
    for step in bar:
        bar.set_postfix(step=step)
        summary = finished_summary(out_dir, step, benchmarks)
        if summary is None:
            evaluate_step(step, step_dir(out_dir, step))
            evaluated.append(step)
            summary = finished_summary(out_dir, step, benchmarks)
            if summary is None:
                raise RuntimeError(f"step {step}: evaluation wrote no summary with {list(benchmarks)} "
                                   f"into {step_dir(out_dir, step)}")
        summaries[step] = summary
    scores, metrics = _scores(summaries, benchmarks)
    paths = write_sweep(out_dir, scores, metrics, plot=plot)
    return SweepResult(tuple(steps), scores, metrics, tuple(evaluated), paths)


def _scores(summaries: dict[int, dict], benchmarks: Sequence[str]):
    scores, metrics = {}, {}
    for step, summary in summaries.items():
        row = {b: float(summary["benchmarks"][b]["score"]) for b in benchmarks}
        for b in benchmarks:
            metrics[b] = summary["benchmarks"][b].get("metric", "score")
        if len(benchmarks) > 1:
            row[AVERAGE_ROW] = sum(row[b] for b in benchmarks) / len(benchmarks)
        scores[step] = row
    return scores, metrics


def write_sweep(out_dir: pathlib.Path, scores: dict[int, dict[str, float]], metrics: dict[str, str], *,
                plot: bool = True) -> dict[str, pathlib.Path]:
    """``sweep.md`` (scores x100, best per column in bold), ``sweep.json`` and one PNG per benchmark."""
    columns = list(next(iter(scores.values())))
    best = {c: max(row[c] for row in scores.values()) for c in columns}
    head = [f"{c} ({metrics[c]})" if c in metrics else c for c in columns]
    lines = ["| step | " + " | ".join(head) + " |", "|---:|" + "---:|" * len(columns)]
    for step, row in sorted(scores.items()):
        cells = [(f"**{100 * row[c]:.1f}**" if row[c] == best[c] else f"{100 * row[c]:.1f}") for c in columns]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    paths = {"table": out_dir / "sweep.md", "json": out_dir / "sweep.json"}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_text(paths["table"], "\n".join(lines) + "\n")
    doc = {"metrics": metrics, "steps": [{"step": s, **scores[s]} for s in sorted(scores)]}
    _write_text(paths["json"], json.dumps(doc, indent=2) + "\n")
    if plot:
        for column in columns:
            paths[column] = plot_curve(sorted(scores), [scores[s][column] for s in sorted(scores)],
                                       out_dir / "curves" / f"{column}.png",
                                       title=f"{column} ({metrics.get(column, 'mean of the benchmarks')})")
    return paths


def _write_text(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")  # write-then-rename: never half a table
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def plot_curve(steps: Sequence[int], values: Sequence[float], path: pathlib.Path, *, title: str) -> pathlib.Path:
    """Score (as %) against the RL step, one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(list(steps), [100 * v for v in values], marker="o")
    ax.set_xlabel("RL step")
    ax.set_ylabel("score (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
