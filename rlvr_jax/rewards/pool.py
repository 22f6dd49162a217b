"""`RewardPool`: scores batches of responses on worker processes, each answer under a deadline.

Why processes and not threads: sympy holds the GIL, and a runaway comparison cannot be
interrupted from another thread (Math-Verify's SIGALRM timeout only works on a main thread).
Here each worker runs one answer at a time; the parent waits on the pipes with a deadline, and a
worker that misses it is killed and replaced, its answer scoring 0. Workers are separate Python
processes running `rlvr_jax.rewards.pool_worker` (see there why not multiprocessing), so the pool
works from any caller: a script without a `__main__` guard, stdin, a notebook, a thread. Each
worker caps its own address space (RLIMIT_AS), so a memory blow-up raises MemoryError in the
worker instead of taking the host down.
"""

import collections
import dataclasses
import logging
import multiprocessing.connection
import os
import pathlib
import pickle
import subprocess
import sys
import tempfile
import time
from typing import IO, Callable, Sequence

import numpy as np

from rlvr_jax.rewards import pool_worker
from rlvr_jax.rewards.math import compute_score

logger = logging.getLogger(__name__)

_MAX_START_FAILURES = 3  # consecutive failed worker starts before the pool gives up
_STDERR_TAIL_LINES = 20  # worker stderr lines quoted when workers cannot start
# The directory holding the `rlvr_jax` package: a worker must import it even when the caller found
# it through its own sys.path (a source checkout run with PYTHONPATH or sys.path edits).
_PACKAGE_ROOT = str(pathlib.Path(__file__).resolve().parents[2])


@dataclasses.dataclass
class _Worker:
    process: subprocess.Popen
    stderr: IO[bytes]  # a temporary file: a pipe nobody drained could block the worker
    ready: bool = False
    task: int | None = None  # index of the answer being scored
    deadline: float = 0.0

    def fileno(self) -> int:  # lets `multiprocessing.connection.wait` select on the worker
        return self.process.stdout.fileno()

    def stderr_tail(self, lines: int = _STDERR_TAIL_LINES) -> str:
        self.stderr.seek(0, os.SEEK_END)
        size = self.stderr.tell()
        self.stderr.seek(max(0, size - 16384))
        text = self.stderr.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])


@dataclasses.dataclass
class PoolStats:
    """Counters since the pool started (exported as trainer metrics)."""

    scored: int = 0
    timeouts: int = 0
    worker_deaths: int = 0
    restarts: int = 0
    memory_errors: int = 0  # answers whose scoring hit the worker's memory cap (scored 0)
    start_failures: int = 0  # workers that died or timed out before reporting ready


class RewardPool:
    """Scores responses against ground truths on `num_workers` processes.

    Usage:
      with RewardPool(num_workers=2, timeout_s=5.0) as pool:
        scores_b = pool.score(responses, ground_truths)  # float32 [b], 1.0 / 0.0

    Works from any thread and any caller (workers never import the caller's `__main__`), but is
    not thread-safe: call `score` from one thread at a time.
    """

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        memory_mb: int | None = 2048,
        require_box: bool = False,
        score_fn: Callable[[str, str], float] | None = None,
        startup_timeout_s: float = 120.0,
    ):
        """Creates the pool (workers start on `__enter__` / `start`).

        Args:
          num_workers: Worker processes.
          timeout_s: Per-answer deadline; a late answer scores 0 and its worker is replaced.
          memory_mb: Address space each worker may add after start-up (RLIMIT_AS); None: no cap.
          require_box: Only boxed answers count (see `compute_score`).
          score_fn: `(response, ground_truth, **kwargs) -> float` defined at the top level of an
            importable module (workers import it by name); default `compute_score`.
          startup_timeout_s: Time a new worker gets to import and warm up.
        """
        if num_workers < 1 or timeout_s <= 0:
            raise ValueError(f"need num_workers >= 1 and timeout_s > 0, got {num_workers}, {timeout_s}")
        self._num_workers = num_workers
        self._timeout_s = timeout_s
        self._memory_mb = memory_mb
        self._score_fn_pickle = _pickle_score_fn(score_fn or compute_score)
        # The default scorer always gets `require_box`; a custom one only when a call asks.
        self._require_box = require_box if score_fn is None else None
        self._startup_timeout_s = startup_timeout_s
        self._workers: list[_Worker] = []
        self._start_failures = 0
        self.stats = PoolStats()

    def __enter__(self) -> "RewardPool":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """Starts the workers (without waiting for them to warm up)."""
        while len(self._workers) < self._num_workers:
            self._workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        stderr = tempfile.TemporaryFile()
        # stdin/stdout are the protocol's pipes; bufsize=0 so `wait` sees every byte the worker sent.
        process = subprocess.Popen(
            [sys.executable, "-m", "rlvr_jax.rewards.pool_worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=stderr, bufsize=0, env=env, cwd=_PACKAGE_ROOT)
        worker = _Worker(process, stderr, deadline=time.monotonic() + self._startup_timeout_s)
        init = {"sys_path": [os.path.abspath(p or ".") for p in sys.path], "score_fn": self._score_fn_pickle,
                "memory_mb": self._memory_mb}
        try:
            pool_worker.write_message(process.stdin.fileno(), init)
        except OSError:  # died at once; `_collect` sees the closed pipe and reports its stderr
            pass
        return worker

    def close(self) -> None:
        """Stops all workers (idempotent)."""
        for worker in self._workers:
            try:
                pool_worker.write_message(worker.process.stdin.fileno(), None)
            except (OSError, ValueError):
                pass
        for worker in self._workers:
            try:
                worker.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            _kill(worker)
        self._workers = []

    def score(
        self, responses: Sequence[str], ground_truths: Sequence[str], require_box: bool | None = None
    ) -> np.ndarray:
        """Scores each response against its ground truth; order is preserved.

        Args:
          responses: Model responses.
          ground_truths: Reference answers, one per response.
          require_box: Overrides the pool's `require_box` for this call (None: keep it).

        Returns:
          scores_b: float32 [b] of 1.0 / 0.0 (0.0 for a timeout or a crashed worker).
        """
        if len(responses) != len(ground_truths):
            raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
        if not self._workers:
            self.start()
        scores_b = np.zeros(len(responses), dtype=np.float32)
        pending = collections.deque(range(len(responses)))
        require_box = self._require_box if require_box is None else require_box
        kwargs = {} if require_box is None else {"require_box": require_box}
        while pending or any(w.task is not None for w in self._workers):
            self._dispatch(pending, responses, ground_truths, kwargs)
            self._collect(scores_b)
            self._reap_late(scores_b)
        self.stats.scored += len(responses)
        return scores_b

    def _dispatch(self, pending, responses, ground_truths, kwargs) -> None:
        for worker in list(self._workers):
            if worker.ready and worker.task is None and pending:
                index = pending[0]
                try:
                    pool_worker.write_message(worker.process.stdin.fileno(),
                                              (index, responses[index], ground_truths[index], kwargs))
                except (OSError, ValueError):  # died while idle: the answer was never started
                    self._replace(worker, None, reason="died while idle")
                    continue
                pending.popleft()
                worker.task = index
                worker.deadline = time.monotonic() + self._timeout_s

    def _collect(self, scores_b: np.ndarray) -> None:
        """Waits (until the nearest deadline) for results and ready signals."""
        waiting = [w for w in self._workers if w.task is not None or not w.ready]
        if not waiting:
            return
        timeout = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
        readable = multiprocessing.connection.wait(waiting, timeout=timeout)
        for worker in readable:
            try:
                message = pool_worker.read_message(worker.process.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                self._replace(worker, scores_b, reason="died")
                continue
            if message == pool_worker.READY:
                worker.ready = True
                self._start_failures = 0
            else:
                index, score, status = message
                scores_b[index] = score
                self.stats.memory_errors += status == pool_worker.STATUS_MEMORY
                worker.task = None

    def _reap_late(self, scores_b: np.ndarray) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.deadline <= now and (worker.task is not None or not worker.ready):
                self._replace(worker, scores_b, reason="timed out")

    def _replace(self, worker: _Worker, scores_b: np.ndarray | None, reason: str) -> None:
        """Kills `worker` (its answer, if any, scores 0) and starts a fresh one in its place."""
        if worker.task is not None:
            scores_b[worker.task] = 0.0
            if reason == "timed out":
                self.stats.timeouts += 1
            else:
                self.stats.worker_deaths += 1
            logger.warning("reward worker %s on answer %d; scoring 0, replacing it", reason, worker.task)
        elif worker.ready:
            self.stats.worker_deaths += 1
            logger.warning("reward worker %s; replacing it", reason)
        else:
            self._start_failures += 1
            self.stats.start_failures += 1
            if self._start_failures >= _MAX_START_FAILURES:
                if worker.process.poll() is None:
                    worker.process.kill()
                code, tail = worker.process.wait(), worker.stderr_tail()
                _kill(worker)
                raise RuntimeError(f"reward workers failed to start {self._start_failures}x ({reason}, "
                                   f"exit code {code}); the last worker's stderr:\n{tail}")
            logger.warning("reward worker %s while starting; replacing it", reason)
        _kill(worker)
        self._workers[self._workers.index(worker)] = self._spawn()
        self.stats.restarts += 1


def _kill(worker: _Worker) -> None:
    """Ends a worker process and releases its pipes and stderr file."""
    if worker.process.poll() is None:
        worker.process.kill()
    worker.process.wait()
    for stream in (worker.process.stdin, worker.process.stdout, worker.stderr):
        try:
            stream.close()
        except OSError:
            pass


def _pickle_score_fn(score_fn: Callable) -> bytes:
    """The scoring function as workers will import it; a clear error for what they cannot."""
    module = getattr(score_fn, "__module__", None)
    if module == "__main__":
        raise ValueError(f"score_fn {score_fn!r} is defined in __main__; reward workers never import the "
                         "caller's main module: define it in an importable module")
    try:
        return pickle.dumps(score_fn, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        raise ValueError(f"score_fn {score_fn!r} must be a top-level function of an importable module: {e}") from e
