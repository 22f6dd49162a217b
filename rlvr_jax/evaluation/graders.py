"""Evaluation graders by name (`config.eval.grader`): `(response, gold, **kw) -> 1.0 / 0.0`.

* ``verifier`` -- the project's verifier (`rlvr_jax.rewards.compute_score`), the training reward.
* ``paper``    -- the Qwen2.5-Math evaluation suite's semantics (`rlvr_jax.rewards.paper_grader`),
  so numbers can be set beside the paper's tables.

Both are picklable module-level functions, as `RewardPool(score_fn=...)` needs.
"""

from __future__ import annotations

from typing import Callable

from rlvr_jax.rewards import paper_grader
from rlvr_jax.rewards.math import compute_score

GraderFn = Callable[..., float]

GRADERS: dict[str, GraderFn] = {"verifier": compute_score, "paper": paper_grader.compute_score}


def get_grader(name: str) -> GraderFn:
    """The grader registered as `name`.

    Raises:
      ValueError: unknown name.
    """
    try:
        return GRADERS[name]
    except KeyError:
        raise ValueError(f"unknown grader {name!r}; known: {', '.join(sorted(GRADERS))}") from None
