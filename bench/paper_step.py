"""One full paper-recipe RL step, timed by phase: rollout, reward, reference (+ old) log-probs, update.

The 1-shot RLVR step (GRPO on Qwen2.5-Math-1.5B): 128 prompt rows x n = 8 samples, up to 3,072 new
tokens, temperature 0.6, AdamW lr 1e-6, entropy 0.001, KL (low_var_kl) 0.001 to a frozen bf16
reference, token-mean loss, micro-batches of 8. Random weights, and EOS disabled (no stop tokens),
so every response runs to `--max-new-tokens`: the worst-case step. Compute is bf16 over float32
master params; attention is cuDNN flash on GPU (`--attention auto`) and the XLA einsum elsewhere.

Phases run one after the other, each closed with `block_until_ready` (the trainer overlaps reward
scoring with the reference pass; here they are separated to time each):
  rollout    `sampling.generate` (prefill + decode loop, per sub-batch of `--sub-batch-size` rows)
  reward     detokenise + `RewardPool.score` against "12.8" + GRPO advantages (host)
  reference  `compute_logprobs` of the policy (old log-probs) and of the reference params
  update     `make_update_fn` (forward + backward over micro-batches + one AdamW step)

Every step counts XLA compilations (`rlvr_jax.compile_counter`); the script exits non-zero if any
step after the first compiles anything. It prints per-phase seconds of the last step, tokens/s,
rollout % of the HBM roofline, update MFU, and the device's peak memory when it reports one.

    python bench/paper_step.py                          # the paper step (accelerator)
    python bench/paper_step.py --tiny --steps 2         # CPU smoke run, a few seconds per step
    python bench/paper_step.py --prompts 32 --max-new-tokens 1024 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

from bench.train_step import model_flops_per_step  # noqa: E402
from configs import common  # noqa: E402
from rlvr_jax import algorithms, experiment, sampling, training  # noqa: E402
from rlvr_jax.compile_counter import CompileCounter  # noqa: E402
from rlvr_jax.models import presets, transformer  # noqa: E402
from rlvr_jax.rewards import RewardPool  # noqa: E402
from rlvr_jax.training.rollout_batch import make_rollout_batch  # noqa: E402

# (device_kind substring, peak HBM GB/s, dense bf16 TFLOP/s), vendor data sheets; first match wins.
DEVICES = (
    ("H200", 4800, 989),
    ("H100 PCIe", 2000, 756),
    ("H100", 3350, 989),  # SXM
    ("A100-SXM4-80GB", 2039, 312),
    ("A100 80GB", 1935, 312),
)
GOLD = "12.8"  # pi1's answer
PHASES = ("rollout", "reward", "reference", "update")
# Workload of the paper step and of the CPU smoke run (`--tiny`); explicit flags override either.
PAPER = dict(prompts=128, n=8, prompt_len=100, max_new_tokens=3072, sub_batch_size=256, micro_batch=8, chunk=512)
TINY = dict(prompts=4, n=2, prompt_len=12, max_new_tokens=32, sub_batch_size=4, micro_batch=4, chunk=16)
# `--tiny` architecture, as HF config.json fields over the preset's.
TINY_ARCH = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16)
# Token id -> text for the reward phase without a tokenizer: random ids give random math-ish text.
PIECES = tuple("0123456789") + (" ", ".", "+", "=", "x", "\\boxed{", "}", "\\frac{", "{", "The answer is ", "\n")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen2.5-math-1.5b", help=f"architecture: {sorted(presets.PRESETS)}")
    ap.add_argument("--tiny", action="store_true", help="tiny model and workload (CPU smoke run)")
    for name in ("layers", "hidden", "intermediate", "heads", "kv-heads", "head-dim", "vocab"):
        ap.add_argument(f"--{name}", type=int, default=None, help="override the preset's dimension")
    ap.add_argument("--prompts", type=int, default=None, help="prompt rows (paper: 128)")
    ap.add_argument("--n", type=int, default=None, help="samples per prompt (paper: 8)")
    ap.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (pi1 in the chat template: ~100)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="response tokens, all reached (paper: 3072)")
    ap.add_argument("--sub-batch-size", type=int, default=None, help="rollout rows per program (default 256)")
    ap.add_argument("--micro-batch", type=int, default=None, help="rows per forward/backward (paper: 8)")
    ap.add_argument("--chunk", type=int, default=None, help="response positions per float32 logits block")
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype (matmuls, KV cache)")
    ap.add_argument("--param-dtype", default="float32", help="master params")
    ap.add_argument("--ref-dtype", default="bfloat16", help="frozen reference copy")
    ap.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"],
                    help="auto: cudnn on GPU when it runs this config, else xla")
    ap.add_argument("--remat", default="full", choices=["none", "full", "dots"])
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--steps", type=int, default=2, help="RL steps; the first compiles")
    ap.add_argument("--reward-workers", type=int, default=2)
    ap.add_argument("--tokenizer", default="", help="HF tokenizer dir for detokenising (default: a toy id->text map)")
    ap.add_argument("--peak-gbps", type=float, default=None, help="peak HBM GB/s (default: device table)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (default: device table)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="also write the results to this file")
    args = ap.parse_args(argv)
    for key, value in (TINY if args.tiny else PAPER).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def model_config(args):
    """The preset (or tiny) architecture with dimension overrides, dtypes, remat and attention impl.

    Built as a recipe's random-weight model is: `config.model.arch` holds the architecture's HF fields and
    `rlvr_jax.experiment.model_config` makes the `ModelConfig` from it.
    """
    arch = dict(presets.PRESETS[args.preset])
    dims = dict(TINY_ARCH) if args.tiny else {}
    flags = dict(num_hidden_layers=args.layers, hidden_size=args.hidden, intermediate_size=args.intermediate,
                 num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
                 vocab_size=args.vocab)
    dims.update({k: v for k, v in flags.items() if v is not None})
    if ("hidden_size" in dims or "num_attention_heads" in dims) and "head_dim" not in dims:
        arch.pop("head_dim", None)  # A preset's own head_dim (Qwen3, Llama) fits only its own width.
    arch.update(dims)
    config = common.base_config()
    config.model.update(source="random", arch=ml_collections.ConfigDict(arch), dtype=args.dtype,
                        param_dtype=args.param_dtype, remat=args.remat, attention_impl="xla")
    cfg = experiment.model_config(config)
    return cfg.replace(attention_impl=pick_attention(cfg, args.attention))


def pick_attention(cfg, choice: str) -> str:
    """"auto": cudnn when on GPU and a small masked call matches the XLA path; otherwise xla."""
    if choice == "xla" or (choice == "auto" and jax.default_backend() != "gpu"):
        return "xla"
    try:
        err = attention_check(cfg.replace(attention_impl="cudnn"))
    except Exception as e:  # noqa: BLE001 - unsupported shape/dtype/cuDNN version: say why
        if choice == "cudnn":
            raise
        print(f"attention: cudnn unavailable ({type(e).__name__}: {str(e)[:200]}); using xla")
        return "xla"
    print(f"attention: cudnn flash vs xla on a left-padded GQA call: max |diff| {err:.2e} (valid rows), "
          "fully masked rows exactly 0")
    return "cudnn"


def attention_check(cfg) -> float:
    """Max |cudnn - xla| over valid query rows of a small left-padded causal call; asserts masked rows are 0."""
    b, t = 2, 64
    rng = np.random.default_rng(0)
    shape = lambda heads: (b, t, heads, cfg.head_dim)  # noqa: E731
    q, k, v = (jnp.asarray(rng.normal(size=shape(hh)), cfg.dtype) for hh in (cfg.num_heads, cfg.num_kv_heads,
                                                                              cfg.num_kv_heads))
    kv_mask = np.arange(t)[None, :] >= np.array([[0], [t // 2]])  # row 1: half left padding
    mask = jnp.asarray(np.tril(np.ones((t, t), bool))[None] & kv_mask[:, None, :])
    fn = jax.jit(transformer.attention, static_argnums=4)
    out = np.asarray(fn(q, k, v, mask, cfg), np.float32)
    ref = np.asarray(fn(q, k, v, mask, cfg.replace(attention_impl="xla")), np.float32)
    valid = np.asarray(mask.any(-1))
    if not (np.isfinite(out).all() and (out[~valid] == 0).all()):
        raise RuntimeError("cudnn attention left non-zero or non-finite values on fully masked query rows")
    return float(np.abs(out[valid] - ref[valid]).max())


def make_detokenizer(path: str):
    if path:
        from rlvr_jax.data.tokenizers import load_tokenizer

        tok = load_tokenizer(path)
        return lambda rows: tok.batch_decode([list(r) for r in rows], skip_special_tokens=True)
    return lambda rows: ["".join(PIECES[int(i) % len(PIECES)] for i in r) for r in rows]


def run_step(step: int, state, ref_params, cfg, prompts, update, pool, detok, args):
    """One RL step; returns `(state, seconds per phase, CompileCounter per phase, info)`."""
    secs, counters = {}, {p: CompileCounter() for p in PHASES}

    t0 = time.perf_counter()
    with counters["rollout"]:
        result = sampling.generate(
            state.params, cfg, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            stop_token_ids=(), n=args.n, seed=args.seed * 1_000_003 + step, sub_batch_size=args.sub_batch_size,
            progress=False)
    secs["rollout"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with counters["reward"]:
        texts = detok(result.tokens)
        rewards = pool.score(texts, [GOLD] * len(texts))
        advantages = np.asarray(algorithms.grpo_advantages(rewards, result.prompt_index))
    secs["reward"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with counters["reference"]:
        rb = make_rollout_batch(result)
        kw = dict(temperature=args.temperature, micro_batch_size=args.micro_batch, chunk=args.chunk)
        old_logp = training.compute_logprobs(state.params, cfg, rb.arrays(), **kw)["logp"]
        ref_logp = training.compute_logprobs(ref_params, cfg, rb.arrays(), **kw)["logp"]
        jax.block_until_ready((old_logp, ref_logp))
    secs["reference"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with counters["update"]:
        batch = rb.update_batch(old_logp=old_logp, ref_logp=ref_logp, advantages=advantages)
        state, metrics = update(state, batch)  # donates the old state
        jax.block_until_ready((state, metrics))
    secs["update"] = time.perf_counter() - t0

    metrics = jax.device_get(metrics)
    lengths, valid = result.response_lengths, rb.response_mask > 0
    info = dict(
        response_tokens=int(lengths.sum()), all_full=bool((lengths == args.max_new_tokens).all()),
        seq_tokens=rb.total_tokens(), shape=tuple(rb.input_ids.shape), reward_mean=float(np.mean(rewards)),
        loss=float(metrics["loss"]), kl=float(metrics.get("kl", 0.0)), entropy=float(metrics["entropy"]),
        finite=bool(metrics["finite"]),
        logp_abs_diff=float(np.abs(np.asarray(old_logp) - rb.rollout_logp)[valid].mean()))
    return state, secs, counters, info


def device_peaks(args):
    kind = jax.devices()[0].device_kind
    row = next((r for r in DEVICES if r[0] in kind), None)
    gbps = args.peak_gbps or (row[1] if row else None)
    tflops = args.peak_tflops or (row[2] if row else None)
    return kind, gbps, tflops


def rollout_roofline(cfg, args, rollout_s: float, peak_gbps: float, cache_dtype: str) -> tuple[float, float]:
    """(useful, as-read) fraction of peak HBM bandwidth over the whole rollout phase (prefill included).

    Each decode step of a sub-batch reads the weights in the compute dtype plus its KV cache:
    "useful" counts the filled slots (prompt + half the new tokens on average); "as-read" the whole
    cache (prompt bucket + max_new_tokens): an upper bound, as the engine's attention reads a window
    bucketed to the longest live row.
    """
    rows_total = args.prompts * args.n
    rows = min(args.sub_batch_size or rows_total, rows_total)
    programs = math.ceil(rows_total / rows)
    weight_bytes = presets.num_params(cfg) * jnp.dtype(cfg.dtype).itemsize
    per_slot = sampling.kv_cache_bytes(cfg, rows, 1, cache_dtype)
    filled = per_slot * (args.prompt_len + args.max_new_tokens / 2)
    full = per_slot * (sampling.bucket_length(args.prompt_len) + args.max_new_tokens)
    steps = programs * args.max_new_tokens
    denom = rollout_s * peak_gbps * 1e9
    return steps * (weight_bytes + filled) / denom, steps * (weight_bytes + full) / denom


def report(cfg, args, history, peaks) -> dict:
    """Prints the last step's figures; returns them as a dict."""
    kind, gbps, tflops = peaks
    secs, info = history[-1]["secs"], history[-1]["info"]
    total = sum(secs.values())
    rows = args.prompts * args.n
    # fwd + bwd of every row's tokens (EOS is disabled, so every row is full); the 6 d V term is counted at
    # prompt positions too, which the update does not project (~3% of that term at the paper's shapes).
    row_len = args.prompt_len + args.max_new_tokens
    flops = model_flops_per_step(cfg, rows * row_len, row_len)
    rates = {"rollout": (info["response_tokens"] / secs["rollout"], "generated tok/s"),
             "reward": (rows / secs["reward"], "responses/s"),
             "reference": (2 * info["seq_tokens"] / secs["reference"], "tok/s (2 forward passes)"),
             "update": (info["seq_tokens"] / secs["update"], "tok/s (fwd+bwd)")}
    print(f"\nlast step ({len(history)} of {len(history)}), batch {args.prompts} x {args.n} = {rows} rows, "
          f"update batch {info['shape'][0]} x {info['shape'][1]} slots, {info['seq_tokens']:,} real tokens:")
    for p in PHASES:
        rate, unit = rates[p]
        print(f"  {p:<10} {secs[p]:9.2f} s  {100 * secs[p] / total:5.1f}%  {rate:14,.0f} {unit}")
    print(f"  {'total':<10} {total:9.2f} s  ({total / 60:.2f} min; target <= 4 min on one H100)")
    out = {"device": kind, "backend": jax.default_backend(), "seconds": secs, "total_s": total,
           "rates": {p: r for p, (r, _) in rates.items()}, "info": info}
    cache_dtype = cfg.dtype if jax.default_backend() == "cpu" else "bfloat16"
    if gbps:
        useful, as_read = rollout_roofline(cfg, args, secs["rollout"], gbps, cache_dtype)
        print(f"rollout: {useful:.1%} of the {gbps:.0f} GB/s HBM roofline (weights + filled KV per decode step; "
              f"{as_read:.1%} counting the whole preallocated cache; prefill included in the time; target >= 50%)")
        out.update(rollout_roofline=useful, rollout_roofline_as_read=as_read)
    if tflops:
        mfu = flops / secs["update"] / (tflops * 1e12)
        ref_mfu = (2 * flops / 3) / secs["reference"] / (tflops * 1e12)
        print(f"update: MFU {mfu:.1%} of {tflops:.0f} TFLOP/s ({flops / 1e12:.1f} TFLOP model FLOPs, remat recompute "
              f"not counted; target >= 40%); reference: {ref_mfu:.1%} (2 forward passes)")
        out.update(update_mfu=mfu, reference_mfu=ref_mfu)
    if not (gbps and tflops):
        print(f"no peak figures for {kind!r}: pass --peak-gbps / --peak-tflops for roofline and MFU")
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        print(f"device memory: peak {stats['peak_bytes_in_use'] / 1e9:.2f} GB of "
              f"{stats.get('bytes_limit', 0) / 1e9:.2f} GB")
        out["peak_bytes"] = int(stats["peak_bytes_in_use"])
    return out


def write_json(args, history, summary=None) -> None:
    """`--json`: per-step seconds and compile counts so far, plus the final summary when given."""
    if not args.json:
        return
    steps = [{"seconds": h["secs"], "compiles": h["total"].count, "compiled": h["total"].by_name(),
              "info": h["info"]} for h in history]
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "steps": steps, "summary": summary}, f, indent=2, default=str)


def setup(args):
    """`(cfg, state, ref_params, update, prompts)`: random policy + bf16 reference, the paper's update."""
    cfg = model_config(args)
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({jax.default_backend()}) x{jax.device_count()}, jax {jax.__version__}")
    print(f"model: {'tiny ' if args.tiny else ''}{args.preset} shapes, {presets.num_params(cfg) / 1e6:,.1f}M params "
          f"({cfg.num_layers} layers, d {cfg.hidden_size}, {cfg.num_heads}/{cfg.num_kv_heads} heads x "
          f"{cfg.head_dim}, vocab {cfg.vocab_size}), params {cfg.param_dtype}, compute {cfg.dtype}, ref "
          f"{args.ref_dtype}, attention {cfg.attention_impl}, remat {cfg.remat}")
    print(f"step: {args.prompts} prompts x n={args.n}, prompt {args.prompt_len} tokens, {args.max_new_tokens} new "
          f"tokens (EOS disabled), rollout sub-batch {args.sub_batch_size}, micro-batch {args.micro_batch}, "
          f"logits chunk {args.chunk}, temperature {args.temperature}")
    params = transformer.init_params(cfg, jax.random.key(args.seed))
    opt_cfg = training.OptimizerConfig(learning_rate=1e-6)  # the paper: AdamW, constant 1e-6, clip 1.0
    ucfg = training.UpdateConfig(micro_batch_size=args.micro_batch, entropy_coeff=0.001, use_kl_loss=True,
                                 kl_coef=0.001, kl_kind="low_var_kl", agg_mode="token-mean",
                                 temperature=args.temperature, logprob_chunk=args.chunk)
    state = training.create_train_state(params, opt_cfg, seed=args.seed)  # copies params
    ref_params = jax.tree.map(lambda x: x.astype(args.ref_dtype), params)
    del params
    prompt = np.random.default_rng(args.seed).integers(0, cfg.vocab_size, size=args.prompt_len).tolist()
    prompts = [prompt] * args.prompts  # 1-shot: the same example fills every row
    return cfg, state, ref_params, training.make_update_fn(cfg, ucfg, opt_cfg), prompts


def verdict(history) -> int:
    """0 if no step after the first compiled and every update was finite; else 1, saying why."""
    late = [(i + 1, h) for i, h in enumerate(history) if i > 0 and h["total"].count]
    for step, h in late:
        print(f"RECOMPILATION at step {step}: " + "; ".join(
            f"{p}: {h['compiles'][p].summary()}" for p in PHASES if h["compiles"][p].count), file=sys.stderr)
    if late:
        print("FAIL: steps after the first must not compile (shapes or static arguments changed between steps)",
              file=sys.stderr)
        return 1
    if not all(h["info"]["finite"] for h in history):
        print("FAIL: non-finite loss or gradient", file=sys.stderr)
        return 1
    print(f"compiles per step: {[h['total'].count for h in history]} -> OK, nothing compiled after step 1")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg, state, ref_params, update, prompts = setup(args)
    detok = make_detokenizer(args.tokenizer)
    history = []
    with RewardPool(num_workers=args.reward_workers, timeout_s=5.0, require_box=True) as pool:
        for step in range(1, args.steps + 1):
            with CompileCounter() as total:
                state, secs, compiles, info = run_step(step, state, ref_params, cfg, prompts, update, pool, detok,
                                                       args)
            history.append({"secs": secs, "compiles": compiles, "total": total, "info": info})
            print(f"step {step}: " + ", ".join(f"{p} {secs[p]:.2f} s" for p in PHASES) +
                  f"; compiles: {total.count} (" + ", ".join(f"{p} {compiles[p].count}" for p in PHASES) +
                  f"); loss {info['loss']:.4g}, kl {info['kl']:.3g}, entropy {info['entropy']:.4g}, "
                  f"|old - rollout logp| {info['logp_abs_diff']:.2e}, all rows full: {info['all_full']}", flush=True)
            write_json(args, history)  # after every step: a run cut short still leaves its figures
    write_json(args, history, report(cfg, args, history, device_peaks(args)))
    return verdict(history)


if __name__ == "__main__":
    sys.exit(main())
