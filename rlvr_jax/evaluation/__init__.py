"""Evaluation: benchmarks and their protocols, pass@k / avg@k / maj@k, reports."""

from rlvr_jax.evaluation.benchmarks import (PAPER_BENCHMARKS, Benchmark, benchmark_names,
                                            get_benchmark, load_benchmark, register_benchmark)
from rlvr_jax.evaluation.metrics import (avg_at_k, benchmark_average, maj_at_k, majority_answer,
                                         mean_pass_at_k, paper_average, pass_at_k,
                                         validation_metrics)
from rlvr_jax.evaluation.report import (SampleRecord, averages, markdown_table, summary,
                                        write_outputs, write_report, write_samples)
from rlvr_jax.evaluation.runner import EvalSettings, Evaluator, evaluate, make_validation_fn

__all__ = [
    "PAPER_BENCHMARKS",
    "Benchmark",
    "EvalSettings",
    "Evaluator",
    "SampleRecord",
    "avg_at_k",
    "averages",
    "benchmark_average",
    "benchmark_names",
    "evaluate",
    "get_benchmark",
    "load_benchmark",
    "maj_at_k",
    "majority_answer",
    "make_validation_fn",
    "markdown_table",
    "mean_pass_at_k",
    "paper_average",
    "pass_at_k",
    "register_benchmark",
    "summary",
    "validation_metrics",
    "write_outputs",
    "write_report",
    "write_samples",
]
