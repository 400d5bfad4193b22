"""Prepare on Ray Data: the same tables as `negseq.io.prepare`, from a log no machine holds whole.

The driver plans from metadata only (the source's files and row groups, `negseq.io.sources`)
and reads no rows. Ray tasks:

1. read the log a descriptor at a time (each reads its own rows) and check the three columns;
2. one pass finds the smallest and largest user and item ids (`Dataset.aggregate`);
3. group the rows by user-id range (`shards` ranges, `groupby(...).map_groups`): a group holds
   every interaction of its users, so the in-process split (`_split`, `_sequences`: sort by
   time then item id, leave-last-out) runs on it unchanged and writes the range's
   `train/valid/eval.parquet/part-NNNNN.parquet`; it passes on its items' counts (held-out
   targets excluded, as `_catalogue` counts);
4. group those counts by item-id range and write `items.parquet/part-NNNNN.parquet`.

Ranges are in id order, so the shards of a table, read in name order, hold the rows of the
in-process table in the same order: the same tables. Tasks write into a staging folder; the
caller (`negseq.prepare_job`) swaps it in when every task has finished.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data.aggregate import Max, Min

from negseq.errors import NegseqError
from negseq.io.prepare import SEQUENCE_SCHEMA, TABLES, _int64_column, _sequences, _split
from negseq.io.rundir import shard_name
from negseq.io.sources import Source, SourceReader

ROWS_PER_READ = 1 << 20  # interactions a read task reads (one descriptor)
ROWS_PER_SHARD = 4 << 20  # default: interactions a shard's task holds (about 100 bytes each)
ITEMS_SCHEMA = pa.schema([("id", pa.int64()), ("weight", pa.float64()), ("count", pa.int64())])
_COLUMNS = ("user", "item", "time")


def default_shards(num_rows: int) -> int:
    return max(1, math.ceil(num_rows / ROWS_PER_SHARD))


def _read(batch: dict[str, np.ndarray], source: Source, fields: Sequence[str]) -> pa.Table:
    """The log rows of the descriptors `batch["id"]` names, as int64 user, item, time."""
    plan = source.plan(ROWS_PER_READ)
    reader = SourceReader(source, columns=list(dict.fromkeys(fields)))
    tables = []
    for index in batch["id"].tolist():
        descriptor = plan[index]
        rows = pa.Table.from_batches([reader.read(descriptor)])
        offset = index * ROWS_PER_READ
        arrays = [_int64_column(rows, field, offset) for field in fields]
        tables.append(pa.table(dict(zip(_COLUMNS, arrays, strict=True))))
    return pa.concat_tables(tables)


def _range_bucket(values: np.ndarray, low: int, high: int, count: int) -> np.ndarray:
    """Bucket of each id among `count` equal ranges of [low, high]: never decreasing in the id."""
    span = float(high) - float(low) + 1.0
    scaled = (values.astype(np.float64) - float(low)) * (count / span)
    return np.clip(scaled.astype(np.int64), 0, count - 1)


def _with_bucket(table: pa.Table, column: str, low: int, high: int, count: int) -> pa.Table:
    values = table[column].to_numpy()
    return table.append_column("bucket", pa.array(_range_bucket(values, low, high, count)))


def _write(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        pq.write_table(table, stream)


def _users_shard(
    group: pa.Table, fs: pafs.FileSystem, staging: str, max_seq_len: int, min_len: int
) -> pa.Table:
    """One user-id range: its train/valid/eval shard, and its items' counts outside held-out targets."""
    bucket = int(group["bucket"][0].as_py())
    split = _split(group, "user", "item", "time", min_len)
    for name, table in zip(("train", "valid", "eval"), _sequences(split, max_seq_len), strict=True):
        _write(fs, f"{staging}/{name}.parquet/{shard_name(bucket)}", table)
    held_out = np.zeros(len(split.items), bool)
    held_out[split.last - 1] = held_out[split.last - 2] = True
    ids, inverse = np.unique(split.items, return_inverse=True)
    counts = np.bincount(inverse[~held_out], minlength=len(ids)).astype(np.int64)
    return pa.table({"item": ids, "count": counts})


def _items_shard(group: pa.Table, fs: pafs.FileSystem, staging: str, weight_power: float) -> pa.Table:
    """One item-id range of the catalogue: ids sorted, counts summed over the user ranges."""
    bucket = int(group["bucket"][0].as_py())
    ids, inverse = np.unique(group["item"].to_numpy(), return_inverse=True)
    counts = np.bincount(inverse, weights=group["count"].to_numpy(), minlength=len(ids)).astype(np.int64)
    table = pa.table(
        {"id": ids, "weight": counts.astype(np.float64) ** weight_power, "count": counts},
        schema=ITEMS_SCHEMA,
    )
    _write(fs, f"{staging}/items.parquet/{shard_name(bucket)}", table)
    return pa.table({"bucket": [bucket], "items": [len(ids)]})


def _negseq_cause(exc: BaseException) -> NegseqError | None:
    """The NegseqError a Ray task raised, from the exceptions Ray wraps it in (as an exception
    chain, a `RayTaskError.cause`, or only as its traceback's text)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, NegseqError) and not type(current).__name__.startswith("RayTaskError"):
            return current
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else (current.__cause__ or current.__context__)
    marker = "NegseqError: "
    lines = [line for line in str(exc).splitlines() if marker in line]
    return NegseqError(lines[-1].split(marker, 1)[1]) if lines else None


def prepare_on_ray(
    source: Source,
    filesystem: pafs.FileSystem,
    staging: str,
    *,
    user_field: str,
    item_field: str,
    time_field: str,
    max_seq_len: int,
    min_len: int,
    item_weight_power: float,
    shards: int,
) -> dict[str, int]:
    """Write the prepared tables of the log `source` into `staging` on `filesystem`, `shards`
    shards each (a table that has no rows gets one empty shard); returns the row counts, read
    from the written shards' footers. Needs `ray.init` done."""
    fields = (user_field, item_field, time_field)
    source.require(fields)
    num_reads = len(source.plan(ROWS_PER_READ))
    try:
        log = ray.data.range(num_reads, override_num_blocks=max(1, num_reads)).map_batches(
            _read, batch_size=1, batch_format="numpy", fn_kwargs={"source": source, "fields": fields}
        )
        if num_reads:
            bounds = log.aggregate(Min("user"), Max("user"), Min("item"), Max("item"))
            by_user = (bounds["min(user)"], bounds["max(user)"], shards)
            by_item = (bounds["min(item)"], bounds["max(item)"], shards)
            item_counts = (
                log.map_batches(
                    _with_bucket, batch_format="pyarrow", batch_size=None, fn_args=("user", *by_user)
                )
                .groupby("bucket")
                .map_groups(
                    _users_shard, batch_format="pyarrow", fn_args=(filesystem, staging, max_seq_len, min_len)
                )
            )
            written = (
                item_counts.map_batches(
                    _with_bucket, batch_format="pyarrow", batch_size=None, fn_args=("item", *by_item)
                )
                .groupby("bucket")
                .map_groups(
                    _items_shard, batch_format="pyarrow", fn_args=(filesystem, staging, item_weight_power)
                )
            )
            written.materialize()
    except Exception as exc:
        cause = _negseq_cause(exc)
        if cause is not None:
            raise cause from None
        raise
    return _finish_shards(filesystem, staging, source.num_rows)


def _finish_shards(filesystem: pafs.FileSystem, staging: str, interactions: int) -> dict[str, int]:
    """Give a table without shards (no rows) one empty shard; count each table's rows."""
    counts: dict[str, Any] = {"interactions": interactions}
    for name in TABLES:
        folder = f"{staging}/{name}.parquet"
        selector = pafs.FileSelector(folder, allow_not_found=True)
        files = sorted(i.path for i in filesystem.get_file_info(selector) if i.type == pafs.FileType.File)
        if not files:
            schema = ITEMS_SCHEMA if name == "items" else SEQUENCE_SCHEMA
            _write(filesystem, f"{folder}/{shard_name(0)}", schema.empty_table())
            files = [f"{folder}/{shard_name(0)}"]
        total = 0
        for path in files:
            with filesystem.open_input_file(path) as handle:
                total += pq.ParquetFile(handle).metadata.num_rows
        counts[name] = total
    return counts
