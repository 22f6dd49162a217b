"""Runs `launch/train.py` as a user would (a subprocess with config flags) and reads what it wrote.

End-to-end tests go through the public CLI so that they keep checking the promised behaviour
whatever the wiring behind the flags looks like.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN = REPO / "launch" / "train.py"
TIMEOUT_S = 600  # A tiny run takes seconds per step; this bounds a hang, it is not a speed check.

# Quiet, synchronous checkpoints (so a finished command has written them), no plots.
QUIET = ("--config.trainer.progress=False", "--config.trainer.async_checkpoint=False",
         "--config.trainer.plot=False")

# Eight arithmetic problems of different lengths: a shuffled dataset where every step's batch is
# visibly different (prompt lengths change the logits, hence entropy, KL and loss).
PROBLEMS = [(f"What is {a} + {b}?" + " Think." * k, str(a + b))
            for k, (a, b) in enumerate([(3, 4), (12, 30), (7, 8), (100, 23), (5, 5), (41, 1), (9, 90), (66, 6)])]


def env(devices: int = 2, optimized: bool = False) -> dict:
    """The child's environment: CPU with `devices` fake devices, this checkout first on the path.

    `optimized`: XLA's full backend optimisation, as users run (tests/conftest.py turns most of it off
    for the suite's tiny models, whose time is compilation).
    """
    out = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=str(REPO))
    if optimized:
        out["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "0"
    return out


def command(workdir, *flags: str, config: str = "configs/tiny.py") -> list[str]:
    """The train command line for `config` (relative to the repo, optionally `:variant`)."""
    return [sys.executable, str(TRAIN), f"--config={REPO / config}", f"--workdir={workdir}", *QUIET, *flags]


def run(workdir, *flags: str, config: str = "configs/tiny.py", devices: int = 2, optimized: bool = False,
        timeout_s: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Runs the train command to completion; raises with its stderr tail if it fails."""
    proc = subprocess.run(command(workdir, *flags, config=config), env=env(devices, optimized), capture_output=True,
                          text=True, timeout=timeout_s, cwd=REPO)
    if proc.returncode != 0:
        raise AssertionError(f"train.py exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def metrics(workdir) -> list[dict]:
    """The rows of `<workdir>/metrics.jsonl`, in file order (steps as written)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_rows(workdir) -> list[dict]:
    """Rows of training steps (validation rows carry no `reward/mean`)."""
    return [r for r in metrics(workdir) if "reward/mean" in r]


def write_problems(path: pathlib.Path) -> pathlib.Path:
    """Writes `PROBLEMS` as a jsonl dataset (`question`, `answer`) and returns its path."""
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in PROBLEMS))
    return path


def checkpoint_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())
