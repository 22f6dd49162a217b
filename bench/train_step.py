"""Update-step throughput: useful tokens/s of packed vs padded `rlvr_jax.training` updates vs PyTorch, one run.

Times `make_update_fn(...)(state, batch)` (one mini-batch, GRPO loss with entropy, chunked float32
log-probs) on random SmolLM2-135M-shaped weights (or smaller via flags), three ways, interleaved
repetition by repetition (medians reported, load average printed before and after):

- packed: `max_tokens_per_micro_batch` token-budget micro-batches of real tokens (`packing.py`);
- padded: every row padded to `prompt_len + response_len`, `--micro-batch` rows per micro-batch;
- torch (CPU only): transformers' model with the same weights, padded, AdamW, clip 1.0, the same
  PPO-clip token-mean loss, torch at its defaults (float32, its own thread count).

Useful tokens are real prompt + response tokens (the attention mask's ones). Lengths (`--lengths`):
`full` (every row full length) or `longtail` (a recorded RL-like mix: response lengths lognormal with
median `response_len / 4` and sigma 1, capped at `response_len` - about 1 in 10 rows hits the cap;
prompt lengths uniform in `[prompt_len / 2, prompt_len]`), seeded. Rows come in `--group`s of one
prompt (GRPO's n samples); the packed update lays a group's prompt once per row unless `--no-share`.
`--devices N` runs the JAX updates data parallel over N XLA CPU devices (one per core); the printed
padded/real ratio is the ideal packed speed-up without shared prompts.

- On an accelerator it prints model FLOPs utilisation of the packed update: model FLOPs of the real
  tokens / step time / peak (`--peak-tflops` or a device table); model FLOPs = `6 N_layers` per token
  + `6 d V` per response token (packed rows project only those) + `12 L H E T` per token with T its row
  length (PaLM's convention); rematerialised recompute is not counted.
- `--profile DIR` writes a `jax.profiler` trace of one packed step (TensorBoard / Perfetto) and the
  update's optimized HLO, to see where the time goes.

    python bench/train_step.py                                         # SmolLM2-135M shape, 16 x (64 + 64) long-tail
    python bench/train_step.py --dtype float32 --batch 8 --remat full --chunk 64     # the CPU demo's settings
    python bench/train_step.py --dtype float32 --batch 8 --remat full --chunk 64 --lengths full \
        --prompt-len 41 --response-len 64                              # the demo's first steps (41-token prompt, capped)
    python bench/train_step.py --layers 2 --vocab 512 --batch 8 --steps 2    # smoke
    python bench/train_step.py --dtype bfloat16 --batch 256 --prompt-len 1024 --response-len 3072 --remat full \
        --max-tokens 16384 --no-torch                                  # paper shapes on an accelerator
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# jax / rlvr_jax / torch are imported inside functions: XLA reads its thread flags at import time.

# Dense bf16 peak TFLOP/s by `device_kind` substring (vendor data sheets; first match wins).
PEAK_TFLOPS = {
    "H200": 989, "H100 PCIe": 756, "H100": 989, "A100": 312, "L4": 121, "TPU v4": 275,
    "TPU v5 lite": 197, "TPU v5e": 197, "TPU v5p": 459, "TPU v6": 918,
}
SMOLLM2 = dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
               num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True, rope_theta=100000.0,
               rms_norm_eps=1e-5, max_position_embeddings=8192)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=SMOLLM2["num_layers"])
    p.add_argument("--vocab", type=int, default=SMOLLM2["vocab_size"])
    p.add_argument("--batch", type=int, default=16, help="sequences per update (the demo: 2 prompts x 8)")
    p.add_argument("--micro-batch", type=int, default=None, help="padded: rows per forward/backward (default: batch)")
    p.add_argument("--max-tokens", type=int, default=4096, help="packed: tokens per micro-batch per device")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--response-len", type=int, default=64)
    p.add_argument("--lengths", default="longtail", choices=["longtail", "full"])
    p.add_argument("--group", type=int, default=8, help="rows per prompt (GRPO's n): they share prompt tokens")
    p.add_argument("--no-share", action="store_true", help="packed: one prompt copy per sequence (share_prompts off)")
    p.add_argument("--devices", type=int, default=1, help="XLA CPU devices (data parallel); CPU only")
    p.add_argument("--dtype", default=None, help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    p.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    p.add_argument("--chunk", type=int, default=256, help="positions per float32 logits block")
    p.add_argument("--steps", type=int, default=5, help="timed repetitions of each contender")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison on CPU")
    p.add_argument("--no-padded", action="store_true", help="skip the padded rlvr_jax update")
    p.add_argument("--profile", default=None, help="write a jax.profiler trace + HLO of a packed step here")
    p.add_argument("--threads", type=int, default=0,
                   help="0 keeps every library's defaults; 1 runs XLA and torch single-threaded (a busy machine)")
    return p.parse_args()


def make_lengths(args, rng) -> tuple[np.ndarray, np.ndarray]:
    """Real (prompt, response) lengths per row; see `--lengths` in the module docstring."""
    b, p, r = args.batch, args.prompt_len, args.response_len
    if args.lengths == "full":
        return np.full(b, p), np.full(b, r)
    prompt = np.repeat(rng.integers(max(1, p // 2), p + 1, -(-b // args.group)), args.group)[:b]
    response = np.clip(np.round(rng.lognormal(np.log(r / 4), 1.0, b)), 1, r).astype(int)
    return prompt, response


def make_batch(args, vocab: int) -> dict:
    rng = np.random.default_rng(0)
    b, p, r = args.batch, args.prompt_len, args.response_len
    prompt, response = make_lengths(args, rng)
    attn = np.zeros((b, p + r), np.int32)
    ids = rng.integers(1, vocab, (b, p + r)).astype(np.int32)
    for i in range(b):
        attn[i, p - prompt[i] : p + response[i]] = 1
        ids[i, :p] = ids[i - i % args.group, :p]  # a group's rows share their prompt
    return {
        "input_ids": ids * attn,
        "attention_mask": attn,
        "response_mask": attn[:, p:].copy(),
        "old_logp": np.full((b, r), -np.log(vocab), np.float32),
        "advantages": rng.normal(size=(b,)).astype(np.float32),
    }


def jax_update(cfg, params, batch, args, *, packed: bool, sharder):
    """A `run()` closure timing one update (blocking), and the first step's loss."""
    import jax

    from rlvr_jax import distributed, training

    opt = training.OptimizerConfig(learning_rate=1e-6)
    ucfg = training.UpdateConfig(micro_batch_size=None if packed else args.micro_batch, logprob_chunk=args.chunk,
                                 max_tokens_per_micro_batch=args.max_tokens if packed else None,
                                 share_prompts=packed and not args.no_share)
    update = training.make_update_fn(cfg, ucfg, opt, sharder)
    axes = models_axes(cfg) if sharder else None
    box = {"state": training.create_train_state(params, opt, sharder, logical_axes=axes)}
    placed = distributed.put_rows(batch, sharder)

    def run():
        box["state"], metrics = update(box["state"], placed)
        return jax.block_until_ready(metrics)

    first = float(run()["pg_loss"])  # compiles
    return run, first


def models_axes(cfg):
    from rlvr_jax.models import param_logical_axes

    return param_logical_axes(cfg)


def torch_update(hf_dir, batch, args):
    """A `run()` closure of one transformers + torch.optim.AdamW step, and its first loss."""
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    ids, attn = torch.tensor(batch["input_ids"]).long(), torch.tensor(batch["attention_mask"]).long()
    mask, adv = torch.tensor(batch["response_mask"]).float(), torch.tensor(batch["advantages"])
    old_logp = torch.tensor(batch["old_logp"])
    p, r = args.prompt_len, args.response_len

    def run():
        # Logits of the R positions that predict response tokens only (as ours), not all P+R.
        logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=r + 1).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, p:, None])[..., 0]
        ratio = torch.exp(logp - old_logp)  # PPO-clip, token-mean: the same objective as ours
        per_token = torch.maximum(-adv[:, None] * ratio, -adv[:, None] * ratio.clamp(0.8, 1.2))
        loss = (per_token * mask).sum() / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return run, run()


def interleaved_medians(runners: dict, steps: int) -> dict:
    """Median seconds of each runner, timed round-robin so load changes hit all of them alike."""
    times = {k: [] for k in runners}
    for _ in range(steps):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def model_flops_per_step(cfg, tokens: int, row_len: int, projected: int) -> float:
    """Forward + backward model FLOPs of `tokens` real tokens in rows of `row_len`, `projected` of them
    (the response tokens) through the lm head (module docstring)."""
    d, f, l = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    qd, kd = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    n_layers = l * (d * qd + 2 * d * kd + qd * d + 3 * d * f)
    return tokens * (6 * n_layers + 12 * l * qd * row_len) + projected * 6 * d * cfg.vocab_size


def profile(run, out_dir: str) -> None:
    """A jax.profiler trace of one packed step (the HLO is dumped by the XLA flags `main` sets)."""
    import jax

    from profile_summary import summarize

    with jax.profiler.trace(out_dir, create_perfetto_trace=True):
        run()
    print(f"profile: trace in {out_dir} (tensorboard --logdir {out_dir} or ui.perfetto.dev), HLO in {out_dir}/hlo")
    print(summarize(out_dir))


def main():
    args = parse_args()
    flags = os.environ.get("XLA_FLAGS", "")
    if args.devices > 1:
        flags += f" --xla_force_host_platform_device_count={args.devices}"
    if args.threads == 1:
        flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    if args.profile:
        flags += f" --xla_dump_to={args.profile}/hlo --xla_dump_hlo_module_re=.*step.*"
    os.environ["XLA_FLAGS"] = flags.strip()
    load_before = os.getloadavg()
    import jax

    from rlvr_jax import models
    from rlvr_jax import sharding as shd
    from rlvr_jax.training import packing

    backend = jax.default_backend()
    dtype = args.dtype or ("float32" if backend == "cpu" else "bfloat16")
    cfg = models.ModelConfig(**dict(SMOLLM2, num_layers=args.layers, vocab_size=args.vocab), dtype=dtype,
                             remat=args.remat)
    sharder = shd.Sharder(shd.make_mesh((-1, 1, 1))) if len(jax.devices()) > 1 else None
    params = models.init_params(cfg, jax.random.PRNGKey(0))
    batch = make_batch(args, cfg.vocab_size)
    real = int(batch["attention_mask"].sum())
    padded = batch["attention_mask"].size
    plan = packing.plan_packing(batch["input_ids"], batch["attention_mask"], args.response_len,
                                max_tokens_per_micro_batch=args.max_tokens, row_multiple=packing.batch_shards(sharder),
                                share_prompts=not args.no_share, costs=packing.pass_costs(cfg))
    print(f"device {jax.devices()[0].device_kind} x {len(jax.devices())} ({backend}), "
          f"{sum(x.size for x in jax.tree.leaves(params)) / 1e6:.1f}M params, {cfg.num_layers} layers, vocab "
          f"{cfg.vocab_size}, dtype {dtype}, remat {cfg.remat}; batch {args.batch} x ({args.prompt_len} + "
          f"{args.response_len}) {args.lengths}: {real} real tokens, padded/real {padded / real:.2f}, "
          f"packed slots/real {plan.computed_tokens / real:.2f} (rows of {plan.tokens.shape[-1]}; "
          f"{'one prompt copy per sequence' if args.no_share else f'prompts shared by groups of {args.group}'})")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}")
    runners, losses = {}, {}
    runners["packed"], losses["packed"] = jax_update(cfg, params, batch, args, packed=True, sharder=sharder)
    if not args.no_padded:
        runners["padded"], losses["padded"] = jax_update(cfg, params, batch, args, packed=False, sharder=sharder)
    if backend == "cpu" and not args.no_torch:
        import torch

        hf_dir = tempfile.mkdtemp(prefix="bench_train_step_")
        atexit.register(shutil.rmtree, hf_dir, ignore_errors=True)  # the model's safetensors, for torch
        models.save_hf(hf_dir, cfg, params)
        runners["torch"], losses["torch"] = torch_update(hf_dir, batch, args)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 (its defaults)")
    medians = interleaved_medians(runners, args.steps)
    for name, sec in medians.items():
        print(f"{name:7s}: step {sec * 1e3:8.0f} ms, {real / sec:10,.0f} useful tokens/s, first loss {losses[name]:.6f}")
    for name in ("padded", "torch"):
        if name in medians:
            print(f"packed / {name} useful tokens/s: {medians[name] / medians['packed']:.2f}x")
    if backend != "cpu":
        device = jax.devices()[0]
        peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in device.device_kind), None)
        projected = int(np.asarray(batch["response_mask"]).sum())
        # FLOPs of the tokens the packed rows hold (a shared prompt once), not of the padded view.
        flops = model_flops_per_step(cfg, plan.real_tokens, plan.tokens.shape[-1], projected) / medians["packed"]
        mfu = f"{flops / (peak * 1e12):.1%} of {peak} TFLOP/s" if peak else "unknown peak (pass --peak-tflops)"
        print(f"packed model FLOP/s {flops / 1e12:.1f} T, MFU {mfu}")
    if args.profile:
        profile(runners["packed"], args.profile)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
