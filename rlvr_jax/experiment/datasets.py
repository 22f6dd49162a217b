"""The data a config names: training examples and the benchmark files of in-training validation."""

from __future__ import annotations

import json
import pathlib
from typing import Sequence

from rlvr_jax.data import load_dataset, repeat_to_fill
from rlvr_jax.data.builtin import builtin_example
from rlvr_jax.data.datasets import Example
from rlvr_jax.data.synthetic import SYNTHETIC_PREFIX, parse_arithmetic, synthetic_benchmark

ARITHMETIC_PREFIX = "arith:"  # data.example "arith:47+38": one synthetic addition (the CPU demo).


def training_examples(config) -> list[Example]:
    """`data.train_path` (first `data.num_examples`), else the builtin or arithmetic `data.example`.

    Fewer examples than `trainer.batch_size` are repeated to fill a batch (the 1-shot setting).
    """
    if config.data.train_path:
        examples = load_dataset(config.data.train_path)
        if config.data.num_examples:
            examples = examples[: config.data.num_examples]
    elif config.data.example.startswith(ARITHMETIC_PREFIX):
        examples = [parse_arithmetic(config.data.example[len(ARITHMETIC_PREFIX):])]
    else:
        examples = [builtin_example(config.data.example)]
    if len(examples) < config.trainer.batch_size:
        examples = repeat_to_fill(examples, config.trainer.batch_size)
    return examples


def resolve_benchmarks(names: Sequence[str], out_dir: pathlib.Path, exclude: Sequence[Example] = ()) -> list[str]:
    """Benchmark names/paths; `synthetic:<kind>:<count>` specs are generated into jsonl files first.

    Args:
      names: benchmark names, dataset files, or synthetic specs.
      out_dir: where generated files go.
      exclude: examples a generated set must not contain (the training examples).
    """
    out = []
    for name in names:
        if not str(name).startswith(SYNTHETIC_PREFIX):
            out.append(name)
            continue
        examples = synthetic_benchmark(str(name), exclude=tuple(exclude))
        path = pathlib.Path(out_dir) / (str(name)[len(SYNTHETIC_PREFIX):].replace(":", "_") + ".jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"problem": e.question, "answer": e.answer}) + "\n" for e in examples))
        out.append(str(path))
    return out
