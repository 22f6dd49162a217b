"""Per-step statistics of the sampled responses: lengths, truncation, and self-reflection words.

The paper tracks how often responses use self-reflection words ("rethink", "recheck",
"recalculate", ...): their frequency rises during 1-shot RLVR along with accuracy.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

# The paper's three words plus close variants; generic words ("wait", "verify") are left out because
# they also appear in non-reflective text ("wait time", "verify that x = 2 satisfies ...").
REFLECTION_WORDS = ("rethink", "recheck", "re-check", "recalculate", "re-calculate", "reevaluate",
                    "re-evaluate", "reexamine", "re-examine", "double-check", "double check")
_REFLECTION_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in REFLECTION_WORDS) + r")", re.IGNORECASE)


def reflection_counts(texts: Sequence[str]) -> np.ndarray:
    """Number of self-reflection words in each text."""
    return np.array([len(_REFLECTION_RE.findall(t)) for t in texts], dtype=np.int64)


def response_metrics(texts: Sequence[str], lengths: Sequence[int], finish_reasons: Sequence[str],
                     max_new_tokens: int) -> dict[str, float]:
    """Length, clip ratio and reflection-word statistics of one step's responses."""
    lengths = np.asarray(lengths, dtype=np.float64)
    counts = reflection_counts(texts)
    return {
        "response/length_mean": float(lengths.mean()),
        "response/length_max": float(lengths.max()),
        "response/length_min": float(lengths.min()),
        "response/clip_ratio": float(np.mean([r == "length" for r in finish_reasons])),
        "response/reflection_words_mean": float(counts.mean()),
        "response/reflection_frac": float(np.mean(counts > 0)),
        "response/max_new_tokens": float(max_new_tokens),
    }
