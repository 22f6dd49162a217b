"""Start-up validation of a run config: every error names the offending key and what it accepts."""

from __future__ import annotations

import pathlib

import ml_collections

from rlvr_jax import algorithms
from rlvr_jax.rewards import registry as rewards_registry
from rlvr_jax.training.loggers import check_loggers

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config value is missing or out of range."""


def _require(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"config.{key}: {message}")


def _one_of(config, key: str, allowed) -> None:
    value = _get(config, key)
    _require(value in allowed, key, f"got {value!r}, expected one of {list(allowed)}")


def _positive(config, key: str, allow_zero: bool = False) -> None:
    value = _get(config, key)
    ok = value >= 0 if allow_zero else value > 0
    _require(ok, key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _get(config, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def validate(config: ml_collections.ConfigDict, *, need_weights: bool = True) -> None:
    """Checks a training/eval config once at start-up; raises `ConfigError` naming the bad key."""
    _one_of(config, "model.source", ("hf", "random", "smollm2"))
    if config.model.source == "hf" and need_weights:
        path = config.model.path
        _require(bool(path), "model.path",
                 "is empty. Weights are never downloaded at run time: download the HF checkpoint once "
                 "(e.g. `huggingface-cli download Qwen/Qwen2.5-Math-1.5B --local-dir DIR`) and pass "
                 "--config.model.path=DIR")
        _require(pathlib.Path(path).is_dir(), "model.path", f"model directory not found: {path}")
        _require((pathlib.Path(path) / "config.json").is_file(), "model.path", f"no config.json in {path}")
    for key in ("model.param_dtype", "model.dtype", "model.ref_dtype"):
        _one_of(config, key, DTYPES)
    _one_of(config, "model.attention_impl", ("xla", "cudnn"))
    _one_of(config, "model.remat", ("none", "full", "dots"))
    _require(len(tuple(config.mesh.shape)) == 3, "mesh.shape", "needs 3 entries (data, fsdp, tensor)")
    # Valid names come from the registries, so a newly registered estimator / loss / reward is valid.
    _one_of(config, "algorithm.name", sorted(algorithms.ADVANTAGE_ESTIMATORS))
    _one_of(config, "actor.policy_loss", sorted(algorithms.POLICY_LOSSES))
    _one_of(config, "actor.agg_mode", sorted(algorithms.AGG_MODES))
    _one_of(config, "actor.kl_kind", sorted(algorithms.KL_ESTIMATORS))
    _one_of(config, "actor.schedule", ("constant", "linear_warmup", "cosine"))
    _one_of(config, "reward.name", sorted(rewards_registry.REWARDS))
    _validate_breadth(config)
    for key in ("trainer.batch_size", "rollout.n", "rollout.max_new_tokens", "data.max_prompt_len",
                "actor.micro_batch_size", "actor.ppo_epochs", "reward.num_workers", "reward.timeout_s",
                "rollout.temperature", "actor.logprob_chunk", "eval.batch_size", "eval.max_new_tokens",
                "actor.max_tokens_per_micro_batch"):
        _positive(config, key)
    for key in ("trainer.total_steps", "trainer.save_every", "trainer.eval_every", "actor.mini_batch_size",
                "actor.lr", "actor.weight_decay", "actor.grad_clip", "actor.entropy_coeff", "actor.kl_coef",
                "rollout.sub_batch_size", "rollout.top_k", "eval.limit", "trainer.keep"):
        _positive(config, key, allow_zero=True)
    _require(0 < config.rollout.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {config.rollout.top_p}")
    _check_stop_and_eval(config)
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
    if config.algorithm.name == "gae":
        _positive(config, "critic.lr")
    try:  # Before any weights load: an unknown logger or a missing wandb fails at start-up.
        check_loggers(config.trainer.loggers)
    except (ValueError, ImportError) as e:
        raise ConfigError(str(e)) from e


def _check_stop_and_eval(config) -> None:
    from rlvr_jax.data.tokenizers import STOP_MODES
    from rlvr_jax.evaluation.graders import GRADERS

    _one_of(config, "rollout.stop", STOP_MODES)
    _one_of(config, "eval.stop", STOP_MODES)
    _one_of(config, "eval.grader", tuple(sorted(GRADERS)))
    for key in ("eval.n", "eval.temperature"):
        _positive(config, key, allow_zero=True)
    _require(0 <= config.eval.top_p <= 1, "eval.top_p", f"must be in [0, 1] (0 = the benchmark's own), "
             f"got {config.eval.top_p}")


def _validate_breadth(config) -> None:
    """Keys of the objective variants: truncated IS, overlong shaping, dynamic sampling, KL-in-reward."""
    for key in ("actor.tis_cap", "reward.overlong_cache_len", "algorithm.reward_kl_coef"):
        _positive(config, key, allow_zero=True)
    _positive(config, "algorithm.max_sampling_rounds")
    _require(config.reward.overlong_cache_len <= config.rollout.max_new_tokens, "reward.overlong_cache_len",
             f"{config.reward.overlong_cache_len} exceeds rollout.max_new_tokens={config.rollout.max_new_tokens}")
    _require(config.algorithm.reward_kl_coef == 0 or config.algorithm.name in algorithms.VALUE_BASED_ESTIMATORS,
             "algorithm.reward_kl_coef", "the KL-in-reward penalty needs token-level advantages (algorithm.name="
             f"{sorted(algorithms.VALUE_BASED_ESTIMATORS)}); use actor.use_kl_loss with group estimators")
    _require(config.actor.clip_c == 0 or config.actor.policy_loss == "vanilla", "actor.clip_c",
             f"the dual clip belongs to the vanilla PPO loss, not {config.actor.policy_loss!r}")
    _require(not config.algorithm.dynamic_sampling or config.rollout.n > 1, "algorithm.dynamic_sampling",
             "needs groups of rollout.n > 1 samples (a group of one always has equal scores)")
    _require(-1 <= config.reward.hapo.floor <= 0, "reward.hapo.floor", f"must be in [-1, 0], got {config.reward.hapo.floor}")
