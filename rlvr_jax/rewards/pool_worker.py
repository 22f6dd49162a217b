"""A `RewardPool` worker: its own process entry point, `python -m rlvr_jax.rewards.pool_worker`.

Why its own entry point rather than multiprocessing: 'spawn' and 'forkserver' re-import the
caller's `__main__` in every worker, which breaks a script without an `if __name__ == "__main__":`
guard (each worker would start its own pool), a script fed on stdin and some notebooks. A worker
started with `subprocess` imports only this module, the scoring function's module and what they
import. ('fork' is no way out: the trainer has JAX's threads running, and forking a threaded
process can deadlock the child.)

Protocol on the worker's stdin / stdout, every message one length-prefixed pickle
(8-byte little-endian length, then the pickle):
  parent -> worker, once:  {"sys_path": [...], "score_fn": <pickle bytes>, "memory_mb": int | None}
  worker -> parent, once:  "ready"  (after imports and warm-up, with the memory cap set)
  parent -> worker:        (index, response, ground_truth, kwargs), or None to exit
  worker -> parent:        (index, score, status), status one of STATUS_OK / STATUS_MEMORY / STATUS_ERROR
The worker's stdout file descriptor is moved aside for the protocol and fd 1 is pointed at stderr,
so a print in a scoring function cannot corrupt the stream. Stderr is the parent's to keep: it
reports the last lines when a worker cannot start.
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import struct
import sys
import traceback
from typing import BinaryIO

READY = "ready"
STATUS_OK, STATUS_MEMORY, STATUS_ERROR = "ok", "memory", "error"
_HEADER = struct.Struct("<Q")

# Parsed once by each new worker before it reports ready: the ANTLR parser builds its prediction
# tables lazily, per process, and would otherwise spend the first batch (~2x slower) doing it.
WARMUP_ANSWERS = (
    r"\frac{1}{2}", r"-\frac{\sqrt{3}}{2}", r"2\sqrt{5}", r"3\pi", r"x^2+2x+1", r"(1, 2)", r"[0, 1)",
    r"(-\infty, 3] \cup (4, \infty)", r"\{1, 2, 3\}", r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
    r"\begin{pmatrix} -1 \\ 2 \\ 0 \end{pmatrix}", r"y = 2x + 3", r"x \le 5", r"3 + 4i",
    r"1.5 \times 10^{3}", r"\sin x + \cos x", r"\log_2 8", r"e^{2}", r"5!", r"\binom{5}{2}", r"|x - 1|",
    r"\frac{x+1}{x-1}", r"2^{10}", r"\sqrt[3]{2}", r"a_1 + b", r"1 \pm \sqrt{2}", r"f(x) = x^2",
    r"\frac{3\sqrt{2}}{4}", r"(2, -\frac{1}{3}, 5)", r"\tan^{-1} 2", r"x^3 - 3x + 1", r"-2 < x < 3",
    r"\left( \frac{1}{2}, \frac{\sqrt{3}}{2} \right)", r"2x - 3y + z = 4", r"\cos 20^\circ",
)


def write_message(fd: int, obj) -> None:
    """Writes one length-prefixed pickle to file descriptor `fd` (blocking, all bytes)."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view):]


def read_message(stream: BinaryIO):
    """Reads one length-prefixed pickle; raises EOFError when the other side has gone."""
    (size,) = _HEADER.unpack(_read_exactly(stream, _HEADER.size))
    return pickle.loads(_read_exactly(stream, size))


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("reward worker pipe closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


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


def _warm_up(score_fn) -> None:
    """Imports, parser tables and caches, before the memory cap."""
    from rlvr_jax.rewards.math import compute_score

    for answer in WARMUP_ANSWERS if score_fn is compute_score else WARMUP_ANSWERS[:1]:
        try:
            score_fn("\\boxed{%s}" % answer, r"\frac{7}{3}")
        except Exception:  # pylint: disable=broad-except
            pass


def _score_one(score_fn, response: str, ground_truth: str, kwargs: dict) -> tuple[float, str]:
    try:
        return float(score_fn(response, ground_truth, **kwargs)), STATUS_OK
    except MemoryError:
        return 0.0, STATUS_MEMORY
    except Exception:  # pylint: disable=broad-except
        traceback.print_exc(file=sys.stderr)
        return 0.0, STATUS_ERROR


def serve(stdin: BinaryIO, out_fd: int) -> None:
    """Reads the start message, warms up, caps memory, then scores tasks until None or EOF."""
    init = read_message(stdin)
    for entry in reversed(init["sys_path"]):  # the caller's import path, for its scoring function
        if entry not in sys.path:
            sys.path.insert(1, entry)
    score_fn = pickle.loads(init["score_fn"])
    _warm_up(score_fn)
    if init["memory_mb"]:
        # Cap growth above the start-up footprint: a blow-up raises MemoryError here instead of
        # taking the host down.
        limit = _address_space_bytes() + init["memory_mb"] * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    write_message(out_fd, READY)
    while True:
        try:
            message = read_message(stdin)
        except EOFError:
            return
        if message is None:
            return
        index, response, ground_truth, kwargs = message
        score, status = _score_one(score_fn, response, ground_truth, kwargs)
        write_message(out_fd, (index, score, status))


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    out_fd = os.dup(1)  # the protocol's channel
    os.dup2(2, 1)  # anything else written to stdout lands in stderr
    sys.stdout = sys.stderr
    serve(sys.stdin.buffer, out_fd)


if __name__ == "__main__":
    main()
