"""How much a second CPU core adds: the same single-threaded work alone, then twice at once.

Two-device data parallelism (one XLA CPU device per core, slots or micro-batches split between them)
can at best multiply throughput by what running two copies of a job at once gives over one copy. This
measures that ceiling three ways, each as work per second of two concurrent copies / one copy:

- `python`: a pure-Python counting loop in two processes (no memory traffic: the cores' own speed);
- `matmul`: a single-threaded numpy float32 512x512 matmul loop in two processes;
- `xla`: one process, two XLA host devices of one thread each, each running its own copy of a
  SmolLM2-shaped MLP loop at decode row counts (16 rows), dispatched together (no collectives).

A ratio near 2.0 means two cores; near 1.0, one core's worth of compute shared by two (SMT siblings,
or a host that schedules the virtual CPUs on one core).

And what XLA's one default device makes of the cores: `xla-1dev`, the same MLP loop at 16 and 64 rows
on one device with XLA's default threads, pinned to one core / free to use all (rows x layers per
second; > 1 means the second core helps).

    python bench/core_scaling.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

SECONDS = 4.0


def python_loop() -> float:
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < SECONDS:
        n += 1
    return n / (time.perf_counter() - t0)


def matmul_loop() -> float:
    import numpy as np

    a = np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < SECONDS:
        a @ a
        n += 1
    return n * 2 * 512**3 / (time.perf_counter() - t0) / 1e9


def mlp_rate(rows: int, copies: int, reps: int = 7) -> float:
    """Rows x layers per second of `copies` independent copies of an MLP loop, one per XLA device,
    dispatched together (no collectives); `copies=1` is the default device alone."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    fn = jax.jit(lambda x, u, d: jax.lax.fori_loop(0, 30, lambda i, h: jnp.tanh(h @ u) @ d + h, x))
    rng = np.random.default_rng(0)
    host = (np.ones((rows, 576), np.float32), rng.standard_normal((576, 1536), dtype=np.float32) * 0.02,
            rng.standard_normal((1536, 576), dtype=np.float32) * 0.02)
    args = [tuple(jax.device_put(a, d) for a in host) for d in jax.devices()[:copies]]
    jax.block_until_ready([fn(*a) for a in args])  # compile on each device
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready([fn(*a) for a in args])
        times.append(time.perf_counter() - t0)
    return copies * rows * 30 / sorted(times)[reps // 2]


def _xla_child(rows: int, copies: int, *, single_thread_devices: bool = False, pinned: bool = False) -> float:
    """`mlp_rate` in a fresh process: XLA flags are read once, at the first use of the backend."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if single_thread_devices:
        env["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false "
                            "intra_op_parallelism_threads=1")
    cmd = [sys.executable, __file__, "--xla-child", str(rows), str(copies)] + (["--pin"] if pinned else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _child(kind: str) -> None:
    print(python_loop() if kind == "python" else matmul_loop())


def _processes(kind: str, copies: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, "--child", kind], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(copies)]
    return sum(float(p.communicate()[0]) for p in procs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", choices=["python", "matmul"], help=argparse.SUPPRESS)
    ap.add_argument("--xla-child", type=int, nargs=2, metavar=("ROWS", "COPIES"), help=argparse.SUPPRESS)
    ap.add_argument("--pin", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=3, help="alternated one-copy / two-copy rounds")
    args = ap.parse_args()
    if args.child:
        return _child(args.child)
    if args.xla_child:
        if args.pin:  # one core, before jax sizes its thread pools
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(mlp_rate(*args.xla_child))
        return
    print(f"cpus: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    units = {"python": "loop iterations/s", "matmul": "GFLOP/s", "xla": "rows x layers/s"}
    for kind in ("python", "matmul", "xla"):
        one, two = [], []
        for _ in range(args.rounds):  # alternated, so both see the same machine
            one.append(_processes(kind, 1) if kind != "xla" else _xla_child(16, 1, single_thread_devices=True))
            two.append(_processes(kind, 2) if kind != "xla" else _xla_child(16, 2, single_thread_devices=True))
        one_m, two_m = sorted(one)[len(one) // 2], sorted(two)[len(two) // 2]
        print(f"{kind:7s} one copy {one_m:12.4g}  two at once {two_m:12.4g} {units[kind]:18s} -> {two_m / one_m:.2f}x")
    for rows in (16, 64):
        pinned, free = [], []
        for _ in range(args.rounds):
            pinned.append(_xla_child(rows, 1, pinned=True))
            free.append(_xla_child(rows, 1))
        p_m, f_m = sorted(pinned)[len(pinned) // 2], sorted(free)[len(free) // 2]
        print(f"xla-1dev {rows} rows: one core {p_m:10.4g}  all cores {f_m:10.4g} rows x layers/s -> {f_m / p_m:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
