"""Run outputs: the configured metric loggers (metrics.jsonl, TensorBoard, wandb) and console step lines.

Only process 0 writes (on multi-host runs every process holds the same reduced metrics).
"""

from __future__ import annotations

import math
import pathlib
import sys
import time
from typing import Any, Iterable, Sequence

import numpy as np

from rlvr_jax.training.loggers import DEFAULT_LOGGERS, RunInfo, make_loggers


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.item() if np.ndim(value) == 0 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible rather than crash.
    return value


class MetricsWriter:
    """Sends each step's metrics, eval scores and sample rows to the configured loggers.

    Args:
      workdir: the run directory (created).
      enabled: False on every process but 0 (nothing is written).
      tensorboard: without `loggers`: jsonl plus TensorBoard (True) or jsonl alone.
      loggers: logger names from `rlvr_jax.training.loggers.LOGGERS` (`trainer.loggers`).
      run: run name, resolved config and wandb project for loggers that record them.
    """

    def __init__(self, workdir, *, enabled: bool = True, tensorboard: bool = True,
                 loggers: Sequence[str] | None = None, run: RunInfo | None = None):
        self.workdir = pathlib.Path(workdir)
        self.enabled = enabled
        if loggers is None:
            loggers = DEFAULT_LOGGERS if tensorboard else ("jsonl",)
        self._loggers = make_loggers(loggers, self.workdir, run) if enabled else []

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        row = {k: _jsonable(v) for k, v in metrics.items()}
        for logger in self._loggers:
            logger.log(int(step), row)

    def write_samples(self, step: int, samples: Iterable[dict[str, Any]]) -> None:
        rows = [{k: _jsonable(v) for k, v in sample.items()} for sample in samples]
        for logger in self._loggers:
            logger.log_samples(int(step), rows)

    def flush(self) -> None:
        for logger in self._loggers:
            logger.flush()

    def close(self) -> None:
        for logger in self._loggers:
            logger.close()
        self._loggers = []


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
