"""Rollout throughput: generated tokens/s of `rlvr_jax.sampling.generate` for a model / batch / length.

On CPU it also runs transformers' `generate` (torch) on the same weights, batch and lengths in the same
run and prints the ratio. On an accelerator it prints the fraction of the HBM-bandwidth roofline:
bytes read per decode step (weights in the compute dtype + the filled part of the KV cache, averaged
over the steps) / measured step time / peak bandwidth.

Timings exclude compilation (a warm-up call compiles first; its time is printed separately). The
end-to-end figure includes prefill; the decode-only figure subtracts a prefill + 1 token run.

    python bench/sampler.py                       # SmolLM2-135M fp32, batch 16, 64 + 128 tokens
    python bench/sampler.py --model random-smollm2 --dtype bfloat16 --batch 256 --new-tokens 1024
    python bench/sampler.py --model /path/to/hf_dir --peak-gbps 3350
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time


def _single_thread_requested(argv) -> bool:
    return any(a in ("--threads=1",) for a in argv) or any(
        a == "--threads" and i + 1 < len(argv) and argv[i + 1] == "1" for i, a in enumerate(argv))


if _single_thread_requested(sys.argv[1:]):
    # Must be set before jax initialises its CPU client: one compute thread, like torch below.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                               " intra_op_parallelism_threads=1").strip()

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rlvr_jax import models, sampling  # noqa: E402
from rlvr_jax.models import transformer as tfm  # noqa: E402

# Peak HBM bandwidth in GB/s by `device_kind` substring (vendor data sheets).
PEAK_GBPS = {
    "H200": 4800, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935,
    "A100": 1555, "L4": 300, "TPU v4": 1228, "TPU v5 lite": 819, "TPU v5e": 819, "TPU v5p": 2765,
    "TPU v6": 1640,
}
SMOLLM2_SHAPES = dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                      num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True, rope_theta=100000.0,
                      rms_norm_eps=1e-5, max_position_embeddings=8192)


def load_model(name: str, dtype: str):
    """(cfg, params, hf_dir): the SmolLM2 fixture, random SmolLM2-shaped weights, or an HF directory."""
    if name == "smollm2":
        from rlvr_jax.models import gguf_import

        path = gguf_import.ensure_smollm2()
    elif name == "random-smollm2":
        cfg = models.ModelConfig(**SMOLLM2_SHAPES)
        params = models.init_params(cfg, jax.random.key(0))
        path = tempfile.mkdtemp(prefix="bench_sampler_")
        atexit.register(shutil.rmtree, path, ignore_errors=True)  # ~0.5 GB of safetensors
        models.save_hf(path, cfg, params)
    else:
        path = name
    cfg, params = models.load_hf(path, dtype=dtype)
    return cfg.replace(dtype=dtype, param_dtype=dtype), params, path


def ours_runner(params, cfg, prompts, sample_kw):
    """`run(t)`: one synchronised `generate` call with `t` new tokens."""
    def run(new_tokens):
        res = sampling.generate(params, cfg, prompts, max_new_tokens=new_tokens, progress=False, **sample_kw)
        jax.block_until_ready(res.response_ids)
    return run


def hf_runner(path, prompts, new_tokens, sample_kw, dtype, threads=None):
    """`run()`: transformers' `generate` on the same prompts (equal lengths, no padding), every row to full length."""
    import torch
    import transformers

    if threads:
        torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    model.generation_config.eos_token_id = None
    ids = torch.tensor(np.array(prompts))
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
              pad_token_id=0, eos_token_id=None)
    if sample_kw.get("greedy", False):
        kw.update(do_sample=False)
    else:
        kw.update(do_sample=True, temperature=sample_kw["temperature"], top_p=sample_kw["top_p"],
                  top_k=sample_kw["top_k"] or None)

    def run():
        with torch.inference_mode():
            out = model.generate(ids, **kw)
        assert out.shape[1] == ids.shape[1] + new_tokens
    with torch.inference_mode():
        model.generate(ids[:, :8], **dict(kw, max_new_tokens=2, min_new_tokens=2))  # warm-up
    return run


def timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def roofline(cfg, params, batch, prompt_len, new_tokens, decode_s, peak_gbps, cache_dtype):
    """Fraction of peak bandwidth reached by the decode steps.

    Returns `(useful fraction, weight bytes, mean filled-KV bytes, full-KV bytes)`. "Useful" counts the
    weights in the compute dtype plus the KV slots filled so far (prompt + half the new tokens on
    average); the full-KV figure is the whole cache, an upper bound on what the windowed attention reads.
    """
    weight_bytes = sum(x.size for x in jax.tree.leaves(params)) * jnp.dtype(cfg.dtype).itemsize
    per_slot = sampling.kv_cache_bytes(cfg, batch, 1, cache_dtype)
    kv_filled, kv_full = per_slot * (prompt_len + new_tokens / 2), per_slot * (prompt_len + new_tokens)
    step_s = decode_s / (new_tokens - 1)
    return (weight_bytes + kv_filled) / step_s / (peak_gbps * 1e9), weight_bytes, kv_filled, kv_full


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2 | random-smollm2 | path to an HF directory")
    ap.add_argument("--dtype", default="float32", help="params and compute dtype")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sample", action="store_true", help="temperature sampling instead of greedy")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers comparison on CPU")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU compute threads for both sides (1 also restricts XLA); less sensitive to load")
    ap.add_argument("--peak-gbps", type=float, default=None, help="peak memory bandwidth (default: table)")
    return ap.parse_args(argv)


def measure(args, cfg, params, path, prompts, sample_kw):
    """Compile-including first call, then interleaved timed repetitions of ours (full, prefill) and HF."""
    ours = ours_runner(params, cfg, prompts, sample_kw)
    first = timed(ours, args.new_tokens)
    ours(1)  # compile the prefill-only program
    hf = None
    if jax.default_backend() == "cpu" and not args.no_hf:
        hf = hf_runner(path, prompts, args.new_tokens, sample_kw, args.dtype, args.threads)
    # Interleaved, best of each: both sides see the same (shared-machine) load.
    times = {"full": [], "prefill": [], "hf": []}
    for _ in range(args.reps):
        times["full"].append(timed(ours, args.new_tokens))
        times["prefill"].append(timed(ours, 1))
        if hf is not None:
            times["hf"].append(timed(hf))
    return first, times


def main(argv=None):
    args = parse_args(argv)
    cfg, params, path = load_model(args.model, args.dtype)
    rng = np.random.default_rng(0)
    prompts = rng.integers(100, cfg.vocab_size, size=(args.batch, args.prompt_len)).tolist()
    sample_kw = (dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k) if args.sample
                 else dict(greedy=True))
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} x{jax.device_count()} ({jax.default_backend()}), cpus: {os.cpu_count()}, "
          f"threads: {args.threads or 'default'}, load avg: {os.getloadavg()[0]:.1f}")
    print(f"model: {args.model} ({cfg.num_layers} layers, d={cfg.hidden_size}, vocab={cfg.vocab_size}), "
          f"dtype {args.dtype}, batch {args.batch}, prompt {args.prompt_len}, new tokens {args.new_tokens}, "
          f"{'sampled ' + str(sample_kw) if args.sample else 'greedy'}")
    first, times = measure(args, cfg, params, path, prompts, sample_kw)
    full, prefill = min(times["full"]), min(times["prefill"])
    gen = args.batch * args.new_tokens
    decode_s = max(full - prefill, 1e-9)
    decode_tps = args.batch * (args.new_tokens - 1) / decode_s
    print(f"rlvr_jax: first call (compile + run) {first:.2f} s; end-to-end {full:.3f} s = {gen / full:.1f} tok/s "
          f"(prefill + 1 token {prefill * 1e3:.0f} ms); decode only {decode_tps:.1f} tok/s")
    if times["hf"]:
        t_hf = min(times["hf"])
        print(f"transformers generate: {t_hf:.3f} s = {gen / t_hf:.1f} tok/s")
        print(f"ratio rlvr_jax / transformers (end-to-end tok/s): {t_hf / full:.2f}x")
    print("all times (s): " + "; ".join(f"{k} " + ", ".join(f"{t:.2f}" for t in v) for k, v in times.items() if v))
    print(f"load avg after: {os.getloadavg()[0]:.1f}")
    peak = args.peak_gbps or next((v for k, v in PEAK_GBPS.items() if k in dev.device_kind), None)
    if peak:
        cache_dtype = cfg.dtype if jax.default_backend() == "cpu" else "bfloat16"
        frac, wb, kv, kv_full = roofline(cfg, params, args.batch, args.prompt_len, args.new_tokens, decode_s, peak,
                                         cache_dtype)
        print(f"roofline: {(wb + kv) / 1e6:.0f} MB/step useful (weights {wb / 1e6:.0f}, mean filled KV "
              f"{kv / 1e6:.0f}; whole cache read {kv_full / 1e6:.0f}) at {peak:.0f} GB/s -> {frac:.1%} of peak")
    elif jax.default_backend() != "cpu":
        print(f"no peak bandwidth known for {dev.device_kind!r}: pass --peak-gbps for the roofline fraction")


if __name__ == "__main__":
    main()
