"""Jagged HSTU attention: the PyTorch reference and the dispatcher that picks a kernel.

Math (generative-recommenders' STU): per head, `A = SiLU(alpha * q k^T) / N`, masked
causal with the diagonal included, no softmax; the output is `A v`. `N` is the
scaling length (`scaling_seqlen`, or the batch's max length). The mask follows
generative-recommenders' `_get_valid_attn_mask`: `max_attn_len > 0` keeps only the
last `max_attn_len` keys before the query, and the first `contextual_seq_len`
positions share position id 0, so a contextual query sees the whole row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from negseq.model.jagged import row_positions

AttentionKernel = Callable[..., torch.Tensor]


def valid_attention_mask(
    lengths: torch.Tensor, max_len: int, *, max_attn_len: int = 0, contextual_seq_len: int = 0
) -> torch.Tensor:
    """Bool mask [B, N, N]: True where query row i may attend key column j."""
    device = lengths.device
    ids = torch.arange(max_len, device=device).view(1, max_len)
    max_ids = lengths.view(-1, 1, 1)
    if contextual_seq_len > 0:
        ids = torch.clamp(ids - contextual_seq_len + 1, min=0)
        max_ids = max_ids - contextual_seq_len + 1
    row_ids = ids.view(1, max_len, 1)
    col_ids = ids.view(1, 1, max_len)
    dist = row_ids - col_ids
    mask = torch.eye(max_len, dtype=torch.bool, device=device).view(1, max_len, max_len) | (dist > 0)
    if max_attn_len > 0:
        mask = mask & (dist <= max_attn_len)
    if contextual_seq_len > 0:
        mask = mask | ((row_ids == 0) & (col_ids < max_ids))
    in_row = torch.arange(max_len, device=device).view(1, -1) < lengths.view(-1, 1)
    return mask & in_row.unsqueeze(2) & in_row.unsqueeze(1)


def pytorch_hstu_attention(
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
) -> torch.Tensor:
    """Reference jagged HSTU attention. q, k: [L, H, Dqk]; v: [L, H, Dv]; returns [L, H, Dv]."""
    batch = offsets.numel() - 1
    rows, positions = row_positions(offsets)

    def pad(x: torch.Tensor) -> torch.Tensor:
        padded = x.new_zeros(batch, max_len, *x.shape[1:])
        padded[rows, positions] = x
        return padded.transpose(1, 2)  # [B, H, N, D]

    qp, kp, vp = pad(q), pad(k), pad(v)
    scores = F.silu(alpha * torch.matmul(qp, kp.transpose(-1, -2))) / scaling_n
    mask = valid_attention_mask(
        offsets[1:] - offsets[:-1],
        max_len,
        max_attn_len=max_attn_len,
        contextual_seq_len=contextual_seq_len,
    )
    scores = scores * mask.unsqueeze(1).to(scores.dtype)
    out = torch.matmul(scores, vp).transpose(1, 2)  # [B, N, H, Dv]
    return out[rows, positions]


_KERNELS: dict[str, AttentionKernel] = {"pytorch": pytorch_hstu_attention}


def register_kernel(name: str, kernel: AttentionKernel) -> None:
    """Make `kernel` selectable as `hstu_attention(..., kernel=name)`."""
    _KERNELS[name] = kernel


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
    kernel: str = "pytorch",
) -> torch.Tensor:
    """Dispatch jagged HSTU attention to the named kernel: "pytorch", "triton" (GPU), or "auto"
    (Triton for CUDA tensors when triton is installed, the PyTorch reference elsewhere)."""
    if kernel == "auto":
        from negseq.model.device import select_kernel

        kernel = select_kernel(q.device)
    if kernel == "triton" and "triton" not in _KERNELS:
        import negseq.model.triton_attention  # noqa: F401  (registers itself)
    try:
        fn = _KERNELS[kernel]
    except KeyError:
        raise ValueError(f"unknown attention kernel {kernel!r}; known: {sorted(_KERNELS)}") from None
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
