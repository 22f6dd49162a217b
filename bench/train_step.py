"""Update-step throughput: tokens/s of `rlvr_jax.training` forward + backward + AdamW.

Times `make_update_fn(...)(state, batch)` (one mini-batch, GRPO loss with entropy, chunked
float32 log-probs) on random SmolLM2-135M-shaped weights (or smaller via flags). Tokens are
prompt + response tokens per step (every row full length).

- On an accelerator it prints model FLOPs utilisation: model FLOPs per step / step time / peak
  FLOP/s (peak from `--peak-tflops` or a device table). Model FLOPs = `6 N_layers` per token +
  `6 d V` per response token (the output projection runs on response positions only) +
  `12 L H E T` per token for attention (full T x T square, PaLM's convention); rematerialised
  recompute is not counted.
- On CPU it also times an equivalent PyTorch training step in the same run (transformers model with
  the same weights and shapes, AdamW, clip 1.0, PPO-clip loss on log_softmax(logits)[target],
  masked token-mean) and prints the ratio; both print their first-step loss as a same-workload check.

Timings exclude compilation (a warm-up step compiles first); the median of `--steps` is reported.

    python bench/train_step.py                                   # SmolLM2-135M shape, fp32, 2 x (32 + 96)
    python bench/train_step.py --layers 4 --batch 8              # smaller / bigger
    python bench/train_step.py --dtype bfloat16 --batch 64 --prompt-len 256 --response-len 1024 --remat full
"""

from __future__ import annotations

import argparse
import os
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
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--micro-batch", type=int, default=None, help="rows per forward/backward (default: batch)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--response-len", type=int, default=96)
    p.add_argument("--dtype", default=None, help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    p.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    p.add_argument("--chunk", type=int, default=256, help="response positions per float32 logits block")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison on CPU")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads: 1 runs XLA and torch single-threaded; N > 1 sets torch only; 0 keeps "
                        "defaults. Default 1: on a shared machine torch's OpenMP threads spin-wait and slow "
                        "down >10x when a core is busy")
    return p.parse_args()


def make_batch(args, vocab: int) -> dict:
    rng = np.random.default_rng(0)
    b, t = args.batch, args.prompt_len + args.response_len
    return {
        "input_ids": rng.integers(0, vocab, (b, t)).astype(np.int32),
        "attention_mask": np.ones((b, t), np.int32),
        "response_mask": np.ones((b, args.response_len), np.int32),
        "old_logp": np.full((b, args.response_len), -np.log(vocab), np.float32),
        "advantages": rng.normal(size=(b,)).astype(np.float32),
    }


def time_jax(cfg, params, batch, args) -> tuple[float, float, float]:
    """(compile + first step seconds, median step seconds, first-step loss)."""
    import jax

    from rlvr_jax import training

    opt = training.OptimizerConfig(learning_rate=1e-6)
    ucfg = training.UpdateConfig(micro_batch_size=args.micro_batch, logprob_chunk=args.chunk)
    update = training.make_update_fn(cfg, ucfg, opt)
    state = training.create_train_state(params, opt)
    t0 = time.perf_counter()
    state, metrics = update(state, batch)
    loss = float(metrics["pg_loss"])
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = update(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), loss


def time_torch(hf_dir, batch, args) -> tuple[float, float]:
    """(median step seconds, first-step loss) of a transformers + torch.optim.AdamW step."""
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

    def step():
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

    loss = step()  # warm-up
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), loss


def model_flops_per_step(cfg, batch: int, prompt_len: int, response_len: int) -> float:
    """Forward + backward model FLOPs of one step (see the module docstring)."""
    d, f, l = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    qd, kd = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    n_layers = l * (d * qd + 2 * d * kd + qd * d + 3 * d * f)
    t = prompt_len + response_len
    per_seq = 6 * n_layers * t + 6 * d * cfg.vocab_size * response_len + 12 * l * qd * t * t
    return batch * per_seq


def main():
    args = parse_args()
    if args.threads:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if args.threads == 1 else ""
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    import jax

    from rlvr_jax import models

    backend = jax.default_backend()
    dtype = args.dtype or ("float32" if backend == "cpu" else "bfloat16")
    cfg = models.ModelConfig(**dict(SMOLLM2, num_layers=args.layers, vocab_size=args.vocab), dtype=dtype,
                             remat=args.remat)
    params = models.init_params(cfg, jax.random.PRNGKey(0))
    batch = make_batch(args, cfg.vocab_size)
    tokens = args.batch * (args.prompt_len + args.response_len)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    device = jax.devices()[0]
    print(f"device {device.device_kind} ({backend}), {n_params / 1e6:.1f}M params, {cfg.num_layers} layers, "
          f"vocab {cfg.vocab_size}, dtype {dtype}, remat {cfg.remat}, batch {args.batch} x "
          f"({args.prompt_len} + {args.response_len}), micro {args.micro_batch or args.batch}, chunk {args.chunk}")
    first, step_s, loss = time_jax(cfg, params, batch, args)
    tps = tokens / step_s
    print(f"rlvr_jax : compile+first {first:.1f} s, step {step_s * 1e3:.0f} ms, {tps:,.0f} tokens/s, loss {loss:.6f}")
    if backend != "cpu":
        peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in device.device_kind), None)
        flops = model_flops_per_step(cfg, args.batch, args.prompt_len, args.response_len) / step_s
        mfu = f"{flops / (peak * 1e12):.1%} of {peak} TFLOP/s" if peak else "unknown peak (pass --peak-tflops)"
        print(f"model FLOP/s {flops / 1e12:.1f} T, MFU {mfu}")
    elif not args.no_torch:
        import torch

        hf_dir = tempfile.mkdtemp(prefix="bench_train_step_")
        models.save_hf(hf_dir, cfg, params)
        torch_s, torch_loss = time_torch(hf_dir, batch, args)
        print(f"torch    : step {torch_s * 1e3:.0f} ms, {tokens / torch_s:,.0f} tokens/s, loss {torch_loss:.6f} "
              f"({torch.get_num_threads()} threads, torch {torch.__version__})")
        print(f"ratio rlvr_jax / torch tokens/s: {torch_s / step_s:.2f}x")


if __name__ == "__main__":
    main()
