"""Shared config pieces: the full field set (every field commented) and `key=value` variant parsing.

Recipes call `base_config()` and override what their paper run changes. Variants are passed after
the file name: `--config=configs/qwen15b_1shot.py:algo=ppo,entropy=0`.
"""

import os

import ml_collections

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

# Example names accepted by `example=`: the paper's one-shot examples shipped with the package.
BUILTIN_EXAMPLES = ("pi1", "pi2", "pi13", "pi1209")


def parse_variant(arg: str | None, allowed: dict) -> dict:
    """Parses `"k=v,k2=v2"`; `allowed` maps each key to its default (its type converts the value)."""
    out = dict(allowed)
    if not arg:
        return out
    for item in arg.split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if key not in allowed:
            raise ValueError(f"unknown config variant {key!r}; known: {sorted(allowed)}")
        default = allowed[key]
        if not sep:
            value = "true" if isinstance(default, bool) else value
        if isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float)):
            out[key] = type(default)(value)
        else:
            out[key] = value
    return out


def base_config() -> ml_collections.ConfigDict:
    """Every field the trainer reads, with the paper's (verl) defaults for 1-shot GRPO."""
    c = ml_collections.ConfigDict()
    c.name = "run"  # Run name: the default workdir is ./runs/<name>.
    c.seed = 0  # Seeds parameter init (random models), rollouts and data order.
    # JAX's persistent compilation cache: "" off, "auto" = ~/.cache/rlvr_jax/xla (capped at 2 GiB), or a
    # directory. Programs compiled once load from disk in later runs, resumes and re-evaluations
    # (rlvr_jax/experiment/compilation_cache.py; JAX_COMPILATION_CACHE_DIR, when set, wins).
    c.jax_cache_dir = ""

    c.model = ml_collections.ConfigDict()
    c.model.path = ""  # HF checkpoint directory (config.json + *.safetensors). No hub downloads.
    c.model.source = "hf"  # "hf": load model.path; "random": random init from model.arch (tests, benchmarks).
    c.model.tokenizer_path = ""  # Tokenizer directory; defaults to model.path.
    c.model.param_dtype = "float32"  # Master weights (AdamW updates at 1e-6 vanish in bf16).
    c.model.dtype = "bfloat16"  # Compute dtype of matmuls and the KV cache.
    # The residual stream and matmul outputs (float32 accumulators kept): the sampler's and the trainer's
    # log-probs then agree closely in bf16 (ModelConfig.residual_dtype); "bfloat16" is transformers' arithmetic.
    c.model.residual_dtype = "float32"
    c.model.ref_dtype = "bfloat16"  # Storage dtype of the frozen reference copy (it is never updated).
    c.model.attention_impl = "xla"  # "xla" (einsum, any backend) or "cudnn" (flash attention on GPU).
    c.model.remat = "full"  # Per-layer rematerialisation in the backward pass: none | full | dots.
    c.model.arch = ml_collections.ConfigDict()  # Only for source="random": HF-style config.json fields.
    c.model.arch.model_type = "qwen2"
    c.model.arch.vocab_size = 256
    c.model.arch.hidden_size = 64
    c.model.arch.intermediate_size = 128
    c.model.arch.num_hidden_layers = 2
    c.model.arch.num_attention_heads = 4
    c.model.arch.num_key_value_heads = 2
    c.model.arch.head_dim = 0  # 0 = hidden_size / num_attention_heads; Qwen3 (model_type qwen3) sets its own.
    c.model.arch.tie_word_embeddings = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (1, -1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices (FSDP by default).
    # 0: the mesh spans every device of every process. n > 0 (one-process runs): this process's first n
    # devices only, e.g. a quick run on part of a host, or the tests' small runs on a few fake CPU devices.
    c.mesh.num_devices = 0
    # Logical axis -> mesh axes rules as ((name, axes), ...); empty means rlvr_jax.sharding.DEFAULT_RULES.
    c.mesh.rules = ()

    c.data = ml_collections.ConfigDict()
    c.data.train_path = ""  # verl parquet or jsonl; empty -> the builtin example named by data.example.
    c.data.example = "pi1"  # Builtin one-shot example (pi1, pi2, pi13, pi1209) used when train_path is empty.
    c.data.num_examples = 0  # Use only the first k examples of train_path (0 = all), repeated to fill the batch.
    c.data.template = "chat_template"  # Prompt template: chat_template | qwen_math_cot | plain.
    c.data.system_prompt = SYSTEM_PROMPT  # System message for chat_template (verl's Qwen default).
    c.data.max_prompt_len = 1024  # Prompts longer than this are an error (verl: filter_overlong_prompts).
    c.data.shuffle = True  # Shuffle the dataset each epoch (deterministic in seed and epoch).

    c.rollout = ml_collections.ConfigDict()
    c.rollout.n = 8  # Samples per prompt row (the GRPO group size).
    c.rollout.temperature = 0.6  # Sampling temperature; log-probs everywhere use logits / temperature.
    c.rollout.top_p = 1.0  # Nucleus sampling threshold (1.0 = off).
    c.rollout.top_k = 0  # Top-k sampling (0 = off).
    c.rollout.max_new_tokens = 3072  # Maximum response length.
    c.rollout.sub_batch_size = 256  # Decode slots: sequences decoded at once (bounds KV-cache memory); 0 = sized by the engine.
    # Tokens that end a response (the stop token stays in the response and its loss mask):
    # "eos" = the model's EOS only (tokenizer eos + generation_config.json eos_token_id), what vLLM
    # stops at in the paper's verl rollouts -- for base Qwen2.5-Math that is <|endoftext|>, so an
    # <|im_end|> it writes is trained on and generation runs on to <|endoftext|>;
    # "eos+chat" = also the chat end-of-turn tokens (<|im_end|>, <|eot_id|>): shorter responses.
    c.rollout.stop = "eos"

    c.algorithm = ml_collections.ConfigDict()
    c.algorithm.name = "grpo"  # Advantage estimator: grpo | drgrpo | rloo | reinforce_pp_baseline | gae (PPO, critic).
    c.algorithm.norm_by_std = True  # GRPO: divide by the group std (Dr.GRPO sets False).
    c.algorithm.gamma = 1.0  # GAE discount (PPO).
    c.algorithm.lam = 1.0  # GAE lambda (PPO).
    # k1 KL penalty charged on the token rewards (verl's use_kl_in_reward; needs gae). 0 = off; :algo=ppo: 0.001.
    c.algorithm.reward_kl_coef = 0.0
    # DAPO dynamic sampling: drop groups whose scores are all equal and draw more prompts until the batch is full.
    c.algorithm.dynamic_sampling = False
    c.algorithm.max_sampling_rounds = 10  # Rollout rounds per step at most (verl's DAPO max_num_gen_batches).

    c.actor = ml_collections.ConfigDict()
    c.actor.lr = 1e-6  # Peak learning rate.
    c.actor.schedule = "constant"  # constant | linear_warmup | cosine (rlvr_jax.training.state.SCHEDULES).
    c.actor.warmup_steps = 0  # Linear warm-up steps (optimizer steps).
    c.actor.b1 = 0.9  # AdamW beta1.
    c.actor.b2 = 0.999  # AdamW beta2.
    c.actor.weight_decay = 0.01  # AdamW decoupled weight decay.
    c.actor.grad_clip = 1.0  # Global-norm gradient clipping.
    c.actor.mu_dtype = "float32"  # Storage of AdamW's first moment: float32 | bfloat16 (half its bytes).
    c.actor.ppo_epochs = 1  # Passes over the rollout batch per step.
    c.actor.mini_batch_size = 0  # Sequences per optimizer step; 0 = the whole batch (one update per step).
    # Sequences per forward/backward (gradient accumulation via lax.scan); padded passes only (packing: budget).
    c.actor.micro_batch_size = 8
    c.actor.policy_loss = "vanilla"  # vanilla (PPO-clip) | gspo (sequence ratio) | cispo (clipped IS weight).
    # Pack sequences (prompt + response, real tokens only) into rows with segment ids for the old/ref
    # log-prob passes and the update (verl's use_remove_padding + use_dynamic_bsz); exact, fewer FLOPs.
    c.actor.packing = True
    # Packed micro-batch token budget per device (verl: ppo_max_token_len_per_gpu, 24k in the paper's script).
    c.actor.max_tokens_per_micro_batch = 16384
    # Packed rows hold one copy of a prompt for all its responses (each response sees the prompt and itself):
    # a GRPO group's prompt is computed once per row, not n times. Exact (tests/test_prompt_sharing.py).
    c.actor.share_prompts = True
    # One epoch and one mini-batch: take old log-probs inside the update (stop-gradient) instead of a
    # separate forward pass; identical values (the policy has not moved yet). Ignored otherwise.
    c.actor.fuse_old_logp = True
    c.actor.clip_low = 0.2  # PPO ratio clip, lower side.
    c.actor.clip_high = 0.2  # PPO ratio clip, upper side.
    c.actor.clip_c = 0.0  # Dual-clip constant for negative advantages (0 = off; verl uses 3.0).
    c.actor.entropy_coeff = 0.001  # Entropy bonus: keeps the policy exploring (the paper's key term).
    c.actor.use_kl_loss = True  # Add a KL penalty to the frozen initial (reference) model.
    c.actor.kl_coef = 0.001  # KL coefficient.
    c.actor.kl_kind = "low_var_kl"  # k1 | abs | k2 | k3 / low_var_kl.
    c.actor.agg_mode = "token-mean"  # token-mean | seq-mean-token-sum | seq-mean-token-mean | seq-mean-token-sum-norm.
    c.actor.recompute_old_logp = True  # Old log-probs from the trainer's forward (False: the sampler's).
    # Truncated importance sampling cap C (0 = off): weight the loss by min(pi_trainer / pi_sampler, C) per token
    # (Yao et al. use C = 2). Only meaningful with recompute_old_logp (otherwise every weight is 1).
    c.actor.tis_cap = 0.0
    c.actor.logprob_chunk = 512  # Tokens per chunk when turning hidden states into log-probs (memory).

    c.critic = ml_collections.ConfigDict()  # PPO only.
    c.critic.lr = 1e-5  # Critic learning rate.
    c.critic.cliprange_value = 0.5  # Clip of the value update.
    c.critic.warmup_steps = 0  # Steps training only the critic before the actor starts.

    c.reward = ml_collections.ConfigDict()
    # math (verifier on \boxed answers) | none (entropy-only ablation: reward 0) | format (1 for any \boxed answer)
    # | hapo (correctness + HAPO's history-aware length reward).
    c.reward.name = "math"
    c.reward.overlong_cache_len = 0  # DAPO overlong penalty over the last L_cache tokens of max_new_tokens; 0 = off.
    c.reward.hapo = ml_collections.ConfigDict()
    c.reward.hapo.weight = 1.0  # Weight of HAPO's length reward (the paper's w, 1.0 by default in its code).
    c.reward.hapo.floor = -0.7  # Lowest length reward of a correct response (HAPO's c): correct always beats wrong.
    c.reward.require_box = True  # Training reward needs a \boxed{} answer (DeepScaleR-style).
    c.reward.num_workers = 2  # Verifier worker processes.
    c.reward.timeout_s = 5.0  # Per-answer verifier timeout (a timeout scores 0).

    c.trainer = ml_collections.ConfigDict()
    c.trainer.batch_size = 128  # Prompt rows per step (each row is its own GRPO group of n samples).
    c.trainer.total_steps = 2000  # RL steps.
    c.trainer.save_every = 20  # Checkpoint period in steps (0 = only at the end / on SIGTERM).
    c.trainer.keep = 3  # Checkpoints kept (newest first); 0 keeps every one (launch/eval.py --steps=all).
    c.trainer.async_checkpoint = True  # Write checkpoints in the background.
    # GB of arrays being encoded and written at once (Orbax's save_concurrent_gb; raised to 1.5x the largest
    # array if below it): each costs its size again in host memory while it is written.
    c.trainer.checkpoint_write_gb = 2.0
    c.trainer.eval_every = 20  # Validation period in steps (0 = never).
    c.trainer.eval_before_train = True  # Validate at step 0.
    # A step whose loss or gradient is NaN/inf: "stop" ends the run with an error naming the step and
    # values, the last good state checkpointed; "skip" drops that update and goes on (isolated bad steps).
    c.trainer.on_nonfinite = "stop"
    c.trainer.log_samples = 4  # (prompt, response, reward) triples written to samples.jsonl per step.
    c.trainer.progress = True  # Rollout / eval progress bars.
    c.trainer.plot = False  # Save a PNG of reward and held-out accuracy over steps (needs matplotlib).
    # Metric loggers: jsonl (metrics.jsonl, samples.jsonl), tensorboard, wandb (pip install -e ".[wandb]";
    # WANDB_MODE=offline logs without a network).
    c.trainer.loggers = ("jsonl", "tensorboard")
    c.trainer.wandb_project = "rlvr_jax"  # wandb project (the run is named config.name).
    c.trainer.wandb_entity = ""  # wandb team or user; empty = the account's default.

    c.eval = ml_collections.ConfigDict()
    c.eval.benchmarks = ("math500",)  # Benchmarks for in-training validation (see rlvr_jax.evaluation).
    # Folder with <benchmark>/test.jsonl; empty = the paper's six sets shipped inside the package.
    c.eval.data_dir = os.environ.get("RLVR_JAX_EVAL_DIR", "")
    c.eval.max_new_tokens = 3072  # Generation budget for validation.
    c.eval.template = "qwen_math_cot"  # Prompt template for validation.
    c.eval.limit = 0  # Evaluate only the first k problems of each benchmark (0 = all).
    c.eval.greedy = True  # Greedy validation (the paper's MATH500 protocol); False uses the benchmark's own.
    c.eval.batch_size = 64  # Problems per generation call.
    # Drop the sampler's compiled programs after each validation (their host memory; the next rollout
    # and validation compile theirs again): for small-memory CPU runs, see docs/running.md.
    c.eval.release_programs = False
    c.eval.n = 0  # Responses per problem of sampled benchmarks: avg@n for any n (0 = the benchmark's own).
    c.eval.temperature = 0.0  # Temperature of sampled benchmarks (0 = the benchmark's own, 0.6).
    c.eval.top_p = 0.0  # Top-p of sampled benchmarks (0 = the benchmark's own, 1.0).
    # Validation stop tokens: "eos+chat" is how the Qwen2.5-Math evaluation suite stops (<|im_end|>
    # and <|endoftext|>); "eos" is how the paper's in-training (verl) validation stops.
    c.eval.stop = "eos+chat"
    # Validation counts only boxed answers, like the training reward (the paper validates in
    # training with its DeepScaleR reward, which needs a box); False also reads unboxed answers.
    c.eval.require_box = False
    # Primary grader of evaluations: "verifier" (rlvr_jax.rewards) or "paper" (the Qwen2.5-Math
    # evaluation suite's semantics: 1e-4 relative tolerance, percentage forms); launch/eval.py
    # reports both in summary.json.
    c.eval.grader = "verifier"
    return c


# Variant keys every recipe accepts, with their defaults (None = keep the recipe's value).
RECIPE_VARIANTS = {
    "algo": "grpo",  # grpo | ppo | drgrpo | rloo | reinforce_pp | dapo | gspo | cispo
    "reward": "math",  # math | none (the paper's entropy-only ablation) | format (its format baseline) | hapo
    "entropy": -1.0,  # entropy_coeff override (-1 = keep the recipe's 0.001)
    "example": "pi1",  # builtin one-shot example
    "runlocal": False,  # shrink batch, lengths and steps to smoke-test a recipe on one small device
}


def apply_recipe_variant(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the shared `algo=,reward=,entropy=,example=,runlocal` variants given in `arg` (only those)."""
    v = parse_variant(arg, RECIPE_VARIANTS)
    given = {item.partition("=")[0] for item in (arg or "").split(",") if item}
    if "example" in given:
        if v["example"] not in BUILTIN_EXAMPLES and not v["example"].startswith("arith:"):
            raise ValueError(f"unknown example {v['example']!r}; builtin: {BUILTIN_EXAMPLES} or arith:A+B")
        c.data.example = v["example"]
    if "reward" in given:
        c.reward.name = v["reward"]
    if "entropy" in given:
        c.actor.entropy_coeff = v["entropy"]
    if v["runlocal"]:  # Before the algo: its length-dependent settings (DAPO's L_cache) follow the budget.
        c.trainer.batch_size, c.rollout.n = 2, 2
        c.rollout.max_new_tokens, c.eval.max_new_tokens = 64, 64
        c.trainer.total_steps, c.eval.limit = 2, 4
        c.actor.micro_batch_size, c.rollout.sub_batch_size = 2, 0
    if "algo" in given:
        _apply_algo(c, v["algo"])
    if arg:
        c.name = c.name + "_" + arg.replace("=", "-").replace(",", "_").replace(":", "-").replace("+", "p")
    return c


def _algo_ppo(c):
    # The paper's PPO runs (verl): a critic with GAE (gamma = lam = 1) instead of group baselines, no KL
    # loss, and verl's k1 KL penalty in the token rewards (use_kl_in_reward, fixed coefficient 0.001).
    c.algorithm.name = "gae"
    c.actor.use_kl_loss = False
    c.algorithm.reward_kl_coef = 0.001


def _algo_drgrpo(c):
    c.algorithm.name = "drgrpo"
    c.algorithm.norm_by_std = False
    c.actor.agg_mode = "seq-mean-token-sum-norm"


def _algo_dapo(c):
    # DAPO (arXiv 2503.14476): clip-higher 0.2 / 0.28, dynamic sampling, overlong shaping, token-mean loss,
    # no KL term. L_cache is a quarter of the response budget (the paper: 4096 of 20480).
    c.algorithm.name = "grpo"
    c.actor.clip_low, c.actor.clip_high = 0.2, 0.28
    c.algorithm.dynamic_sampling = True
    c.reward.overlong_cache_len = max(1, c.rollout.max_new_tokens // 4)
    c.actor.agg_mode = "token-mean"
    c.actor.use_kl_loss = False


def _algo_gspo(c):
    # GSPO (arXiv 2507.18071): sequence-level ratio, clip 3e-4 / 4e-4, sequence-mean of token-means.
    c.algorithm.name = "grpo"
    c.actor.policy_loss = "gspo"
    c.actor.clip_low, c.actor.clip_high = 3e-4, 4e-4
    c.actor.agg_mode = "seq-mean-token-mean"
    c.actor.clip_c = 0.0


def _algo_cispo(c):
    # CISPO (MiniMax-M1, arXiv 2506.13585): clipped, detached IS weight on every token, token-mean. The paper
    # sets no lower bound on the weight (clip_low = 1 disables it since ratios are > 0) and tunes the upper.
    c.algorithm.name = "grpo"
    c.actor.policy_loss = "cispo"
    c.actor.clip_low, c.actor.clip_high = 1.0, 0.28
    c.actor.agg_mode = "token-mean"
    c.actor.clip_c = 0.0


ALGOS = {
    "grpo": lambda c: setattr(c.algorithm, "name", "grpo"),
    "rloo": lambda c: setattr(c.algorithm, "name", "rloo"),
    "reinforce_pp": lambda c: setattr(c.algorithm, "name", "reinforce_pp_baseline"),
    "drgrpo": _algo_drgrpo,
    "ppo": _algo_ppo,
    "dapo": _algo_dapo,
    "gspo": _algo_gspo,
    "cispo": _algo_cispo,
}


def _apply_algo(c: ml_collections.ConfigDict, algo: str) -> None:
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; known: {sorted(ALGOS)}")
    ALGOS[algo](c)
