"""Evaluation and `predict` on Ray Data: an eval split's batches ranked (or embedded) by actors.

The driver plans the split from metadata (batch descriptors, as the sampler's plan does),
computes the corpus's item embeddings once and `ray.put`s them with the model, the item table
and the popularity counts; every actor of the pool maps them (zero-copy, one copy a node) in
`__init__`, builds its `BatchRanker` there once, then reads and ranks the batches it is handed.
Actors return int ranks only and the driver folds them into `RankCounts`, so no process holds
the split or a users x corpus score matrix, and the metrics equal `evaluate` in one process
on the same batches whatever the number of actors or nodes (ranks are integers; the histogram
does not depend on order). The result also says which nodes ranked how many users.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch

from negseq.errors import NegseqError
from negseq.executors.ray_data import ActorPool
from negseq.io.sources import BatchDescriptor, Source, SourceReader
from negseq.model.export import EmbeddingWriter, predict_columns, write_item_embeddings
from negseq.model.hstu_match import HSTUMatch
from negseq.model.inputs import DenseRows, history_feature
from negseq.model.metrics import BatchRanker, RankCounts, check_split, eval_columns, item_counts

COUNT_BATCH_ROWS = 4096  # rows a batch of the popularity-count pass


def _shared_tensor(ref: ray.ObjectRef) -> torch.Tensor:
    """A numpy array from the object store as a tensor, without copying it (read-only)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(ray.get(ref))


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def count_items(
    keys: dict[str, np.ndarray], source: Source, descriptors_ref: ray.ObjectRef, items_ref: ray.ObjectRef
) -> dict[str, np.ndarray]:
    """Ray Data task: interaction counts of the `uih` column of the batches it is handed, as
    (dense row, count) pairs. A task, not an actor: it holds nothing worth building once."""
    descriptors: Sequence[BatchDescriptor] = ray.get(descriptors_ref)
    items: DenseRows = ray.get(items_ref)
    reader = SourceReader(source, ["uih"])
    counts = np.zeros(len(items) + 1, dtype=np.int64)
    for index in keys["batch_index"].tolist():
        counts += item_counts(pa.Table.from_batches([reader.read(descriptors[index])]), items)
    rows = np.flatnonzero(counts)
    return {"row": rows.astype(np.int64), "count": counts[rows]}


class RankBatches:
    """Ray Data callable class: the ranker built once from the shared model, item embeddings and
    counts; each call ranks its batches' targets. One output row an eval row."""

    def __init__(
        self,
        source: Source,
        descriptors: ray.ObjectRef,
        refs: dict[str, ray.ObjectRef],
    ) -> None:
        model: HSTUMatch = ray.get(refs["model"])
        self.descriptors: Sequence[BatchDescriptor] = ray.get(descriptors)
        self.reader = SourceReader(source, eval_columns(model))
        self.ranker = BatchRanker(
            model,
            ray.get(refs["items"]),
            ray.get(refs["counts"]),
            item_embeddings=_shared_tensor(refs["item_embeddings"]),
        )
        self.node_id = _node_id()

    def __call__(self, keys: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model_ranks, pop_ranks = [], []
        for index in keys["batch_index"].tolist():
            ranks = self.ranker(pa.Table.from_batches([self.reader.read(self.descriptors[index])]))
            model_ranks.append(ranks[0])
            pop_ranks.append(ranks[1])
        model_rank = np.concatenate(model_ranks)
        return {
            "model_rank": model_rank,
            "pop_rank": np.concatenate(pop_ranks),
            "node_id": np.full(model_rank.size, self.node_id),
        }


class EmbedUsers:
    """Ray Data callable class: the model (built once) embeds the users of its batches."""

    def __init__(self, source: Source, descriptors: ray.ObjectRef, refs: dict[str, ray.ObjectRef]) -> None:
        self.model: HSTUMatch = ray.get(refs["model"]).eval()
        self.items: DenseRows = ray.get(refs["items"])
        self.descriptors: Sequence[BatchDescriptor] = ray.get(descriptors)
        self.reader = SourceReader(source, predict_columns(self.model))

    @torch.no_grad()
    def __call__(self, keys: dict[str, np.ndarray]) -> pa.Table:
        with_ts = self.model.positional.time_emb is not None
        tables = []
        for index in keys["batch_index"].tolist():
            batch = pa.Table.from_batches([self.reader.read(self.descriptors[index])])
            emb = self.model.user_embeddings(history_feature(batch, self.items, with_timestamps=with_ts))
            flat = pa.array(emb.to(torch.float32).numpy().reshape(-1))
            tables.append(
                pa.table(
                    {
                        "user_id": batch.column("user_id").cast(pa.int64()),
                        "embedding": pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]),
                    }
                )
            )
        return pa.concat_tables(tables)


def _keys(source: Source, batch_size: int) -> tuple[ray.ObjectRef, ray.data.Dataset]:
    """The split's batch descriptors (planned from metadata, `ray.put` once: actors read their
    own rows by them) and a dataset of their indices to map."""
    descriptors = source.plan(batch_size)
    items = [{"batch_index": d.batch_index} for d in descriptors]
    keys = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 200)))
    return ray.put(tuple(descriptors)), keys


def _cpu_model(model: HSTUMatch) -> HSTUMatch:
    """The model in eval mode on the CPU, for the actors (a copy when it lives elsewhere: the
    caller's model stays where it is)."""
    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).to("cpu")
    return model.eval()


def evaluate_on_ray(
    model: HSTUMatch,
    split: Source,
    items: DenseRows,
    ks: Sequence[int] = (10, 50, 200),
    *,
    counts: np.ndarray | None = None,
    batch_size: int = 256,
    pool: ActorPool | None = None,
) -> dict[str, Any]:
    """`negseq.model.metrics.evaluate` of a split read by Ray actors: the same metrics, plus
    "nodes" (node id -> users ranked there)."""
    check_split(split, model)
    pool = pool or ActorPool()
    was_training = model.training
    model = _cpu_model(model)
    try:
        items_ref = ray.put(items)
        if counts is None:
            count_descriptors, count_keys = _keys(split, COUNT_BATCH_ROWS)
            counts = np.zeros(len(items) + 1, dtype=np.int64)
            counted = count_keys.map_batches(
                count_items,
                fn_args=(split, count_descriptors, items_ref),
                batch_size=1,
                batch_format="numpy",
                num_cpus=pool.num_cpus,
            )
            for part in counted.iter_batches(batch_size=None, batch_format="numpy"):
                np.add.at(counts, part["row"], part["count"])
        with torch.no_grad():
            item_emb = model.item_embeddings(torch.arange(len(items) + 1)).numpy()
        refs = {
            "model": ray.put(model),
            "items": items_ref,
            "counts": ray.put(counts),
            "item_embeddings": ray.put(item_emb),
        }
        descriptors, keys = _keys(split, batch_size)
        ranked = keys.map_batches(
            RankBatches,
            fn_constructor_args=(split, descriptors, refs),
            compute=pool.strategy(),
            batch_size=1,
            batch_format="numpy",
            num_cpus=pool.num_cpus,
        )
        by_model, by_popularity = RankCounts(len(items) + 1), RankCounts(len(items) + 1)
        nodes: dict[str, int] = {}
        for part in ranked.iter_batches(batch_size=None, batch_format="numpy"):
            by_model.add(part["model_rank"])
            by_popularity.add(part["pop_rank"])
            for node, users in zip(*np.unique(part["node_id"], return_counts=True), strict=True):
                nodes[str(node)] = nodes.get(str(node), 0) + int(users)
    finally:
        model.train(was_training)
    return {
        "model": by_model.metrics(ks),
        "most_popular": by_popularity.metrics(ks),
        "num_users": by_model.total,
        "nodes": nodes,
    }


def predict_on_ray(
    model: HSTUMatch,
    sequences: Source,
    items: DenseRows,
    out_dir: str | Path,
    *,
    item_ids: np.ndarray | None = None,
    batch_size: int = 256,
    pool: ActorPool | None = None,
) -> dict[str, Path]:
    """`negseq.model.export.predict` with the users embedded by Ray actors: the same files. The
    driver writes each batch's embeddings as it arrives, in the split's order."""
    missing = [c for c in predict_columns(model) if c not in sequences.schema.names]
    if missing:
        raise NegseqError(f"sequence table has no column(s) {missing} (columns: {sequences.schema.names})")
    pool = pool or ActorPool()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"users": out / "user_embeddings.arrow", "items": out / "item_embeddings.arrow"}
    was_training = model.training
    model = _cpu_model(model)
    try:
        descriptors, keys = _keys(sequences, batch_size)
        embedded = keys.map_batches(
            EmbedUsers,
            fn_constructor_args=(sequences, descriptors, {"model": ray.put(model), "items": ray.put(items)}),
            compute=pool.strategy(),
            batch_size=1,
            batch_format="numpy",
            num_cpus=pool.num_cpus,
        )
        embedded.context.execution_options.preserve_order = True
        with EmbeddingWriter(paths["users"], "user_id", model.embedding_dim) as writer:
            for part in embedded.iter_batches(batch_size=None, batch_format="pyarrow"):
                for batch in part.to_batches():
                    writer.write_batch(batch)
        ids = np.asarray(items.ids if item_ids is None else item_ids, dtype=np.int64)  # type: ignore[attr-defined]
        with torch.no_grad():
            write_item_embeddings(model, items, paths["items"], ids)
    finally:
        model.train(was_training)
    return paths
