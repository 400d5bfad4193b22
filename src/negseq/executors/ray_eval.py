"""Evaluation (and `predict`) on Ray Data: an eval split's batches ranked by actors.

The driver plans the split from metadata (batch descriptors, as the sampler's plan does),
computes the corpus's item embeddings once and `ray.put`s them with the model, the item table
and the popularity counts; every actor of the pool maps them (zero-copy, one copy a node) in
`__init__`, builds its `BatchRanker` there once, then reads and ranks the batches it is handed.
Actors return int ranks only and the driver folds them into `RankCounts`, so no process holds
the split or a users x corpus score matrix, and the metrics equal `evaluate` in one process
on the same batches whatever the number of actors or nodes (ranks are integers; the histogram
does not depend on order). The result also says which nodes ranked how many users. The same
pass can write what `predict` writes, so a job's evaluation and embeddings start one actor pool.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch

from negseq.errors import NegseqError
from negseq.executors.ray_data import ActorPool
from negseq.io.sources import BatchDescriptor, Source, SourceReader
from negseq.model.export import EmbeddingWriter, predict_columns, write_item_embeddings
from negseq.model.hstu_match import HSTUMatch
from negseq.model.inputs import Catalogue, DenseRows
from negseq.model.metrics import (
    BatchRanker,
    RankCounts,
    check_split,
    eval_columns,
    evaluation_result,
    item_counts,
)

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
    counts; each call ranks its batches' targets (one output row an eval row), and gives each
    row's user embedding too when asked to (`embed`, for `predict`)."""

    def __init__(
        self, source: Source, descriptors: ray.ObjectRef, refs: dict[str, ray.ObjectRef], embed: bool
    ) -> None:
        model: HSTUMatch = ray.get(refs["model"])
        self.descriptors: Sequence[BatchDescriptor] = ray.get(descriptors)
        self.embed = embed
        self.reader = SourceReader(source, eval_columns(model) + (["user_id"] if embed else []))
        self.ranker = BatchRanker(
            model,
            ray.get(refs["items"]),
            ray.get(refs["counts"]),
            item_embeddings=_shared_tensor(refs["item_embeddings"]),
        )
        self.node_id = _node_id()

    def __call__(self, keys: dict[str, np.ndarray]) -> pa.Table:
        tables = []
        for index in keys["batch_index"].tolist():
            batch = pa.Table.from_batches([self.reader.read(self.descriptors[index])])
            model_rank, pop_rank, users = self.ranker.ranks_and_users(batch)
            columns: dict[str, Any] = {
                "model_rank": model_rank,
                "pop_rank": pop_rank,
                "node_id": pa.array([self.node_id] * batch.num_rows, pa.string()),
            }
            if self.embed:
                flat = pa.array(users.to(torch.float32).cpu().numpy().reshape(-1))
                columns["user_id"] = batch.column("user_id").cast(pa.int64())
                columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, users.shape[1])
            tables.append(pa.table(columns))
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
    items: Catalogue,
    ks: Sequence[int] = (10, 50, 200),
    *,
    counts: np.ndarray | None = None,
    batch_size: int = 256,
    pool: ActorPool | None = None,
    embeddings_to: str | Path | None = None,
    item_ids: np.ndarray | None = None,
) -> dict[str, Any]:
    """`negseq.model.metrics.evaluate` of a split read by Ray actors: the same metrics, plus
    "nodes" (node id -> users ranked there).

    `embeddings_to`: also write what `negseq.model.export.predict` writes there (the same files:
    the users' embeddings from the same pass, in the split's order, written by this process as
    the actors return them; the items' embeddings, of `item_ids` or every item)."""
    check_split(split, model)
    if embeddings_to is not None:
        missing = [c for c in predict_columns(model) if c not in split.schema.names]
        if missing:
            raise NegseqError(f"eval split {split.spec} has no column(s) {missing}: cannot write embeddings")
    pool = pool or ActorPool()
    was_training = model.training
    model = _cpu_model(model)
    try:
        items_ref = ray.put(items)
        if counts is None:
            count_descriptors, count_keys = _keys(split, COUNT_BATCH_ROWS)
            counts = np.zeros(len(items) + 1, dtype=np.int64)
            counted = count_keys.map_batches(
                functools.partial(
                    count_items, source=split, descriptors_ref=count_descriptors, items_ref=items_ref
                ),
                batch_size=1,
                batch_format="numpy",
                num_cpus=pool.num_cpus,
            )
            for part in counted.iter_batches(batch_size=None, batch_format="numpy"):
                np.add.at(counts, part["row"], part["count"])
        with torch.no_grad():
            item_emb = model.item_embeddings(torch.arange(len(items) + 1))
        refs = {
            "model": ray.put(model),
            "items": items_ref,
            "counts": ray.put(counts),
            "item_embeddings": ray.put(item_emb.numpy()),
        }
        descriptors, keys = _keys(split, batch_size)
        ranked = keys.map_batches(
            RankBatches,
            fn_constructor_args=(split, descriptors, refs, embeddings_to is not None),
            compute=pool.strategy(),
            batch_size=1,
            batch_format="numpy",
            num_cpus=pool.num_cpus,
        )
        by_model, by_popularity = RankCounts(len(items) + 1), RankCounts(len(items) + 1)
        nodes: dict[str, int] = {}
        with contextlib.ExitStack() as files:
            writer = None
            if embeddings_to is not None:
                ranked.context.execution_options.preserve_order = True  # users in the split's order
                out = Path(embeddings_to)
                out.mkdir(parents=True, exist_ok=True)
                path = out / "user_embeddings.arrow"
                writer = files.enter_context(EmbeddingWriter(path, "user_id", model.embedding_dim))
            for batch in ranked.iter_batches(batch_size=None, batch_format="pyarrow"):
                part = cast(pa.Table, batch)
                by_model.add(part.column("model_rank").to_numpy())
                by_popularity.add(part.column("pop_rank").to_numpy())
                for entry in pc.value_counts(part.column("node_id")).to_pylist():
                    nodes[entry["values"]] = nodes.get(entry["values"], 0) + entry["counts"]
                if writer is not None:
                    for batch in part.select(["user_id", "embedding"]).to_batches():
                        writer.write_batch(batch)
        if embeddings_to is not None:
            ids = np.asarray(items.ids if item_ids is None else item_ids, dtype=np.int64)
            write_item_embeddings(model, items, Path(embeddings_to) / "item_embeddings.arrow", ids)
    finally:
        model.train(was_training)
    return {**evaluation_result(by_model, by_popularity, ks), "nodes": nodes}
