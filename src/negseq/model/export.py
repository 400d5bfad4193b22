"""Serving artefacts: the user and item towers as `torch.export` programs, and `predict`.

`export` writes `user_tower.pt2`, `item_tower.pt2`, `item_ids.arrow` and `towers.json`
(inputs, dims, the vocabulary's file and columns). The programs hold their weights and
need only torch to run (`load_tower(path)` is `torch.export.load(path).module()`), not
negseq. The user tower takes a right-padded batch, `item_rows` int64 [B, N] and `lengths`
int64 [B] (+ `timestamps` [B, N] when the model has time buckets, + `actions` [B, N] action
bitmasks when it has action types), B and N dynamic, any
N >= 1, and returns [B, D]; a history longer than `max_seq_len` keeps its most recent
`max_seq_len` items. The item tower takes `item_rows` [N] and returns [N, D].

Both towers speak dense item rows: row r (1..num_items) is the embedding row of item id
`item_ids[r - 1]`, row 0 the unknown item. `item_ids.arrow` (Arrow IPC file, columns
`item_id`, `row`, both int64) is that map, so a server turns ids into rows without negseq.

`predict` writes `user_embeddings.arrow` (user_id, embedding) and `item_embeddings.arrow`
(item_id, embedding) as Arrow IPC files, embedding a fixed_size_list<float32>[D], batch by
batch: a split read from a source is never held whole (DESIGN §5).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from negseq.errors import NegseqError
from negseq.io.sources import Source
from negseq.model.hstu_match import HSTUMatch
from negseq.model.inputs import (
    Catalogue,
    DenseRows,
    history_columns,
    history_feature,
    history_inputs,
    split_batches,
)
from negseq.model.jagged import jagged_to_padded_dense


class _UserTower(nn.Module):
    def __init__(self, model: HSTUMatch) -> None:
        super().__init__()
        self.model = model

    def forward(self, item_rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model.user_embeddings_padded(item_rows, lengths)


class _TimedUserTower(_UserTower):
    def forward(  # type: ignore[override]
        self, item_rows: torch.Tensor, lengths: torch.Tensor, timestamps: torch.Tensor
    ) -> torch.Tensor:
        return self.model.user_embeddings_padded(item_rows, lengths, timestamps)


class _ActedUserTower(_UserTower):
    def forward(  # type: ignore[override]
        self, item_rows: torch.Tensor, lengths: torch.Tensor, actions: torch.Tensor
    ) -> torch.Tensor:
        return self.model.user_embeddings_padded(item_rows, lengths, actions=actions)


class _TimedActedUserTower(_UserTower):
    def forward(  # type: ignore[override]
        self, item_rows: torch.Tensor, lengths: torch.Tensor, timestamps: torch.Tensor, actions: torch.Tensor
    ) -> torch.Tensor:
        return self.model.user_embeddings_padded(item_rows, lengths, timestamps, actions)


_USER_TOWERS = {  # (timestamps, actions) -> the tower taking them
    (False, False): _UserTower,
    (True, False): _TimedUserTower,
    (False, True): _ActedUserTower,
    (True, True): _TimedActedUserTower,
}


class _ItemTower(nn.Module):
    def __init__(self, model: HSTUMatch) -> None:
        super().__init__()
        self.model = model

    def forward(self, item_rows: torch.Tensor) -> torch.Tensor:
        return self.model.item_embeddings(item_rows)


def _vocabulary(model: HSTUMatch, item_ids: np.ndarray) -> pa.Table:
    """The id -> row map of `item_ids` (row order), checked against the model's table."""
    ids = np.asarray(item_ids)
    if ids.ndim != 1 or ids.shape[0] != model.num_items:
        raise NegseqError(
            f"export: item_ids must list the model's {model.num_items} items in embedding-row order, "
            f"got shape {ids.shape}"
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise NegseqError(f"export: item_ids must be integers, got {ids.dtype}")
    ids = ids.astype(np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = int(np.argmax(counts > 1))
        rows = np.flatnonzero(ids == uniq[dup])[:2] + 1
        raise NegseqError(f"export: item id {int(uniq[dup])} is listed twice (rows {rows.tolist()})")
    return pa.table({"item_id": ids, "row": np.arange(1, len(ids) + 1, dtype=np.int64)})


def export(model: HSTUMatch, out_dir: str | Path, *, item_ids: np.ndarray) -> dict[str, Path]:
    """Export the towers of `model` (in eval mode) and the item vocabulary to `out_dir`.

    `item_ids`: the item ids in embedding-row order (`items.ids`: id `item_ids[r - 1]` is row
    r). Returns the written paths.
    """
    if model.contextual_seq_len:
        raise NegseqError("export supports user towers without a contextual prefix")
    vocabulary = _vocabulary(model, item_ids)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    timed = model.positional.time_emb is not None
    acted = model.preprocessor.action_emb is not None
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=1)
    rows = torch.ones(3, 5, dtype=torch.int64)
    lengths = torch.tensor([5, 2, 0])
    user_args: tuple[torch.Tensor, ...] = (rows, lengths)
    user_dims: tuple[dict[int, torch.export.Dim], ...] = ({0: batch, 1: seq}, {0: batch})
    for present in (timed, acted):  # timestamps, then action bitmasks: [B, N] int64 each
        if present:
            user_args += (torch.zeros(3, 5, dtype=torch.int64),)
            user_dims += ({0: batch, 1: seq},)
    user_tower = _USER_TOWERS[timed, acted](model)
    paths = {
        "user_tower": out / "user_tower.pt2",
        "item_tower": out / "item_tower.pt2",
        "item_ids": out / "item_ids.arrow",
    }
    with torch.no_grad():
        user_program = torch.export.export(user_tower, user_args, dynamic_shapes=user_dims)
        item_program = torch.export.export(
            _ItemTower(model),
            (torch.arange(4, dtype=torch.int64),),
            dynamic_shapes=({0: torch.export.Dim("items", min=1)},),
        )
    torch.export.save(user_program, paths["user_tower"])
    torch.export.save(item_program, paths["item_tower"])
    _write_ipc(vocabulary, paths["item_ids"])
    meta = {
        "embedding_dim": model.embedding_dim,
        "num_items": model.num_items,
        "max_seq_len": model.max_seq_len,
        "history": "a row longer than max_seq_len keeps its most recent max_seq_len items",
        "similarity": model.similarity,
        "user_tower_inputs": ["item_rows", "lengths"]
        + (["timestamps"] if timed else [])
        + (["actions"] if acted else []),
        "item_tower_inputs": ["item_rows"],
        "item_vocabulary": {
            "file": paths["item_ids"].name,
            "format": "arrow_ipc_file",
            "id_column": "item_id",
            "row_column": "row",
            "unknown_row": 0,
        },
    }
    paths["meta"] = out / "towers.json"
    paths["meta"].write_text(json.dumps(meta, indent=2))
    model.train(was_training)
    return paths


def load_tower(path: str | Path) -> nn.Module:
    """A saved tower as a callable module (plain torch, no negseq classes involved)."""
    return torch.export.load(str(path)).module()


def _embedding_schema(id_name: str, dim: int) -> pa.Schema:
    return pa.schema([(id_name, pa.int64()), ("embedding", pa.list_(pa.float32(), dim))])


def _embedding_batch(ids: np.ndarray, emb: torch.Tensor, id_name: str) -> pa.RecordBatch:
    flat = pa.array(emb.detach().to(torch.float32).numpy().reshape(-1))
    return pa.RecordBatch.from_arrays(
        [pa.array(ids, pa.int64()), pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])],
        schema=_embedding_schema(id_name, emb.shape[1]),
    )


def _write_ipc(table: pa.Table, path: Path) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


class EmbeddingWriter:
    """An Arrow IPC file of (id, embedding) written batch by batch, so no process holds them all."""

    def __init__(self, path: Path, id_name: str, dim: int) -> None:
        self.id_name, self.schema = id_name, _embedding_schema(id_name, dim)
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, self.schema)

    def write(self, ids: np.ndarray, emb: torch.Tensor) -> None:
        self._writer.write_batch(_embedding_batch(ids, emb, self.id_name))

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """A batch of (id, embedding) made elsewhere (a Ray actor), cast to this file's schema."""
        self._writer.write_table(pa.Table.from_batches([batch]).cast(self.schema))

    def close(self) -> None:
        self._writer.close()
        self._sink.close()

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def predict_columns(model: HSTUMatch) -> list[str]:
    """The columns of a sequence table that `predict` reads."""
    return ["user_id", *history_columns(model)]


@torch.no_grad()
def write_item_embeddings(
    model: HSTUMatch, items: DenseRows, path: Path, item_ids: np.ndarray, chunk: int = 16384
) -> None:
    """The item tower over `item_ids` (in that order), written `chunk` items at a time."""
    with EmbeddingWriter(path, "item_id", model.embedding_dim) as writer:
        for start in range(0, len(item_ids), chunk):
            ids = item_ids[start : start + chunk]
            rows = torch.from_numpy(np.asarray(items.dense_rows(ids), dtype=np.int64))
            writer.write(ids, model.item_embeddings(rows))


@torch.no_grad()
def predict(
    model: HSTUMatch,
    sequences: pa.Table | Source,
    items: Catalogue,
    out_dir: str | Path,
    *,
    item_ids: np.ndarray | None = None,
    batch_size: int = 256,
) -> dict[str, Path]:
    """Write user embeddings (one per `sequences` row, from its `uih`) and item embeddings.

    `sequences`: a sequence table, or a `Source` read `batch_size` rows at a time (each batch's
    embeddings are written before the next is read). `item_ids`: the corpus ids to embed, in
    the order written (default: `items.ids`).
    """
    names = sequences.column_names if isinstance(sequences, pa.Table) else sequences.schema.names
    missing = [c for c in predict_columns(model) if c not in names]
    if missing:
        raise NegseqError(f"sequence table has no column(s) {missing} (columns: {names})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    inputs = history_inputs(model)
    paths = {"users": out / "user_embeddings.arrow", "items": out / "item_embeddings.arrow"}
    try:
        with EmbeddingWriter(paths["users"], "user_id", model.embedding_dim) as writer:
            for batch in split_batches(sequences, batch_size, predict_columns(model)):
                emb = model.user_embeddings(history_feature(batch, items, **inputs))
                writer.write(batch.column("user_id").to_numpy(), emb)
        ids = np.asarray(items.ids if item_ids is None else item_ids, dtype=np.int64)
        write_item_embeddings(model, items, paths["items"], ids)
    finally:
        model.train(was_training)
    return paths


def padded_history(values: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Jagged history rows -> (item_rows [B, N], lengths [B]), the exported user tower's input."""
    lengths = offsets[1:] - offsets[:-1]
    width = max(int(lengths.max()) if lengths.numel() else 0, 1)
    return jagged_to_padded_dense(values, offsets, width, 0), lengths
