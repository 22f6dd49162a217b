"""The paper's one-shot training examples, shipped with the package (no data files needed at run time).

pi1 (DSR-sub index 124, answer 12.8), pi2 (267, 24), pi13 (682, 4/3) and pi1209 (789, -2023/2024), with
the user message exactly as in the paper's verl parquet files.
"""

from __future__ import annotations

import json
import pathlib

from rlvr_jax.data.datasets import Example

_FILE = pathlib.Path(__file__).with_name("one_shot.jsonl")


def builtin_examples() -> dict[str, Example]:
    """name -> Example for every shipped one-shot example."""
    out = {}
    for line in _FILE.read_text().splitlines():
        row = json.loads(line)
        out[row["name"]] = Example(question=row["prompt"], answer=row["answer"],
                                   messages=(("user", row["prompt"]),), index=row["dsr_index"],
                                   source="deepscaler")
    return out


def builtin_example(name: str) -> Example:
    examples = builtin_examples()
    if name not in examples:
        raise ValueError(f"unknown builtin example {name!r}; available: {sorted(examples)}")
    return examples[name]
