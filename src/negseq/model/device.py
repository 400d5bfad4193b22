"""Per-device training choices: which attention kernel and which autocast (DESIGN §6).

CUDA trains under bf16 autocast with the Triton attention kernel (when triton is
installed); every other device trains in float32 on the PyTorch reference kernel.
"""

from __future__ import annotations

import contextlib
import importlib.util

import torch


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


def select_kernel(device: torch.device | str) -> str:
    """The `hstu_attention` kernel name to train with on `device`."""
    if _device_type(device) == "cuda" and importlib.util.find_spec("triton") is not None:
        return "triton"
    return "pytorch"


def training_autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op context elsewhere (CPU stays float32)."""
    if _device_type(device) == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
