"""Data: math datasets, prompt templates, batching (1-shot repetition), example selection."""

from rlvr_jax.data.batching import PromptBatch, PromptIterator, repeat_to_fill, tokenize_prompts
from rlvr_jax.data.datasets import DatasetError, Example, last_boxed_answer, load_dataset
from rlvr_jax.data.prompts import build_prompt, register_template, template_names
from rlvr_jax.data.selection import load_accuracy_history, rank_by_variance, variance_ranking

__all__ = [
    "DatasetError",
    "Example",
    "PromptBatch",
    "PromptIterator",
    "build_prompt",
    "last_boxed_answer",
    "load_accuracy_history",
    "load_dataset",
    "rank_by_variance",
    "register_template",
    "repeat_to_fill",
    "template_names",
    "tokenize_prompts",
    "variance_ranking",
]
