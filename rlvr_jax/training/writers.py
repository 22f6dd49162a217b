"""Run outputs: metrics.jsonl, TensorBoard events, samples.jsonl and console step lines.

Only process 0 writes (on multi-host runs every process holds the same reduced metrics).
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Any, Iterable

import numpy as np


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.item() if np.ndim(value) == 0 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible rather than crash.
    return value


class MetricsWriter:
    """Appends one JSON object per call to `metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(self, workdir, *, enabled: bool = True, tensorboard: bool = True):
        self.workdir = pathlib.Path(workdir)
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._metrics = open(self.workdir / "metrics.jsonl", "a", buffering=1)
            self._samples = open(self.workdir / "samples.jsonl", "a", buffering=1)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._metrics.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)

    def write_samples(self, step: int, samples: Iterable[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        for sample in samples:
            row = {"step": int(step), **{k: _jsonable(v) for k, v in sample.items()}}
            self._samples.write(json.dumps(row, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        if self.enabled:
            self._metrics.flush()
            self._samples.flush()
            if self._tb is not None:
                self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.flush()
            self._metrics.close()
            self._samples.close()
            if self._tb is not None:
                self._tb.close()


class ConsoleLog:
    """One line per step: step, reward, entropy, length, tokens/s and ETA."""

    def __init__(self, total_steps: int, start_step: int = 0, stream=None, enabled: bool = True):
        self.total_steps = total_steps
        self.start_step = start_step
        self._stream = stream  # None: whatever sys.stdout is when a line is written.
        self.enabled = enabled
        self._t0 = time.time()

    @property
    def stream(self):
        return self._stream or sys.stdout

    def step(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        done = max(step - self.start_step, 1)
        eta = (time.time() - self._t0) / done * (self.total_steps - step)

        def fmt(key, spec):
            value = metrics.get(key)
            return "-" if value is None else format(float(value), spec)

        self.stream.write(
            f"step {step}/{self.total_steps} | reward {fmt('reward/mean', '.3f')} | "
            f"entropy {fmt('actor/entropy', '.3f')} | kl {fmt('actor/kl', '.4f')} | "
            f"len {fmt('response/length_mean', '.0f')} | {fmt('perf/tokens_per_s', '.0f')} tok/s | "
            f"step {fmt('perf/step_s', '.1f')}s | eta {_hms(eta)}\n"
        )
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
