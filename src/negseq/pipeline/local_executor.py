"""The embedded executor: a bounded pool of worker threads over an ordered stream of batches.

Reading stays on the calling thread (pyarrow's scanner has its own I/O threads); each worker
samples, combines and (when writing) writes one batch. At most `max_in_flight` batches are held
at once, and results come back in batch order. numpy, numba kernels and Arrow release the GIL,
so threads run in parallel.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import pyarrow as pa
from tqdm import tqdm

from negseq.errors import NegseqError
from negseq.pipeline.candidates import sample_candidates_and_stats
from negseq.pipeline.io import (
    STAT_PREFIX,
    manifest_files_and_stats,
    output_name,
    read_manifest,
    remove_manifest,
    write_batch_output,
    write_manifest,
)
from negseq.pipeline.jagged import to_jagged_batch
from negseq.pipeline.jagged_batch import JaggedBatch

T = TypeVar("T")


def ordered_map(
    fn: Callable[[int, pa.RecordBatch], T],
    batches: Iterable[pa.RecordBatch],
    *,
    num_workers: int,
    max_in_flight: int | None = None,
) -> Iterator[T]:
    """fn(batch_index, batch) on a thread pool, results in batch order, bounded in memory."""
    limit = max_in_flight or 2 * num_workers
    pending: deque[Future[T]] = deque()
    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="negseq") as pool:
        try:
            for index, batch in enumerate(batches):
                pending.append(pool.submit(fn, index, batch))
                while len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


class LocalExecutor:
    """Sample and combine batches in-process: write sampled outputs, or yield `JaggedBatch`es."""

    def __init__(
        self,
        sampler: Any,
        *,
        layout: Literal["interleaved", "suffix"],
        neg_per_pos: int | None = None,
        seq_delim: str = ";",
        epoch: int = 0,
        num_workers: int = 2,
        max_in_flight: int | None = None,
        training: bool = True,
    ) -> None:
        self.sampler = sampler
        self.layout = layout
        self.neg_per_pos = neg_per_pos
        self.seq_delim = seq_delim
        self.epoch = epoch
        self.num_workers = max(1, num_workers)
        self.max_in_flight = max_in_flight
        self.training = training

    def sample(self, batch_index: int, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, dict[str, int]]:
        return sample_candidates_and_stats(
            batch,
            self.sampler,
            layout=self.layout,
            neg_per_pos=self.neg_per_pos,
            seq_delim=self.seq_delim,
            epoch=self.epoch,
            batch_index=batch_index,
            training=self.training,
        )

    def iter_sampled(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Sampled batches in input order."""
        for out, _ in ordered_map(
            self.sample, batches, num_workers=self.num_workers, max_in_flight=self.max_in_flight
        ):
            yield out

    def iter_jagged(
        self,
        batches: Iterable[pa.RecordBatch],
        *,
        items: Any,
        uih_field: str,
        max_seq_len: int,
        timestamp_field: str | None = None,
    ) -> Iterator[JaggedBatch]:
        """`JaggedBatch`es in input order, built on the worker threads."""

        def work(batch_index: int, batch: pa.RecordBatch) -> JaggedBatch:
            out, _ = self.sample(batch_index, batch)
            return to_jagged_batch(
                out,
                items=items,
                uih_field=uih_field,
                candidate_field=self.sampler.item_id_field,
                timestamp_field=timestamp_field,
                max_seq_len=max_seq_len,
                layout=self.layout,
            )

        yield from ordered_map(work, batches, num_workers=self.num_workers, max_in_flight=self.max_in_flight)

    def write(
        self,
        batches: Iterable[pa.RecordBatch],
        out_dir: str | Path,
        *,
        format: str = "parquet",
        config_hash: str = "",
        progress: bool = False,
        total_rows: int | None = None,
    ) -> dict[str, Any]:
        """Write one file a batch and the manifest last; returns the manifest's contents."""
        out_dir = Path(out_dir)
        output_name(0, format)  # reject an unknown format before anything is written
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_manifest(out_dir)

        def work(batch_index: int, batch: pa.RecordBatch) -> tuple[dict[str, Any], pa.Schema]:
            out, stats = self.sample(batch_index, batch)
            path = write_batch_output(out_dir, batch_index, out, format)
            summary = {
                "name": path.name,
                "batch_index": batch_index,
                "rows_in": batch.num_rows,
                "rows_out": out.num_rows,
                **{STAT_PREFIX + key: value for key, value in stats.items()},
            }
            return summary, out.schema

        summaries: list[dict[str, Any]] = []
        schema = None
        with tqdm(total=total_rows, unit="rows", unit_scale=True, desc="sample", disable=not progress) as bar:
            for summary, out_schema in ordered_map(
                work, batches, num_workers=self.num_workers, max_in_flight=self.max_in_flight
            ):
                if schema is not None and not out_schema.equals(schema):
                    raise NegseqError(
                        f"batch {summary['batch_index']} has output schema {out_schema}, "
                        f"earlier batches {schema}: the input files disagree on column types"
                    )
                schema = out_schema
                summaries.append(summary)
                bar.update(summary["rows_in"])
        files, totals = manifest_files_and_stats(summaries)
        write_manifest(
            out_dir,
            rows_in=sum(f["rows_in"] for f in files),
            files=files,
            schema=schema,
            seed=getattr(self.sampler, "seed", None),
            config_hash=config_hash,
            extra={
                "format": format,
                "layout": self.layout,
                "epoch": self.epoch,
                "sampler_stats": totals,
            },
        )
        return read_manifest(out_dir)
