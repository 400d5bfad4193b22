"""Validation during training: the curve, early stopping and the best weights.

The validation split (each user's second-to-last item, `negseq.io.prepare`) is ranked against
the full corpus like the final evaluation. The weights of the best validation so far are kept
in memory; they, not the last step's, are what a job evaluates and exports, so a run that
overfits after its best epoch loses nothing. Training stops after `patience` validations in a
row without a better value of the monitored metric (0: never stops early). A tie is not an
improvement, so the earlier (shorter-trained) weights win it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch

from negseq.model.inputs import DenseRows
from negseq.model.metrics import evaluate


@dataclass(frozen=True)
class ValidationSettings:
    """What to validate on and how: the valid table, the item vocabulary, the metrics' Ks, the
    monitored metric ("NDCG@10", "HR@10", "MRR", ...), validations every `every` epochs, and the
    `patience` (validations without improvement before stopping; 0: never)."""

    table: pa.Table
    items: DenseRows
    ks: tuple[int, ...] = (10,)
    monitor: str = "NDCG@10"
    every: int = 1
    patience: int = 0


def _unwrap(model: torch.nn.Module) -> Any:
    return model.module if hasattr(model, "module") else model


class Validator:
    """Validates a model, records the curve, keeps the best weights and says when to stop."""

    def __init__(self, settings: ValidationSettings) -> None:
        self.settings = settings
        self.curve: list[dict[str, Any]] = []
        self.best_index: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.since_best = 0
        self.stopped_early = False

    @property
    def best(self) -> dict[str, Any] | None:
        return None if self.best_index is None else self.curve[self.best_index]

    def validate(self, model: torch.nn.Module, *, step: int, epoch: float, loss: float) -> bool:
        """Rank the valid split at this step; returns whether training should stop now."""
        settings = self.settings
        inner = _unwrap(model)
        metrics = evaluate(inner, settings.table, settings.items, ks=settings.ks)["model"]
        entry = {"epoch": epoch, "step": step, "train_loss": loss, **metrics}
        value = metrics[settings.monitor]
        self.curve.append(entry)
        best = self.best
        if best is None or (math.isfinite(value) and value > best[settings.monitor]):
            self.best_index = len(self.curve) - 1
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in inner.state_dict().items()}
            self.since_best = 0
        else:
            self.since_best += 1
        self.stopped_early = settings.patience > 0 and self.since_best >= settings.patience
        return self.stopped_early

    def restore_best(self, model: torch.nn.Module) -> None:
        """Load the best validation's weights into `model` (nothing validated: leaves it as is)."""
        if self.best_state is not None:
            inner = _unwrap(model)
            device = next(inner.parameters()).device
            inner.load_state_dict({k: v.to(device) for k, v in self.best_state.items()})

    def summary(self) -> dict[str, Any]:
        """The curve and the choice made from it, for metrics.json."""
        settings = self.settings
        return {
            "monitor": settings.monitor,
            "every_epochs": settings.every,
            "patience": settings.patience,
            "best": self.best,
            "stopped_early": self.stopped_early,
            "curve": self.curve,
        }

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps, so a resumed run validates and chooses as the first would have."""
        return {
            "curve": self.curve,
            "best_index": self.best_index,
            "best_state": self.best_state,
            "since_best": self.since_best,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curve = list(state["curve"])
        self.best_index = state["best_index"]
        self.best_state = state["best_state"]
        self.since_best = int(state["since_best"])
