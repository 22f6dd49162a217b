"""Where a profiled step's time goes: the top XLA ops of a `jax.profiler` trace, by total time.

`jax.profiler.trace(dir, create_perfetto_trace=True)` writes `perfetto_trace.json.gz` next to the
TensorBoard files; this reads it and sums the complete ('X') events by name per thread group, so a
benchmark can print what its step spends time on without TensorBoard.

    python bench/profile_summary.py DIR [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os


def load_events(trace_dir: str) -> tuple[list[dict], dict]:
    """The complete events of the newest perfetto trace under `trace_dir`, and thread names by (pid, tid)."""
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir} (trace with create_perfetto_trace=True)")
    with gzip.open(paths[-1], "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    threads = {(e.get("pid"), e.get("tid")): e.get("args", {}).get("name", "")
               for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    return [e for e in events if e.get("ph") == "X" and "dur" in e], threads


def summarize(trace_dir: str, top: int = 25) -> str:
    """A table of the `top` event names by summed duration (ms), with counts and share of the traced span."""
    events, threads = load_events(trace_dir)
    if not events:
        return "profile: no timed events in the trace"
    start = min(e["ts"] for e in events)
    span = max(e["ts"] + e["dur"] for e in events) - start
    # Python frames ("$file:line fn") and the runtime's executor spans nest around the ops: keep the ops.
    def is_op(e):
        name = e["name"]
        return not (name.startswith("$") or name.startswith("ThunkExecutor") or "ThreadPool" in name)
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if is_op(e):
            total[e["name"]] += e["dur"]
            count[e["name"]] += 1
    lines = [f"profile: traced span {span / 1e3:.0f} ms; top {top} events by summed time (threads overlap):"]
    for name, dur in total.most_common(top):
        lines.append(f"  {dur / 1e3:9.1f} ms  {count[name]:6d}x  {100 * dur / span:5.1f}%  {name[:90]}")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace_dir")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    print(summarize(a.trace_dir, a.top))
