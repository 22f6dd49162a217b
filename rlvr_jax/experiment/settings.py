"""The one translation of a run's ConfigDict into the library's settings dataclasses.

Everything below `rlvr_jax.experiment` takes these frozen dataclasses (or explicit arguments),
never a ConfigDict, so each library piece can be called and tested alone.
"""

from __future__ import annotations

import dataclasses

from rlvr_jax.data.tokenizers import stop_token_ids
from rlvr_jax.evaluation import EvalSettings
from rlvr_jax.experiment.model import model_dir
from rlvr_jax.training.rl_loop import LoopSettings
from rlvr_jax.training.rollout_batch import RolloutSettings
from rlvr_jax.training.state import OptimizerConfig
from rlvr_jax.training.update import UpdateConfig


@dataclasses.dataclass(frozen=True)
class CriticSettings:
    """PPO's critic (`config.critic`, `config.algorithm`): its optimizer and GAE settings."""

    optimizer: OptimizerConfig
    gamma: float = 1.0
    lam: float = 1.0
    warmup_steps: int = 0  # RL steps that train only the critic.
    reward_kl_coef: float = 0.0  # k1 KL-in-reward penalty on the token rewards (verl's use_kl_in_reward).


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every settings dataclass of a run, translated once from its config."""

    optimizer: OptimizerConfig
    update: UpdateConfig
    critic: CriticSettings
    loop: LoopSettings
    eval: EvalSettings


def optimizer_config(config) -> OptimizerConfig:
    """`config.actor`'s AdamW and schedule (schedule length: every optimizer step of the run)."""
    a = config.actor
    return OptimizerConfig(learning_rate=a.lr, schedule=a.schedule, warmup_steps=a.warmup_steps,
                           total_steps=config.trainer.total_steps * a.ppo_epochs, b1=a.b1, b2=a.b2,
                           weight_decay=a.weight_decay, grad_clip=a.grad_clip or None,
                           mu_dtype=a.mu_dtype)


def update_config(config) -> UpdateConfig:
    """The actor (and critic) update's PPO settings from `config.actor`, `config.rollout`, `config.critic`."""
    a = config.actor
    return UpdateConfig(
        ppo_epochs=a.ppo_epochs, mini_batch_size=a.mini_batch_size or None,
        micro_batch_size=a.micro_batch_size, policy_loss=a.policy_loss, tis_cap=a.tis_cap,
        clip_low=a.clip_low, clip_high=a.clip_high,
        clip_c=a.clip_c or None, entropy_coeff=a.entropy_coeff, kl_coef=a.kl_coef, kl_kind=a.kl_kind,
        use_kl_loss=a.use_kl_loss, agg_mode=a.agg_mode, temperature=config.rollout.temperature,
        logprob_chunk=a.logprob_chunk, max_response_len=config.rollout.max_new_tokens,
        cliprange_value=config.critic.cliprange_value,
        max_tokens_per_micro_batch=packed_tokens_per_micro_batch(config), share_prompts=config.actor.share_prompts,
        fuse_old_logp=fuses_old_logp(config))


def packed_tokens_per_micro_batch(config) -> int | None:
    """The token budget of packed micro-batches (`actor.packing`), or None for padded rows."""
    return config.actor.max_tokens_per_micro_batch if config.actor.packing else None


def fuses_old_logp(config) -> bool:
    """Old log-probs come from the update's own forward: asked for, recomputed, one epoch, one mini-batch.

    Not with PPO's KL-in-reward: the critic's GAE needs the rollout policy's log-probs before the update.
    """
    a = config.actor
    one_mini = not a.mini_batch_size or a.mini_batch_size >= config.trainer.batch_size * config.rollout.n
    kl_in_reward = config.algorithm.reward_kl_coef > 0
    return bool(a.fuse_old_logp and a.recompute_old_logp and a.ppo_epochs == 1 and one_mini and not kl_in_reward)


def critic_settings(config) -> CriticSettings:
    """The critic trains with the actor's optimizer settings at `config.critic.lr`."""
    optimizer = dataclasses.replace(optimizer_config(config), learning_rate=config.critic.lr)
    return CriticSettings(optimizer, gamma=config.algorithm.gamma, lam=config.algorithm.lam,
                          warmup_steps=config.critic.warmup_steps, reward_kl_coef=config.algorithm.reward_kl_coef)


def loop_settings(config) -> LoopSettings:
    """What the RL loop reads from `config.trainer`, `config.data`, `config.algorithm`, `config.reward`."""
    return LoopSettings(
        total_steps=config.trainer.total_steps, eval_every=config.trainer.eval_every,
        eval_before_train=config.trainer.eval_before_train, log_samples=config.trainer.log_samples,
        seed=config.seed, advantage=config.algorithm.name, norm_by_std=config.algorithm.norm_by_std,
        template=config.data.template, system_prompt=config.data.system_prompt or None,
        max_prompt_len=config.data.max_prompt_len, reward=config.reward.name,
        recompute_old_logp=config.actor.recompute_old_logp, dynamic_sampling=config.algorithm.dynamic_sampling,
        max_sampling_rounds=config.algorithm.max_sampling_rounds,
        on_nonfinite=config.trainer.on_nonfinite, fuse_old_logp=fuses_old_logp(config))


def rollout_settings(config, tokenizer, *, progress: bool) -> RolloutSettings:
    """`config.rollout` plus the tokenizer's stop and pad ids.

    Args:
      progress: show the rollout progress bar (drawn by the host between decode segments; every process
        would draw its own, so multi-process runs go without it).
    """
    r = config.rollout
    stops = stop_token_ids(tokenizer, r.stop, model_dir(config))
    return RolloutSettings(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                           max_new_tokens=r.max_new_tokens, stop_token_ids=stops,
                           sub_batch_size=r.sub_batch_size, pad_id=tokenizer.pad_token_id or 0,
                           progress=progress)


def eval_settings(config) -> EvalSettings:
    """`EvalSettings` from `config.eval`, as the trainer's validation uses them.

    `config.eval.greedy` true decodes every benchmark greedily (cheap, low-variance validation);
    false keeps each benchmark's own protocol. `experiment.evaluate` replaces `greedy` by its argument.
    """
    return EvalSettings(
        max_new_tokens=config.eval.max_new_tokens, greedy=True if config.eval.greedy else None,
        template=config.eval.template, limit=config.eval.limit or None,
        batch_size=config.eval.batch_size, sub_batch_size=config.rollout.sub_batch_size or None,
        seed=config.seed, progress=config.trainer.progress, system=config.data.system_prompt or None,
        n=config.eval.n or None, temperature=config.eval.temperature or None,
        top_p=config.eval.top_p or None, stop=config.eval.stop)


def settings_from_config(config) -> Settings:
    """All of a run's settings (the rollout's need the tokenizer: see `rollout_settings`)."""
    return Settings(optimizer=optimizer_config(config), update=update_config(config),
                    critic=critic_settings(config), loop=loop_settings(config), eval=eval_settings(config))
