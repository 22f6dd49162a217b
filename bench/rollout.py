"""Rollout engine benchmarks: RL-shaped workloads against transformers, side by side in one run.

Workloads (`--workload`):
  realistic  SmolLM2-135M (the fixture), MATH500 prompts in the chat template, n samples each,
             temperature 0.6, EOS on, <= 256 new tokens (long-tailed lengths). Useful tokens/s (tokens
             of the responses, up to their EOS) of `rlvr_jax.sampling.generate` vs transformers `generate`
             (one static batch, torch defaults) and vs transformers' continuous batching
             (`model.generate_batch`); slot utilisation; the bf16 rollout/trainer log-prob mismatch.
  fixed      batch 16, 64 prompt + 128 new tokens, no EOS, vs transformers `generate`.
  gpu        Qwen2.5-1.5B shapes, random bf16 weights, 256 rows: "realistic" lengths (a stop set that a
             near-uniform random model hits with probability ~1/1000 per token: geometric lengths) and
             worst-case (no stop, every row to the limit); % of the HBM-bandwidth roofline on the bytes
             actually needed (bf16 weights per decode step + each token's filled KV prefix).
Repetitions are interleaved (each side sees the same load); medians are reported, with the load average
before and after. Compilation is excluded (one warm-up call per side first).

On CPU, XLA's single host device runs on every core; to decode data-parallel over N host devices set
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (slots are split over them).

    python bench/rollout.py --workload realistic --dtype bfloat16 --prompts 32 --reps 3
    python bench/rollout.py --workload realistic --dtype float32 --prompts 32 --reps 3
    python bench/rollout.py --workload realistic --dtype bfloat16 --prompts 2 --n 4 --max-new-tokens 128 --reps 1 --engine-only  # mismatch
    python bench/rollout.py ... --engine-only --residual-dtype bfloat16   # the mismatch with every matmul output rounded
    python bench/rollout.py --workload fixed --dtype float32 --reps 5
    python bench/rollout.py --workload gpu --reps 3            # when an accelerator is present
    python bench/rollout.py --workload realistic --prompts 2 --n 2 --max-new-tokens 16 --reps 1   # smoke
    python bench/rollout.py --workload gpu --layers 1 --rows 4 --max-new-tokens 8 --reps 1          # smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rlvr_jax import models, sampling  # noqa: E402
from rlvr_jax import sharding as shd  # noqa: E402
from rlvr_jax.training import logprobs as trainer_logprobs  # noqa: E402

MATH500 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "eval", "math500",
                       "test.jsonl")
QWEN15B_SHAPES = dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
                      num_heads=12, num_kv_heads=2, head_dim=128, tie_word_embeddings=True, rope_theta=10000.0,
                      rms_norm_eps=1e-6, max_position_embeddings=32768, dtype="bfloat16", param_dtype="bfloat16")
PEAK_GBPS = {"H200": 4800, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039, "A100": 1555, "L4": 300,
             "TPU v4": 1228, "TPU v5 lite": 819, "TPU v5e": 819, "TPU v5p": 2765, "TPU v6": 1640}


def data_parallel(params, cfg):
    """(placed params, sharder): slots over every device (data axis), weights replicated."""
    sharder = shd.Sharder(shd.make_mesh((jax.device_count(), 1, 1)))
    placed = jax.device_put(params, sharder.tree_shardings(models.param_logical_axes(cfg), params))
    return placed, sharder


def math500_prompts(tokenizer, count: int) -> list[list[int]]:
    """The first `count` MATH500 problems in the model's chat template, tokenized."""
    from rlvr_jax.data import datasets, prompts

    examples = datasets.load_dataset(MATH500, limit=count)
    texts = [prompts.build_prompt(e, "chat_template", tokenizer) for e in examples]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def interleaved(runners: dict, reps: int) -> dict:
    """Runs each runner once (warm-up), then `reps` interleaved rounds; returns {name: [(s, result)]}."""
    for name, run in runners.items():
        t0 = time.perf_counter()
        run()
        print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    out = {k: [] for k in runners}
    for rep in range(reps):
        for name, run in runners.items():
            t0 = time.perf_counter()
            res = run()
            out[name].append((time.perf_counter() - t0, res))
            print(f"  rep {rep + 1}/{reps} {name}: {out[name][-1][0]:.1f} s", flush=True)
    return out


def ours(params, cfg, prompts, sharder, **kw):
    def run():
        stats = sampling.Stats()
        res = sampling.generate(params, cfg, prompts, sharder=sharder, progress=False, stats=stats, **kw)
        return res, stats
    return run


def hf_static(model, prompts, n, max_new_tokens, eos, temperature):
    """transformers `generate` on one left-padded batch, `n` return sequences; returns useful token counts."""
    import torch

    p = max(map(len, prompts))
    ids = torch.zeros((len(prompts), p), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, q in enumerate(prompts):
        ids[i, p - len(q):], mask[i, p - len(q):] = torch.tensor(q), 1
    sample = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature else dict(do_sample=False)

    def run():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 min_new_tokens=0 if eos is not None else max_new_tokens, num_return_sequences=n,
                                 eos_token_id=eos, pad_token_id=0 if eos is None else eos, **sample)
        return _useful(out[:, p:].tolist(), eos)
    return run


def hf_continuous(model, prompts, n, max_new_tokens, eos, temperature):
    """transformers' continuous batching (`generate_batch`), each prompt repeated `n` times.

    Its defaults size the paged KV cache from accelerator memory (on CPU: ~8 GB, more than needed), so the
    cache is sized here to hold every row at full length; the rest is at its defaults.
    """
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=0,
                              top_p=1.0, eos_token_id=eos, pad_token_id=eos)
    inputs = [q for q in prompts for _ in range(n)]
    pages = -(-(max(map(len, prompts)) + max_new_tokens) // 256)  # default page_size 256
    cb = ContinuousBatchingConfig(num_blocks=len(inputs) * pages + 8, max_batch_tokens=2048)

    def run():
        out = model.generate_batch(inputs=inputs, generation_config=config, continuous_batching_config=cb,
                                   progress_bar=False)
        return _useful([o.generated_tokens for o in out.values()], eos)
    return run


def _useful(rows, eos) -> int:
    """Tokens up to and including the first EOS of each row."""
    return sum((r.index(eos) + 1) if eos is not None and eos in r else len(r) for r in rows)


def mismatch(params, cfg, res, temperature) -> dict:
    """|rollout log-prob - trainer recomputation| over response tokens, recomputed in bf16 and in fp32."""
    ids = np.concatenate([res.prompt_ids, res.response_ids], axis=1)
    mask = np.concatenate([res.prompt_mask, res.response_mask], axis=1)
    m = res.response_mask.astype(bool)
    fn = jax.jit(trainer_logprobs.response_logprobs, static_argnames=("cfg", "response_len", "chunk", "with_entropy"))
    out = {}
    for dt in ("bfloat16", "float32"):
        c = cfg.replace(dtype=dt)
        p = jax.tree.map(lambda x: x.astype(dt), params)
        logp, _ = fn(p, c, ids, mask, ids.shape[1] - res.prompt_ids.shape[1], temperature=temperature, chunk=128,
                     with_entropy=False)
        diff = np.abs(res.logprob_array[m] - np.asarray(logp)[m])
        out[dt] = (float(diff.mean()), float(diff.max()))
    return out


def median_rate(samples, tokens_of) -> tuple[float, float]:
    secs = statistics.median(s for s, _ in samples)
    return secs, tokens_of(samples[0][1]) / secs


def realistic(args):
    import torch
    import transformers

    from rlvr_jax.models import gguf_import

    path = gguf_import.ensure_smollm2()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    prompts = math500_prompts(tok, args.prompts)
    cfg, params = models.load_hf(path, dtype=args.dtype)
    cfg = cfg.replace(dtype=args.dtype, param_dtype=args.dtype, residual_dtype=args.residual_dtype)
    placed, sharder = data_parallel(params, cfg)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=0.6, n=args.n, stop_token_ids=[eos],
              sub_batch_size=args.slots or "auto")
    runners = {"rlvr_jax": ours(placed, cfg, prompts, sharder, seed=0, **kw)}
    if not args.engine_only:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).eval()
        runners["hf_generate"] = hf_static(model, prompts, args.n, args.max_new_tokens, eos, 0.6)
        if not args.no_generate_batch:
            runners["hf_generate_batch"] = hf_continuous(model, prompts, args.n, args.max_new_tokens, eos, 0.6)
    print(f"prompts {len(prompts)} x n {args.n} (prompt tokens {min(map(len, prompts))}-{max(map(len, prompts))}), "
          f"T=0.6, EOS on, <= {args.max_new_tokens} new tokens, dtype {args.dtype}")
    times = interleaved(runners, args.reps)
    res, stats = times["rlvr_jax"][0][1]
    secs, rate = median_rate(times["rlvr_jax"], lambda r: int(r[0].response_lengths.sum()))
    print(f"rlvr_jax: {secs:.2f} s, {rate:.1f} useful tok/s; lengths mean {res.response_lengths.mean():.0f} "
          f"max {res.response_lengths.max()}, stopped {np.mean([f == 'stop' for f in res.finish_reason]):.0%}; "
          f"slot utilisation {stats.utilisation():.0%} ({stats.segments} segments, {stats.refills} refills, "
          f"{stats.decode_steps} decode steps)")
    for name in runners:
        if name != "rlvr_jax":
            s, r = median_rate(times[name], lambda x: x)
            print(f"{name}: {s:.2f} s, {r:.1f} useful tok/s -> rlvr_jax is {rate / r:.2f}x")
    for dt, (mean, mx) in mismatch(params, cfg, res, 0.6).items():
        print(f"rollout ({args.dtype}, residual {args.residual_dtype}) vs trainer recomputation ({dt}): mean |dlogp| {mean:.2e}, max {mx:.2e}")
    print("all times (s): " + "; ".join(f"{k} " + ", ".join(f"{s:.2f}" for s, _ in v) for k, v in times.items()))


def fixed(args):
    import torch
    import transformers

    from rlvr_jax.models import gguf_import

    path = gguf_import.ensure_smollm2()
    cfg, params = models.load_hf(path, dtype=args.dtype)
    cfg = cfg.replace(dtype=args.dtype, param_dtype=args.dtype)
    placed, sharder = data_parallel(params, cfg)
    rng = np.random.default_rng(0)
    prompts = rng.integers(100, cfg.vocab_size, size=(args.batch, args.prompt_len)).tolist()
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).eval()
    model.generation_config.eos_token_id = None
    runners = {"rlvr_jax": ours(placed, cfg, prompts, sharder, max_new_tokens=args.new_tokens, greedy=True,
                                sub_batch_size=None),
               "hf_generate": hf_static(model, prompts, 1, args.new_tokens, None, 0.0)}
    print(f"batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, greedy, no EOS, {args.dtype}")
    times = interleaved(runners, args.reps)
    s_ours, r_ours = median_rate(times["rlvr_jax"], lambda r: int(r[0].response_lengths.sum()))
    s_hf, r_hf = median_rate(times["hf_generate"], lambda x: x)
    print(f"rlvr_jax: {s_ours:.2f} s, {r_ours:.1f} tok/s; transformers generate: {s_hf:.2f} s, {r_hf:.1f} tok/s "
          f"-> {r_ours / r_hf:.2f}x")
    print("all times (s): " + "; ".join(f"{k} " + ", ".join(f"{s:.2f}" for s, _ in v) for k, v in times.items()))


def gpu(args):
    cfg = models.ModelConfig(**dict(QWEN15B_SHAPES, num_layers=args.layers))
    params = models.init_params(cfg, jax.random.key(0))
    placed, sharder = data_parallel(params, cfg)
    dev = jax.devices()[0]
    peak = args.peak_gbps or next((v for k, v in PEAK_GBPS.items() if k in dev.device_kind), None)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(100, 150000, size=int(k)).tolist() for k in rng.integers(60, 200, size=args.rows)]
    stops = list(range(1000, 1000 + cfg.vocab_size // 1000))  # ~1/1000 per token under a near-uniform model
    common = dict(max_new_tokens=args.max_new_tokens, temperature=1.0, sub_batch_size=args.rows)
    runners = {"realistic": ours(placed, cfg, prompts, sharder, stop_token_ids=stops, **common),
               "worst_case": ours(placed, cfg, prompts, sharder, **common)}
    times = interleaved(runners, args.reps)
    weights = sum(x.size for x in jax.tree.leaves(params)) * 2
    kv_per_token = sampling.kv_cache_bytes(cfg, 1, 1, "bfloat16")
    for name, samples in times.items():
        secs = statistics.median(s for s, _ in samples)
        res, stats = samples[0][1]
        plen = np.repeat([len(q) for q in prompts], 1)
        # Each decode step reads the weights once; token i of a row reads its prompt + i cached positions.
        kv = sum(kv_per_token * (L * p + L * (L - 1) / 2) for p, L in zip(plen, res.response_lengths))
        need = stats.decode_steps * weights + kv
        frac = f"{need / secs / (peak * 1e9):.1%} of {peak} GB/s" if peak else "(no peak known: --peak-gbps)"
        print(f"{name}: {secs:.2f} s, {res.response_lengths.sum() / secs:.0f} tok/s, mean length "
              f"{res.response_lengths.mean():.0f}, utilisation {stats.utilisation():.0%}, "
              f"{need / 1e9:.1f} GB needed -> {frac}")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=("realistic", "fixed", "gpu"), default="realistic")
    ap.add_argument("--dtype", default="bfloat16", help="params and compute dtype (CPU workloads)")
    ap.add_argument("--residual-dtype", default="float32",
                    help="residual stream and matmul outputs (ModelConfig.residual_dtype; bfloat16: transformers' arithmetic)")
    ap.add_argument("--prompts", type=int, default=32, help="realistic: MATH500 problems")
    ap.add_argument("--n", type=int, default=4, help="realistic: samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--slots", type=int, default=0, help="decode slots (0: the engine's default)")
    ap.add_argument("--no-generate-batch", action="store_true", help="skip transformers' generate_batch")
    ap.add_argument("--engine-only", action="store_true",
                    help="realistic: rlvr_jax alone (schedule figures and the rollout/trainer mismatch; no ratio)")
    ap.add_argument("--batch", type=int, default=16, help="fixed: rows")
    ap.add_argument("--prompt-len", type=int, default=64, help="fixed: prompt tokens")
    ap.add_argument("--new-tokens", type=int, default=128, help="fixed: new tokens")
    ap.add_argument("--rows", type=int, default=256, help="gpu: rows (and slots)")
    ap.add_argument("--layers", type=int, default=28, help="gpu: decoder layers (fewer only to smoke the script)")
    ap.add_argument("--peak-gbps", type=float, default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", default="", help="write a jax.profiler trace of the timed rounds here")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} x{jax.device_count()} ({jax.default_backend()}), cpus: {os.cpu_count()}, "
          f"load avg before: {os.getloadavg()[0]:.1f}")
    workload = {"realistic": realistic, "fixed": fixed, "gpu": gpu}[args.workload]
    if args.profile:
        from profile_summary import summarize

        with jax.profiler.trace(args.profile, create_perfetto_trace=True):
            workload(args)
        print(summarize(args.profile))
    else:
        workload(args)
    print(f"load avg after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
