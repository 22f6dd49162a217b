"""Benchmark evaluation of the model a config names (HF weights, a training checkpoint, or random).

    from rlvr_jax import experiment
    out = experiment.evaluate(config, benchmarks=["paper"])   # same as launch/eval.py
    print(out["table"])

Writes into `out_dir` (default ./runs/<config.name>/eval, plus /step_<N> for a checkpoint):
`samples/<benchmark>.jsonl` (one graded response a line), `summary.json`, `results.md`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Callable

from rlvr_jax import evaluation
from rlvr_jax.experiment import model as model_lib
from rlvr_jax.experiment.datasets import resolve_benchmarks
from rlvr_jax.experiment.settings import eval_settings
from rlvr_jax.experiment.validation import ConfigError, validate
from rlvr_jax.rewards import RewardPool

PAPER = "paper"  # Benchmark list entry that expands to the paper's six.


def benchmark_list(config, names: list[str] | None) -> list[str]:
    """`names` if given (`paper` expands to the paper's six), else `config.eval.benchmarks`."""
    names = list(config.eval.benchmarks) if names is None else names
    out = [b for name in names for b in (evaluation.PAPER_BENCHMARKS if name == PAPER else (name,))]
    if not out:
        raise ConfigError(
            "config.eval.benchmarks: is empty; pass --benchmarks=paper (the six: "
            f"{', '.join(evaluation.PAPER_BENCHMARKS)}), names, or dataset files")
    return out


def evaluate(config, *, benchmarks: list[str] | None = None, out_dir: str | pathlib.Path | None = None,
             step: int | None = None, greedy: bool | None = None,
             generate_fn: Callable | None = None) -> dict[str, Any]:
    """Loads the model, evaluates the benchmarks with their protocols and writes the outputs.

    `config.eval.greedy` is the trainer's validation switch and is not used here: each benchmark
    keeps its own protocol unless `greedy` is True.

    Args:
      config: the run config (`model.path` may be a training workdir: its checkpoint is evaluated).
      benchmarks: overrides `config.eval.benchmarks` (see `benchmark_list`).
      out_dir: output directory (None: ./runs/<config.name>/eval[/step_<N>]).
      step: checkpoint step of a training workdir (None: latest).
      greedy: True decodes every benchmark greedily; None keeps each benchmark's protocol.
      generate_fn: sampler override (tests).

    Returns:
      `{"results": ..., "paths": ..., "table": markdown, "paper_average": float | None}`.
    """
    validate(config, need_weights=not model_lib.is_checkpoint_workdir(config.model.path))
    benchmarks = benchmark_list(config, benchmarks)
    sharder = model_lib.build_sharder(config)
    out_root = pathlib.Path(out_dir or pathlib.Path("runs") / config.name / "eval")
    benchmarks = resolve_benchmarks(benchmarks, out_root / "heldout")
    policy = model_lib.load_policy(config, sharder, step)
    settings = dataclasses.replace(eval_settings(config), greedy=greedy)
    start = time.time()
    # Evaluation reads unboxed answers too (the fallbacks); only the training reward needs a box.
    with RewardPool(num_workers=config.reward.num_workers, timeout_s=config.reward.timeout_s,
                    require_box=False) as pool:
        evaluator = evaluation.Evaluator(
            policy.tokenizer, benchmarks, data_dir=config.eval.data_dir, scorer=pool.score,
            settings=settings, generate_fn=generate_fn, sharder=sharder)
        results, records = evaluator.run(policy.params, policy.cfg)
    meta = {"config": config.name, "model": policy.source, "settings": dataclasses.asdict(settings),
            "protocols": {b.name: dataclasses.asdict(b) for b in evaluator.benchmarks},
            "seconds": {"total": time.time() - start, **evaluator.seconds}}
    if out_dir is None and "step" in policy.source:
        out_root = out_root / f"step_{policy.source['step']}"
    paths = evaluation.write_outputs(out_root, results, records, meta)
    return {"results": results, "paths": paths, "table": paths["table"].read_text(),
            "paper_average": evaluation.paper_average(results)}
