"""Two rollout schedules side by side on the realistic RL workload, interleaved: the engine as it is and one rule
patched back.

Same prompts, seeds and shapes as `bench/rollout.py --workload realistic` (SmolLM2-135M, MATH500 prompts in
the chat template, n=4, T=0.6, EOS on, <= 256 new tokens). `--compare`:
- `compaction`: side "halve" is the engine's tail compaction (`scheduler._compact_below`: the live rows
  move into half the slots once at most half are live); side "quarter" the rule before 2026-12 (into a
  quarter once at most a quarter are live);
- `prefill`: side "parts" is the engine's refill, whose prompts of very different lengths are prefilled in
  separate batches (`scheduler.prefill_parts`); side "one-batch" prefills them all in one batch padded to
  the longest, as before 2026-12-03 (`scheduler.MAX_PREFILL_PARTS = 1`).
Prints the median wall time, useful tokens/s and slot utilisation of each; the samples must be equal.

    python bench/compaction.py --prompts 8 --reps 2
    python bench/compaction.py --compare prefill --prompts 8 --reps 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import rollout  # noqa: E402  (bench/rollout.py: prompts and placement)

from rlvr_jax.sampling import scheduler  # noqa: E402


def quarter_rule(s: int, multiple: int) -> int:
    """The rule before 2026-12: into a quarter of the slots, never below 4 per batch shard."""
    quarter = s // 4
    even = 4 * quarter == s and quarter % multiple == 0
    return quarter if even and quarter >= 4 * multiple else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--compare", choices=("compaction", "prefill"), default="compaction")
    args = ap.parse_args()
    import transformers

    from rlvr_jax import models, sampling
    from rlvr_jax.models import gguf_import

    path = gguf_import.ensure_smollm2()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    prompts = rollout.math500_prompts(tok, args.prompts)
    cfg, params = models.load_hf(path, dtype=args.dtype)
    cfg = cfg.replace(dtype=args.dtype, param_dtype=args.dtype)
    placed, sharder = rollout.data_parallel(params, cfg)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=0.6, n=args.n, stop_token_ids=[eos],
              sub_batch_size="auto", seed=0, sharder=sharder, progress=False)
    halve, parts = scheduler._compact_below, scheduler.MAX_PREFILL_PARTS
    if args.compare == "compaction":
        sides = {"halve": dict(_compact_below=halve), "quarter": dict(_compact_below=quarter_rule)}
    else:
        sides = {"parts": dict(MAX_PREFILL_PARTS=parts), "one-batch": dict(MAX_PREFILL_PARTS=1)}
    runs = {k: [] for k in sides}
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for rep in range(args.reps + 1):  # round 0 compiles: not counted
        for name, rule in sides.items():
            for attr, value in rule.items():
                setattr(scheduler, attr, value)
            stats = sampling.Stats()
            start = time.perf_counter()
            res = sampling.generate(placed, cfg, prompts, stats=stats, **kw)
            wall = time.perf_counter() - start
            if rep:
                runs[name].append((wall, res, stats))
            print(f"  {'warm-up' if not rep else f'rep {rep}'} {name}: {wall:.1f} s", flush=True)
    scheduler._compact_below, scheduler.MAX_PREFILL_PARTS = halve, parts
    for name, r in runs.items():
        secs = statistics.median(w for w, _, _ in r)
        res, stats = r[0][1], r[0][2]
        print(f"{name}: {secs:.2f} s, {int(res.response_lengths.sum()) / secs:.1f} useful tok/s, slot utilisation "
              f"{stats.utilisation():.0%} ({stats.segments} segments, {stats.compactions} compactions, "
              f"{stats.slot_steps} slot-steps)")
    a, b = runs.values()
    print(f"same samples: {a[0][1].tokens == b[0][1].tokens}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
