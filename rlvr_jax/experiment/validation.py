"""Start-up validation of a run config: every error names the offending key and what it accepts.

Valid names come from the library's registries (advantage estimators, KL estimators, aggregation
modes, policy losses, rewards, graders, learning-rate schedules, prompt templates, stop modes, model
sources), so registering a new one makes
it valid here without editing this file.
"""

from __future__ import annotations

import pathlib

import ml_collections

from rlvr_jax.algorithms import (ADVANTAGE_ESTIMATORS, AGG_MODES, KL_ESTIMATORS, POLICY_LOSSES,
                                 VALUE_BASED_ESTIMATORS)
from rlvr_jax.data.prompts import template_names
from rlvr_jax.data.tokenizers import STOP_MODES
from rlvr_jax.evaluation.graders import GRADERS
from rlvr_jax.models.config import ATTENTION_IMPLS, DTYPES, REMAT_MODES
from rlvr_jax.rewards.registry import REWARDS
from rlvr_jax.training.loggers import check_loggers
from rlvr_jax.training.rl_loop import NONFINITE_POLICIES
from rlvr_jax.training.state import SCHEDULES

# Keys that must be > 0, and keys that must be >= 0 (0 means "off" or "all").
POSITIVE_KEYS = ("trainer.batch_size", "rollout.n", "rollout.max_new_tokens", "data.max_prompt_len",
                 "actor.micro_batch_size", "actor.ppo_epochs", "reward.num_workers", "reward.timeout_s",
                 "rollout.temperature", "actor.logprob_chunk", "eval.batch_size", "eval.max_new_tokens",
                 "actor.max_tokens_per_micro_batch", "algorithm.max_sampling_rounds", "trainer.checkpoint_write_gb")
NON_NEGATIVE_KEYS = ("trainer.total_steps", "trainer.save_every", "trainer.eval_every", "actor.mini_batch_size",
                     "actor.lr", "actor.weight_decay", "actor.grad_clip", "actor.entropy_coeff", "actor.kl_coef",
                     "rollout.sub_batch_size", "rollout.top_k", "eval.limit", "trainer.keep", "actor.tis_cap",
                     "reward.overlong_cache_len", "algorithm.reward_kl_coef", "eval.n", "eval.temperature",
                     "mesh.num_devices")


class ConfigError(ValueError):
    """A config value is missing or out of range."""


def _require(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"config.{key}: {message}")


def _get(config, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _one_of(config, key: str, allowed) -> None:
    value = _get(config, key)
    _require(value in allowed, key, f"got {value!r}, expected one of {sorted(allowed)}")


def _check_weights(config) -> None:
    path = config.model.path
    _require(bool(path), "model.path",
             "is empty. Weights are never downloaded at run time: download the HF checkpoint once "
             "(e.g. `huggingface-cli download Qwen/Qwen2.5-Math-1.5B --local-dir DIR`) and pass "
             "--config.model.path=DIR")
    _require(pathlib.Path(path).is_dir(), "model.path", f"model directory not found: {path}")
    _require((pathlib.Path(path) / "config.json").is_file(), "model.path", f"no config.json in {path}")


def _check_names(config) -> None:
    from rlvr_jax.experiment.model import MODEL_SOURCES  # experiment.model imports this module's error.

    _one_of(config, "model.source", MODEL_SOURCES)
    _one_of(config, "model.param_dtype", DTYPES)
    _one_of(config, "model.residual_dtype", DTYPES)
    for key in ("model.dtype", "model.ref_dtype"):  # "auto": bfloat16 where the hardware has it (model.resolve_dtype)
        _one_of(config, key, DTYPES + ("auto",))
    _one_of(config, "model.attention_impl", ATTENTION_IMPLS)
    _one_of(config, "model.remat", REMAT_MODES)
    _one_of(config, "algorithm.name", ADVANTAGE_ESTIMATORS)
    _one_of(config, "actor.policy_loss", POLICY_LOSSES)
    _one_of(config, "actor.agg_mode", AGG_MODES)
    _one_of(config, "actor.kl_kind", KL_ESTIMATORS)
    _one_of(config, "actor.schedule", SCHEDULES)
    _one_of(config, "reward.name", REWARDS)
    _one_of(config, "rollout.stop", STOP_MODES)
    _one_of(config, "eval.stop", STOP_MODES)
    _one_of(config, "eval.grader", GRADERS)
    _one_of(config, "trainer.on_nonfinite", NONFINITE_POLICIES)
    _one_of(config, "data.template", template_names())
    _one_of(config, "eval.template", template_names())


def _check_sizes(config) -> None:
    for key in POSITIVE_KEYS:
        _require(_get(config, key) > 0, key, f"must be > 0, got {_get(config, key)!r}")
    for key in NON_NEGATIVE_KEYS:
        _require(_get(config, key) >= 0, key, f"must be >= 0, got {_get(config, key)!r}")
    _require(len(tuple(config.mesh.shape)) == 3, "mesh.shape", "needs 3 entries (data, fsdp, tensor)")
    _require(0 < config.rollout.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {config.rollout.top_p}")
    sequences = config.trainer.batch_size * config.rollout.n
    mini = config.actor.mini_batch_size or sequences
    _require(sequences % mini == 0, "actor.mini_batch_size",
             f"{mini} does not divide the {sequences} sequences per step (batch_size x n)")
    _require(mini % config.actor.micro_batch_size == 0, "actor.micro_batch_size",
             f"{config.actor.micro_batch_size} does not divide the mini-batch of {mini} sequences")
    _require(config.actor.clip_low >= 0 and config.actor.clip_high >= 0, "actor.clip_low",
             "clip ranges must be >= 0")
    _require(config.actor.clip_c == 0 or config.actor.clip_c > 1, "actor.clip_c",
             f"dual-clip constant must be 0 (off) or > 1, got {config.actor.clip_c}")
    if config.actor.schedule == "cosine":
        _require(config.trainer.total_steps * config.actor.ppo_epochs > config.actor.warmup_steps,
                 "actor.warmup_steps", "the cosine schedule needs more optimizer steps than warm-up steps")


def _check_objective(config) -> None:
    """Keys of the objective variants: truncated IS, overlong shaping, dynamic sampling, KL-in-reward."""
    _require(config.reward.overlong_cache_len <= config.rollout.max_new_tokens, "reward.overlong_cache_len",
             f"{config.reward.overlong_cache_len} exceeds rollout.max_new_tokens={config.rollout.max_new_tokens}")
    _require(config.algorithm.reward_kl_coef == 0 or config.algorithm.name in VALUE_BASED_ESTIMATORS,
             "algorithm.reward_kl_coef", "the KL-in-reward penalty needs token-level advantages (algorithm.name="
             f"{sorted(VALUE_BASED_ESTIMATORS)}); use actor.use_kl_loss with group estimators")
    _require(config.actor.clip_c == 0 or config.actor.policy_loss == "vanilla", "actor.clip_c",
             f"the dual clip belongs to the vanilla PPO loss, not {config.actor.policy_loss!r}")
    _require(not config.algorithm.dynamic_sampling or config.rollout.n > 1, "algorithm.dynamic_sampling",
             "needs groups of rollout.n > 1 samples (a group of one always has equal scores)")
    _require(-1 <= config.reward.hapo.floor <= 0, "reward.hapo.floor",
             f"must be in [-1, 0], got {config.reward.hapo.floor}")
    _require(0 <= config.eval.top_p <= 1, "eval.top_p",
             f"must be in [0, 1] (0 = the benchmark's own), got {config.eval.top_p}")


def validate(config: ml_collections.ConfigDict, *, need_weights: bool = True) -> None:
    """Checks a training/eval config once at start-up; raises `ConfigError` naming the bad key.

    Args:
      config: the run config (see `configs/common.py` for every field).
      need_weights: check that `model.path` holds an HF checkpoint (source "hf"); a dry run or an
        evaluation of a training workdir does not need one.
    """
    _check_names(config)
    if config.model.source == "hf" and need_weights:
        _check_weights(config)
    _check_sizes(config)
    _check_objective(config)
    if config.algorithm.name in VALUE_BASED_ESTIMATORS:
        _require(config.critic.lr > 0, "critic.lr", f"must be > 0 for a critic, got {config.critic.lr}")
    try:  # Before any weights load: an unknown logger or a missing wandb fails at start-up.
        check_loggers(config.trainer.loggers)
    except (ValueError, ImportError) as e:
        raise ConfigError(f"config.trainer.loggers: {e}") from e

