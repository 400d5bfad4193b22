"""Jagged <-> padded helpers: fbgemm's ops when `fbgemm_gpu` loads, plain PyTorch otherwise.

The backend is chosen once, at import (`BACKEND`). Both backends are always importable
(`torch_*` functions) so tests can hold one against the other. Semantics follow fbgemm:
a row longer than `max_len` is cut to its first `max_len` values in the padded result.
"""

from __future__ import annotations

import torch

try:
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)

    BACKEND = "fbgemm"
except Exception:  # pragma: no cover - exercised only where fbgemm cannot load
    BACKEND = "torch"


def row_positions(offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position within the row) of every jagged value, each [L]."""
    lengths = offsets[1:] - offsets[:-1]
    rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths)
    return rows, torch.arange(rows.numel(), device=offsets.device) - offsets[rows]


def _padded_index(offsets: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(value index, row, position) of every jagged value that fits in `max_len` columns."""
    rows, positions = row_positions(offsets)
    keep = positions < max_len
    value_index = torch.arange(rows.numel(), device=offsets.device)
    return value_index[keep], rows[keep], positions[keep]


def torch_asynchronous_complete_cumsum(lengths: torch.Tensor) -> torch.Tensor:
    """Offsets [B+1] (leading 0) from lengths [B]."""
    return torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, dim=0)])


def torch_jagged_to_padded_dense(
    values: torch.Tensor, offsets: torch.Tensor, max_len: int, padding_value: float = 0.0
) -> torch.Tensor:
    """values [L, D] -> [B, max_len, D], padding with `padding_value`."""
    index, rows, positions = _padded_index(offsets, max_len)
    padded = values.new_full((offsets.numel() - 1, max_len, *values.shape[1:]), padding_value)
    return padded.index_put((rows, positions), values[index])


def torch_dense_to_jagged(
    dense: torch.Tensor, offsets: torch.Tensor, total_len: int | None = None
) -> torch.Tensor:
    """dense [B, N, D] -> values [L, D] (rows longer than N would be an error)."""
    lengths = offsets[1:] - offsets[:-1]
    if lengths.numel() and int(lengths.max()) > dense.shape[1]:
        raise ValueError(
            f"dense_to_jagged: a row holds {int(lengths.max())} values, dense has {dense.shape[1]}"
        )
    _, rows, positions = _padded_index(offsets, dense.shape[1])
    return dense[rows, positions]


def asynchronous_complete_cumsum(lengths: torch.Tensor) -> torch.Tensor:
    """Offsets [B+1] (leading 0) from lengths [B]."""
    if BACKEND == "fbgemm":
        return torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
    return torch_asynchronous_complete_cumsum(lengths)


def jagged_to_padded_dense(
    values: torch.Tensor, offsets: torch.Tensor, max_len: int, padding_value: float = 0.0
) -> torch.Tensor:
    """values [L, D] (or [L]) -> padded [B, max_len, D] (or [B, max_len])."""
    if BACKEND != "fbgemm":
        return torch_jagged_to_padded_dense(values, offsets, max_len, padding_value)
    flat = values.unsqueeze(1) if values.dim() == 1 else values
    padded = torch.ops.fbgemm.jagged_to_padded_dense(flat, [offsets], [max_len], padding_value)
    return padded.squeeze(2) if values.dim() == 1 else padded


def dense_to_jagged(dense: torch.Tensor, offsets: torch.Tensor, total_len: int | None = None) -> torch.Tensor:
    """padded [B, N, D] (or [B, N]) -> values [L, D] (or [L]) by `offsets`."""
    if BACKEND != "fbgemm":
        return torch_dense_to_jagged(dense, offsets, total_len)
    flat = dense.unsqueeze(2) if dense.dim() == 2 else dense
    total = int(offsets[-1]) if total_len is None else total_len
    values = torch.ops.fbgemm.dense_to_jagged(flat, [offsets], total)[0]
    return values.squeeze(1) if dense.dim() == 2 else values


def row_slots(offsets: torch.Tensor, width: int) -> torch.Tensor:
    """Where each jagged value lands once every row gets `width` extra slots in front of it."""
    lengths = offsets[1:] - offsets[:-1]
    rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths)
    return torch.arange(rows.numel(), device=offsets.device) + (rows + 1) * width


def prepend_rows(
    values: torch.Tensor, offsets: torch.Tensor, prefix: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put `prefix` [B, C, ...] before each row of jagged `values` [L, ...] -> (values, offsets)."""
    batch, width = prefix.shape[0], prefix.shape[1]
    new_offsets = offsets + torch.arange(batch + 1, device=offsets.device) * width
    prefix_slots = (new_offsets[:-1].view(-1, 1) + torch.arange(width, device=offsets.device)).reshape(-1)
    out = values.new_empty(values.shape[0] + batch * width, *values.shape[1:])
    out = out.index_copy(0, row_slots(offsets, width), values)
    return out.index_copy(0, prefix_slots, prefix.reshape(-1, *values.shape[1:])), new_offsets
