"""Rewards: verifiable math-answer scoring, and a process pool that applies it with timeouts.

Public API:
  RewardPool                  -- batch scoring on worker processes (per-answer timeout, memory cap)
  compute_score(resp, gold)   -- 1.0 / 0.0 for one response
  extract_answer(text)        -- the final answer in a response (last box, else fallbacks)
  is_equiv(pred, gold)        -- equivalence of two bare answers

Modules, in pipeline order: extract (answer extraction), normalize (LaTeX clean-up, units,
percent, thousands), answer (lists / words / bases), parse (safe, bounded LaTeX -> sympy),
structures (relations, sets, tuples, matrices), compare (numbers and expressions), math (entry
points), pool (RewardPool).
"""

from rlvr_jax.rewards.math import compute_score, extract_answer, is_equiv
from rlvr_jax.rewards.pool import PoolStats, RewardPool

__all__ = ["RewardPool", "PoolStats", "compute_score", "extract_answer", "is_equiv"]
