"""A plain training loop over an iterable of `JaggedBatch` (local job, Ray Train, benchmarks).

It owns no data loading and no evaluation: the caller passes batches (one pass per call)
and, to continue across epochs, the optimizer returned by the previous call. The time spent
waiting on the batch iterator is reported apart from compute, since a trainer starved by
its sampling stage is the failure DESIGN §5 asks us to surface.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from negseq.batch import JaggedBatch
from negseq.model.device import training_autocast


@dataclass
class TrainReport:
    """What one `train` call did: per-step losses and where the time went."""

    optimizer: torch.optim.Optimizer
    losses: list[float] = field(default_factory=list)
    rows: int = 0
    queries: int = 0
    seconds: float = 0.0
    data_wait_seconds: float = 0.0
    first_batch_wait_seconds: float = 0.0  # part of data_wait_seconds: the data path's start-up

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else float("nan")

    def metrics(self, *, first_step: int = 0) -> dict[str, float | int]:
        """What a training run reports, the same on Ray Train and in-process; `first_step` is
        where a resumed run started."""
        return {
            "step": first_step + self.steps,
            "loss": self.losses[-1] if self.losses else float("nan"),
            "mean_loss": self.mean_loss,
            "rows": self.rows,
            "train_seconds": self.seconds,
            "data_wait_seconds": self.data_wait_seconds,
            "data_wait_fraction": self.data_wait_seconds / self.seconds if self.seconds else 0.0,
            "first_batch_wait_seconds": self.first_batch_wait_seconds,
        }


def make_optimizer(model: torch.nn.Module, lr: float = 1e-3, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over all parameters (generative-recommenders trains HSTU with lr 1e-3)."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))


def train(
    model: torch.nn.Module,
    batches: Iterable[JaggedBatch],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    max_steps: int | None = None,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, float, int], None] | None = None,
    lr_at: Callable[[int], float] | None = None,
    first_step: int = 0,
) -> TrainReport:
    """One pass over `batches` (or `max_steps` of them): forward, loss, backward, AdamW step.

    `model`: an `HSTUMatch`, or the DDP wrapper Ray Train puts around one.

    The model must already be on `device`; on CUDA the forward runs under bf16 autocast
    (pick the attention kernel with `negseq.model.device.select_kernel` in `STUConfig`).
    `on_step(step, loss, rows)` follows every step (progress bars, checkpoints).
    `lr_at(global step)` sets the learning rate of each update (`negseq.train.schedule`);
    `first_step` is the global step of this call's first update.
    """
    optimizer = optimizer or make_optimizer(model, lr, weight_decay)
    report = TrainReport(optimizer)
    model.train()
    start = time.perf_counter()
    iterator = iter(batches)
    while max_steps is None or report.steps < max_steps:
        wait_start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        waited = time.perf_counter() - wait_start
        report.data_wait_seconds += waited
        if not report.losses:
            report.first_batch_wait_seconds = waited
        batch = batch.to(device, non_blocking=True)
        with training_autocast(device):
            out = model(batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if lr_at is not None:
            rate = lr_at(first_step + report.steps)
            for group in optimizer.param_groups:
                group["lr"] = rate
        optimizer.step()
        loss = float(out["loss"].detach())
        report.losses.append(loss)
        report.rows += batch.batch_size
        report.queries += out["logits"].shape[0]
        if on_step is not None:
            on_step(report.steps, loss, batch.batch_size)
    report.seconds = time.perf_counter() - start
    return report
