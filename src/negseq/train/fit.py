"""Training over a run's stream of batches with the LR schedule and validation, for every trainer.

The in-process job and each Ray Train worker call `fit_stream` with the same settings, so one
seed gives the same steps, rates, validations and chosen weights on both. Validation falls at
epoch ends counted in steps (`StepPlan`): a trainer that shares an epoch's batches with other
workers (Ray Train's equal split) validates after its share, at the same step on every worker,
so all of them stop together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from negseq.batch import JaggedBatch
from negseq.train.loop import TrainReport, train
from negseq.train.schedule import LRSchedule
from negseq.train.validation import Validator


@dataclass(frozen=True)
class StepPlan:
    """A trainer's steps: `num_batches` an epoch shared by `num_workers`, `total_steps` planned."""

    num_batches: int
    num_workers: int
    total_steps: int

    @classmethod
    def of(
        cls, num_batches: int, epochs: int, num_workers: int = 1, max_steps: int | None = None
    ) -> StepPlan:
        total = epochs * num_batches // num_workers
        return cls(num_batches, num_workers, total if max_steps is None else min(total, max_steps))

    def epoch_end(self, epochs: int) -> int:
        """The step at which this trainer has finished its share of `epochs` epochs."""
        return epochs * self.num_batches // self.num_workers

    def epochs_at(self, step: int) -> float:
        """Epochs trained by `step` (whole at an epoch end)."""
        epochs = step * self.num_workers / max(self.num_batches, 1)
        return int(epochs) if float(epochs).is_integer() else round(epochs, 3)

    def validation_steps(self, every: int) -> list[int]:
        """Steps after which to validate: every `every` epochs (0: none), and the last step."""
        if every <= 0:
            return [self.total_steps]
        steps, epochs = [], every
        while (end := self.epoch_end(epochs)) < self.total_steps:
            steps.append(end)
            epochs += every
        return [s for s in steps if s > 0] + [self.total_steps]


def _merge(total: TrainReport, part: TrainReport) -> None:
    if not total.losses:  # the stream's first batch: the data path's start-up
        total.first_batch_wait_seconds = part.first_batch_wait_seconds
    total.losses.extend(part.losses)
    total.rows += part.rows
    total.queries += part.queries
    total.seconds += part.seconds
    total.data_wait_seconds += part.data_wait_seconds


def fit_stream(
    model: torch.nn.Module,
    batches: Iterable[JaggedBatch],
    *,
    optimizer: torch.optim.Optimizer,
    plan: StepPlan,
    schedule: LRSchedule | None = None,
    validator: Validator | None = None,
    first_step: int = 0,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, float, int], None] | None = None,
    on_validate: Callable[[dict[str, Any]], None] | None = None,
) -> TrainReport:
    """Train from global step `first_step` to `plan.total_steps` (or until `batches` run out or
    the validator stops it), validating at its steps; `on_step(steps this call, loss, rows)`
    follows every step, `on_validate(curve entry)` every validation. The model is left with the
    last step's weights: `validator.restore_best` picks the best."""
    iterator = iter(batches)
    report = TrainReport(optimizer)
    stops = [plan.total_steps] if validator is None else plan.validation_steps(validator.settings.every)
    step = first_step
    for until in (s for s in stops if s > first_step):
        done_before = report.steps

        def step_hook(steps: int, loss: float, rows: int, base: int = done_before) -> None:
            if on_step is not None:
                on_step(base + steps, loss, rows)

        part = train(
            model,
            iterator,
            optimizer=optimizer,
            max_steps=until - step,
            device=device,
            on_step=step_hook,
            lr_at=schedule,
            first_step=step,
        )
        _merge(report, part)
        step += part.steps
        ended = step < until  # the stream ran out early
        if validator is not None and part.steps:
            loss = sum(part.losses) / len(part.losses)
            stop = validator.validate(model, step=step, epoch=plan.epochs_at(step), loss=loss)
            if on_validate is not None:
                on_validate(validator.curve[-1])
            if stop:
                break
        if ended:
            break
    return report
