"""The CPU demo's held-out evaluation with the shared prompt prefix rounded to 16 tokens and to the engine's own.

Runs `experiment.evaluate` (greedy, `configs/smollm2_1shot_cpu.py`: 200 two-digit additions in the chat
template, 41-token prompts with 28 in common) with `engine.shared_prefix` rounding to 16 (the engine until
2026-12: the prefix shared 16 tokens, each row prefilled 32 positions) and at its default
(`engine.SHARED_PREFIX_MULTIPLE`: 28 shared, 16 a row), interleaved in one process, and prints the median
wall time of each with the time spent in `prefill` (blocked until ready). The results must be equal.

    python bench/eval_prefix.py                     # the base model (every answer runs to 64 tokens)
    python bench/eval_prefix.py --model_path runs/smollm2_1shot_cpu     # a trained demo (short answers)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", default="", help="a training workdir (default: the converted base model)")
    parser.add_argument("--reps", type=int, default=2, help="interleaved repetitions (median reported)")
    args = parser.parse_args()
    import jax

    from configs import smollm2_1shot_cpu
    from rlvr_jax import experiment
    from rlvr_jax.sampling import engine

    config = smollm2_1shot_cpu.get_config()
    if args.model_path:
        config.model.path = args.model_path
    real_prefill, prefill_s = engine.prefill, [0.0]

    def timed_prefill(*a, **kw):
        start = time.perf_counter()
        out = jax.block_until_ready(real_prefill(*a, **kw))
        prefill_s[0] += time.perf_counter() - start
        return out

    engine.prefill = timed_prefill
    real_shared, default, multiple_now = engine.shared_prefix, engine.SHARED_PREFIX_MULTIPLE, [0]
    engine.shared_prefix = lambda prompts: real_shared(prompts, multiple=multiple_now[0])
    sides = {"rounded to 16": 16, f"rounded to {default}": default}
    times = {k: [] for k in sides}
    accuracy = {}
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as out_dir:
        for rep in range(args.reps + 1):  # the first round compiles: not counted
            for name, multiple in sides.items():
                multiple_now[0] = multiple
                prefill_s[0] = 0.0
                start = time.perf_counter()
                out = experiment.evaluate(config, out_dir=out_dir, greedy=True)
                wall = time.perf_counter() - start
                accuracy[name] = out["table"].splitlines()[2]
                if rep:
                    times[name].append((wall, prefill_s[0]))
                print(f"  {'warm-up' if not rep else f'rep {rep}'} {name}: {wall:.1f} s (prefill {prefill_s[0]:.1f} s)",
                      flush=True)
    for name, runs in times.items():
        print(f"{name}: evaluate {statistics.median(w for w, _ in runs):.1f} s, "
              f"prefill {statistics.median(p for _, p in runs):.1f} s")
    print(f"same results: {len(set(accuracy.values())) == 1} ({accuracy[next(iter(sides))]})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
