"""Prompt batches: 1-shot repetition, a deterministic resumable sampler, tokenisation.

The sampler is a pure function of ``(seed, epoch, step)``: the examples are permuted once per
epoch with ``numpy.random.default_rng([seed, epoch])`` and step ``s`` reads rows
``[p * batch_size, (p + 1) * batch_size)`` of that permutation, ``p = s % steps_per_epoch``.
Resuming a run therefore needs only the step (`PromptIterator.state`), and every host of a
multi-host run computes the same global batch and keeps its own contiguous slice of it
(`PromptIterator.shard`), with no communication.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np

from rlvr_jax.data.datasets import Example

Truncation = Literal["error", "left"]


def repeat_to_fill(examples: Sequence[Example], batch_size: int) -> list[Example]:
    """Repeats k examples to fill a batch: 1-shot RLVR is one example x128.

    The examples are cycled (``e0, e1, ..., e0, e1, ...``) so that any contiguous slice of the
    batch -- one host's share -- holds every example equally often.

    Args:
      examples: The k examples.
      batch_size: Rows wanted; must be a multiple of k so that each example gets the same weight.

    Returns:
      ``batch_size`` examples.
    """
    k = len(examples)
    if k == 0:
        raise ValueError("repeat_to_fill needs at least one example")
    if batch_size <= 0 or batch_size % k:
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of the number of "
                         f"examples ({k}) so that every example is repeated equally")
    return [examples[i % k] for i in range(batch_size)]


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """One step's prompt rows (or one host's contiguous slice of them).

    Attributes:
      examples: The rows, in batch order.
      group_ids_b: int32 [rows]: each row's index in the *global* batch; the responses sampled
        for a row form one group for group-relative advantages.
      step: The training step this batch belongs to.
      epoch: The pass over the dataset it came from.
    """

    examples: tuple[Example, ...]
    group_ids_b: np.ndarray
    step: int
    epoch: int

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def questions(self) -> list[str]:
        return [e.question for e in self.examples]

    @property
    def answers(self) -> list[str]:
        return [e.answer for e in self.examples]

    def shard(self, process_index: int, process_count: int) -> PromptBatch:
        """This host's contiguous slice; the hosts' slices concatenate to the whole batch."""
        lo, hi = _shard_bounds(len(self), process_index, process_count)
        return PromptBatch(self.examples[lo:hi], self.group_ids_b[lo:hi], self.step, self.epoch)


class PromptIterator:
    """Deterministic, resumable, shardable sampler of prompt batches.

    Epochs are whole passes over a per-epoch shuffle; a trailing partial batch is dropped (as
    verl's ``drop_last``) so every step has the same static batch shape.

    Example::

        it = PromptIterator(examples, batch_size=128, seed=0).shard(jax.process_index(),
                                                                     jax.process_count())
        it.restore(saved_state)   # from a checkpoint; omit on a fresh run
        batch = next(it)          # this host's rows of the global batch for the current step
        saved_state = it.state()
    """

    def __init__(self, examples: Sequence[Example], batch_size: int, seed: int = 0,
                 shuffle: bool = True):
        """Builds the sampler.

        Args:
          examples: The dataset (already repeated with `repeat_to_fill` for k-shot runs).
          batch_size: Global prompt rows per step (all hosts together).
          seed: Shuffle seed.
          shuffle: False keeps file order every epoch (evaluation-like runs, debugging).
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(examples) < batch_size:
            raise ValueError(
                f"{len(examples)} examples cannot fill a batch of {batch_size}; repeat them with "
                "rlvr_jax.data.repeat_to_fill (1-shot RLVR) or lower the batch size")
        self._examples = tuple(examples)
        self._batch_size = batch_size
        self._seed = int(seed)
        self._shuffle = shuffle
        self._step = 0
        self._shard = (0, 1)

    @property
    def steps_per_epoch(self) -> int:
        return len(self._examples) // self._batch_size

    @property
    def step(self) -> int:
        """The step whose batch `next` returns."""
        return self._step

    def order(self, epoch: int) -> np.ndarray:
        """Row order of one epoch: int64 [num_examples]."""
        n = len(self._examples)
        if not self._shuffle:
            return np.arange(n)
        # Seeding with the (seed, epoch) pair makes each epoch independent of how many were drawn.
        return np.random.default_rng([self._seed, epoch]).permutation(n)

    def batch_at(self, step: int) -> PromptBatch:
        """This iterator's batch (or shard of it) for ``step``; does not move the position."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, pos = divmod(step, self.steps_per_epoch)
        rows = self.order(epoch)[pos * self._batch_size:(pos + 1) * self._batch_size]
        batch = PromptBatch(tuple(self._examples[i] for i in rows),
                            np.arange(self._batch_size, dtype=np.int32), step, epoch)
        return batch.shard(*self._shard)

    def resample(self, step: int, round_index: int) -> PromptBatch:
        """Extra prompts for ``step`` (DAPO dynamic sampling's round ``round_index`` >= 1).

        A batch drawn without replacement by an rng seeded with (seed, step, round): a pure function
        of its arguments, so a resumed run draws the same prompts and the data position is untouched.
        """
        if round_index < 1:
            raise ValueError(f"round_index must be >= 1 (round 0 is batch_at), got {round_index}")
        rng = np.random.default_rng([self._seed, step, round_index, 0x0DA90])
        rows = rng.choice(len(self._examples), size=self._batch_size, replace=False)
        batch = PromptBatch(tuple(self._examples[i] for i in rows),
                            np.arange(self._batch_size, dtype=np.int32), step, step // self.steps_per_epoch)
        return batch.shard(*self._shard)

    def __iter__(self) -> Iterator[PromptBatch]:
        return self

    def __next__(self) -> PromptBatch:
        batch = self.batch_at(self._step)
        self._step += 1
        return batch

    def state(self) -> dict[str, int]:
        """Data position for checkpoints (JSON-serialisable)."""
        return {"step": self._step, "seed": self._seed, "batch_size": self._batch_size,
                "num_examples": len(self._examples)}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Moves to a saved position; refuses a state saved for a different data setup.

        Raises:
          ValueError: ``seed``, ``batch_size`` or ``num_examples`` differ from this iterator's,
            which would silently replay different batches than the interrupted run saw.
        """
        if "step" not in state:
            raise ValueError(f"data state lacks 'step': {dict(state)}")
        mine = self.state()
        for key in ("seed", "batch_size", "num_examples"):
            if key in state and int(state[key]) != mine[key]:
                raise ValueError(f"data state was saved with {key}={state[key]}, this run has "
                                 f"{key}={mine[key]}; cannot resume the same batch sequence")
        if int(state["step"]) < 0:
            raise ValueError(f"data state step must be >= 0, got {state['step']}")
        self._step = int(state["step"])

    def shard(self, process_index: int, process_count: int) -> PromptIterator:
        """A copy (same seed and position) that yields host ``process_index``'s slice."""
        _shard_bounds(self._batch_size, process_index, process_count)  # Validates early.
        other = PromptIterator(self._examples, self._batch_size, self._seed, self._shuffle)
        other._step = self._step
        other._shard = (process_index, process_count)
        return other


def _shard_bounds(rows: int, process_index: int, process_count: int) -> tuple[int, int]:
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, "
                         f"got {process_index} of {process_count}")
    if rows % process_count:
        raise ValueError(f"batch of {rows} rows does not split evenly over {process_count} "
                         "processes")
    per = rows // process_count
    return process_index * per, (process_index + 1) * per


def tokenize_prompts(tokenizer: Any, prompts: Sequence[str], max_prompt_len: int,
                     truncation: Truncation = "error",
                     add_special_tokens: bool = False) -> list[list[int]]:
    """Tokenises prompt strings, enforcing a maximum length.

    Args:
      tokenizer: A transformers tokenizer.
      prompts: Rendered prompts (see `build_prompt`).
      max_prompt_len: Longest allowed prompt, in tokens.
      truncation: ``"error"`` raises on a prompt that is too long; ``"left"`` keeps its last
        ``max_prompt_len`` tokens (the end holds the question's tail and the generation prompt).
      add_special_tokens: Off by default because rendered chat prompts already contain their
        special tokens (Llama-3's ``<|begin_of_text|>``); adding them again would double the BOS.

    Returns:
      One list of token ids per prompt, unpadded.

    Raises:
      ValueError: a prompt is longer than ``max_prompt_len`` with ``truncation="error"``, or bad
        arguments.
    """
    if truncation not in ("error", "left"):
        raise ValueError(f"truncation must be 'error' or 'left', got {truncation!r}")
    if max_prompt_len <= 0:
        raise ValueError(f"max_prompt_len must be positive, got {max_prompt_len}")
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string")
    if not prompts:
        return []
    ids = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    out = []
    for i, row in enumerate(ids):
        row = list(row)
        if not row:
            raise ValueError(f"prompt {i} tokenises to no tokens")
        if len(row) > max_prompt_len:
            if truncation == "error":
                raise ValueError(
                    f"prompt {i} has {len(row)} tokens > max_prompt_len={max_prompt_len} "
                    f"(starts {prompts[i][:80]!r}); raise max_prompt_len or use "
                    "truncation='left'")
            row = row[-max_prompt_len:]
        out.append(row)
    return out
