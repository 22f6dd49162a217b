"""Deterministic arithmetic problems: the held-out set of the CPU demo (no files needed).

The same seed always gives the same problems on every machine (numpy's PCG64 stream is stable), and
a problem can be excluded by value so the one training example never leaks into the held-out set.
"""

from __future__ import annotations

import numpy as np

from rlvr_jax.data.datasets import Example

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def arithmetic_problem(a: int, b: int, op: str = "+") -> Example:
    """`What is a <op> b?` with its exact integer answer."""
    if op not in _OPS:
        raise ValueError(f"unknown operator {op!r}; known: {sorted(_OPS)}")
    return Example(question=f"What is {a} {op} {b}?", answer=str(_OPS[op](a, b)), source=f"arith{op}")


def parse_arithmetic(spec: str) -> Example:
    """`"47+38"` -> the problem `What is 47 + 38?`."""
    for op in _OPS:
        a, sep, b = spec.partition(op)
        if sep and a.strip().isdigit() and b.strip().isdigit():
            return arithmetic_problem(int(a), int(b), op)
    raise ValueError(f"cannot parse arithmetic example {spec!r}; expected e.g. '47+38'")


SYNTHETIC_PREFIX = "synthetic:"
_SETS = {"add2d": dict(ops=("+",), low=10, high=99), "addsub2d": dict(ops=("+", "-"), low=10, high=99)}


def synthetic_benchmark(spec: str, *, seed: int = 1234, exclude: tuple[Example, ...] = ()) -> list[Example]:
    """`"synthetic:add2d:200"` -> 200 deterministic problems of the named kind (add2d | addsub2d)."""
    parts = spec[len(SYNTHETIC_PREFIX):].split(":") if spec.startswith(SYNTHETIC_PREFIX) else []
    if len(parts) != 2 or parts[0] not in _SETS or not parts[1].isdigit():
        raise ValueError(f"bad synthetic benchmark {spec!r}; expected synthetic:<{'|'.join(_SETS)}>:<count>")
    return arithmetic_problems(int(parts[1]), seed=seed, exclude=exclude, **_SETS[parts[0]])


def arithmetic_problems(num: int, *, seed: int = 0, ops: tuple[str, ...] = ("+",), low: int = 10,
                        high: int = 99, exclude: tuple[Example, ...] = ()) -> list[Example]:
    """`num` distinct problems with operands in [low, high], drawn deterministically from `seed`.

    Args:
      num: how many problems.
      seed: the stream; the same seed gives the same list.
      ops: operators to draw from, uniformly.
      low, high: operand range (inclusive).
      exclude: problems that must not appear (e.g. the training example).

    Returns:
      Examples whose `index` is their position in the list.
    """
    space = (high - low + 1) ** 2 * len(ops)
    if num > space - len(exclude):
        raise ValueError(f"only {space} distinct problems exist for operands in [{low}, {high}]")
    rng = np.random.default_rng(seed)
    seen = {e.question for e in exclude}
    out: list[Example] = []
    while len(out) < num:
        a, b = (int(x) for x in rng.integers(low, high + 1, size=2))
        op = ops[int(rng.integers(len(ops)))]
        ex = arithmetic_problem(a, b, op)
        if ex.question in seen:
            continue
        seen.add(ex.question)
        out.append(Example(question=ex.question, answer=ex.answer, index=len(out), source=ex.source))
    return out
