"""`RewardPool`: scores batches of responses on worker processes, each answer under a deadline.

Why processes and not threads: sympy holds the GIL, and a runaway comparison cannot be
interrupted from another thread (Math-Verify's SIGALRM timeout only works on a main thread).
Here each worker runs one answer at a time; the parent waits on the pipes with a deadline, and a
worker that misses it is killed and replaced, its answer scoring 0. Workers are started with
'spawn' (or 'forkserver'), never 'fork': the parent has JAX's threads running, and forking a
threaded process can deadlock the child. Each worker caps its own address space
(RLIMIT_AS), so a memory blow-up raises MemoryError in the worker instead of taking the host down.
"""

import collections
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import resource
import signal
import time
from typing import Callable, Sequence

import numpy as np

from rlvr_jax.rewards.math import compute_score

logger = logging.getLogger(__name__)

_READY = "ready"
_MAX_START_FAILURES = 3  # consecutive failed worker starts before the pool gives up
# Parsed once by each new worker before it reports ready: the ANTLR parser builds its prediction
# tables lazily, per process, and would otherwise spend the first batch (~2x slower) doing it.
_WARMUP_ANSWERS = (
    r"\frac{1}{2}", r"-\frac{\sqrt{3}}{2}", r"2\sqrt{5}", r"3\pi", r"x^2+2x+1", r"(1, 2)", r"[0, 1)",
    r"(-\infty, 3] \cup (4, \infty)", r"\{1, 2, 3\}", r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
    r"\begin{pmatrix} -1 \\ 2 \\ 0 \end{pmatrix}", r"y = 2x + 3", r"x \le 5", r"3 + 4i",
    r"1.5 \times 10^{3}", r"\sin x + \cos x", r"\log_2 8", r"e^{2}", r"5!", r"\binom{5}{2}", r"|x - 1|",
    r"\frac{x+1}{x-1}", r"2^{10}", r"\sqrt[3]{2}", r"a_1 + b", r"1 \pm \sqrt{2}", r"f(x) = x^2",
    r"\frac{3\sqrt{2}}{4}", r"(2, -\frac{1}{3}, 5)", r"\tan^{-1} 2", r"x^3 - 3x + 1", r"-2 < x < 3",
    r"\left( \frac{1}{2}, \frac{\sqrt{3}}{2} \right)", r"2x - 3y + z = 4", r"\cos 20^\circ",
)


def _address_space_bytes() -> int:
    """Current virtual memory size of this process (Linux), 0 if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _worker_main(conn, score_fn: Callable[..., float], memory_mb: int | None) -> None:
    """Worker loop: receives (index, response, ground_truth, kwargs), sends back (index, score)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    warmup = _WARMUP_ANSWERS if score_fn is compute_score else _WARMUP_ANSWERS[:1]
    for answer in warmup:  # imports, parser tables and caches, before the memory cap
        try:
            score_fn("\\boxed{%s}" % answer, r"\frac{7}{3}")
        except Exception:  # pylint: disable=broad-except
            pass
    if memory_mb:
        # Cap growth above the start-up footprint (which depends on what the parent imported).
        limit = _address_space_bytes() + memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send(_READY)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, response, ground_truth, kwargs = message
        try:
            score = float(score_fn(response, ground_truth, **kwargs))
        except MemoryError:
            score = 0.0
        except Exception:  # pylint: disable=broad-except
            logger.exception("reward worker: scoring failed")
            score = 0.0
        conn.send((index, score))


@dataclasses.dataclass
class _Worker:
    process: multiprocessing.Process
    conn: multiprocessing.connection.Connection
    ready: bool = False
    task: int | None = None  # index of the answer being scored
    deadline: float = 0.0


@dataclasses.dataclass
class PoolStats:
    """Counters since the pool started (exported as trainer metrics)."""

    scored: int = 0
    timeouts: int = 0
    worker_deaths: int = 0
    restarts: int = 0


class RewardPool:
    """Scores responses against ground truths on `num_workers` processes.

    Usage:
      with RewardPool(num_workers=2, timeout_s=5.0) as pool:
        scores_b = pool.score(responses, ground_truths)  # float32 [b], 1.0 / 0.0

    Not thread-safe: call `score` from one thread at a time.
    """

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        memory_mb: int | None = 2048,
        require_box: bool = False,
        score_fn: Callable[[str, str], float] | None = None,
        start_method: str = "spawn",
        startup_timeout_s: float = 120.0,
    ):
        """Creates the pool (workers start on `__enter__` / `start`).

        Args:
          num_workers: Worker processes.
          timeout_s: Per-answer deadline; a late answer scores 0 and its worker is replaced.
          memory_mb: Address space each worker may add after start-up (RLIMIT_AS); None: no cap.
          require_box: Only boxed answers count (see `compute_score`).
          score_fn: Picklable `(response, ground_truth, **kwargs) -> float`; default
            `compute_score`.
          start_method: "spawn" or "forkserver" ("fork" is unsafe once JAX threads run).
          startup_timeout_s: Time a new worker gets to import and warm up.
        """
        if num_workers < 1 or timeout_s <= 0:
            raise ValueError(f"need num_workers >= 1 and timeout_s > 0, got {num_workers}, {timeout_s}")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver', got {start_method!r}")
        self._num_workers = num_workers
        self._timeout_s = timeout_s
        self._memory_mb = memory_mb
        self._score_fn = score_fn or compute_score
        # The default scorer always gets `require_box`; a custom one only when a call asks.
        self._require_box = require_box if score_fn is None else None
        self._ctx = multiprocessing.get_context(start_method)
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
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main,
            args=(child_conn, self._score_fn, self._memory_mb),
            daemon=True,
            name="reward-worker",
        )
        process.start()
        child_conn.close()
        return _Worker(process, parent_conn, deadline=time.monotonic() + self._startup_timeout_s)

    def close(self) -> None:
        """Stops all workers (idempotent)."""
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._workers:
            worker.process.join(timeout=1.0)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
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
                    worker.conn.send((index, responses[index], ground_truths[index], kwargs))
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
        ready_conns = multiprocessing.connection.wait([w.conn for w in waiting], timeout=timeout)
        for worker in waiting:
            if worker.conn not in ready_conns:
                continue
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                self._replace(worker, scores_b, reason="died")
                continue
            if message == _READY:
                worker.ready = True
                self._start_failures = 0
            else:
                index, score = message
                scores_b[index] = score
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
            if self._start_failures >= _MAX_START_FAILURES:
                raise RuntimeError(f"reward workers failed to start {self._start_failures}x ({reason})")
        worker.process.kill()
        worker.process.join()
        worker.conn.close()
        self._workers[self._workers.index(worker)] = self._spawn()
        self.stats.restarts += 1
