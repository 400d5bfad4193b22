"""The op dispatchers: one entry point per op that picks a kernel (DESIGN §6).

`hstu_attention`: every kernel computes the same jagged attention (q, k: [L, H, Dqk];
v: [L, H, Dv]; offsets [B+1]) -> [L, H, Dv]; `negseq.model.ops.pytorch.hstu_attention`
spells out the math.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from negseq.model.ops.kernel import Kernel, check_kernel, select_kernel
from negseq.model.ops.pytorch.hstu_attention import pytorch_hstu_attention

_triton_hstu_attention: Callable[..., torch.Tensor] | None = None


def _triton_kernel() -> Callable[..., torch.Tensor]:
    """The Triton op, imported on first use (triton is optional; importing it costs seconds)."""
    global _triton_hstu_attention
    if _triton_hstu_attention is None:
        from negseq.model.ops.triton.hstu_attention import triton_hstu_attention

        _triton_hstu_attention = triton_hstu_attention
    return _triton_hstu_attention


def hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    max_len: int,
    *,
    alpha: float,
    scaling_n: int,
    max_attn_len: int = 0,
    contextual_seq_len: int = 0,
    kernel: Kernel | str = Kernel.PYTORCH,
) -> torch.Tensor:
    """Jagged HSTU attention on `kernel`: Kernel.PYTORCH, Kernel.TRITON (CUDA, or the Triton
    interpreter), or "auto" (`select_kernel` of q's device)."""
    if check_kernel(kernel) == "auto":
        kernel = select_kernel(q.device)
    fn = _triton_kernel() if kernel == Kernel.TRITON else pytorch_hstu_attention
    return fn(
        q,
        k,
        v,
        offsets,
        max_len,
        alpha=alpha,
        scaling_n=scaling_n,
        max_attn_len=max_attn_len,
        contextual_seq_len=contextual_seq_len,
    )
