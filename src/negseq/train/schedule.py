"""The learning rate as a function of the global step: linear warmup, then cosine or linear decay.

A pure function of the step (no scheduler state), so a run resumed from a checkpoint, a Ray Train
worker and the in-process trainer set the same rate at the same step. Warmup is a fraction of the
planned steps rather than a step count, so one setting fits a dataset of any size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Decay = Literal["constant", "cosine", "linear"]


@dataclass(frozen=True)
class LRSchedule:
    """`lr` reached after `warmup_steps` of linear warmup, then decayed over the rest of
    `total_steps` ("constant": kept), towards 0 at `total_steps`."""

    lr: float
    total_steps: int
    warmup_steps: int = 0
    decay: Decay = "constant"

    @classmethod
    def of(
        cls, lr: float, total_steps: int, *, warmup_fraction: float = 0.0, decay: Decay = "constant"
    ) -> LRSchedule:
        """The schedule that warms up over `ceil(warmup_fraction * total_steps)` steps."""
        total = max(int(total_steps), 1)
        return cls(lr, total, min(math.ceil(warmup_fraction * total), total), decay)

    def __call__(self, step: int) -> float:
        """The rate of the update made at 0-based `step`."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return self.lr
        progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        if self.decay == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr * (1.0 - progress)
