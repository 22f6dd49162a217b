"""Benchmark evaluation of the model a config names (HF weights, a training checkpoint, or random).

    from rlvr_jax import experiment
    out = experiment.evaluate(config, benchmarks=["paper"])   # same as launch/eval.py
    print(out["table"])

Writes into `out_dir` (default ./runs/<config.name>/eval, plus /step_<N> for a checkpoint):
`samples/<benchmark>.jsonl` (one graded response a line), `summary.json`, `results.md`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import pathlib
import time
from typing import Any, Callable

from rlvr_jax import evaluation
from rlvr_jax.evaluation import sweep
from rlvr_jax.evaluation.graders import GRADERS
from rlvr_jax.experiment import compilation_cache
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
    compilation_cache.configure(config.get("jax_cache_dir", ""))
    benchmarks = benchmark_list(config, benchmarks)
    sharder = model_lib.build_sharder(config)
    out_root = pathlib.Path(out_dir or pathlib.Path("runs") / config.name / "eval")
    benchmarks = resolve_benchmarks(benchmarks, out_root / "heldout")
    policy = model_lib.load_policy(config, sharder, step)
    settings = dataclasses.replace(eval_settings(config), greedy=greedy)
    start = time.time()
    # Every grader scores the same responses; config.eval.grader is the headline, each one adds
    # `grader/<name>` to summary.json. require_box applies to the verifier only (the paper's
    # suite has no such setting).
    pools = {name: RewardPool(num_workers=config.reward.num_workers, timeout_s=config.reward.timeout_s,
                              score_fn=fn) for name, fn in GRADERS.items()}
    scorers = {name: functools.partial(pool.score, require_box=config.eval.require_box)
               for name, pool in pools.items()}
    with contextlib.ExitStack() as stack:
        for pool in pools.values():
            stack.enter_context(pool)
        evaluator = evaluation.Evaluator(
            policy.tokenizer, benchmarks, data_dir=config.eval.data_dir, scorer=scorers[config.eval.grader],
            settings=settings, generate_fn=generate_fn, sharder=sharder, extra_scorers=scorers)
        results, records = evaluator.run(policy.params, policy.cfg)
    meta = {"config": config.name, "model": policy.source, "settings": dataclasses.asdict(settings),
            "scoring": {"grader": config.eval.grader, "require_box": bool(config.eval.require_box),
                        "graders": sorted(GRADERS)},
            "protocols": {b.name: dataclasses.asdict(b) for b in evaluator.benchmarks},
            "seconds": {"total": time.time() - start, **evaluator.seconds}}
    if out_dir is None and "step" in policy.source:
        out_root = out_root / f"step_{policy.source['step']}"
    paths = evaluation.write_outputs(out_root, results, records, meta)
    return {"results": results, "paths": paths, "table": paths["table"].read_text(),
            "paper_average": evaluation.paper_average(results)}


def evaluate_checkpoints(config, steps: str, *, benchmarks: list[str] | None = None,
                         out_dir: str | pathlib.Path | None = None, greedy: bool | None = None,
                         generate_fn: Callable | None = None) -> sweep.SweepResult:
    """Evaluates checkpoints `steps` (`all` or `20,40,...`) of the training workdir `config.model.path`.

    Each step is an `evaluate` into `<out_dir>/step_<N>` (skipped when already there), then one
    table and a curve per benchmark; see `rlvr_jax.evaluation.sweep`.
    """
    if not model_lib.is_checkpoint_workdir(config.model.path):
        raise ConfigError(f"config.model.path: --steps needs a training workdir with "
                          f"checkpoints/, got {config.model.path!r}")
    chosen = sweep.parse_steps(steps, sweep.checkpoint_steps(config.model.path))
    out_root = pathlib.Path(out_dir or pathlib.Path("runs") / config.name / "eval")
    names = benchmark_list(config, benchmarks)
    columns = [evaluation.get_benchmark(b).name for b in resolve_benchmarks(names, out_root / "heldout")]
    plot = importlib.util.find_spec("matplotlib") is not None
    if not plot:
        print("matplotlib is not installed: writing the sweep table without curves (pip install matplotlib)")
    return sweep.sweep_checkpoints(
        chosen, columns, lambda step, d: evaluate(config, benchmarks=names, out_dir=str(d), step=step,
                                                  greedy=greedy, generate_fn=generate_fn),
        out_root, progress=config.trainer.progress, plot=plot)
