"""Input and output stages of the user tower around the STU stack.

- `UIHPreprocessor`: item embeddings (+ action embeddings) -> linear -> model dim, and an
  optional contextual prefix (a fixed number of contextual tokens per row, put before the history).
- `HSTUPositionalEncoder`: `x * sqrt(D) + pos_emb [+ time_emb]`. Positions count back from
  the end of the row as generative-recommenders does (the most recent item is position 1),
  so the newest items always get the same, best-trained position embeddings; contextual
  tokens take positions 0..C-1.
- `L2Norm`: the postprocessor for cosine similarity.

Each stage has a jagged `forward` and a padded twin (used by export), sharing the index math.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from negseq.errors import NegseqError
from negseq.model.jagged import prepend_rows, row_positions


def position_ids(
    lengths: torch.Tensor, positions: torch.Tensor, num_buckets: int, contextual_seq_len: int = 0
) -> torch.Tensor:
    """Position bucket of each token (broadcasts): contextual token i -> i; history token ->
    C + its distance from the row's end (the newest is C + 1). `lengths` counts history only;
    `positions` index the row including its C contextual tokens."""
    reverse = lengths - positions + 2 * contextual_seq_len
    ids = torch.clamp(reverse, min=0, max=num_buckets - 1)
    if contextual_seq_len > 0:
        ids = torch.where(positions < contextual_seq_len, positions, ids)
    return ids


def time_bucket_ids(
    query_ts: torch.Tensor, ts: torch.Tensor, num_buckets: int, increment: float, fn: str
) -> torch.Tensor:
    """Bucket of `query_ts - ts` (seconds / increment), sqrt or log spaced, in [0, num_buckets]."""
    delta = torch.clamp(query_ts - ts, min=0).to(torch.float32) / increment
    scaled = torch.sqrt(delta) if fn == "sqrt" else torch.log1p(delta)
    return torch.clamp(scaled, max=num_buckets).long()


class HSTUPositionalEncoder(nn.Module):
    """Scales embeddings by sqrt(D) and adds position (and optional time-gap) embeddings."""

    def __init__(
        self,
        num_position_buckets: int,
        embedding_dim: int,
        num_time_buckets: int = 0,
        contextual_seq_len: int = 0,
        time_bucket_increment: float = 60.0,
        time_bucket_fn: str = "sqrt",
    ) -> None:
        super().__init__()
        if time_bucket_fn not in ("sqrt", "log"):
            raise ValueError(f"time_bucket_fn must be 'sqrt' or 'log', got {time_bucket_fn!r}")
        self.num_position_buckets = num_position_buckets
        self.num_time_buckets = num_time_buckets
        self.contextual_seq_len = contextual_seq_len
        self.time_bucket_increment = time_bucket_increment
        self.time_bucket_fn = time_bucket_fn
        self.scale = math.sqrt(embedding_dim)
        self.position_emb = nn.Embedding(num_position_buckets, embedding_dim)
        nn.init.uniform_(
            self.position_emb.weight,
            -math.sqrt(1.0 / num_position_buckets),
            math.sqrt(1.0 / num_position_buckets),
        )
        self.time_emb = nn.Embedding(num_time_buckets + 1, embedding_dim) if num_time_buckets > 0 else None
        if self.time_emb is not None:
            nn.init.uniform_(
                self.time_emb.weight,
                -math.sqrt(1.0 / num_time_buckets),
                math.sqrt(1.0 / num_time_buckets),
            )

    def _encode(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        positions: torch.Tensor,
        timestamps: torch.Tensor | None,
        query_ts: torch.Tensor | None,
    ) -> torch.Tensor:
        history_len = lengths - self.contextual_seq_len
        out = x * self.scale + self.position_emb(
            position_ids(history_len, positions, self.num_position_buckets, self.contextual_seq_len)
        )
        if self.time_emb is not None:
            if timestamps is None or query_ts is None:
                raise NegseqError("HSTUPositionalEncoder has time buckets but the batch has no timestamps")
            buckets = time_bucket_ids(
                query_ts,
                timestamps,
                self.num_time_buckets,
                self.time_bucket_increment,
                self.time_bucket_fn,
            )
            if self.contextual_seq_len > 0:  # contextual tokens have no time: bucket 0
                buckets = torch.where(positions < self.contextual_seq_len, 0, buckets)
            out = out + self.time_emb(buckets)
        return out

    def forward(
        self, x: torch.Tensor, offsets: torch.Tensor, timestamps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: jagged [L, D] (contextual prefix included); timestamps [L] or None."""
        lengths = offsets[1:] - offsets[:-1]
        rows, positions = row_positions(offsets)
        query_ts = None
        if timestamps is not None and self.time_emb is not None:
            last = torch.clamp(offsets[1:] - 1, min=0)
            query_ts = timestamps[last][rows] if timestamps.numel() else timestamps
        return self._encode(x, lengths[rows], positions, timestamps, query_ts)

    def forward_padded(
        self, x: torch.Tensor, lengths: torch.Tensor, timestamps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: padded [B, N, D]; lengths [B]; timestamps [B, N] or None."""
        positions = torch.arange(x.shape[1], device=x.device).view(1, -1)
        query_ts = None
        if timestamps is not None and self.time_emb is not None:
            last = torch.clamp(lengths - 1, min=0).view(-1, 1)
            query_ts = torch.gather(timestamps, 1, last)
        return self._encode(x, lengths.view(-1, 1), positions, timestamps, query_ts)


class UIHPreprocessor(nn.Module):
    """History item embeddings (+ actions) -> linear -> model dim, optional contextual prefix first.

    Actions are bitmasks (bit i = action type i happened), embedded as the sum of the
    embeddings of their set bits, as generative-recommenders does.
    """

    def __init__(
        self,
        item_embedding_dim: int,
        output_dim: int,
        num_action_types: int = 0,
        action_embedding_dim: int = 8,
        contextual_vocab_size: int = 0,
        contextual_seq_len: int = 0,
    ) -> None:
        super().__init__()
        if (contextual_vocab_size > 0) != (contextual_seq_len > 0):
            raise ValueError("contextual_vocab_size and contextual_seq_len must be set together")
        self.num_action_types = num_action_types
        self.contextual_seq_len = contextual_seq_len
        in_dim = item_embedding_dim + (action_embedding_dim if num_action_types > 0 else 0)
        self.action_emb = (
            nn.Parameter(torch.empty(num_action_types, action_embedding_dim).normal_(0, 0.1))
            if num_action_types > 0
            else None
        )
        self.project = nn.Linear(in_dim, output_dim)
        self.contextual_emb = (
            nn.Embedding(contextual_vocab_size, output_dim) if contextual_vocab_size > 0 else None
        )

    def _embed_actions(self, item_emb: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        if self.action_emb is None:
            return item_emb
        if actions is None:
            raise NegseqError("UIHPreprocessor has action types but the batch has no actions")
        bits = (actions.unsqueeze(-1) >> torch.arange(self.num_action_types, device=actions.device)) & 1
        return torch.cat([item_emb, bits.to(item_emb.dtype) @ self.action_emb], dim=-1)

    def forward(
        self,
        item_emb: torch.Tensor,
        offsets: torch.Tensor,
        actions: torch.Tensor | None = None,
        contextual_ids: torch.Tensor | None = None,
        contextual_offsets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """item_emb: jagged [L, E]. Returns (values [L + B*C, D], offsets) with the prefix first."""
        x = self.project(self._embed_actions(item_emb, actions))
        if self.contextual_emb is None:
            return x, offsets
        batch = offsets.numel() - 1
        return prepend_rows(x, offsets, self._contextual(contextual_ids, contextual_offsets, batch))

    def _contextual(self, ids: torch.Tensor | None, offsets: torch.Tensor | None, batch: int) -> torch.Tensor:
        assert self.contextual_emb is not None
        if ids is None or offsets is None:
            raise NegseqError(
                "UIHPreprocessor has a contextual prefix but the batch has no contextual feature"
            )
        lengths = offsets[1:] - offsets[:-1]
        bad = torch.nonzero(lengths != self.contextual_seq_len).flatten()
        if bad.numel():
            row = int(bad[0])
            raise NegseqError(
                f"contextual feature row {row} holds {int(lengths[row])} ids, "
                f"contextual_seq_len is {self.contextual_seq_len}"
            )
        return self.contextual_emb(ids).view(batch, self.contextual_seq_len, -1)

    def forward_padded(
        self,
        item_emb: torch.Tensor,
        lengths: torch.Tensor,
        actions: torch.Tensor | None = None,
        contextual_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """item_emb: padded [B, N, E]; contextual_ids [B, C]. Returns ([B, C+N, D], lengths + C)."""
        x = self.project(self._embed_actions(item_emb, actions))
        if self.contextual_emb is None:
            return x, lengths
        if contextual_ids is None:
            raise NegseqError("UIHPreprocessor has a contextual prefix but no contextual ids were given")
        return torch.cat([self.contextual_emb(contextual_ids), x], dim=1), lengths + self.contextual_seq_len


class L2Norm(nn.Module):
    """Scales each embedding to unit length (cosine similarity as a dot product)."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=-1, eps=self.eps)
