"""Turns sampler output into the padded, bucketed arrays the log-prob and update steps consume.

Prompts are left-padded and responses right-padded to power-of-two buckets, so a run compiles a
handful of programs (one per bucket pair), not one per step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    """Sampling controls for training rollouts (from `config.rollout`)."""

    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    sub_batch_size: int = 0  # Decode slots of the rollout engine; 0 = sized by the engine ("auto").
    pad_id: int = 0
    progress: bool = True

    def extra_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `generate` beyond its contract ones."""
        return {"sub_batch_size": self.sub_batch_size or "auto", "pad_id": self.pad_id, "progress": self.progress}


@dataclasses.dataclass(frozen=True)
class RolloutBatch:
    """N = prompts x n sequences: `[N, P+R]` token ids, the prompt left-padded, the response right-padded.

    The sampler already buckets P and R (powers of two), so a run compiles a handful of programs.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    response_mask: np.ndarray
    rollout_logp: np.ndarray  # The sampler's log-probs of the chosen tokens (diagnostics).

    def total_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def arrays(self) -> dict[str, np.ndarray]:
        """The keys `compute_logprobs` reads."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "response_mask": self.response_mask}

    def update_batch(self, *, old_logp, ref_logp, advantages) -> dict[str, Any]:
        """The dict the update step consumes (see `rlvr_jax.training.update`)."""
        batch = {**self.arrays(), "old_logp": old_logp, "advantages": np.asarray(advantages, np.float32),
                 "rollout_logp": self.rollout_logp}
        if ref_logp is not None:
            batch["ref_logp"] = ref_logp
        return batch


def make_rollout_batch(result) -> RolloutBatch:
    """Concatenates the sampler's padded prompt and response arrays into one sequence per sample."""
    input_ids = np.concatenate([result.prompt_ids, result.response_ids], axis=1).astype(np.int32)
    attention_mask = np.concatenate([result.prompt_mask, result.response_mask], axis=1).astype(np.int32)
    return RolloutBatch(input_ids, attention_mask, np.asarray(result.response_mask, np.int32),
                        np.asarray(result.logprob_array, np.float32))
