r"""Training rewards by name (`config.reward.name`): math, none, format, hapo; DAPO's overlong shaping.

A reward works in two phases, so multi-process runs stay identical everywhere:

  score(texts, answers) -> [N]        per sample, on this process's slice (the verifier's work);
  shape(scores, lengths, keys) -> [N] on the gathered global batch: length terms, history updates.

`score` gives the task score the loop filters on (DAPO dynamic sampling keeps groups whose scores
differ); `shape` adds what depends on lengths or on the run's history. Stateful rewards (HAPO's
per-problem history) expose `state()` / `restore()`, saved in checkpoints with the data position.

Formulas and papers: docs/algorithms.md.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rlvr_jax.algorithms.shaping import overlong_penalty
from rlvr_jax.rewards.extract import extract_answer

ScoreFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]

REWARDS: dict[str, Callable[..., "Reward"]] = {}


def register_reward(name: str) -> Callable:
    """Decorator that registers a reward class (built as ``cls(score_fn=..., **options)``)."""

    def decorator(cls):
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered")
        REWARDS[name] = cls
        return cls

    return decorator


def problem_key(question: str, answer: str) -> str:
    """A stable id of a problem (its history key): a hash of the question and the answer."""
    return hashlib.sha1(f"{question}\x00{answer}".encode()).hexdigest()[:16]


class Reward:
    """A stateless reward: `shape` adds nothing. Subclasses override `score` (and `shape`)."""

    def __init__(self, score_fn: ScoreFn | None = None):
        self.score_fn = score_fn

    def score(self, texts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def shape(self, scores, lengths, keys: Sequence[str]) -> tuple[np.ndarray, dict[str, float]]:
        """Final rewards of the global batch from its scores, response lengths and problem keys."""
        del lengths, keys
        return np.asarray(scores, np.float32), {}

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")


@register_reward("math")
class MathReward(Reward):
    """1 / 0 from the math verifier (`compute_score` on the worker pool)."""

    def score(self, texts, answers):
        if self.score_fn is None:
            raise ValueError("the math reward needs a score_fn (e.g. RewardPool.score)")
        return np.asarray(self.score_fn(texts, answers), np.float32)


@register_reward("none")
class NoReward(Reward):
    """Every reward is 0: with the entropy bonus this is the paper's entropy-only ablation."""

    def score(self, texts, answers):
        return np.zeros(len(texts), np.float32)


@register_reward("format")
class FormatReward(Reward):
    r"""1 when the response gives a non-empty `\boxed{}` answer, right or wrong (the 1-shot RLVR
    paper's format-reward baseline); 0 otherwise. Extraction only: nothing is parsed or evaluated."""

    def score(self, texts, answers):
        del answers
        return np.asarray([1.0 if (extract_answer(t, require_box=True) or "").strip() else 0.0
                           for t in texts], np.float32)


def hapo_length_reward(length: float, history: float | None, correct: bool, floor: float = -0.7) -> float:
    """HAPO's cosine length reward (Huang et al. 2025, arXiv 2505.11225).

    ``f = cos(min(pi/2 * L / h, pi))`` with ``h`` the problem's shortest correct length so far;
    a correct response gets ``max(f, floor)`` (shorter than ``h``: positive; never below ``floor``,
    so any correct response beats any wrong one), a wrong one ``min(f, 0)`` (a short wrong answer
    is not rewarded, nor punished); 0 while ``h`` is unknown.
    """
    if history is None:
        return 0.0
    f = math.cos(min(math.pi / 2 * length / history, math.pi))
    return max(f, floor) if correct else min(f, 0.0)


@register_reward("hapo")
class HapoReward(MathReward):
    """Correctness (math verifier) + `weight` x HAPO's length reward from a per-problem history.

    The history maps a problem key to the shortest correct response length seen so far (tokens).
    A batch is rewarded against the history as it stood before the batch; then each problem's
    entry drops to the shortest correct length of the batch (HAPO's "min" history).
    """

    def __init__(self, score_fn: ScoreFn | None = None, weight: float = 1.0, floor: float = -0.7):
        super().__init__(score_fn)
        if not -1.0 <= floor <= 0.0:
            raise ValueError(f"hapo floor must be in [-1, 0], got {floor}")
        self.weight, self.floor = float(weight), float(floor)
        self.history: dict[str, int] = {}

    def shape(self, scores, lengths, keys):
        scores = np.asarray(scores, np.float32)
        correct = scores >= 1.0
        bonus = np.asarray([hapo_length_reward(float(n), self.history.get(k), bool(c), self.floor)
                            for n, k, c in zip(lengths, keys, correct)], np.float32)
        known = np.mean([k in self.history for k in keys]) if len(keys) else 0.0
        for n, k, c in zip(lengths, keys, correct):
            if c:
                self.history[k] = min(int(n), self.history.get(k, int(n)))
        metrics = {"reward/hapo_length_mean": float(np.mean(bonus)) if len(bonus) else 0.0,
                   "reward/hapo_history_frac": float(known)}
        return scores + self.weight * bonus, metrics

    def state(self):
        return {"history": dict(self.history)}

    def restore(self, state):
        self.history = {str(k): int(v) for k, v in dict(state.get("history", {})).items()}


class OverlongShaped(Reward):
    """Adds DAPO's overlong penalty (`algorithms.overlong_penalty`) to another reward's output."""

    def __init__(self, inner: Reward, max_len: int, cache_len: int):
        super().__init__(inner.score_fn)
        overlong_penalty([0], max_len, cache_len)  # validates the lengths at build time
        self.inner, self.max_len, self.cache_len = inner, int(max_len), int(cache_len)

    def score(self, texts, answers):
        return self.inner.score(texts, answers)

    def shape(self, scores, lengths, keys):
        rewards, metrics = self.inner.shape(scores, lengths, keys)
        penalty = np.asarray(overlong_penalty(np.asarray(lengths), self.max_len, self.cache_len), np.float32)
        metrics = dict(metrics, **{"reward/overlong_penalty_mean": float(np.mean(penalty)) if len(penalty) else 0.0,
                                   "reward/overlong_frac": float(np.mean(penalty < 0)) if len(penalty) else 0.0})
        return rewards + penalty, metrics

    def state(self):
        return self.inner.state()

    def restore(self, state):
        self.inner.restore(state)


def build_reward(name: str, *, score_fn: ScoreFn | None = None, overlong_cache_len: int = 0,
                 max_len: int | None = None, **options) -> Reward:
    """The reward registered as `name`, optionally with DAPO's overlong penalty on top.

    Args:
      name: a key of `REWARDS` (math | none | format | hapo).
      score_fn: `(texts, answers) -> scores`, the verifier (e.g. `RewardPool.score`).
      overlong_cache_len: DAPO's L_cache in tokens; > 0 adds the overlong penalty.
      max_len: DAPO's L_max (the rollout's max_new_tokens); needed when overlong_cache_len > 0.
      **options: the reward's own settings (hapo: weight, floor).

    Raises:
      ValueError: an unknown name (listing the valid ones) or bad overlong lengths.
    """
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; valid: {sorted(REWARDS)}")
    reward = REWARDS[name](score_fn=score_fn, **options)
    if overlong_cache_len > 0:
        if max_len is None:
            raise ValueError("the overlong penalty needs max_len (the rollout's max_new_tokens)")
        reward = OverlongShaped(reward, max_len, overlong_cache_len)
    return reward
