"""What every trainer (in-process or a Ray Train worker) needs to build the model and train it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from negseq.model.hstu_match import HSTUMatch, STUConfig
from negseq.train.fit import StepPlan
from negseq.train.schedule import Decay, LRSchedule
from negseq.train.validation import ValidationSettings

UNPLANNED_STEPS = 1 << 62  # a stream of unknown length: train until it runs out


@dataclass(frozen=True)
class TrainSettings:
    """`model` holds `HSTUMatch`'s keyword arguments and `stu` those of its `STUConfig`.

    `num_batches` (batches an epoch) and `epochs` plan the steps, which the LR schedule and the
    validation need; without them a trainer trains until its stream (or `max_steps`) ends."""

    model: dict[str, Any]
    stu: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    weight_decay: float = 0.0
    checkpoint_every: int = 50
    max_steps: int | None = None
    seed: int = 0  # the model's initial weights and dropout draws
    lr_schedule: Decay = "constant"
    warmup_fraction: float = 0.0
    num_batches: int | None = None
    epochs: int | None = None
    validation: ValidationSettings | None = None

    def step_plan(self, num_workers: int = 1) -> StepPlan:
        """This trainer's steps when `num_workers` share each epoch."""
        if self.num_batches is None or self.epochs is None:
            # no epoch end to validate at before the last step
            return StepPlan(UNPLANNED_STEPS, 1, UNPLANNED_STEPS if self.max_steps is None else self.max_steps)
        return StepPlan.of(self.num_batches, self.epochs, num_workers, self.max_steps)

    def schedule(self, plan: StepPlan) -> LRSchedule | None:
        """The LR at each step (None: the optimizer's constant `lr`)."""
        if plan.total_steps >= UNPLANNED_STEPS or (
            self.lr_schedule == "constant" and not self.warmup_fraction
        ):
            return None
        return LRSchedule.of(
            self.lr, plan.total_steps, warmup_fraction=self.warmup_fraction, decay=self.lr_schedule
        )


def build_model(settings: TrainSettings) -> HSTUMatch:
    """The model with its initial weights drawn from `settings.seed` (the same on every worker)."""
    torch.manual_seed(settings.seed)
    return HSTUMatch(**settings.model, stu=STUConfig(**settings.stu))
