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
from rlvr_jax.compile_counter import CompileCounter
from rlvr_jax.host_memory import release_free_memory
from rlvr_jax.algorithms import outcome_advantages
from rlvr_jax.data.batching import PromptIterator, tokenize_prompts
from rlvr_jax.data.prompts import build_prompt
from rlvr_jax.rewards.registry import build_reward, problem_key
from rlvr_jax.training import response_metrics
from rlvr_jax.training.critic import CriticRunner
from rlvr_jax.training.dynamic_sampling import GroupPool
from rlvr_jax.training.rollout_batch import RolloutSettings, make_rollout_batch


# Metrics quoted (finite or not) when a step is non-finite, beside every non-finite one.
_NONFINITE_REPORT = ("loss", "pg_loss", "grad_norm", "vf_loss", "finite", "num_skipped")

# Update-step metric names -> the verl-style names of DESIGN.md (under "actor/").
_METRIC_NAMES = {"clipfrac": "pg_clipfrac", "clipfrac_lower": "pg_clipfrac_lower", "approx_kl": "ppo_kl"}


class NonFiniteError(FloatingPointError):
    """Raised when a step produced a non-finite loss or gradient."""


NONFINITE_POLICIES = ("stop", "skip")


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
    reward: str = "math"  # Registered reward (rewards.registry.REWARDS) built when no `reward=` is given.
    # DAPO dynamic sampling: drop groups whose scores are all equal, draw more prompts (up to
    # max_sampling_rounds rollouts per step) until the batch is full.
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 10
    # Recompute the rollout policy's log-probs with the trainer's forward (verl's default). Off: use
    # the sampler's own log-probs (identical math; saves a forward pass, exact only in float32).
    recompute_old_logp: bool = True
    # The update takes the old log-probs from its own forward (one epoch, one mini-batch; see
    # `UpdateConfig.fuse_old_logp`): no separate old-policy pass, and no `rollout/logp_abs_diff`.
    fuse_old_logp: bool = False
    # A step whose loss or gradient is non-finite: "stop" the run (checkpoint the last good state,
    # raise NonFiniteError) or "skip" it (the update already left the state unchanged) and go on.
    on_nonfinite: str = "stop"

    def __post_init__(self):
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {self.on_nonfinite!r}")


@dataclasses.dataclass(frozen=True)
class StepFns:
    """The built functions one step calls (each testable alone).

    Attributes:
      generate: `sampling.generate`-like `(params, cfg, prompt_ids, **controls) -> GenerateResult`.
      logprobs: `(params, arrays) -> [N, R]` per-token log-probs of the rollout's responses.
      update: `(state, batch) -> (state, metrics)`, the jitted actor update.
      score: `(responses, answers) -> [N]` verifier scores (the verifier pool's `score`).
      reward: the training reward (`rewards.registry`): scoring then shaping; None builds
        `LoopSettings.reward` around `score`.
    """

    generate: Callable
    logprobs: Callable
    update: Callable
    score: Callable[[Sequence[str], Sequence[str]], np.ndarray]
    reward: Any = None


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
      ref_params: frozen reference params (KL loss / KL-in-reward), or None.
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
        # The reward object (rewards.registry): per-sample score, then global shaping (may keep state).
        self.reward = fns.reward if fns.reward is not None else build_reward(settings.reward, score_fn=fns.score)
        self._saturated = False  # dynamic sampling found every group equal on the previous step
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
        return {"step": step, "data": self.prompts.state(), "reward": self.reward.state()}

    def _validate(self, step: int) -> None:
        if self.validate is None:
            return
        scores = self.validate(self.state.params, step)
        release_free_memory()  # the evaluation's caches and programs' scratch
        if scores:
            self.writer.write(step, scores)
            self.history.append({"step": step, **scores})
            self.console.message(f"eval @ step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))

    # ---------------------------------------------------------------------------------------- step
    def train_step(self, step: int) -> dict[str, Any]:
        """One RL step at `step` (1-based); updates `self.state`, writes metrics, returns them."""
        t0 = time.time()
        compiles = CompileCounter().start()  # After step 1 any compile is a shape leak (slow steps).
        if self.prompts.step != step - 1:  # A resume that skipped `prompts.restore` would replay other data.
            raise RuntimeError(f"data position {self.prompts.step} does not match step {step}: "
                               "restore the prompt iterator's checkpointed state before resuming")
        batch = next(self.prompts)  # The global batch: every process samples all of it.
        scores, sampling_metrics = None, {}
        if self.settings.dynamic_sampling:  # Scores first: the filter needs them before the log-probs.
            batch, result, texts, scores, sampling_metrics = self._filtered_rollout(step, batch)
        else:
            result = self._generate(batch, step)
            texts = self.tokenizer.batch_decode([list(t) for t in result.tokens], skip_special_tokens=True)
        t_rollout = time.time()
        rb = make_rollout_batch(result)
        arrays = self._put(rb.arrays())
        # Device work first: JAX dispatch is asynchronous, so the old/reference log-probs (and critic
        # values) are computed while the host scores the responses below.
        if self.settings.fuse_old_logp:
            old_logp = None  # the update's own forward provides them
        elif self.settings.recompute_old_logp:
            old_logp = self.logprob_fn(self.state.params, arrays)
        else:
            old_logp = self._put(rb.rollout_logp)
        ref_logp = self.logprob_fn(self.ref_params, arrays) if self.ref_params is not None else None
        values = self.critic.values_fn(self.critic.state.params, arrays) if self.critic else None
        if scores is None:
            scores = self._score_slice(texts, batch)
        rewards, reward_metrics = self._shape_rewards(scores, result, batch)
        t_reward = time.time()
        group_ids = np.repeat(np.asarray(batch.group_ids_b), self.rollout.n)
        update_metrics = {}
        if self.critic is None:
            advantages = np.asarray(outcome_advantages(
                self.settings.advantage, rewards, group_ids, norm_by_std=self.settings.norm_by_std,
                token_counts=np.asarray(result.response_lengths)))
        else:
            advantages, critic_metrics = self.critic.update(step, rewards, values, rb.arrays(), put=self._put,
                                                            old_logp=old_logp, ref_logp=ref_logp)
            update_metrics.update(critic_metrics)
        # The rollout arrays already on device replace rb's host copies; the advantages go up once.
        update_batch = self._put({**rb.update_batch(old_logp=old_logp, ref_logp=ref_logp, advantages=advantages),
                                  **arrays})
        # perf/ref_s: the old/reference log-prob (and critic value) passes' time NOT hidden behind scoring.
        jax.block_until_ready((old_logp, ref_logp, values))
        t_ref = time.time()
        if self.critic is None or step > self.critic.warmup_steps:
            release_free_memory()  # the update's temporaries come on top of what the host still holds
            self.state, actor_metrics = self.update_fn(self.state, update_batch)
            update_metrics.update(distributed.to_host(actor_metrics))
        self._check_finite(step, update_metrics)
        t_update = time.time()
        compiles.stop()
        metrics = self._step_metrics(rewards, texts, result, update_metrics)
        metrics["perf/compiles"] = float(compiles.count)
        metrics.update(reward_metrics, **sampling_metrics, **{"reward/score_mean": float(np.mean(scores))})
        # Sampler vs trainer log-prob mismatch (verl's top complaint).
        if old_logp is not None and self.settings.recompute_old_logp:
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
        return np.asarray(self.reward.score(texts, answers), np.float32)

    def _shape_rewards(self, scores: np.ndarray, result, batch) -> tuple[np.ndarray, dict]:
        """The reward's global phase (length terms, history) on the whole batch, identical everywhere."""
        keys = [problem_key(ex.question, ex.answer) for ex in batch.examples for _ in range(self.rollout.n)]
        rewards, metrics = self.reward.shape(scores, np.asarray(result.response_lengths), keys)
        return np.asarray(rewards, np.float32), metrics

    def _generate(self, batch, step: int, round_index: int = 0):
        """The rollout of `batch`; round r > 0 of dynamic sampling gets its own seed."""
        prompt_ids = [self._prompt_ids(ex) for ex in batch.examples]
        seed = self.settings.seed * 1_000_003 + step
        if round_index:
            seed = (seed + round_index * 104_729_851) % (2**31 - 1)
        return self.generate_fn(
            self.state.params, self.model_cfg, prompt_ids, max_new_tokens=self.rollout.max_new_tokens,
            temperature=self.rollout.temperature, top_p=self.rollout.top_p, top_k=self.rollout.top_k,
            stop_token_ids=self.rollout.stop_token_ids, n=self.rollout.n, seed=seed, **self.rollout.extra_kwargs(),
        )

    def _filtered_rollout(self, step: int, first):
        """DAPO dynamic sampling: rounds of rollouts until `batch_size` groups with unequal scores.

        Stops early when a round keeps no group although it repeats its problems (1-shot / k-shot
        training once the examples are solved, or never solved): each problem already failed to give
        an informative group several times, so more rounds of the same problems would only spin. It
        says so and trains on the batch as drawn. A batch of distinct problems keeps drawing.
        """
        pool = GroupPool(len(first), self.rollout.n, self.rollout.pad_id)
        for round_index in range(self.settings.max_sampling_rounds):
            batch = first if round_index == 0 else self.prompts.resample(step - 1, round_index)
            result = self._generate(batch, step, round_index)
            texts = self.tokenizer.batch_decode([list(t) for t in result.tokens], skip_special_tokens=True)
            kept = pool.add(batch, result, texts, self._score_slice(texts, batch))
            repeats = len({(e.question, e.answer) for e in batch.examples}) < len(batch.examples)
            if pool.full or (kept == 0 and repeats):
                break
        out = pool.assemble(first.step, first.epoch)
        saturated = not pool.kept
        if saturated and not self._saturated:
            self.console.message(
                f"step {step}: dynamic sampling found every group's scores equal (saturated) in "
                f"{pool.rounds} round(s); training on the batch as drawn (its group advantages are zero)")
        self._saturated = saturated
        return out

    def _check_finite(self, step: int, update_metrics: dict) -> None:
        """Stops (or, with on_nonfinite="skip", reports) a step whose loss or gradient is non-finite.

        The update skips such optimizer steps itself (state unchanged), so on "stop" the current
        params and optimizer state are the last good ones: they are checkpointed as step - 1 (when
        every optimizer step of this update was skipped) before NonFiniteError is raised, and the
        step's own checkpoint is never written.
        """
        if all(bool(v) for k, v in update_metrics.items() if k.endswith("finite")):
            return
        shown = {k: float(v) for k, v in update_metrics.items()
                 if np.ndim(v) == 0 and (k.split("/")[-1] in _NONFINITE_REPORT or not np.isfinite(v))}
        values = ", ".join(f"{k}={v:g}" for k, v in sorted(shown.items()))
        if self.settings.on_nonfinite == "skip":
            self.console.message(f"step {step}: non-finite loss or gradient ({values}); update skipped")
            return
        where = self._save_last_good(step, update_metrics)
        raise NonFiniteError(
            f"non-finite loss or gradient at step {step} ({values}); training stopped. {where} "
            f"(config.trainer.on_nonfinite='skip' skips such steps instead)")

    def _save_last_good(self, step: int, update_metrics: dict) -> str:
        """Checkpoints the unchanged state as step - 1 when it is that; says where the last good state is."""
        # Every optimizer step skipped (actor and critic): the state is exactly the pre-step one.
        pairs = [(v, update_metrics.get(k[: -len("num_skipped")] + "num_steps"))
                 for k, v in update_metrics.items() if k.endswith("num_skipped")]
        skipped_all = all(steps is not None and float(skipped) == float(steps) for skipped, steps in pairs)
        latest = self.checkpointer.latest_step()
        if skipped_all and latest != step - 1:
            self.checkpointer.save(step - 1, self._checkpoint_state(), self._host_state(step - 1), force=True)
            latest = step - 1
        self.checkpointer.wait()
        if latest is None:
            return "No checkpoint was written."
        return f"The last good state is checkpoint step {latest} in {self.checkpointer.directory}."

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

