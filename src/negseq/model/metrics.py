"""Full-corpus retrieval metrics (HR@K, NDCG@K, MRR) and the most-popular baseline, streamed.

Every item of the corpus is ranked for every user (no sampled candidates), the user's
history items are removed from the ranking (the target itself never is), and ties are
broken by item row, so the rank is what a stable top-K would return. The most-popular
baseline ranks by training interaction counts on the same users, targets and exclusions.

Nothing holds the whole eval split or a users x corpus score matrix: the split is read in
batches (`batch_size` rows), each batch scores the corpus in chunks of `ITEM_CHUNK` items
and counts the items ahead of its target, and the ranks are folded into a histogram
(`RankCounts`: how many users got each rank). The metrics are computed from that histogram,
so they do not depend on how the split was cut into batches or on which process or node
ranked which batch: the Ray evaluation (`negseq.executors.ray_eval`) gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import torch

from negseq.errors import NegseqError
from negseq.io.sources import Source
from negseq.model.hstu_match import HSTUMatch
from negseq.model.inputs import (
    DenseRows,
    history_columns,
    history_feature,
    history_inputs,
    list_column,
    split_batches,
)

ITEM_CHUNK = 16384  # corpus columns scored at once: a batch holds [batch_size, ITEM_CHUNK] scores

# scores of the given rows (int64 [R]) for corpus columns [start, stop) -> [R, stop - start]
ScoreColumns = Callable[[torch.Tensor, int, int], torch.Tensor]


def chunked_target_ranks(
    score: ScoreColumns,
    num_columns: int,
    targets: torch.Tensor,
    history: torch.Tensor,
    history_offsets: torch.Tensor,
    *,
    chunk: int = ITEM_CHUNK,
) -> torch.Tensor:
    """0-based rank of each target among columns 1..num_columns-1 after removing history.

    Column 0 (the unknown row) is never ranked; an unknown target ranks past the end. A
    target's score is taken from the same product as the columns it is compared with (the
    chunk that holds it), so a tie is a tie whatever the chunking. Runs on the device of
    `targets` (history and the scores on it too)."""
    device = targets.device
    rows = torch.arange(targets.numel(), device=device)
    target_score = torch.empty(targets.numel(), dtype=torch.float64, device=device)
    reuse: tuple[int, torch.Tensor] | None = None  # a chunk that holds every target (one chunk: all)
    for start in range(0, num_columns, chunk):
        stop = min(start + chunk, num_columns)
        mine = rows[(targets >= start) & (targets < stop)]
        if mine.numel():
            scores = score(mine, start, stop).to(torch.float64, copy=True)
            target_score[mine] = scores.gather(1, (targets[mine] - start).view(-1, 1)).view(-1)
            if mine.numel() == rows.numel():
                reuse = (start, scores)
    history_rows = torch.repeat_interleave(rows, history_offsets.diff())
    excluded = history != targets[history_rows]
    history_rows, history = history_rows[excluded], history[excluded]
    ranks = torch.zeros(targets.numel(), dtype=torch.int64, device=device)
    for start in range(0, num_columns, chunk):
        stop = min(start + chunk, num_columns)
        if reuse is not None and reuse[0] == start:
            scores = reuse[1]
        else:
            scores = score(rows, start, stop).to(torch.float64, copy=True)
        if start == 0:
            scores[:, 0] = float("-inf")
        inside = (history >= start) & (history < stop)
        scores[history_rows[inside], history[inside] - start] = float("-inf")
        cols = torch.arange(start, stop, device=device).view(1, -1)
        ahead = (scores > target_score.view(-1, 1)) | (
            (scores == target_score.view(-1, 1)) & (cols < targets.view(-1, 1))
        )
        ranks += ahead.sum(1)
    return torch.where(targets == 0, num_columns, ranks)


def target_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    history: torch.Tensor,
    history_offsets: torch.Tensor,
) -> torch.Tensor:
    """`chunked_target_ranks` of a whole score matrix [B, N+1] (column 0 = unknown row)."""
    return chunked_target_ranks(
        lambda rows, start, stop: scores[rows, start:stop], scores.shape[1], targets, history, history_offsets
    )


class RankCounts:
    """How many users got each 0-based rank (an unknown target counts at rank num_columns).

    Integer counts add up the same in any order, so the metrics of a split are the same
    however its batches were spread over threads, actors or nodes."""

    def __init__(self, num_columns: int) -> None:
        self.counts = np.zeros(num_columns + 1, dtype=np.int64)

    def add(self, ranks: np.ndarray) -> None:
        self.counts += np.bincount(np.asarray(ranks, np.int64), minlength=self.counts.size)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def metrics(self, ks: Sequence[int]) -> dict[str, float]:
        """HR@K, NDCG@K (one relevant item) and MRR."""
        if self.total == 0:
            raise NegseqError("no ranks to compute metrics from")
        rank = np.arange(self.counts.size, dtype=np.float64)
        share = self.counts / self.total
        out: dict[str, float] = {}
        for k in ks:
            out[f"HR@{k}"] = float(share[:k].sum())
            out[f"NDCG@{k}"] = float((share[:k] / np.log2(rank[:k] + 2.0)).sum())
        out["MRR"] = float((share / (rank + 1.0)).sum())
        return out


def rank_metrics(ranks: torch.Tensor | np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """HR@K, NDCG@K and MRR from 0-based ranks."""
    ranks = np.asarray(ranks, np.int64)
    counts = RankCounts(int(ranks.max()) if ranks.size else 0)
    counts.add(ranks)
    return counts.metrics(ks)


def item_counts(table: pa.Table, items: DenseRows, columns: Sequence[str] = ("uih",)) -> np.ndarray:
    """Interaction count per dense item row [len(items)+1] over the given list columns."""
    counts = np.zeros(len(items) + 1, dtype=np.int64)
    for name in columns:
        ids, _ = list_column(table, name)
        counts += np.bincount(np.asarray(items.dense_rows(ids)), minlength=len(items) + 1)
    return counts


def eval_columns(model: HSTUMatch) -> list[str]:
    """The columns of a sequence table that evaluation reads."""
    return [*history_columns(model), "target"]


def check_split(split: pa.Table | Source, model: HSTUMatch) -> None:
    """Columns and size of an eval split, checked before any batch is read."""
    names = split.column_names if isinstance(split, pa.Table) else split.schema.names
    where = "eval table" if isinstance(split, pa.Table) else f"eval split {split.spec}"
    if "target" not in names:
        raise NegseqError(f"{where} has no column 'target' (columns: {names})")
    missing = [c for c in eval_columns(model) if c not in names]
    if missing:
        raise NegseqError(f"{where} has no column(s) {missing} (columns: {names})")
    if split.num_rows == 0:
        raise NegseqError(f"{where} is empty: nothing to evaluate")
    if isinstance(split, pa.Table) and split.column("target").null_count:
        raise NegseqError(f"{where} column 'target' holds nulls")


def split_item_counts(split: pa.Table | Source, items: DenseRows, batch_size: int = 4096) -> np.ndarray:
    """`item_counts` of the split's `uih` column, read batch by batch."""
    counts = np.zeros(len(items) + 1, dtype=np.int64)
    for batch in split_batches(split, batch_size, ["uih"]):
        counts += item_counts(batch, items)
    return counts


class BatchRanker:
    """Ranks the target of every row of an eval batch, by the model and by popularity.

    Built once (the item embeddings of the whole corpus are computed here, or handed in when
    another process computed them), then called on each batch. Scores on the model's device."""

    def __init__(
        self,
        model: HSTUMatch,
        items: DenseRows,
        counts: np.ndarray,
        *,
        item_embeddings: torch.Tensor | None = None,
        chunk: int = ITEM_CHUNK,
    ) -> None:
        if counts.shape != (len(items) + 1,):
            raise NegseqError(
                f"counts must have len(items) + 1 = {len(items) + 1} entries, got {counts.shape}"
            )
        self.model, self.items, self.chunk = model.eval(), items, chunk
        self.num_columns = len(items) + 1
        self.inputs = history_inputs(model)
        self.device = next(model.parameters()).device
        if item_embeddings is None:
            with torch.no_grad():
                item_embeddings = model.item_embeddings(torch.arange(self.num_columns, device=self.device))
        self.item_emb = item_embeddings.to(self.device)
        self.popularity = torch.from_numpy(counts.astype(np.float64)).to(self.device)

    def __call__(self, batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(model ranks, most-popular ranks), int64 [rows]."""
        model_ranks, pop_ranks, _ = self.ranks_and_users(batch)
        return model_ranks, pop_ranks

    @torch.no_grad()
    def ranks_and_users(self, batch: pa.Table) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """The ranks and the user embeddings [rows, D] they were scored with (for `predict`)."""
        if batch.column("target").null_count:
            raise NegseqError("eval split column 'target' holds nulls")
        uih = history_feature(batch, self.items, **self.inputs).to(self.device)
        targets = torch.from_numpy(
            np.asarray(self.items.dense_rows(batch.column("target").to_numpy()), dtype=np.int64)
        ).to(self.device)
        users = self.model.user_embeddings(uih)
        item_emb, popularity = self.item_emb, self.popularity

        def by_model(rows: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            return users[rows] @ item_emb[start:stop].T

        def by_popularity(rows: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            return popularity[start:stop].view(1, -1).expand(rows.numel(), -1)

        ranks = [
            chunked_target_ranks(score, self.num_columns, targets, uih.values, uih.offsets, chunk=self.chunk)
            for score in (by_model, by_popularity)
        ]
        return ranks[0].cpu().numpy(), ranks[1].cpu().numpy(), users


def evaluate(
    model: HSTUMatch,
    split: pa.Table | Source,
    items: DenseRows,
    ks: Sequence[int] = (10, 50, 200),
    *,
    counts: np.ndarray | None = None,
    batch_size: int = 256,
) -> dict:
    """Rank the full corpus for each row of an eval split (uih -> target), in this process.

    `split`: a sequence table, or a `Source` (file, folder, glob, URI) read `batch_size` rows
    at a time. `counts`: training interaction count per dense item row for the most-popular
    baseline; by default the counts of the split's own `uih` column (the training side of a
    leave-last-out split), an extra pass over it. Returns {"model": {...}, "most_popular":
    {...}, "num_users": B}.
    """
    check_split(split, model)
    counts = split_item_counts(split, items) if counts is None else counts
    was_training = model.training
    ranker = BatchRanker(model, items, counts)
    by_model, by_popularity = RankCounts(ranker.num_columns), RankCounts(ranker.num_columns)
    try:
        for batch in split_batches(split, batch_size, eval_columns(model)):
            model_ranks, pop_ranks = ranker(batch)
            by_model.add(model_ranks)
            by_popularity.add(pop_ranks)
    finally:
        model.train(was_training)
    return evaluation_result(by_model, by_popularity, ks)


def evaluation_result(by_model: RankCounts, by_popularity: RankCounts, ks: Sequence[int]) -> dict:
    """What an evaluation returns, wherever its ranks were counted: {"model", "most_popular",
    "num_users"}."""
    return {
        "model": by_model.metrics(ks),
        "most_popular": by_popularity.metrics(ks),
        "num_users": by_model.total,
    }
