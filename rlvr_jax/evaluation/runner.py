r"""Benchmark evaluation: prompts -> `generate` -> verifier -> acc / avg@k / pass@k / maj@k.

The default protocol is the paper's, read from each `Benchmark`: the ``qwen_math_cot`` prompt, at
most 3,072 new tokens, stopping at the tokenizer's end-of-turn tokens (``<|im_end|>``,
``<|endoftext|>``); greedy decoding for MATH500 / Minerva-Math / OlympiadBench, temperature 0.6,
top-p 1 and avg@8 for AIME24 / AIME25 / AMC23. `EvalSettings` overrides it (quick checks, the
trainer's greedy validation).

Scoring goes through a ``scorer(responses, golds) -> scores`` callable, in practice
``rlvr_jax.rewards.RewardPool(...).score``: worker processes with a per-answer timeout, so a
pathological answer cannot stall evaluation. Evaluation does *not* require a ``\boxed{}``: the
verifier's default (``compute_score(..., require_box=False)``) reads the last box and otherwise
falls back to "the answer is ...", the last math span, then the last number -- as the Qwen2.5-Math
evaluation suite does. Only the training reward requires the box.

Terms: ``P`` problems, ``n`` responses per problem; ``correct_pn`` is the [P, n] verdict matrix.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
import zlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tqdm

from rlvr_jax.data import Example, build_prompt, tokenize_prompts
from rlvr_jax.data.tokenizers import STOP_MODES, stop_token_ids
from rlvr_jax.evaluation.benchmarks import (Benchmark, benchmark_names, get_benchmark,
                                            load_benchmark)
from rlvr_jax.evaluation.metrics import avg_at_k, benchmark_metrics, validation_metrics
from rlvr_jax.evaluation.report import SampleRecord, write_samples
from rlvr_jax.rewards.extract import extract_answer

Scorer = Callable[[Sequence[str], Sequence[str]], np.ndarray]
GenerateFn = Callable[..., Any]
Results = dict[str, dict[str, Any]]
Records = dict[str, list[SampleRecord]]

# The paper's sampled protocol, applied to greedy benchmarks when sampling is forced.
SAMPLED_TEMPERATURE = 0.6
SAMPLED_N = 8
# Tokenising without a cap: evaluation never drops or truncates a problem.
_NO_PROMPT_CAP = 1 << 30


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Overrides of the benchmarks' own protocols, and batching. None keeps the benchmark's value.

    Attributes:
      max_new_tokens: Response-length cap.
      greedy: True decodes every benchmark greedily (n = 1); False samples every benchmark
        (greedy ones at temperature 0.6, n = 8); None keeps each benchmark's protocol.
      n: Responses per problem for sampled benchmarks (avg@n, any n >= 1).
      temperature: Samples every benchmark at this temperature, greedy ones included (with n, or
        8, responses), unless ``greedy=True``. None: each benchmark's own (0.6 for greedy ones
        that ``greedy=False`` samples).
      top_p: Nucleus threshold of every sampled benchmark (None: the benchmark's own, 1).
      stop: Which tokens end a response: "eos+chat" (the model's EOS and chat end-of-turn tokens,
        as the Qwen2.5-Math evaluation suite stops) or "eos" (see `rlvr_jax.data.tokenizers`).
      template: Prompt template name (`rlvr_jax.data.prompts`).
      system: System message (None: the template's default).
      limit: Evaluate only the first ``limit`` problems of each benchmark.
      batch_size: Problems per `generate` call (each expands to n rows); bigger keeps more decode
        slots busy (the tail of each call runs with fewer).
      sub_batch_size: Decode slots of `generate` (KV-cache memory); None = sized by the engine.
      max_prompt_len: Longest prompt in tokens (longer is an error); None = no cap.
      seed: Sampling seed; each batch derives its own from it, the benchmark and the batch start.
      progress: Show a progress bar over problems.
    """

    max_new_tokens: int | None = None
    greedy: bool | None = None
    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str = "eos+chat"
    template: str | None = None
    system: str | None = None
    limit: int | None = None
    batch_size: int = 64
    sub_batch_size: int | None = None
    max_prompt_len: int | None = None
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        for name in ("max_new_tokens", "n", "limit", "sub_batch_size", "max_prompt_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"EvalSettings.{name} must be >= 1 or None, got {value}")
        if self.batch_size < 1:
            raise ValueError(f"EvalSettings.batch_size must be >= 1, got {self.batch_size}")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"EvalSettings.temperature must be > 0 or None (greedy=True decodes "
                             f"greedily), got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"EvalSettings.top_p must be in (0, 1] or None, got {self.top_p}")
        if self.stop not in STOP_MODES:
            raise ValueError(f"EvalSettings.stop must be one of {STOP_MODES}, got {self.stop!r}")


@dataclasses.dataclass(frozen=True)
class PreparedBenchmark:
    """A benchmark with its protocol resolved and its prompts tokenised (done once, reused)."""

    benchmark: Benchmark
    examples: list[Example]
    prompt_ids: list[list[int]]


def resolve_protocol(benchmark: Benchmark, settings: EvalSettings) -> Benchmark:
    """The benchmark with `settings`' overrides applied (itself when there are none)."""
    changes: dict[str, Any] = {}
    if settings.greedy is True:
        changes.update(temperature=0.0, n=1)
    elif (settings.greedy is False or settings.temperature is not None) and benchmark.greedy:
        changes.update(temperature=SAMPLED_TEMPERATURE, n=SAMPLED_N)
    sampled = changes.get("temperature", benchmark.temperature) > 0
    if settings.n is not None and sampled:
        changes["n"] = settings.n  # A greedy benchmark keeps n = 1: more would repeat one answer.
    if settings.temperature is not None and sampled:
        changes["temperature"] = settings.temperature
    if settings.top_p is not None and sampled:
        changes["top_p"] = settings.top_p
    if settings.max_new_tokens is not None:
        changes["max_new_tokens"] = settings.max_new_tokens
    if settings.template is not None:
        changes["template"] = settings.template
    return dataclasses.replace(benchmark, **changes) if changes else benchmark


def prepare_benchmarks(tokenizer: Any, benchmarks: Sequence[str | os.PathLike | Benchmark], *,
                       data_dir: str | os.PathLike | None,
                       settings: EvalSettings) -> list[PreparedBenchmark]:
    """Loads each benchmark, resolves its protocol and tokenises its prompts.

    Args:
      tokenizer: A transformers tokenizer.
      benchmarks: Registered names (resolved under ``data_dir``), `Benchmark`s, or dataset file
        paths (an existing relative path is read relative to the working directory).
      data_dir: Directory of the evaluation suite (``<data_dir>/<name>/test.jsonl``).
      settings: Protocol overrides, limit, prompt cap.

    Returns:
      One `PreparedBenchmark` per entry, in order.

    Raises:
      ValueError: two entries share a name, or a benchmark is unknown / empty.
    """
    out, seen = [], set()
    for spec in benchmarks:
        if not isinstance(spec, Benchmark) and os.fspath(spec) not in benchmark_names() \
                and os.path.exists(spec):
            # Otherwise load_benchmark would look for a relative file path under data_dir.
            spec = os.path.abspath(spec)
        base = get_benchmark(spec)
        if base.name in seen:
            raise ValueError(f"benchmark {base.name!r} is listed twice")
        seen.add(base.name)
        examples = load_benchmark(base, data_dir=data_dir, limit=settings.limit)
        if not examples:
            raise ValueError(f"benchmark {base.name!r} has no problems")
        benchmark = resolve_protocol(base, settings)
        prompts = [build_prompt(e, benchmark.template, tokenizer, settings.system)
                   for e in examples]
        ids = tokenize_prompts(tokenizer, prompts, settings.max_prompt_len or _NO_PROMPT_CAP)
        out.append(PreparedBenchmark(benchmark, examples, ids))
    return out


class Evaluator:
    """Evaluates params on a fixed list of benchmarks; prompts are prepared once, at construction.

    Args:
      tokenizer: A transformers tokenizer (decodes responses; gives stop and pad ids).
      benchmarks: As for `prepare_benchmarks`.
      data_dir: Directory of the evaluation suite.
      scorer: ``scorer(responses, golds) -> scores`` (1 = correct), e.g. ``RewardPool.score``.
      settings: Protocol overrides and batching.
      generate_fn: The sampler, ``rlvr_jax.sampling.generate`` by default (tests inject fakes).
      sharder: Mesh + rules passed on to the sampler.
      extra_scorers: Further graders of the same responses, by name (e.g. ``{"paper": ...}``);
        each adds ``grader/<name>`` (its headline score) to a benchmark's results.
    """

    def __init__(self, tokenizer: Any, benchmarks: Sequence[str | os.PathLike | Benchmark], *,
                 data_dir: str | os.PathLike | None, scorer: Scorer,
                 settings: EvalSettings = EvalSettings(), generate_fn: GenerateFn | None = None,
                 sharder: Any = None, extra_scorers: Mapping[str, Scorer] | None = None):
        if generate_fn is None:
            from rlvr_jax.sampling import generate as generate_fn  # Heavy: imported on use.
        self.tokenizer, self.scorer, self.settings = tokenizer, scorer, settings
        self.extra_scorers = dict(extra_scorers or {})
        self.generate_fn, self.sharder = generate_fn, sharder
        self.tasks = prepare_benchmarks(tokenizer, benchmarks, data_dir=data_dir, settings=settings)
        self.stop_ids = tuple(stop_token_ids(tokenizer, settings.stop))
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.seconds: dict[str, float] = {}

    @property
    def benchmarks(self) -> list[Benchmark]:
        """The benchmarks with their resolved protocols."""
        return [task.benchmark for task in self.tasks]

    def run(self, params: Any, cfg: Any) -> tuple[Results, Records]:
        """Generates, scores and summarises every benchmark.

        Args:
          params: Model params pytree (placed as the sampler expects).
          cfg: The `ModelConfig`.

        Returns:
          ``(results, records)``: ``results[name]`` maps metric -> value (see `benchmark_metrics`
          plus ``truncated``, ``mean_tokens``, ``num_problems``, ``n``, ``decoding``);
          ``records[name]`` holds one `SampleRecord` per response, problem-major.
        """
        results, records = {}, {}
        for task in self.tasks:
            start = time.perf_counter()
            results[task.benchmark.name], records[task.benchmark.name] = self._run_one(
                params, cfg, task)
            self.seconds[task.benchmark.name] = time.perf_counter() - start
        return results, records

    def _run_one(self, params, cfg, task: PreparedBenchmark) -> tuple[dict, list[SampleRecord]]:
        b, size = task.benchmark, self.settings.batch_size
        responses, lengths, truncated, scores, golds_all = [], [], [], [], []
        # Over responses (problems when n = 1), moved by the sampler as rows finish, so a batch of
        # hundreds of problems in one `generate` call (more slots busy: faster) still shows progress.
        with tqdm.tqdm(total=len(task.examples) * b.n, desc=b.name, unit="problem" if b.n == 1 else "response",
                       disable=not self.settings.progress, dynamic_ncols=True) as bar:
            for start in range(0, len(task.examples), size):
                moved = [0]

                def on_rows(k: int) -> None:  # called during this iteration's generate only
                    moved[0] += k
                    bar.update(k)
                out = self._generate(params, cfg, b, task.prompt_ids[start:start + size], start,
                                     on_rows if self.settings.progress else False)
                texts = [self._decode(tokens) for tokens in out.tokens]
                golds = [e.answer for e in task.examples[start:start + size] for _ in range(b.n)]
                batch_scores = np.asarray(self.scorer(texts, golds), np.float64).reshape(-1)
                if batch_scores.shape != (len(texts),):
                    raise ValueError(f"scorer returned {batch_scores.shape[0]} scores for "
                                     f"{len(texts)} responses")
                responses += texts
                golds_all += golds
                scores.append(batch_scores)
                lengths += [len(tokens) for tokens in out.tokens]
                truncated += [reason == "length" for reason in out.finish_reason]
                bar.update(len(golds) - moved[0])  # what a custom generate_fn did not report
                bar.set_postfix({b.metric: f"{np.mean(np.concatenate(scores) > 0.5):.3f}"})
        correct = np.concatenate(scores).reshape(len(task.examples), b.n) > 0.5
        extracted = [extract_answer(r) for r in responses]
        answers = np.asarray(extracted, object).reshape(correct.shape)
        metrics = benchmark_metrics(correct, answers, b)
        metrics.update(truncated=float(np.mean(truncated)),
                       mean_tokens=int(round(np.mean(lengths))), num_problems=len(task.examples),
                       n=b.n, decoding=describe_decoding(b))
        for name, extra in self.extra_scorers.items():
            extra_scores = np.asarray(extra(responses, golds_all), np.float64).reshape(-1)
            metrics[f"grader/{name}"] = avg_at_k(extra_scores.reshape(correct.shape) > 0.5)
        return metrics, _records(b, task.examples, responses, extracted, correct)

    def _generate(self, params, cfg, b: Benchmark, prompt_ids, start: int, progress):
        sub = self.settings.sub_batch_size
        return self.generate_fn(
            params, cfg, prompt_ids, max_new_tokens=b.max_new_tokens,
            temperature=b.temperature if not b.greedy else 1.0, top_p=b.top_p, greedy=b.greedy,
            stop_token_ids=self.stop_ids, n=b.n, seed=batch_seed(self.settings.seed, b.name, start),
            sub_batch_size="auto" if sub is None else sub, pad_id=self.pad_id,
            # The sampler draws no bar of its own: it moves this evaluator's.
            progress=progress, sharder=self.sharder)

    def _decode(self, tokens: Sequence[int]) -> str:
        # Drop the stop token but keep other specials: the verifier cuts a response at a
        # hallucinated next turn (<|im_start|>), which skip_special_tokens would hide.
        if tokens and tokens[-1] in self.stop_ids:
            tokens = tokens[:-1]
        return self.tokenizer.decode(list(tokens), skip_special_tokens=False)


def evaluate(params: Any, cfg: Any, tokenizer: Any,
             benchmarks: Sequence[str | os.PathLike | Benchmark], *,
             data_dir: str | os.PathLike | None, scorer: Scorer,
             settings: EvalSettings = EvalSettings(), generate_fn: GenerateFn | None = None,
             sharder: Any = None) -> tuple[Results, Records]:
    """One-off evaluation: `Evaluator(...).run(params, cfg)` (see `Evaluator` for the arguments)."""
    evaluator = Evaluator(tokenizer, benchmarks, data_dir=data_dir, scorer=scorer,
                          settings=settings, generate_fn=generate_fn, sharder=sharder)
    return evaluator.run(params, cfg)


def describe_decoding(benchmark: Benchmark) -> str:
    """Short protocol label for tables, e.g. ``greedy`` or ``t=0.6 top_p=1``."""
    if benchmark.greedy:
        return "greedy"
    return f"t={benchmark.temperature:g} top_p={benchmark.top_p:g}"


def batch_seed(seed: int, name: str, start: int) -> int:
    """A per-batch sampling seed: batches and benchmarks never share a random stream."""
    mixed = np.random.SeedSequence([seed, zlib.crc32(name.encode()), start])
    return int(mixed.generate_state(1)[0] & 0x7FFFFFFF)


def _records(b: Benchmark, examples, responses, extracted, correct_pn) -> list[SampleRecord]:
    return [SampleRecord(benchmark=b.name, index=e.index, sample=s, problem=e.question,
                         response=responses[p * b.n + s], extracted=extracted[p * b.n + s],
                         gold=e.answer, correct=bool(correct_pn[p, s]))
            for p, e in enumerate(examples) for s in range(b.n)]


def make_validation_fn(tokenizer: Any, benchmarks: Sequence[str | os.PathLike | Benchmark], *,
                       data_dir: str | os.PathLike | None, scorer: Scorer,
                       settings: EvalSettings, cfg: Any, generate_fn: GenerateFn | None = None,
                       sharder: Any = None, out_dir: str | os.PathLike | None = None,
                       require_box: bool | None = None
                       ) -> Callable[[Any, int], dict[str, float]]:
    """The trainer's periodic validation: ``fn(params, step) -> {"eval/<set>/accuracy": ...}``.

    Benchmarks are loaded and tokenised once, here; each call only generates and scores.

    Args:
      tokenizer, benchmarks, data_dir, scorer, settings, generate_fn, sharder: As for `Evaluator`.
      cfg: The policy's `ModelConfig` (fixed for a run).
      out_dir: If given, each call also writes ``<out_dir>/step_<step>/<set>.jsonl`` samples.
      require_box: Whether `scorer` requires a boxed answer (as the training reward does); when
        given, each call reports it as ``eval/require_box`` (1.0 / 0.0), so a logged accuracy
        says which scoring produced it.

    Returns:
      The validation function; its values are floats (see `validation_metrics`).
    """
    evaluator = Evaluator(tokenizer, benchmarks, data_dir=data_dir, scorer=scorer,
                          settings=settings, generate_fn=generate_fn, sharder=sharder)

    def validate(params: Any, step: int) -> dict[str, float]:
        results, records = evaluator.run(params, cfg)
        if out_dir is not None:
            for name, rows in records.items():
                write_samples(pathlib.Path(out_dir) / f"step_{int(step):06d}" / f"{name}.jsonl",
                              rows)
        metrics = validation_metrics(results)
        if require_box is not None:
            metrics["eval/require_box"] = float(require_box)
        return metrics

    return validate
