"""What every trainer (in-process or a Ray Train worker) needs to build the model and train it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from negseq.model.hstu_match import HSTUMatch, STUConfig


@dataclass(frozen=True)
class TrainSettings:
    """`model` holds `HSTUMatch`'s keyword arguments and `stu` those of its `STUConfig`."""

    model: dict[str, Any]
    stu: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    weight_decay: float = 0.0
    checkpoint_every: int = 50
    max_steps: int | None = None
    seed: int = 0  # the model's initial weights and dropout draws


def build_model(settings: TrainSettings) -> HSTUMatch:
    """The model with its initial weights drawn from `settings.seed` (the same on every worker)."""
    torch.manual_seed(settings.seed)
    return HSTUMatch(**settings.model, stu=STUConfig(**settings.stu))
