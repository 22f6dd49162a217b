"""Config -> run: the library's entry point, callable from Python (a notebook) or `launch/`.

    from configs import tiny
    from rlvr_jax import experiment

    config = tiny.get_config()
    out = experiment.train(config, "runs/tiny")          # build + RL loop; resumes from the workdir
    run = experiment.build(config, "runs/tiny")          # or: just the built pieces (`Run`)
    experiment.evaluate(config, benchmarks=["math500"])  # benchmarks with the paper's protocol

This package is the only code that reads a ConfigDict: `settings` translates it once into the
library's settings dataclasses, `model` turns `config.model` into a `ModelConfig` and params,
`validation` checks it against the registries, `training_run` / `eval_run` wire the pieces.
"""

from rlvr_jax.experiment.datasets import resolve_benchmarks, training_examples
from rlvr_jax.experiment.eval_run import benchmark_list, evaluate, evaluate_checkpoints
from rlvr_jax.experiment.memory_plan import memory_plan, print_memory_plan
from rlvr_jax.experiment.model import (Policy, build_model, build_sharder, build_tokenizer, cast_params,
                                       export_hf, is_checkpoint_workdir, load_policy, model_config, model_dir)
from rlvr_jax.experiment.settings import (CriticSettings, Settings, eval_settings, fuses_old_logp,
                                          loop_settings, optimizer_config, rollout_settings,
                                          settings_from_config, update_config)
from rlvr_jax.experiment.training_run import Run, build, train
from rlvr_jax.experiment.validation import ConfigError, validate

__all__ = [
    "ConfigError", "CriticSettings", "Policy", "Run", "Settings", "benchmark_list", "build", "build_model",
    "build_sharder", "build_tokenizer", "cast_params", "eval_settings", "fuses_old_logp", "evaluate", "evaluate_checkpoints", "export_hf",
    "is_checkpoint_workdir", "load_policy", "loop_settings", "memory_plan", "model_config", "model_dir",
    "optimizer_config", "print_memory_plan", "resolve_benchmarks", "rollout_settings", "settings_from_config",
    "train", "training_examples", "update_config", "validate",
]
