"""Train a policy with RLVR (GRPO / PPO + entropy bonus): the main entry point.

    python launch/train.py --config=configs/qwen15b_1shot.py --config.model.path=/path/to/Qwen2.5-Math-1.5B
    python launch/train.py --config=configs/tiny.py                      # seconds per step on CPU
    python launch/train.py --config=configs/qwen15b_1shot.py:algo=ppo    # a recipe variant

A run started again with the same --workdir resumes from its latest checkpoint.
Multi-process (CPU cluster / GPUs): pass --coordinator_address, --num_processes and --process_id;
on TPU pods `jax.distributed.initialize()` discovers them itself (--distributed). Every process runs
this same command (same config and --workdir); process 0 writes config, metrics and samples.
"""

from __future__ import annotations

import functools
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # `configs` and `launch` imports

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (optionally file.py:variant).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory; default ./runs/<config.name>.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detection (TPU pods).")
flags.DEFINE_bool("dry_run", False, "Print the memory plan (shapes, shardings, bytes per device) and exit.")


def init_distributed() -> None:
    import jax

    if FLAGS.coordinator_address:
        if FLAGS.num_processes is None or FLAGS.process_id is None:
            raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
        if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
            # Cross-process collectives of the CPU backend (a CPU cluster, or the tests' fake devices);
            # accelerator backends ignore it. Must be set before the backends start.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif FLAGS.distributed:
        jax.distributed.initialize()


def build_optimizer_configs(config):
    from rlvr_jax.training.state import OptimizerConfig
    from rlvr_jax.training.update import UpdateConfig

    a = config.actor
    opt = OptimizerConfig(learning_rate=a.lr, schedule=a.schedule, warmup_steps=a.warmup_steps,
                          total_steps=config.trainer.total_steps * a.ppo_epochs, b1=a.b1, b2=a.b2,
                          weight_decay=a.weight_decay, grad_clip=a.grad_clip or None)
    upd = UpdateConfig(
        ppo_epochs=a.ppo_epochs, mini_batch_size=a.mini_batch_size or None,
        micro_batch_size=a.micro_batch_size, policy_loss=a.policy_loss, tis_cap=a.tis_cap,
        clip_low=a.clip_low, clip_high=a.clip_high,
        clip_c=a.clip_c or None, entropy_coeff=a.entropy_coeff, kl_coef=a.kl_coef, kl_kind=a.kl_kind,
        use_kl_loss=a.use_kl_loss, agg_mode=a.agg_mode, temperature=config.rollout.temperature,
        logprob_chunk=a.logprob_chunk, max_response_len=config.rollout.max_new_tokens,
        cliprange_value=config.critic.cliprange_value,
        max_tokens_per_micro_batch=a.max_tokens_per_micro_batch if a.packing else None,
        fuse_old_logp=fuses_old_logp(config),
    )
    return opt, upd


def build_logprob_fn(config, cfg, sharder):
    """`(params, arrays) -> [N, R] log-probs` for the old-policy and reference passes (packed or padded)."""
    from rlvr_jax.training.logprobs import compute_logprobs
    from rlvr_jax.training.packing import ShapeRatchet, compute_logprobs_packed

    a, temp = config.actor, config.rollout.temperature
    if a.packing:
        ratchet = ShapeRatchet()  # one per run: the passes stop compiling once shapes stop growing
        return lambda p, arrays: compute_logprobs_packed(
            p, cfg, arrays, temperature=temp, max_tokens_per_micro_batch=a.max_tokens_per_micro_batch,
            chunk=a.logprob_chunk, sharder=sharder, ratchet=ratchet)["logp"]
    return lambda p, arrays: compute_logprobs(
        p, cfg, arrays, temperature=temp, micro_batch_size=a.micro_batch_size, chunk=a.logprob_chunk,
        sharder=sharder)["logp"]


def fuses_old_logp(config) -> bool:
    """Old log-probs come from the update's own forward: asked for, recomputed, one epoch, one mini-batch.

    Not with PPO's KL-in-reward: the critic's GAE needs the rollout policy's log-probs before the update.
    """
    a = config.actor
    one_mini = not a.mini_batch_size or a.mini_batch_size >= config.trainer.batch_size * config.rollout.n
    kl_in_reward = config.algorithm.reward_kl_coef > 0
    return bool(a.fuse_old_logp and a.recompute_old_logp and a.ppo_epochs == 1 and one_mini and not kl_in_reward)


def build_examples(config):
    """Training examples: a dataset file, or the builtin one-shot example; repeated to fill a batch."""
    from rlvr_jax.data import load_dataset, repeat_to_fill
    from rlvr_jax.data.builtin import builtin_example

    if config.data.train_path:
        examples = load_dataset(config.data.train_path)
        if config.data.num_examples:
            examples = examples[: config.data.num_examples]
    elif config.data.example.startswith("arith:"):  # e.g. "arith:47+38" (the CPU demo)
        from rlvr_jax.data.synthetic import parse_arithmetic

        examples = [parse_arithmetic(config.data.example.split(":", 1)[1])]
    else:
        examples = [builtin_example(config.data.example)]
    if len(examples) < config.trainer.batch_size:
        examples = repeat_to_fill(examples, config.trainer.batch_size)
    return examples


def build_critic(config, cfg, params, sharder):
    """PPO only: a critic initialised from the policy backbone, its optimizer and update."""
    import jax

    from rlvr_jax.training import critic as critic_lib
    from rlvr_jax.training.rl_loop import CriticRunner
    from rlvr_jax.training.state import create_train_state
    from rlvr_jax.training.update import make_critic_update_fn

    opt, upd = build_optimizer_configs(config)
    opt = opt.__class__(**{**opt.__dict__, "learning_rate": config.critic.lr})
    cparams = critic_lib.critic_params_from_model(params, cfg, jax.random.PRNGKey(config.seed + 1))
    state = create_train_state(cparams, opt, sharder, logical_axes=critic_lib.critic_logical_axes(cfg),
                               seed=config.seed + 1)
    values_fn = lambda p, arrays: critic_lib.compute_values(  # noqa: E731
        p, cfg, arrays, micro_batch_size=config.actor.micro_batch_size, sharder=sharder)
    return CriticRunner(state, values_fn, make_critic_update_fn(cfg, upd, opt, sharder),
                        gamma=config.algorithm.gamma, lam=config.algorithm.lam,
                        warmup_steps=config.critic.warmup_steps, kl_coef=config.algorithm.reward_kl_coef)


def build_reward(config, scorer):
    """The training reward `config.reward.name` (rewards.registry), with DAPO's overlong shaping if asked."""
    from rlvr_jax.rewards.registry import build_reward as build

    options = config.reward.hapo.to_dict() if config.reward.name == "hapo" else {}
    return build(config.reward.name, score_fn=scorer, overlong_cache_len=config.reward.overlong_cache_len,
                 max_len=config.rollout.max_new_tokens, **options)


def build_validation(config, cfg, tokenizer, scorer, sharder, workdir):
    if not config.trainer.eval_every and not config.trainer.eval_before_train:
        return None
    if not list(config.eval.benchmarks):
        return None
    import jax

    from launch.eval import eval_settings
    from rlvr_jax.evaluation.runner import make_validation_fn

    from launch.builders import resolve_benchmarks

    # The held-out set must not contain the training examples (matters for the synthetic CPU demo).
    # Each process writes its own copy (hosts need not share a disk; no two writers on one file).
    pi = jax.process_index()
    heldout = workdir / ("heldout" if pi == 0 else f"heldout_process{pi}")
    benchmarks = resolve_benchmarks(config.eval.benchmarks, heldout, exclude=build_examples(config))
    # Validation scores as config.eval.require_box says (True: like the training reward) and logs it.
    return make_validation_fn(tokenizer, benchmarks, data_dir=config.eval.data_dir,
                              scorer=functools.partial(scorer, require_box=config.eval.require_box),
                              settings=eval_settings(config), cfg=cfg, sharder=sharder,
                              out_dir=workdir / "eval_samples" if pi == 0 else None,
                              require_box=config.eval.require_box)


def train(config, workdir: pathlib.Path) -> dict:
    """Builds every piece from the config and runs the RL loop; returns the last step's metrics."""
    import jax

    from launch import builders
    from rlvr_jax.data.batching import PromptIterator
    from rlvr_jax.data.tokenizers import stop_token_ids
    from rlvr_jax.models import param_logical_axes
    from rlvr_jax.rewards import RewardPool
    from rlvr_jax.sampling import generate
    from rlvr_jax.training.checkpoint import Checkpointer
    from rlvr_jax.training.rl_loop import LoopSettings, RLLoop
    from rlvr_jax.training.rollout_batch import RolloutSettings
    from rlvr_jax.training.state import create_train_state
    from rlvr_jax.training.update import make_update_fn
    from rlvr_jax.training.loggers import RunInfo
    from rlvr_jax.training.writers import ConsoleLog, MetricsWriter

    is_main = jax.process_index() == 0
    if is_main:
        builders.write_resolved_config(config, workdir)
    sharder = builders.build_sharder(config)
    tokenizer = builders.build_tokenizer(config)
    cfg, params = builders.build_model(config, sharder)
    opt_cfg, upd_cfg = build_optimizer_configs(config)
    state = create_train_state(params, opt_cfg, sharder, logical_axes=param_logical_axes(cfg), seed=config.seed)
    need_ref = config.actor.use_kl_loss or config.algorithm.reward_kl_coef > 0
    ref_params = builders.cast_params(params, config.model.ref_dtype) if need_ref else None
    del params
    critic = build_critic(config, cfg, state.params, sharder) if config.algorithm.name == "gae" else None
    prompts = PromptIterator(build_examples(config), config.trainer.batch_size, seed=config.seed,
                             shuffle=config.data.shuffle)
    checkpointer = Checkpointer(workdir / "checkpoints", save_every=config.trainer.save_every,
                                keep=config.trainer.keep, async_save=config.trainer.async_checkpoint)
    console = ConsoleLog(config.trainer.total_steps, enabled=is_main)
    start_step, host = 0, {}
    if checkpointer.latest_step() is not None:
        saved = state if critic is None else {"actor": state, "critic": critic.state}
        restored, host, start_step = checkpointer.restore(saved)
        state = restored if critic is None else restored["actor"]
        if critic is not None:
            critic.state = restored["critic"]
        prompts.restore(host["data"])
        console.message(f"resumed from step {start_step} in {checkpointer.directory}")
    console.start_step = start_step
    # The rollout progress bar is reported from inside the decode program, so it must be on for all
    # processes or none (the programs must match); multi-process runs go without it.
    progress = config.trainer.progress and jax.process_count() == 1
    rollout = RolloutSettings(
        n=config.rollout.n, temperature=config.rollout.temperature, top_p=config.rollout.top_p,
        top_k=config.rollout.top_k, max_new_tokens=config.rollout.max_new_tokens,
        stop_token_ids=stop_token_ids(tokenizer, config.rollout.stop, builders.model_dir(config)),
        sub_batch_size=config.rollout.sub_batch_size,
        pad_id=tokenizer.pad_token_id or 0, progress=progress)
    settings = LoopSettings(
        total_steps=config.trainer.total_steps, eval_every=config.trainer.eval_every,
        eval_before_train=config.trainer.eval_before_train, log_samples=config.trainer.log_samples,
        seed=config.seed, advantage=config.algorithm.name, norm_by_std=config.algorithm.norm_by_std,
        template=config.data.template, system_prompt=config.data.system_prompt or None,
        max_prompt_len=config.data.max_prompt_len, reward=config.reward.name,
        recompute_old_logp=config.actor.recompute_old_logp, dynamic_sampling=config.algorithm.dynamic_sampling,
        max_sampling_rounds=config.algorithm.max_sampling_rounds,
        on_nonfinite=config.trainer.on_nonfinite, fuse_old_logp=upd_cfg.fuse_old_logp)
    logprob_fn = build_logprob_fn(config, cfg, sharder)
    run_info = RunInfo(name=config.name, config=config.to_dict(), project=config.trainer.wandb_project,
                       entity=config.trainer.wandb_entity)
    writer = MetricsWriter(workdir, enabled=is_main, loggers=tuple(config.trainer.loggers), run=run_info)
    with RewardPool(config.reward.num_workers, config.reward.timeout_s) as pool:
        scorer = functools.partial(pool.score, require_box=config.reward.require_box)
        reward = build_reward(config, scorer)
        reward.restore(host.get("reward", {}))  # HAPO's history: a resumed run rewards as the original
        loop = RLLoop(
            model_cfg=cfg, state=state, ref_params=ref_params, tokenizer=tokenizer, prompts=prompts,
            rollout=rollout, settings=settings, update_fn=make_update_fn(cfg, upd_cfg, opt_cfg, sharder),
            logprob_fn=logprob_fn, score_fn=scorer, checkpointer=checkpointer, writer=writer, console=console,
            validate=build_validation(config, cfg, tokenizer, pool.score, sharder, workdir),
            process_index=jax.process_index(), process_count=jax.process_count(),
            generate_fn=functools.partial(generate, sharder=sharder), critic=critic, sharder=sharder,
            reward=reward)
        try:
            last = loop.run(start_step)
        finally:
            checkpointer.close()
            writer.close()
    if is_main and config.trainer.plot:  # The demo's before / after table and learning curve.
        from rlvr_jax.training import report

        print(report.summary_text(report.read_metrics(workdir / "metrics.jsonl")))
        print(f"curves: {report.plot_run(workdir / 'metrics.jsonl', workdir / 'curves.png')}")
    return {"last": last, "history": loop.history}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint file at INFO.
    config = FLAGS.config
    from launch.config_check import validate

    validate(config, need_weights=not FLAGS.dry_run)
    init_distributed()
    workdir = pathlib.Path(FLAGS.workdir or os.path.join("runs", config.name))
    if FLAGS.dry_run:
        from launch.memory_plan import print_memory_plan

        print_memory_plan(config)
        return
    from rlvr_jax.training.rl_loop import NonFiniteError

    try:
        train(config, workdir)
    except NonFiniteError as e:  # a clear message and a non-zero exit, not a traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
