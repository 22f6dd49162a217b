"""A training run from a config: `build(config, workdir) -> Run`, and `train(config, workdir)`.

    from configs import tiny
    from rlvr_jax import experiment
    out = experiment.train(tiny.get_config(), "runs/tiny")   # same as launch/train.py

`build` makes every piece (mesh, tokenizer, policy and optimizer state, reference copy, critic,
prompt iterator, checkpointer, writers) and restores the latest checkpoint of `workdir`; `Run.loop`
adds what needs the verifier pool (scorer, validation) and returns the `RLLoop`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any

import jax
import ml_collections

from rlvr_jax import sharding as shd
from rlvr_jax.algorithms import VALUE_BASED_ESTIMATORS
from rlvr_jax.data.batching import PromptIterator
from rlvr_jax.evaluation.runner import make_validation_fn
from rlvr_jax.experiment import compilation_cache
from rlvr_jax.experiment import model as model_lib
from rlvr_jax.experiment.datasets import resolve_benchmarks, training_examples
from rlvr_jax.experiment.settings import Settings, rollout_settings, settings_from_config
from rlvr_jax.experiment.validation import validate
from rlvr_jax.host_memory import release_after_compiles
from rlvr_jax.models import ModelConfig, param_logical_axes
from rlvr_jax.rewards import RewardPool
from rlvr_jax.rewards.registry import build_reward
from rlvr_jax.sampling import generate, release_programs
from rlvr_jax.training import critic as critic_lib
from rlvr_jax.training.checkpoint import Checkpointer, write_gb_for
from rlvr_jax.training.loggers import RunInfo
from rlvr_jax.training.logprobs import compute_logprobs
from rlvr_jax.training.packing import ShapeRatchet, compute_logprobs_packed
from rlvr_jax.training.rl_loop import Placement, RLLoop, RunOutputs, StepFns
from rlvr_jax.training.state import TrainState, create_train_state
from rlvr_jax.training.update import make_critic_update_fn, make_update_fn
from rlvr_jax.training.writers import ConsoleLog, MetricsWriter


@dataclasses.dataclass
class Run:
    """Every built piece of a training run; `start_step` is where it resumes (0: a fresh run)."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    settings: Settings
    sharder: shd.Sharder
    tokenizer: Any
    model_cfg: ModelConfig
    state: TrainState
    ref_params: Any  # The frozen reference copy, or None without a KL loss.
    critic: critic_lib.CriticRunner | None
    prompts: PromptIterator
    outputs: RunOutputs  # Checkpointer, writers; validation is added by `loop`.
    start_step: int = 0
    host_state: dict = dataclasses.field(default_factory=dict)  # The restored checkpoint's host state.

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0

    def _logprob_fn(self):
        """`(params, arrays) -> [N, R] log-probs` for the old-policy and reference passes (packed or padded)."""
        cfg, config, sharder = self.model_cfg, self.config, self.sharder
        temp, budget = config.rollout.temperature, self.settings.update.max_tokens_per_micro_batch
        if budget:
            ratchet = ShapeRatchet()  # One per run: the passes stop compiling once shapes stop growing.
            return lambda p, arrays: compute_logprobs_packed(
                p, cfg, arrays, temperature=temp, max_tokens_per_micro_batch=budget,
                chunk=config.actor.logprob_chunk, sharder=sharder, ratchet=ratchet,
                share_prompts=config.actor.share_prompts)["logp"]
        return lambda p, arrays: compute_logprobs(
            p, cfg, arrays, temperature=temp, micro_batch_size=config.actor.micro_batch_size,
            chunk=config.actor.logprob_chunk, sharder=sharder)["logp"]

    def loop(self, pool: RewardPool) -> RLLoop:
        """The `RLLoop` of this run, scoring with `pool` (training reward and validation)."""
        cfg, config, sharder = self.model_cfg, self.config, self.sharder
        logprobs = self._logprob_fn()
        score = functools.partial(pool.score, require_box=config.reward.require_box)
        fns = StepFns(generate=functools.partial(generate, sharder=sharder), logprobs=logprobs,
                      update=make_update_fn(cfg, self.settings.update, self.settings.optimizer, sharder),
                      score=score, reward=self._reward(score))
        outputs = dataclasses.replace(self.outputs, validate=self._validation_fn(pool))
        placement = Placement(sharder, jax.process_index(), jax.process_count())
        # Every process would draw its own rollout bar (the host draws it between decode segments), so
        # multi-process runs go without it; process 0's step lines still report each step.
        rollout = rollout_settings(config, self.tokenizer,
                                   progress=config.trainer.progress and jax.process_count() == 1)
        return RLLoop(model_cfg=cfg, state=self.state, ref_params=self.ref_params, tokenizer=self.tokenizer,
                      prompts=self.prompts, settings=self.settings.loop, rollout=rollout, fns=fns,
                      outputs=outputs, placement=placement, critic=self.critic)

    def _reward(self, score):
        """The training reward `config.reward.name` (rewards.registry), with DAPO's overlong shaping if asked."""
        config = self.config
        options = config.reward.hapo.to_dict() if config.reward.name == "hapo" else {}
        reward = build_reward(config.reward.name, score_fn=score, overlong_cache_len=config.reward.overlong_cache_len,
                              max_len=config.rollout.max_new_tokens, **options)
        reward.restore(self.host_state.get("reward", {}))  # HAPO's history: a resumed run rewards as the original
        return reward

    def _validation_fn(self, pool: RewardPool):
        config = self.config
        if not (config.trainer.eval_every or config.trainer.eval_before_train) or not list(config.eval.benchmarks):
            return None
        # The held-out set must not contain the training examples (matters for the synthetic CPU demo).
        # Each process writes its own copy (hosts need not share a disk; no two writers on one file).
        pi = jax.process_index()
        heldout = self.workdir / ("heldout" if pi == 0 else f"heldout_process{pi}")
        benchmarks = resolve_benchmarks(config.eval.benchmarks, heldout, exclude=training_examples(config))
        # Validation scores as config.eval.require_box says (True: like the training reward) and logs it.
        validate_fn = make_validation_fn(
            self.tokenizer, benchmarks, data_dir=config.eval.data_dir,
            scorer=functools.partial(pool.score, require_box=config.eval.require_box), settings=self.settings.eval,
            cfg=self.model_cfg, sharder=self.sharder, out_dir=self.workdir / "eval_samples" if pi == 0 else None,
            require_box=config.eval.require_box)
        if not config.eval.release_programs:
            return validate_fn

        def validate_and_release(params, step: int) -> dict[str, float]:
            try:
                return validate_fn(params, step)
            finally:
                release_programs()  # the sampler's programs, the rollout's included (docs/running.md)

        return validate_and_release

    def close(self) -> None:
        """Waits for pending checkpoint writes and closes the writers."""
        self.outputs.checkpointer.close()
        self.outputs.writer.close()


def build(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> Run:
    """Validates `config`, builds every piece of the run and restores `workdir`'s latest checkpoint.

    Args:
      config: the run config (e.g. `configs.tiny.get_config()`).
      workdir: output directory (config.json, metrics, samples, checkpoints); reused to resume.

    Returns:
      The `Run`; `Run.loop(pool)` gives the loop to run from `Run.start_step`.
    """
    validate(config)
    compilation_cache.configure(config.get("jax_cache_dir", ""))  # before the run's first compile
    release_after_compiles()  # a compile inside a step must not add its compiler memory to the step's peak
    workdir = pathlib.Path(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))
    settings = settings_from_config(config)
    sharder = model_lib.build_sharder(config)
    cfg, params = model_lib.build_model(config, sharder)
    need_ref = config.actor.use_kl_loss or config.algorithm.reward_kl_coef > 0
    ref_params = model_lib.cast_params(params, model_lib.resolve_dtype(config.model.ref_dtype)) if need_ref else None
    # Without a reference (or one cast to another dtype) nothing else holds the loaded weights: the
    # state takes their buffers instead of a copy (one params-sized copy less at start-up).
    shared = {id(x) for x in jax.tree.leaves(ref_params)}
    donate = not any(id(x) in shared for x in jax.tree.leaves(params))
    state = create_train_state(params, settings.optimizer, sharder, logical_axes=param_logical_axes(cfg),
                               seed=config.seed, donate=donate)
    del params
    critic = (_build_critic(config, settings, cfg, state.params, sharder)
              if config.algorithm.name in VALUE_BASED_ESTIMATORS else None)
    prompts = PromptIterator(training_examples(config), config.trainer.batch_size, seed=config.seed,
                             shuffle=config.data.shuffle)
    outputs = RunOutputs(
        checkpointer=Checkpointer(workdir / "checkpoints", save_every=config.trainer.save_every,
                                  keep=config.trainer.keep, async_save=config.trainer.async_checkpoint,
                                  write_gb=write_gb_for(state, config.trainer.checkpoint_write_gb)),
        writer=MetricsWriter(workdir, enabled=is_main, loggers=tuple(config.trainer.loggers),
                             run=RunInfo(name=config.name, config=config.to_dict(), project=config.trainer.wandb_project,
                                         entity=config.trainer.wandb_entity)),
        console=ConsoleLog(config.trainer.total_steps, enabled=is_main))
    run = Run(config, workdir, settings, sharder, model_lib.build_tokenizer(config), cfg, state, ref_params,
              critic, prompts, outputs)
    mesh = " ".join(f"{axis}={size}" for axis, size in sharder.mesh.shape.items())
    outputs.console.message(f"mesh {mesh} over {sharder.mesh.devices.size} {jax.default_backend()} device(s), "
                            f"compute dtype {cfg.dtype}")
    _restore(run)
    return run


def _build_critic(config, settings: Settings, cfg: ModelConfig, params, sharder) -> critic_lib.CriticRunner:
    """PPO only: a critic initialised from the policy backbone, its optimizer and update."""
    cparams = critic_lib.critic_params_from_model(params, cfg, jax.random.PRNGKey(config.seed + 1))
    state = create_train_state(cparams, settings.critic.optimizer, sharder,
                               logical_axes=critic_lib.critic_logical_axes(cfg), seed=config.seed + 1)
    values_fn = lambda p, arrays: critic_lib.compute_values(  # noqa: E731
        p, cfg, arrays, micro_batch_size=config.actor.micro_batch_size, sharder=sharder)
    update_fn = make_critic_update_fn(cfg, settings.update, settings.critic.optimizer, sharder)
    return critic_lib.CriticRunner(state, values_fn, update_fn, gamma=settings.critic.gamma,
                                   lam=settings.critic.lam, warmup_steps=settings.critic.warmup_steps,
                                   kl_coef=settings.critic.reward_kl_coef)


def _restore(run: Run) -> None:
    """Resumes from the latest checkpoint in the workdir, if any (params, optimizer, critic, data)."""
    checkpointer = run.outputs.checkpointer
    if checkpointer.latest_step() is None:
        return
    saved = run.state if run.critic is None else {"actor": run.state, "critic": run.critic.state}
    restored, run.host_state, run.start_step = checkpointer.restore(saved)
    run.state = restored if run.critic is None else restored["actor"]
    if run.critic is not None:
        run.critic.state = restored["critic"]
    run.prompts.restore(run.host_state["data"])
    run.outputs.console.message(f"resumed from step {run.start_step} in {checkpointer.directory}")
    run.outputs.console.start_step = run.start_step


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path | None = None) -> dict:
    """Builds the run and trains to `config.trainer.total_steps`, resuming from `workdir`'s checkpoint.

    Args:
      config: the run config. workdir: output directory (default `./runs/<config.name>`).

    Returns:
      `{"last": the last step's metrics, "history": every step's and eval's metrics of this call}`.
    """
    run = build(config, workdir or pathlib.Path("runs") / config.name)
    try:
        with RewardPool(config.reward.num_workers, config.reward.timeout_s) as pool:
            loop = run.loop(pool)
            last = loop.run(run.start_step)
    finally:
        run.close()
    if run.is_main and config.trainer.plot:  # The demo's before / after table and learning curve.
        from rlvr_jax.training import report

        print(report.summary_text(report.read_metrics(run.workdir / "metrics.jsonl")))
        print(f"curves: {report.plot_run(run.workdir / 'metrics.jsonl', run.workdir / 'curves.png')}")
    return {"last": last, "history": loop.history}
