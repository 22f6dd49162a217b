"""The RL loop: rollout -> rewards -> advantages -> update; then metrics, samples, checkpoints, validation.

One step, as data flows (see DESIGN.md):
  prompts (host) -> `generate` (device) -> detokenise -> old/ref log-probs dispatched (device, async)
  while the verifier scores responses on worker processes (host) -> advantages -> jitted update.

Multi-process runs: every process runs the same SPMD programs on the same *global* batch (the
prompt batch is a pure function of (seed, step), so each process computes it alone), and every
host-side input of a jitted step is therefore the same global value on every process. The only
split work is scoring: each process verifies the responses of its slice of the prompts
(`PromptBatch.shard`) and the rewards are all-gathered, so advantages and metrics are computed from
identical data everywhere (only process 0 writes them).

The loop owns no model code: it receives already-built pieces, grouped in small bundles (`StepFns`:
sampler, log-prob, update and reward functions; `RunOutputs`: checkpointer, writers, validation;
`Placement`: mesh and processes), so each can be tested alone. `rlvr_jax.experiment` builds them.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from rlvr_jax import distributed
from rlvr_jax.algorithms import get_advantage_estimator
from rlvr_jax.data.batching import PromptIterator, tokenize_prompts
from rlvr_jax.data.prompts import build_prompt
from rlvr_jax.training import response_metrics
from rlvr_jax.training.critic import CriticRunner
from rlvr_jax.training.rollout_batch import RolloutSettings, make_rollout_batch


# Update-step metric names -> the verl-style names of DESIGN.md (under "actor/").
_METRIC_NAMES = {"clipfrac": "pg_clipfrac", "clipfrac_lower": "pg_clipfrac_lower", "approx_kl": "ppo_kl"}


class NonFiniteError(FloatingPointError):
    """Raised when a step produced a non-finite loss or gradient."""


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """What the loop needs beyond the built objects (from `config.trainer`, `config.data`)."""

    total_steps: int
    eval_every: int = 0  # 0 = never.
    eval_before_train: bool = True
    log_samples: int = 4
    seed: int = 0
    advantage: str = "grpo"  # Registered advantage estimator (grpo | drgrpo | rloo | gae).
    norm_by_std: bool = True
    template: str = "chat_template"
    system_prompt: str | None = None
    max_prompt_len: int = 1024
    reward: str = "math"  # One of REWARD_NAMES.
    # Recompute the rollout policy's log-probs with the trainer's forward (verl's default). Off: use
    # the sampler's own log-probs (identical math; saves a forward pass, exact only in float32).
    recompute_old_logp: bool = True


# Names `config.reward.name` accepts: the math verifier, or "none" (the paper's entropy-only
# ablation: every reward is 0, so only the entropy and KL terms train).
REWARD_NAMES = ("math", "none")


@dataclasses.dataclass(frozen=True)
class StepFns:
    """The built functions one step calls (each testable alone).

    Attributes:
      generate: `sampling.generate`-like `(params, cfg, prompt_ids, **controls) -> GenerateResult`.
      logprobs: `(params, arrays) -> [N, R]` per-token log-probs of the rollout's responses.
      update: `(state, batch) -> (state, metrics)`, the jitted actor update.
      score: `(responses, answers) -> [N]` rewards (the verifier pool's `score`).
    """

    generate: Callable
    logprobs: Callable
    update: Callable
    score: Callable[[Sequence[str], Sequence[str]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class RunOutputs:
    """Where a step's results go: checkpoints, metrics / samples, console, periodic validation."""

    checkpointer: Any
    writer: Any
    console: Any
    validate: Callable | None = None  # `(params, step) -> {"eval/...": float}`; None: no validation.


@dataclasses.dataclass(frozen=True)
class Placement:
    """The mesh host batches are placed on, and this process's place among the run's processes."""

    sharder: Any = None  # `rlvr_jax.sharding.Sharder`; None leaves host arrays where they are.
    process_index: int = 0
    process_count: int = 1


class RLLoop:
    """Runs `LoopSettings.total_steps` RL steps from the current state, resuming where it stopped.

    Args:
      model_cfg: the policy's `ModelConfig`. state: the actor `TrainState` (replaced every update).
      ref_params: frozen reference params for the KL loss, or None (no KL loss).
      tokenizer: detokenises responses, renders prompts. prompts: the `PromptIterator`.
      settings: `LoopSettings`. rollout: `RolloutSettings` of the sampler.
      fns: the step's built functions (`StepFns`). outputs: checkpointer, writers, validation.
      placement: mesh and process layout. critic: PPO's `CriticRunner`, or None.
    """

    def __init__(self, *, model_cfg, state, ref_params, tokenizer, prompts: PromptIterator,
                 settings: LoopSettings, rollout: RolloutSettings, fns: StepFns, outputs: RunOutputs,
                 placement: Placement = Placement(), critic: CriticRunner | None = None):
        self.model_cfg, self.state, self.ref_params = model_cfg, state, ref_params
        self.tokenizer, self.prompts, self.rollout, self.settings = tokenizer, prompts, rollout, settings
        self.generate_fn, self.update_fn, self.logprob_fn, self.score_fn = (
            fns.generate, fns.update, fns.logprobs, fns.score)
        self.checkpointer, self.writer, self.console, self.validate = (
            outputs.checkpointer, outputs.writer, outputs.console, outputs.validate)
        self.process_index, self.process_count = placement.process_index, placement.process_count
        self.sharder = placement.sharder  # Places host batches as the jitted steps' row-sharded inputs.
        self.critic = critic
        self._prompt_cache: dict[Any, list[int]] = {}
        self._stop_requested = False
        self.history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------------------------------- run
    def run(self, start_step: int = 0) -> dict[str, Any]:
        """Trains from `start_step` to `total_steps`; returns the last step's metrics."""
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        last: dict[str, Any] = {}
        try:
            if start_step == 0 and self.settings.eval_before_train:
                self._validate(0)
            for step in range(start_step + 1, self.settings.total_steps + 1):
                last = self.train_step(step)
                self._after_step(step)
                if self._stop_requested:
                    self.console.message(f"SIGTERM: saved step {step}, exiting")
                    break
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.checkpointer.wait()
            self.writer.flush()
        return last

    def _on_sigterm(self, signum, frame):  # TPU preemption: finish the step, save, exit.
        self._stop_requested = True

    def _after_step(self, step: int) -> None:
        final = step == self.settings.total_steps
        if self.settings.eval_every and (step % self.settings.eval_every == 0 or final):
            self._validate(step)
        self.checkpointer.save(step, self._checkpoint_state(), self._host_state(step),
                             force=final or self._stop_requested)

    def _checkpoint_state(self):
        return self.state if self.critic is None else {"actor": self.state, "critic": self.critic.state}

    def _host_state(self, step: int) -> dict:
        return {"step": step, "data": self.prompts.state()}

    def _validate(self, step: int) -> None:
        if self.validate is None:
            return
        scores = self.validate(self.state.params, step)
        if scores:
            self.writer.write(step, scores)
            self.history.append({"step": step, **scores})
            self.console.message(f"eval @ step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))

    # ---------------------------------------------------------------------------------------- step
    def train_step(self, step: int) -> dict[str, Any]:
        """One RL step at `step` (1-based); updates `self.state`, writes metrics, returns them."""
        t0 = time.time()
        batch = self.prompts.batch_at(step - 1)  # The global batch: every process samples all of it.
        prompt_ids = [self._prompt_ids(ex) for ex in batch.examples]
        result = self.generate_fn(
            self.state.params, self.model_cfg, prompt_ids, max_new_tokens=self.rollout.max_new_tokens,
            temperature=self.rollout.temperature, top_p=self.rollout.top_p, top_k=self.rollout.top_k,
            stop_token_ids=self.rollout.stop_token_ids, n=self.rollout.n,
            seed=self.settings.seed * 1_000_003 + step, **self.rollout.extra_kwargs(),
        )
        t_rollout = time.time()
        texts = self.tokenizer.batch_decode([list(t) for t in result.tokens], skip_special_tokens=True)
        rb = make_rollout_batch(result)
        arrays = self._put(rb.arrays())
        # Device work first: JAX dispatch is asynchronous, so the old/reference log-probs (and critic
        # values) are computed while the host scores the responses below.
        if self.settings.recompute_old_logp:
            old_logp = self.logprob_fn(self.state.params, arrays)
        else:
            old_logp = self._put(rb.rollout_logp)
        ref_logp = self.logprob_fn(self.ref_params, arrays) if self.ref_params is not None else None
        values = self.critic.values_fn(self.critic.state.params, arrays) if self.critic else None
        rewards = self._score_slice(texts, batch)
        t_reward = time.time()
        group_ids = np.repeat(np.asarray(batch.group_ids_b), self.rollout.n)
        update_metrics = {}
        if self.critic is None:
            advantages = self._advantages(rewards, group_ids)
        else:
            advantages, critic_metrics = self.critic.update(step, rewards, values, rb.arrays(), put=self._put)
            update_metrics.update(critic_metrics)
        # The rollout arrays already on device replace rb's host copies; the advantages go up once.
        update_batch = self._put({**rb.update_batch(old_logp=old_logp, ref_logp=ref_logp, advantages=advantages),
                                  **arrays})
        jax.block_until_ready(old_logp)
        t_ref = time.time()
        if self.critic is None or step > self.critic.warmup_steps:
            self.state, actor_metrics = self.update_fn(self.state, update_batch)
            update_metrics.update(distributed.to_host(actor_metrics))
        t_update = time.time()
        metrics = self._step_metrics(rewards, texts, result, update_metrics)
        if self.settings.recompute_old_logp:  # Sampler vs trainer log-prob mismatch (verl's top complaint).
            mask = rb.response_mask > 0
            diff = np.abs(distributed.to_host(old_logp) - rb.rollout_logp)
            metrics["rollout/logp_abs_diff"] = float(diff[mask].mean())
        n_tokens = float(rb.total_tokens())
        metrics.update({
            "perf/rollout_s": t_rollout - t0, "perf/reward_s": t_reward - t_rollout,
            "perf/ref_s": t_ref - t_reward, "perf/update_s": t_update - t_ref,
            "perf/step_s": t_update - t0, "perf/tokens_per_s": n_tokens / max(t_update - t0, 1e-9),
        })
        self.writer.write(step, metrics)
        self._write_samples(step, batch, texts, rewards)
        self.console.step(step, metrics)
        self.history.append({"step": step, **metrics})
        return metrics

    def _prompt_ids(self, example) -> list[int]:
        # 1-shot batches repeat one example 128 times: render and tokenise it once.
        key = (example.question, example.messages)
        if key not in self._prompt_cache:
            text = build_prompt(example, self.settings.template, self.tokenizer, self.settings.system_prompt)
            self._prompt_cache[key] = tokenize_prompts(self.tokenizer, [text], self.settings.max_prompt_len)[0]
        return self._prompt_cache[key]

    def _put(self, tree):
        return distributed.put_rows(tree, self.sharder)

    def _score_slice(self, texts: Sequence[str], batch) -> np.ndarray:
        """Scores this process's rows (its prompts' `n` responses each); returns all processes' rewards."""
        n = self.rollout.n
        mine = batch.shard(self.process_index, self.process_count)
        lo = self.process_index * len(mine) * n  # Slices are contiguous, in process order.
        local = self._score(texts[lo: lo + len(mine) * n], [a for a in mine.answers for _ in range(n)])
        return distributed.allgather_rows(local)

    def _score(self, texts, answers) -> np.ndarray:
        if self.settings.reward == "none":
            return np.zeros(len(texts), np.float32)
        return np.asarray(self.score_fn(texts, answers), np.float32)

    def _advantages(self, rewards: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
        estimator = get_advantage_estimator(self.settings.advantage)
        if self.settings.advantage == "grpo":
            return np.asarray(estimator(rewards, group_ids, norm_by_std=self.settings.norm_by_std))
        return np.asarray(estimator(rewards, group_ids))

    def _check_finite(self, step: int, update_metrics: dict) -> None:
        if all(bool(v) for k, v in update_metrics.items() if k.endswith("finite")):
            return
        # The update function kept the previous state; save it as the last good checkpoint.
        self.checkpointer.save(step - 1, self._checkpoint_state(), self._host_state(step - 1), force=True)
        self.checkpointer.wait()
        bad = {k: float(v) for k, v in update_metrics.items() if np.ndim(v) == 0 and not np.isfinite(v)}
        raise NonFiniteError(
            f"non-finite loss or gradient at step {step} ({bad or 'gradient'}); training stopped. "
            f"The last good state is checkpointed at step {step - 1} in {self.checkpointer.directory}."
        )

    def _step_metrics(self, rewards, texts, result, update_metrics) -> dict[str, Any]:
        metrics = {(k if "/" in k else f"actor/{_METRIC_NAMES.get(k, k)}"): float(v)
                   for k, v in update_metrics.items() if np.ndim(v) == 0}
        metrics.update({
            "reward/mean": float(np.mean(rewards)), "reward/std": float(np.std(rewards)),
            "reward/max": float(np.max(rewards)), "reward/min": float(np.min(rewards)),
        })
        lengths = [len(t) for t in result.tokens]
        metrics.update(response_metrics.response_metrics(
            texts, lengths, result.finish_reason, self.rollout.max_new_tokens))
        return metrics

    def _write_samples(self, step, batch, texts, rewards) -> None:
        k = min(self.settings.log_samples, len(texts))
        rows = []
        for i in range(k):
            ex = batch.examples[i // self.rollout.n]
            rows.append({"prompt": ex.question, "response": texts[i], "answer": ex.answer,
                         "reward": float(rewards[i])})
        self.writer.write_samples(step, rows)

