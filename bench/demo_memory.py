"""Peak resident memory and wall time of the README's first command (the CPU demo).

Runs `python launch/train.py --config=configs/smollm2_1shot_cpu.py` (extra arguments are passed
through, e.g. `--config.trainer.total_steps=2`) in a fresh workdir and prints:
  - peak RSS of the largest single process (exact: the kernel's high-water mark, getrusage),
  - peak RSS of the whole process tree (trainer + reward workers), sampled every `--interval_s`,
  - wall time,
and, with `--timeline`, the tree's RSS beside each line the trainer prints (which phase holds it).

    python bench/demo_memory.py                                     # the full demo (8 steps)
    python bench/demo_memory.py --config.trainer.total_steps=2      # a short run, eval included
    python bench/demo_memory.py --timeline -- --config.trainer.total_steps=1
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO = ["launch/train.py", "--config=configs/smollm2_1shot_cpu.py"]


def _tree_rss_bytes(root: int) -> int:
    """Summed VmRSS of `root` and its descendants (Linux /proc), 0 for processes gone meanwhile."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields["PPid"]), []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class _Sampler(threading.Thread):
    def __init__(self, pid: int, interval_s: float):
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.peak = self.current = self.window = 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            self.current = _tree_rss_bytes(self.pid)
            self.peak = max(self.peak, self.current)
            self.window = max(self.window, self.current)
            self.done.wait(self.interval_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval_s", type=float, default=0.2, help="process-tree RSS sampling period")
    parser.add_argument("--timeline", action="store_true", help="print the tree RSS beside each output line")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run's workdir (its checkpoints are ~1.4 GB); removed by default")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    workdir = tempfile.mkdtemp(prefix="demo_memory_")
    cmd = [sys.executable, *DEMO, f"--workdir={workdir}", *extra]
    print("running:", " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    sampler = _Sampler(proc.pid, args.interval_s)
    sampler.start()
    for line in proc.stdout:  # tqdm redraws with \r: keep only finished lines short
        line = line.rstrip("\n").split("\r")[-1]
        if args.timeline:
            print(f"[{time.perf_counter() - start:7.1f}s {sampler.current / 2**30:5.2f} GiB, "
                  f"max since last line {sampler.window / 2**30:5.2f}] {line}", flush=True)
            sampler.window = sampler.current
    code = proc.wait()
    wall = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    single = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB
    print(f"exit code {code}; wall {wall:.1f} s")
    print(f"peak RSS, largest process: {single / 2**30:.2f} GiB ({single / 1e9:.2f} GB)")
    print(f"peak RSS, process tree (sampled every {args.interval_s}s): {sampler.peak / 2**30:.2f} GiB "
          f"({sampler.peak / 1e9:.2f} GB)")
    if args.keep:
        print(f"workdir: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
