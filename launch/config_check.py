"""Start-up validation of a run config: every error names the offending key and what it accepts."""

from __future__ import annotations

import pathlib

import ml_collections

ADVANTAGES = ("grpo", "drgrpo", "rloo", "gae")
AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_KINDS = ("k1", "abs", "k2", "k3", "low_var_kl")
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
    _one_of(config, "algorithm.name", ADVANTAGES)
    _one_of(config, "actor.agg_mode", AGG_MODES)
    _one_of(config, "actor.kl_kind", KL_KINDS)
    _one_of(config, "actor.schedule", ("constant", "linear_warmup", "cosine"))
    _one_of(config, "reward.name", ("math", "none"))
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
