r"""Evaluates a model on math benchmarks with the paper's protocol: samples, summary and table.

    # The paper's six benchmarks, an HF checkpoint (greedy MATH500 / Minerva / OlympiadBench,
    # avg@8 at temperature 0.6 for AIME24 / AIME25 / AMC23, 3,072 new tokens); the six sets ship
    # with the package (--config.eval.data_dir=DIR reads another copy):
    python launch/eval.py --config=configs/qwen15b_1shot.py \
      --config.model.path=/models/Qwen2.5-Math-1.5B --benchmarks=paper

    # A training run's latest checkpoint (a workdir holding checkpoints/ and config.json):
    python launch/eval.py --config=configs/qwen15b_1shot.py --config.model.path=runs/qwen15b_1shot

    # Every checkpoint of a run (train with trainer.keep=0), resumable; or --steps=20,40,60:
    python launch/eval.py --config=configs/qwen15b_1shot.py --config.model.path=runs/qwen15b_1shot \
      --benchmarks=paper --steps=all

    # Smoke test: the random tiny model on a jsonl file.
    python launch/eval.py --config=configs/tiny.py --benchmarks=problems.jsonl

Reads `config.model` (source hf | random | smollm2; `model.path` an HF directory or a training
workdir), `config.eval` (benchmarks unless --benchmarks is given, data_dir, max_new_tokens,
template, limit, batch_size), `config.reward` (verifier workers and timeout), `config.mesh`,
`config.rollout.sub_batch_size`, `config.seed` and `config.trainer.progress`.
`config.eval.greedy` is the trainer's validation switch (see `eval_settings`) and is not used here:
this tool follows each benchmark's own protocol unless --greedy is given.

Writes into --out_dir (default ./runs/<config.name>/eval, plus /step_<N> for a checkpoint):
`samples/<benchmark>.jsonl` (one graded response a line), `summary.json`, `results.md`.
--steps adds `sweep.md` / `sweep.json` (step x benchmark) and `curves/<benchmark>.png` there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import pathlib
import sys
import time
from typing import Any

_REPO = str(pathlib.Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    # `configs` and `launch` are not part of the installed package (config files import them), and
    # a checkout without `pip install -e .` needs it for `rlvr_jax` too.
    sys.path.insert(0, _REPO)

import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402

from launch import builders, config_check  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Policy:
    """What evaluation needs of a model: its config, params, tokenizer and where it came from."""

    cfg: Any
    params: Any
    tokenizer: Any
    source: dict


def is_checkpoint_workdir(path: str | pathlib.Path) -> bool:
    """A training workdir: it holds the trainer's Orbax `checkpoints/` folder."""
    return bool(path) and (pathlib.Path(path) / "checkpoints").is_dir()


def load_policy(config, sharder, step: int | None = None) -> Policy:
    """Builds the model `config.model` describes: a training checkpoint, HF weights, or random.

    Args:
      config: The run config.
      sharder: Mesh + rules the params are placed with.
      step: Checkpoint step for a training workdir (None: the latest).

    Returns:
      The `Policy`.
    """
    if is_checkpoint_workdir(config.model.path):
        # Whatever model.source says: the run's own config.json names the architecture.
        return _load_checkpoint(config, sharder, step)
    cfg, params = builders.build_model(config, sharder)
    return Policy(cfg, params, builders.build_tokenizer(config),
                  {"source": config.model.source, "path": str(builders.model_dir(config) or "")})


def model_config(config):
    """The `ModelConfig` `config.model` describes, without loading weights (as `build_model`)."""
    return builders.model_config(config)


def _run_model_config(config, workdir: pathlib.Path):
    """This config with the model *identity* (source, path, arch, tokenizer) of the trained run.

    Dtypes and the attention implementation stay this config's; a tokenizer_path set here wins.
    """
    run_file = workdir / "config.json"
    if not run_file.is_file():
        raise FileNotFoundError(f"{workdir} has checkpoints/ but no config.json (the training "
                                "run's resolved config, which names the architecture)")
    run_model = json.loads(run_file.read_text())["model"]
    merged = ml_collections.ConfigDict(config.to_dict())
    for key in ("source", "path", "arch"):
        merged.model[key] = run_model[key]
    merged.model.tokenizer_path = config.model.tokenizer_path or run_model["tokenizer_path"]
    return merged


def _load_checkpoint(config, sharder, step: int | None) -> Policy:
    """Restores only the policy params of a training checkpoint (no optimizer state or critic)."""
    import jax
    import orbax.checkpoint as ocp

    from rlvr_jax.models import init_params, param_logical_axes

    workdir = pathlib.Path(config.model.path)
    run = _run_model_config(config, workdir)
    cfg = model_config(run)
    abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    shardings = sharder.tree_shardings(param_logical_axes(cfg), abstract)
    restore_args = jax.tree.map(
        lambda x, s: ocp.ArrayRestoreArgs(sharding=s, global_shape=x.shape, dtype=x.dtype),
        abstract, shardings)
    manager = ocp.CheckpointManager(workdir / "checkpoints",
                                    options=ocp.CheckpointManagerOptions(read_only=True),
                                    item_handlers={"state": ocp.PyTreeCheckpointHandler()})
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise FileNotFoundError(f"no checkpoint step {step} in {workdir / 'checkpoints'} "
                                f"(have {list(manager.all_steps())})")
    # The trainer saves a TrainState, or {"actor": TrainState, "critic": ...} for PPO.
    nest = (lambda t: {"actor": t}) if "actor" in manager.item_metadata(step)["state"] else (
        lambda t: t)
    # partial_restore reads the params alone: not the optimizer state (twice their size, and laid
    # out by the training optimizer settings) nor the critic.
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=nest({"params": abstract}), restore_args=nest({"params": restore_args}),
        partial_restore=True)))["state"]
    params = restored["actor"]["params"] if "actor" in restored else restored["params"]
    return Policy(cfg, params, builders.build_tokenizer(run),
                  {"source": "checkpoint", "path": str(workdir), "step": int(step),
                   "base": str(builders.model_dir(run) or run.model.source)})


def eval_settings(config):
    """`EvalSettings` from `config.eval`, as the trainer's validation uses them.

    ``config.eval.greedy`` true decodes every benchmark greedily (cheap, low-variance validation);
    false keeps each benchmark's own protocol. `run_eval` replaces ``greedy`` by its argument.
    """
    from rlvr_jax.evaluation import EvalSettings

    return EvalSettings(
        max_new_tokens=config.eval.max_new_tokens, greedy=True if config.eval.greedy else None,
        template=config.eval.template, limit=config.eval.limit or None,
        batch_size=config.eval.batch_size, sub_batch_size=config.rollout.sub_batch_size or None,
        seed=config.seed, progress=config.trainer.progress, system=config.data.system_prompt or None,
        n=config.eval.n or None, temperature=config.eval.temperature or None,
        top_p=config.eval.top_p or None, stop=config.eval.stop)


def benchmark_list(config, names: list[str] | None) -> list[str]:
    """--benchmarks if given (``paper`` expands to the paper's six), else config.eval.benchmarks."""
    from rlvr_jax.evaluation import PAPER_BENCHMARKS

    names = list(config.eval.benchmarks) if names is None else names
    out = [b for name in names for b in (PAPER_BENCHMARKS if name == "paper" else (name,))]
    if not out:
        raise config_check.ConfigError(
            "config.eval.benchmarks: is empty; pass --benchmarks=paper (the six: "
            f"{', '.join(PAPER_BENCHMARKS)}), names, or dataset files")
    return out


def run_eval(config, *, benchmarks: list[str] | None = None, out_dir: str | None = None,
             step: int | None = None, greedy: bool | None = None,
             generate_fn=None) -> dict[str, Any]:
    """Loads the model, evaluates the benchmarks and writes the outputs.

    Args:
      config: The run config.
      benchmarks: Overrides config.eval.benchmarks (see `benchmark_list`).
      out_dir: Output directory (None: ./runs/<config.name>/eval[/step_<N>]).
      step: Checkpoint step of a training workdir (None: latest).
      greedy: True decodes every benchmark greedily; None keeps each benchmark's protocol.
      generate_fn: Sampler override (tests).

    Returns:
      ``{"results": ..., "paths": ..., "table": markdown, "paper_average": float | None}``.
    """
    from rlvr_jax import evaluation
    from rlvr_jax.evaluation.graders import GRADERS
    from rlvr_jax.rewards import RewardPool

    config_check.validate(config, need_weights=not is_checkpoint_workdir(config.model.path))
    benchmarks = benchmark_list(config, benchmarks)
    sharder = builders.build_sharder(config)
    out_root = pathlib.Path(out_dir or pathlib.Path("runs") / config.name / "eval")
    benchmarks = builders.resolve_benchmarks(benchmarks, out_root / "heldout")
    policy = load_policy(config, sharder, step)
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
            policy.tokenizer, benchmarks, data_dir=config.eval.data_dir,
            scorer=scorers[config.eval.grader], settings=settings, generate_fn=generate_fn,
            sharder=sharder, extra_scorers=scorers)
        results, records = evaluator.run(policy.params, policy.cfg)
    meta = {"config": config.name, "model": policy.source, "settings": dataclasses.asdict(settings),
            "scoring": {"grader": config.eval.grader, "require_box": bool(config.eval.require_box),
                        "graders": sorted(GRADERS)},
            "protocols": {b.name: dataclasses.asdict(b) for b in evaluator.benchmarks},
            "seconds": {"total": time.time() - start, **evaluator.seconds}}
    if out_dir is None:
        out_dir = pathlib.Path("runs") / config.name / "eval"
        if "step" in policy.source:
            out_dir = out_dir / f"step_{policy.source['step']}"
    paths = evaluation.write_outputs(out_dir, results, records, meta)
    return {"results": results, "paths": paths, "table": paths["table"].read_text(),
            "paper_average": evaluation.paper_average(results)}


def run_sweep(config, steps: str, *, benchmarks: list[str] | None = None, out_dir: str | None = None,
              greedy: bool | None = None, generate_fn=None):
    """Evaluates checkpoints `steps` (``all`` or ``20,40,...``) of the workdir config.model.path.

    Each step is a `run_eval` into ``<out_dir>/step_<N>`` (skipped when already there), then one
    table and a curve per benchmark; see `rlvr_jax.evaluation.sweep`. Returns its `SweepResult`.
    """
    import importlib.util

    from rlvr_jax.evaluation import get_benchmark, sweep

    if not is_checkpoint_workdir(config.model.path):
        raise config_check.ConfigError(f"config.model.path: --steps needs a training workdir with "
                                       f"checkpoints/, got {config.model.path!r}")
    chosen = sweep.parse_steps(steps, sweep.checkpoint_steps(config.model.path))
    out_root = pathlib.Path(out_dir or pathlib.Path("runs") / config.name / "eval")
    names = benchmark_list(config, benchmarks)
    columns = [get_benchmark(b).name for b in builders.resolve_benchmarks(names, out_root / "heldout")]
    plot = importlib.util.find_spec("matplotlib") is not None
    if not plot:
        print("matplotlib is not installed: writing the sweep table without curves (pip install matplotlib)")
    return sweep.sweep_checkpoints(
        chosen, columns, lambda step, d: run_eval(config, benchmarks=names, out_dir=str(d), step=step,
                                                  greedy=greedy, generate_fn=generate_fn),
        out_root, progress=config.trainer.progress, plot=plot)


def _define_flags() -> dict:
    # Defined only when run as a script: launch/train.py imports this module (eval_settings) and
    # defines its own --config; absl refuses a flag defined twice.
    from ml_collections import config_flags

    return dict(
        config=config_flags.DEFINE_config_file("config", None, "Run config file (the training "
                                               "configs).", lock_config=True),
        out_dir=flags.DEFINE_string("out_dir", None, "Output directory; default "
                                    "./runs/<config.name>/eval (/step_<N> for a checkpoint)."),
        step=flags.DEFINE_integer("step", None, "Checkpoint step when config.model.path is a "
                                  "training workdir; default the latest."),
        benchmarks=flags.DEFINE_list("benchmarks", None, "Benchmarks to evaluate, overriding "
                                     "config.eval.benchmarks: names, dataset files, or `paper` "
                                     "for the six of the paper."),
        steps=flags.DEFINE_string("steps", None, "Evaluate several checkpoints of the training "
                                  "workdir config.model.path: `all` or `20,40,60`; finished steps are "
                                  "skipped; writes sweep.md and a curve per benchmark."),
        greedy=flags.DEFINE_bool("greedy", False, "Decode every benchmark greedily (a quick "
                                 "check; not the paper's protocol for AIME24/AIME25/AMC23)."),
    )


def main(argv, flag_values: dict):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    greedy = True if flag_values["greedy"].value else None
    if flag_values["steps"].value is not None:
        if flag_values["step"].value is not None:
            raise app.UsageError("give --step (one checkpoint) or --steps (a sweep), not both")
        result = run_sweep(flag_values["config"].value, flag_values["steps"].value,
                           benchmarks=flag_values["benchmarks"].value, out_dir=flag_values["out_dir"].value,
                           greedy=greedy)
        print(result.paths["table"].read_text(), end="")
        print(f"best checkpoint: step {result.best()[0]}; wrote {result.paths['table'].parent}")
        return
    out = run_eval(flag_values["config"].value, benchmarks=flag_values["benchmarks"].value,
                   out_dir=flag_values["out_dir"].value, step=flag_values["step"].value,
                   greedy=greedy)
    print(out["table"], end="")
    if out["paper_average"] is not None:
        print(f"paper six-benchmark average: {100 * out['paper_average']:.1f}")
    print(f"wrote {out['paths']['summary'].parent}")


if __name__ == "__main__":
    _FLAGS = _define_flags()
    app.run(lambda argv: main(argv, _FLAGS))
