"""A tqdm progress bar fed from inside the jitted decode loop.

The loop calls `report_every`, which every `every` steps sends `(sub_batch, step, rows_done)` to the
host with `jax.debug.callback`. The callback target is this module's `_on_device_report`, a fixed
function (a closure over a new bar would be a new static value and retrace the program); it updates
whichever bar `ProgressBar` has made current. This is display state only: results never depend on it.
"""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp

_LOCK = threading.Lock()
_CURRENT: "ProgressBar | None" = None


def report_every(every: int, sub_index, step, done_b) -> None:
    """Inside jit: reports progress to the host when `step % every == 0`."""

    def send():
        jax.debug.callback(_on_device_report, sub_index, step, jnp.sum(done_b, dtype=jnp.int32))

    jax.lax.cond(step % every == 0, send, lambda: None)


def _on_device_report(sub_index, step, rows_done) -> None:
    with _LOCK:
        bar = _CURRENT
    if bar is not None:
        bar.update_to(int(sub_index), int(step), int(rows_done))


class ProgressBar:
    """Context manager: one bar over `num_sub_batches x max_new_tokens` decode steps.

    Args:
      num_sub_batches: sub-batches in this `generate` call.
      max_new_tokens: decode steps per sub-batch at most.
      enabled: False gives a no-op bar.
    """

    def __init__(self, num_sub_batches: int, max_new_tokens: int, enabled: bool = True):
        self.steps, self.enabled = max_new_tokens, enabled
        self.total = num_sub_batches * max_new_tokens
        self._bar = None

    def __enter__(self):
        global _CURRENT
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc="rollout", unit="step", leave=False, dynamic_ncols=True)
            with _LOCK:
                _CURRENT = self
        return self

    def __exit__(self, *exc):
        global _CURRENT
        with _LOCK:
            if _CURRENT is self:
                _CURRENT = None
        if self._bar is not None:
            self._bar.close()

    def update_to(self, sub_index: int, step: int, rows_done: int) -> None:
        """Moves the bar to `step` of sub-batch `sub_index` (never backwards)."""
        if self._bar is None:
            return
        position = sub_index * self.steps + min(step, self.steps)
        if position > self._bar.n:
            self._bar.update(position - self._bar.n)
            self._bar.set_postfix_str(f"sub-batch {sub_index + 1}, rows finished {rows_done}", refresh=False)

    def finish_sub_batch(self, sub_index: int) -> None:
        """Jumps to the end of sub-batch `sub_index` (it may have stopped early)."""
        self.update_to(sub_index, self.steps, 0)
