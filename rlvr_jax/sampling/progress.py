"""A tqdm progress bar over samples: rows finished / total, with the generated tokens per second.

The scheduler updates it from the host between decode segments (no callbacks from inside the
compiled programs). Display state only: results never depend on it. A caller that draws its own bar
(the evaluator, over problems) passes a callable instead and is told how many rows just finished.
"""

from __future__ import annotations

import time
from typing import Callable


class ProgressBar:
    """Context manager: one bar over `total` samples.

    Args:
      total: samples (rows) in this `generate` call.
      enabled: True draws a bar; False is a no-op; a callable draws nothing and is called with the
        number of rows finished at each update (the caller's own bar moves with the decode).
    """

    def __init__(self, total: int, enabled: bool | Callable[[int], None] = True):
        self.total = total
        self._callback = enabled if callable(enabled) else None
        self.enabled = bool(enabled) and self._callback is None
        self._bar = None
        self._start = time.perf_counter()

    def __enter__(self):
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc="rollout", unit="row", leave=False, dynamic_ncols=True)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()

    def update(self, rows_finished: int, tokens_so_far: int) -> None:
        """Adds `rows_finished` rows; shows the tokens of all finished rows per second of wall time."""
        if self._callback is not None:
            self._callback(rows_finished)
        if self._bar is None:
            return
        rate = tokens_so_far / max(time.perf_counter() - self._start, 1e-9)
        # The rate first: `update` redraws the bar (and the closed bar keeps the last drawn text).
        self._bar.set_postfix_str(f"{rate:.0f} tok/s", refresh=False)
        self._bar.update(rows_finished)
