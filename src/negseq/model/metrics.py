"""Full-corpus retrieval metrics (HR@K, NDCG@K, MRR) and the most-popular baseline.

Every item of the corpus is ranked for every user (no sampled candidates), the user's
history items are removed from the ranking (the target itself never is), and ties are
broken by item row, so the rank is what a stable top-K would return. The most-popular
baseline ranks by training interaction counts on the same users, targets and exclusions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from negseq.errors import NegseqError
from negseq.model.hstu_match import HSTUMatch
from negseq.model.inputs import DenseRows, history_feature, history_inputs, list_column


def target_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    history: torch.Tensor,
    history_offsets: torch.Tensor,
) -> torch.Tensor:
    """0-based rank of each target among all items (columns 1..N) after removing history.

    scores [B, N+1] (column 0 = unknown row, never ranked), targets [B] dense rows,
    history jagged dense rows (values, offsets [B+1]).
    """
    scores = scores.clone()
    scores[:, 0] = float("-inf")
    rows = torch.repeat_interleave(torch.arange(targets.numel()), history_offsets.diff())
    not_target = history != targets[rows]
    scores[rows[not_target], history[not_target]] = float("-inf")
    target_score = scores.gather(1, targets.view(-1, 1))
    cols = torch.arange(scores.shape[1]).view(1, -1)
    ahead = (scores > target_score) | ((scores == target_score) & (cols < targets.view(-1, 1)))
    ranks = ahead.sum(1)
    # an unknown target (row 0) cannot be retrieved: rank it past the end of the corpus
    return torch.where(targets == 0, scores.shape[1], ranks)


def rank_metrics(ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """HR@K, NDCG@K (one relevant item) and MRR from 0-based ranks."""
    ranks = ranks.to(torch.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"HR@{k}"] = float(hit.double().mean())
        out[f"NDCG@{k}"] = float(torch.where(hit, 1.0 / torch.log2(ranks + 2.0), 0.0).mean())
    out["MRR"] = float((1.0 / (ranks + 1.0)).mean())
    return out


def item_counts(table: pa.Table, items: DenseRows, columns: Sequence[str] = ("uih",)) -> np.ndarray:
    """Interaction count per dense item row [len(items)+1] over the given list columns."""
    counts = np.zeros(len(items) + 1, dtype=np.int64)
    for name in columns:
        ids, _ = list_column(table, name)
        counts += np.bincount(np.asarray(items.dense_rows(ids)), minlength=len(items) + 1)
    return counts


@torch.no_grad()
def evaluate(
    model: HSTUMatch,
    eval_table: pa.Table,
    items: DenseRows,
    ks: Sequence[int] = (10, 50, 200),
    *,
    counts: np.ndarray | None = None,
    batch_size: int = 256,
) -> dict:
    """Rank the full corpus for each eval row (uih -> target) with the model and by popularity.

    `counts`: training interaction count per dense item row for the most-popular baseline;
    by default the counts of the eval table's own `uih` column (the training side of a
    leave-last-out split). Returns {"model": {...}, "most_popular": {...}, "num_users": B}.
    """
    if "target" not in eval_table.column_names:
        raise NegseqError(f"eval table has no column 'target' (columns: {eval_table.column_names})")
    if eval_table.num_rows == 0:
        raise NegseqError("eval table is empty: nothing to evaluate")
    if eval_table.column("target").null_count:
        raise NegseqError("eval table column 'target' holds nulls")
    counts = item_counts(eval_table, items) if counts is None else counts
    if counts.shape != (len(items) + 1,):
        raise NegseqError(f"counts must have len(items) + 1 = {len(items) + 1} entries, got {counts.shape}")
    popularity = torch.from_numpy(counts.astype(np.float64)).view(1, -1)
    inputs = history_inputs(model)
    was_training = model.training
    model.eval()
    item_emb = model.item_embeddings(torch.arange(len(items) + 1))
    model_ranks, pop_ranks = [], []
    for start in range(0, eval_table.num_rows, batch_size):
        chunk = eval_table.slice(start, batch_size)
        uih = history_feature(chunk, items, **inputs)
        targets = torch.from_numpy(
            np.asarray(items.dense_rows(chunk.column("target").to_numpy()), dtype=np.int64)
        )
        scores = model.user_embeddings(uih) @ item_emb.T
        model_ranks.append(target_ranks(scores, targets, uih.values, uih.offsets))
        pop = popularity.expand(targets.numel(), -1)
        pop_ranks.append(target_ranks(pop, targets, uih.values, uih.offsets))
    model.train(was_training)
    return {
        "model": rank_metrics(torch.cat(model_ranks), ks),
        "most_popular": rank_metrics(torch.cat(pop_ranks), ks),
        "num_users": eval_table.num_rows,
    }
