"""Evaluation benchmarks: where each lives, how its answers are read, how it is sampled.

The registry holds the paper's six (Qwen2.5-Math evaluation suite layout,
``<data_dir>/<name>/test.jsonl``) with the paper's protocol: prompt ``qwen_math_cot``, at most
3072 new tokens, greedy decoding for MATH500 / Minerva-Math / OlympiadBench, and temperature 0.6,
top-p 1, avg@8 for AIME24 / AIME25 / AMC23 (their 30-40 problems make greedy scores too noisy).

The six sets ship with the package (``rlvr_jax/evaluation/data``, see its README for provenance
and licence); a ``data_dir`` passed in replaces them, e.g. for a newer copy of the suite.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from rlvr_jax.data.datasets import Example, load_dataset


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One evaluation set and its sampling protocol.

    Attributes:
      name: Registry name; also the ``eval/<name>/...`` metric prefix.
      path: File, relative to the data directory (or absolute).
      question_key: Field holding the question; None auto-detects (see `load_dataset`).
      answer_key: Field holding the answer; None auto-detects.
      answer_from_solution: The answer is the last ``\\boxed{}`` of ``answer_key`` (a solution).
      temperature: 0 means greedy decoding.
      top_p: Nucleus-sampling threshold (1 = off).
      n: Responses per problem; the score is avg@n.
      max_new_tokens: Response-length cap.
      template: Prompt template name (`rlvr_jax.data.prompts`).
    """

    name: str
    path: str
    question_key: str | None = None
    answer_key: str | None = None
    answer_from_solution: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    max_new_tokens: int = 3072
    template: str = "qwen_math_cot"

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"benchmark {self.name}: n must be >= 1, got {self.n}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"benchmark {self.name}: need temperature >= 0 and 0 < top_p <= 1")
        if self.greedy and self.n != 1:
            raise ValueError(f"benchmark {self.name}: greedy decoding gives one response; "
                             f"n={self.n} would repeat it")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def metric(self) -> str:
        """Name of the headline score: ``acc`` (greedy) or ``avg@n``."""
        return "acc" if self.greedy else f"avg@{self.n}"


_BENCHMARKS: dict[str, Benchmark] = {}

# The paper's six sets as package data (``<name>/test.jsonl``): used when no data_dir is given.
PACKAGED_DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Adds a benchmark to the registry (name clash is an error)."""
    if benchmark.name in _BENCHMARKS:
        raise ValueError(f"benchmark {benchmark.name!r} is already registered")
    _BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def benchmark_names() -> list[str]:
    return sorted(_BENCHMARKS)


def get_benchmark(name_or_path: str | os.PathLike | Benchmark) -> Benchmark:
    """A registered benchmark by name; a file path becomes a greedy benchmark named by its stem.

    Raises:
      ValueError: neither a registered name nor a ``.jsonl`` / ``.json`` / ``.parquet`` path.
    """
    if isinstance(name_or_path, Benchmark):
        return name_or_path
    key = os.fspath(name_or_path)
    if key in _BENCHMARKS:
        return _BENCHMARKS[key]
    path = pathlib.Path(key)
    if path.suffix.lower() in (".jsonl", ".json", ".parquet"):
        # "math500/test.jsonl" -> "math500": the stem alone would name every such set "test".
        stem = path.parent.name if path.stem in ("test", "train", "validation") else path.stem
        return Benchmark(name=stem or path.stem, path=str(path))
    raise ValueError(f"unknown benchmark {key!r}; registered: {', '.join(benchmark_names())} "
                     "(or pass a .jsonl / .json / .parquet path)")


def load_benchmark(name_or_path: str | os.PathLike | Benchmark,
                   data_dir: str | os.PathLike | None = None,
                   limit: int | None = None) -> list[Example]:
    """Loads a benchmark's examples.

    Args:
      name_or_path: A registered name (``math500``, ...), a `Benchmark`, or a dataset file with
        problem/question + answer fields.
      data_dir: Directory that relative benchmark paths are resolved against (the evaluation
        suite's ``data/`` folder). None or "": registered benchmarks come from the package's own
        copy (`PACKAGED_DATA_DIR`) and a file path is read as given.
      limit: Keep only the first ``limit`` problems (quick checks).

    Returns:
      The examples, each with a non-empty answer and ``source`` = the benchmark name.
    """
    benchmark = get_benchmark(name_or_path)
    path = pathlib.Path(benchmark.path)
    if not path.is_absolute():
        if data_dir:
            path = pathlib.Path(data_dir) / path
        elif _BENCHMARKS.get(benchmark.name) is benchmark:
            # Registered paths are relative to a data directory, never to the working one.
            path = PACKAGED_DATA_DIR / path
    return load_dataset(path, question_key=benchmark.question_key,
                        answer_key=benchmark.answer_key,
                        answer_from_solution=benchmark.answer_from_solution,
                        source=benchmark.name, limit=limit, allow_empty_answer=False)


_SAMPLED = dict(temperature=0.6, top_p=1.0, n=8)

PAPER_BENCHMARKS = ("math500", "aime24", "aime25", "amc23", "minerva_math", "olympiadbench")

for _benchmark in (
        Benchmark("math500", "math500/test.jsonl", question_key="problem", answer_key="answer"),
        Benchmark("aime24", "aime24/test.jsonl", question_key="problem", answer_key="answer",
                  **_SAMPLED),
        Benchmark("aime25", "aime25/test.jsonl", question_key="problem", answer_key="answer",
                  **_SAMPLED),
        # AMC23 stores answers as floats (27.0); load_dataset prints integral ones as "27".
        Benchmark("amc23", "amc23/test.jsonl", question_key="problem", answer_key="answer",
                  **_SAMPLED),
        Benchmark("minerva_math", "minerva_math/test.jsonl", question_key="problem",
                  answer_key="solution", answer_from_solution=True),
        # final_answer is a one-element list; multi-answer rows hold "a, b" inside it.
        Benchmark("olympiadbench", "olympiadbench/test.jsonl", question_key="question",
                  answer_key="final_answer"),
):
    register_benchmark(_benchmark)
