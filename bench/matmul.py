"""The CPU's matmul speed as XLA and torch get it, on SmolLM2-135M's layer shapes: where decode time goes.

A decode step multiplies `[rows, 576]` activations by each layer's weights (rows = live slots: 16 in
the demo's rollout, 50-64 in its evaluation); the update multiplies a few hundred to a few thousand
packed tokens. This prints GFLOP/s of one jitted `x @ w` (float32, XLA's default CPU dot) against
torch's `x @ w` (its default BLAS and threads), for every (rows, shape) pair, repetitions interleaved
between the two, median reported, load average before and after.

    python bench/matmul.py                 # rows 16, 64, 256, 1024; SmolLM2's projection shapes
    python bench/matmul.py --rows 16 64 --reps 20
    python bench/matmul.py --threads 1     # one core each: XLA without its thread pool, torch.set_num_threads(1)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

# SmolLM2-135M: hidden 576, MLP 1536, q/o 576x576, k/v 576x192 (3 KV heads of 64), tied head 576x49152.
SHAPES = {"q/o 576x576": (576, 576), "k/v 576x192": (576, 192), "gate/up 576x1536": (576, 1536),
          "down 1536x576": (1536, 576), "head 576x49152": (576, 49152)}


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--reps", type=int, default=10, help="timed calls per side per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (XLA, torch, XLA, ...)")
    parser.add_argument("--threads", type=int, default=0, choices=(0, 1), help="0: both at their defaults; 1: one core")
    args = parser.parse_args()
    if args.threads == 1:  # read when JAX starts its CPU backend: before the import below
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1").strip()
    import jax
    import torch

    if args.threads == 1:
        torch.set_num_threads(1)

    print(f"load average before: {os.getloadavg()[0]:.2f}; jax {jax.__version__} on {jax.devices()[0].device_kind}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    matmul = jax.jit(lambda x, w: x @ w)
    rng = np.random.default_rng(0)
    print(f"{'shape':18s} {'rows':>5s} {'XLA GFLOP/s':>12s} {'torch GFLOP/s':>14s} {'XLA/torch':>10s}")
    for name, (k, n) in SHAPES.items():
        w_np = rng.standard_normal((k, n), dtype=np.float32)
        for m in args.rows:
            x_np = rng.standard_normal((m, k), dtype=np.float32)
            xj, wj = jax.device_put(x_np), jax.device_put(w_np)
            xt, wt = torch.from_numpy(x_np), torch.from_numpy(w_np)
            matmul(xj, wj).block_until_ready()  # compile
            xt @ wt
            xla_t, torch_t = [], []
            for _ in range(args.rounds):
                xla_t.append(_median_time(lambda: matmul(xj, wj).block_until_ready(), args.reps))
                torch_t.append(_median_time(lambda: xt @ wt, args.reps))
            flops = 2 * m * k * n
            g_xla, g_torch = flops / statistics.median(xla_t) / 1e9, flops / statistics.median(torch_t) / 1e9
            print(f"{name:18s} {m:5d} {g_xla:12.1f} {g_torch:14.1f} {g_xla / g_torch:9.2f}x", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
