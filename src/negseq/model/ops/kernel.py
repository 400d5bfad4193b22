"""Which implementation runs an op: the `Kernel` enum and the "auto" choice per device.

As generative-recommenders' `HammerKernel`: PYTORCH is the reference (any device, the
one the other kernels are tested against), TRITON the GPU kernel (or the Triton
interpreter on CPU, for tests). "auto" picks Triton for CUDA tensors when triton imports,
the PyTorch reference everywhere else.
"""

from __future__ import annotations

import functools
from enum import StrEnum

import torch

from negseq.errors import NegseqError


class Kernel(StrEnum):
    """An op implementation; a member equals its lower-case name ("pytorch", "triton")."""

    PYTORCH = "pytorch"
    TRITON = "triton"


KERNEL_CHOICES = ("auto", *Kernel)
"""What `kernel=` settings accept."""


@functools.cache
def triton_available() -> bool:
    """Whether `import triton` succeeds here (tried once)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def select_kernel(device: torch.device | str) -> Kernel:
    """The kernel "auto" means on `device`: Triton on CUDA when triton imports, else PyTorch."""
    if torch.device(device).type == "cuda" and triton_available():
        return Kernel.TRITON
    return Kernel.PYTORCH


def check_kernel(kernel: Kernel | str) -> Kernel | str:
    """`kernel` itself when it is "auto" or a Kernel name; a NegseqError naming it otherwise."""
    if kernel not in KERNEL_CHOICES:
        raise NegseqError(
            f"unknown attention kernel {kernel!r}; known: {', '.join(map(str, KERNEL_CHOICES))}"
        )
    return kernel
