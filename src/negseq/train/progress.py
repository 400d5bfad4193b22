"""The one training progress bar: steps, loss and rows/s, fed in-process or from Ray Train."""

from __future__ import annotations

import time

from tqdm import tqdm


class StepProgress:
    """A tqdm bar over training steps; `update` takes the latest step, loss and rows trained."""

    def __init__(self, total: int | None, *, quiet: bool = False) -> None:
        self._bar = tqdm(total=total, desc="train", unit="step", disable=quiet, dynamic_ncols=True)
        self._started = time.perf_counter()
        self._rows = 0
        self._step = 0

    def update(self, step: int, loss: float, rows: int) -> None:
        """Set the bar to `step` (rows: trained so far, this run)."""
        self._rows = rows
        rate = rows / max(time.perf_counter() - self._started, 1e-9)
        self._bar.set_postfix(loss=f"{loss:.4f}", rows_s=f"{rate:,.0f}", refresh=False)
        if step > self._step:
            self._bar.update(step - self._step)
            self._step = step

    def add_step(self, step: int, loss: float, rows: int) -> None:
        """`on_step` of `negseq.train.loop.train`: one more step of `rows` rows."""
        self.update(step, loss, self._rows + rows)

    def close(self) -> None:
        self._bar.close()
