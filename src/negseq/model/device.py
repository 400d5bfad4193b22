"""Per-device training choices: which attention kernel and which autocast (DESIGN §6).

CUDA trains under bf16 autocast with the Triton attention kernel (when triton imports);
every other device trains in float32 on the PyTorch reference kernel.
"""

from __future__ import annotations

import contextlib

import torch

from negseq.model.ops.kernel import select_kernel

__all__ = ["select_kernel", "training_autocast"]


def training_autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op context elsewhere (CPU stays float32)."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
