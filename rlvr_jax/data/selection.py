"""Example selection by historical variance of training accuracy (the paper's data selection).

The paper trains on the whole DSR subset once, records each example's training accuracy at
every epoch, and ranks examples by the variance of that history: pi_1 is the example with the
largest variance, pi_i the i-th. Examples never or always solved have zero variance; ties keep
the history file's order (a stable sort), which reproduces the paper's pi_1209 as the last one.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Mapping, Sequence

import numpy as np


def load_accuracy_history(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """Reads an accuracy-history file such as ``acc_step_500.json``.

    Args:
      path: JSON object mapping an example index (as a string) to its list of accuracies, one
        per epoch in which the example was seen (lists may differ in length).

    Returns:
      ``{index: float64 [epochs]}`` in file order.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a JSON object of numeric lists, or an empty history.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"accuracy history not found: {path}")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object {{index: [accuracy, ...]}}, "
                         f"got {type(raw).__name__}")
    history = {}
    for key, values in raw.items():
        try:
            index = int(key)
        except ValueError:
            raise ValueError(f"{path}: key {key!r} is not an example index") from None
        if not isinstance(values, list) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{path}: example {key}: expected a non-empty list of numbers")
        history[index] = np.asarray(values, dtype=np.float64)
    return history


def variance_ranking(history: Mapping[int, Sequence[float]]) -> list[tuple[int, float]]:
    """Ranks examples by the variance of their accuracy history, largest first.

    Args:
      history: ``{index: accuracies}``; iteration order breaks ties.

    Returns:
      ``[(index, variance), ...]``, descending variance. Variance is the population variance
      (``numpy.var``, ddof=0), so a two-epoch history is as valid as a fifty-epoch one.
    """
    variances = []
    for index, values in history.items():
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            raise ValueError(f"example {index} has an empty accuracy history")
        variances.append((index, float(np.var(values))))
    # Python's sort is stable: equal variances keep the input order.
    return sorted(variances, key=lambda item: -item[1])


def rank_by_variance(history: Mapping[int, Sequence[float]]) -> list[int]:
    """Example indices sorted by descending accuracy variance (``result[0]`` is pi_1)."""
    return [index for index, _ in variance_ranking(history)]
