"""The PyTorch reference HSTU attention: one padded core, used by the jagged path and export.

Math (generative-recommenders' STU): per head, `A = SiLU(alpha * q k^T) / N`, masked
causal with the diagonal included, no softmax; the output is `A v`. `N` is the scaling
length (`scaling_n`). The mask follows generative-recommenders' `_get_valid_attn_mask`:
`max_attn_len > 0` keeps only the last `max_attn_len` keys before the query, and the first
`contextual_seq_len` positions share position id 0, so a contextual query sees the whole row.

`padded_hstu_attention` is the math, on right-padded [B, N, H, D] tensors with plain
static-shape ops (what `torch.export` traces with a dynamic B and N).
`pytorch_hstu_attention` is the jagged op ([L, H, D] + offsets): pad, the same core, unpad.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from negseq.model.jagged import dense_to_jagged, jagged_to_padded_dense


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


def padded_hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: torch.Tensor,
    *,
    alpha: float,
    scaling_n: int,
    max_attn_len: int = 0,
    contextual_seq_len: int = 0,
) -> torch.Tensor:
    """HSTU attention on right-padded rows. q, k: [B, N, H, Dqk]; v: [B, N, H, Dv];
    lengths [B] (each <= N). Returns [B, N, H, Dv], zero past each row's length."""
    mask = valid_attention_mask(
        lengths, q.shape[1], max_attn_len=max_attn_len, contextual_seq_len=contextual_seq_len
    )
    scores = F.silu(alpha * torch.einsum("bihd,bjhd->bhij", q, k)) / scaling_n
    scores = scores * mask.unsqueeze(1).to(scores.dtype)
    return torch.einsum("bhij,bjhd->bihd", scores, v)


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
    """Jagged HSTU attention. q, k: [L, H, Dqk]; v: [L, H, Dv]; offsets [B+1]; max_len at
    least the longest row. Returns [L, H, Dv]."""
    total, heads = q.shape[0], q.shape[1]
    batch = offsets.numel() - 1

    def pad(x: torch.Tensor) -> torch.Tensor:
        padded = jagged_to_padded_dense(x.flatten(1), offsets, max_len)
        return padded.view(batch, max_len, heads, x.shape[2])

    out = padded_hstu_attention(
        pad(q),
        pad(k),
        pad(v),
        offsets[1:] - offsets[:-1],
        alpha=alpha,
        scaling_n=scaling_n,
        max_attn_len=max_attn_len,
        contextual_seq_len=contextual_seq_len,
    )
    return dense_to_jagged(out.flatten(2), offsets, total).view(total, heads, v.shape[2])
