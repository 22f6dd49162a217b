"""DAPO dynamic sampling (Yu et al. 2025, arXiv 2503.14476, Sec. 3.2): keep only groups whose scores
differ, draw more prompts until the batch is full.

A group whose n samples all score the same has zero group-relative advantage: it adds no policy
gradient, only noise in the batch statistics. `GroupPool` collects the rounds of one step (each
round: a prompt batch, its rollout and scores), keeps the informative groups in draw order, and
assembles a batch of exactly `size` groups. When the rounds run out before the batch is full it
tops the batch up with dropped groups (first drawn first), so the update keeps its static shape;
when EVERY group of a round of repeated problems is equal (1-shot training after the example
saturates) drawing more cannot help, and the caller stops early and trains on the batch as it is.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rlvr_jax.data.batching import PromptBatch
from rlvr_jax.sampling.api import RolloutResult


def informative_groups(scores_n, n: int) -> np.ndarray:
    """bool [G]: True where a group's n scores are not all equal (G = len(scores_n) // n)."""
    scores_gn = np.asarray(scores_n, np.float64).reshape(-1, n)
    return np.any(scores_gn != scores_gn[:, :1], axis=1)


@dataclasses.dataclass
class _Group:
    example: object
    result: RolloutResult  # the round's whole result; rows [row * n, (row + 1) * n) are this group
    row: int
    texts: list[str]
    scores: np.ndarray


class GroupPool:
    """The groups drawn during one step; `assemble` builds the training batch from them."""

    def __init__(self, size: int, n: int, pad_id: int = 0):
        self.size, self.n, self.pad_id = size, n, pad_id
        self.kept: list[_Group] = []
        self.dropped: list[_Group] = []
        self.drawn = 0
        self.rounds = 0

    def add(self, batch: PromptBatch, result: RolloutResult, texts, scores) -> int:
        """Adds one round; returns how many of its groups were kept."""
        n = self.n
        keep_g = informative_groups(scores, n)
        for g, example in enumerate(batch.examples):
            group = _Group(example, result, g, list(texts[g * n:(g + 1) * n]), np.asarray(scores[g * n:(g + 1) * n]))
            (self.kept if keep_g[g] else self.dropped).append(group)
        self.drawn += len(batch.examples)
        self.rounds += 1
        return int(keep_g.sum())

    @property
    def full(self) -> bool:
        return len(self.kept) >= self.size

    def assemble(self, step: int, epoch: int):
        """(batch, result, texts, scores, metrics) of exactly `size` groups: kept ones first."""
        groups = (self.kept + self.dropped)[: self.size]
        if len(groups) < self.size:
            raise ValueError(f"dynamic sampling drew {len(groups)} groups, fewer than the batch of {self.size}")
        batch = PromptBatch(tuple(g.example for g in groups), np.arange(self.size, dtype=np.int32), step, epoch)
        result = concat_rows([(g.result, range(g.row * self.n, (g.row + 1) * self.n)) for g in groups], self.pad_id)
        result.prompt_index = np.repeat(np.arange(self.size, dtype=np.int32), self.n)
        texts = [t for g in groups for t in g.texts]
        scores = np.concatenate([g.scores for g in groups]).astype(np.float32)
        kept = min(len(self.kept), self.size)
        metrics = {
            "sampling/kept_frac": len(self.kept) / max(self.drawn, 1),  # informative share of all drawn groups
            "sampling/rounds": float(self.rounds),
            "sampling/filled_frac": (self.size - kept) / self.size,  # slots filled with equal-score groups
            "sampling/all_equal": float(not self.kept),
        }
        return batch, result, texts, scores, metrics


def _pad_to(x: np.ndarray, width: int, value, left: bool) -> np.ndarray:
    extra = width - x.shape[1]
    if extra == 0:
        return x
    pad = np.full((x.shape[0], extra), value, x.dtype)
    return np.concatenate([pad, x] if left else [x, pad], axis=1)


def concat_rows(parts, pad_id: int = 0) -> RolloutResult:
    """Rows of several rollouts as one: prompts re-left-padded, responses re-right-padded to the widest.

    Args:
      parts: (RolloutResult, row indices) pairs, in output order.
      pad_id: the padding token id.
    """
    width_p = max(r.prompt_ids.shape[1] for r, _ in parts)
    width_r = max(r.response_ids.shape[1] for r, _ in parts)

    def rows(name, width=None, value=0, left=False):
        out = []
        for r, idx in parts:
            x = np.asarray(getattr(r, name))[list(idx)]
            out.append(x if width is None else _pad_to(x, width, value, left))
        return np.concatenate(out)

    def items(name):
        return [getattr(r, name)[i] for r, idx in parts for i in idx]

    return RolloutResult(
        tokens=items("tokens"), logprobs=items("logprobs"), finish_reason=items("finish_reason"),
        response_ids=rows("response_ids", width_r, pad_id), response_mask=rows("response_mask", width_r),
        logprob_array=rows("logprob_array", width_r), response_lengths=rows("response_lengths"),
        prompt_ids=rows("prompt_ids", width_p, pad_id, left=True),
        prompt_mask=rows("prompt_mask", width_p, 0, left=True), prompt_index=rows("prompt_index"),
    )
