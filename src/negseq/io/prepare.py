"""Interaction log -> per-user training, validation and evaluation sequences (leave-last-out,
as HSTU and SASRec), and the item catalogue the samplers and the model share.

Each user's interactions are ordered by time, ties broken by item id, so the split is
deterministic. With items i_1..i_K (K >= min_len >= 3):

- eval row:  history i_1..i_{K-1}, target i_K (the test item, scored once at the end)
- valid row: history i_1..i_{K-2}, target i_{K-1} (early stopping and checkpoint choice)
- train row: history i_1..i_{K-3}, target i_{K-2} (the history may be empty when K = 3)

Histories keep the most recent `max_seq_len` items. `next_items` = uih[1:] + [target], the
positive of every history position for the autoregressive objective.

With an `action_field` (an integer column such as MovieLens' rating), `uih_actions` holds, for
each history item, the bitmask `1 << value` of its action: the model's action input (DESIGN §6,
as generative-recommenders embeds actions), so a model needs `num_action_types` > every value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negseq.errors import NegseqError
from negseq.filesystems import child, exists

SEQUENCE_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("uih", pa.list_(pa.int64())),
        ("uih_ts", pa.list_(pa.int64())),
        ("target", pa.int64()),
        ("target_ts", pa.int64()),
        ("next_items", pa.list_(pa.int64())),
    ]
)


def _int64_column(table: pa.Table, name: str, row_offset: int = 0) -> np.ndarray:
    """A column of the log as int64; a null names its row (`row_offset`: the row of the table's
    first row in the whole log)."""
    if name not in table.schema.names:
        raise NegseqError(f"interactions have no column {name!r} (columns: {table.schema.names})")
    col = table.column(name)
    if col.null_count:
        row = int(pc.index(pc.is_null(col), True).as_py()) + row_offset
        raise NegseqError(f"interactions column {name!r}, row {row}: null value")
    typ = col.type
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        col = col.cast(pa.int64())
    elif not pa.types.is_integer(typ):
        try:
            col = col.cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise NegseqError(f"interactions column {name!r} ({typ}) is not integer: {exc}") from exc
    return col.to_numpy().astype(np.int64, copy=False)


def _gather_lists(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """list<int64> whose row r is values[starts[r]:ends[r]]."""
    lengths = ends - starts
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    idx = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - starts, lengths)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values[idx]))


def _next_items(items: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """Row r: items[starts[r]+1 : ends[r]+1] when the history is non-empty, else empty."""
    nonempty = ends > starts
    return _gather_lists(items, np.where(nonempty, starts + 1, starts), np.where(nonempty, ends + 1, ends))


ACTIONS_COLUMN = "uih_actions"
MAX_ACTION = 62  # an action value v becomes the int64 bit 1 << v


def _rows(users, items, times, first, target_pos, max_seq_len, actions=None) -> pa.Table:
    starts = np.maximum(first, target_pos - max_seq_len)
    table = pa.Table.from_arrays(
        [
            pa.array(users[target_pos]),
            _gather_lists(items, starts, target_pos),
            _gather_lists(times, starts, target_pos),
            pa.array(items[target_pos]),
            pa.array(times[target_pos]),
            _next_items(items, starts, target_pos),
        ],
        schema=SEQUENCE_SCHEMA,
    )
    if actions is not None:
        table = table.append_column(
            ACTIONS_COLUMN, _gather_lists(np.left_shift(1, actions), starts, target_pos)
        )
    return table


def _actions(interactions: pa.Table, name: str) -> np.ndarray:
    """The action column's values, each in [0, MAX_ACTION] (it becomes one bit)."""
    values = _int64_column(interactions, name)
    bad = np.flatnonzero((values < 0) | (values > MAX_ACTION))
    if len(bad):
        raise NegseqError(
            f"interactions column {name!r}, row {int(bad[0])}: action value {int(values[bad[0]])} "
            f"is not in [0, {MAX_ACTION}] (each value becomes one bit of the action mask)"
        )
    return values


@dataclass(frozen=True)
class _Split:
    """The log sorted by user, time, item; and each kept user's [first, last) rows."""

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    first: np.ndarray
    last: np.ndarray
    actions: np.ndarray | None = None


def _split(
    interactions: pa.Table | pa.RecordBatch,
    user_field: str,
    item_field: str,
    time_field: str,
    min_len: int,
    action_field: str | None = None,
) -> _Split:
    if min_len < 3:
        raise NegseqError(
            f"min_len must be >= 3 (a training, a validation and an eval target), got {min_len}"
        )
    if isinstance(interactions, pa.RecordBatch):
        interactions = pa.Table.from_batches([interactions])
    users = _int64_column(interactions, user_field)
    items = _int64_column(interactions, item_field)
    times = _int64_column(interactions, time_field)
    actions = None if action_field is None else _actions(interactions, action_field)
    order = np.lexsort((items, times, users))
    users, items, times = users[order], items[order], times[order]
    actions = None if actions is None else actions[order]
    boundary = np.flatnonzero(np.diff(users)) + 1 if len(users) else np.empty(0, np.int64)
    first = np.concatenate([[0], boundary]).astype(np.int64) if len(users) else boundary
    last = np.concatenate([boundary, [len(users)]]).astype(np.int64) if len(users) else boundary
    keep = (last - first) >= min_len
    return _Split(users, items, times, first[keep], last[keep], actions)


class Splits(NamedTuple):
    """The three sequence tables of one log (see the module docstring)."""

    train: pa.Table
    valid: pa.Table
    eval: pa.Table


def _sequences(split: _Split, max_seq_len: int) -> Splits:
    if max_seq_len < 1:
        raise NegseqError(f"max_seq_len must be >= 1, got {max_seq_len}")
    u, i, t = split.users, split.items, split.times
    return Splits(
        *(_rows(u, i, t, split.first, split.last - back, max_seq_len, split.actions) for back in (3, 2, 1))
    )


def _catalogue(split: _Split, weight_power: float) -> pa.Table:
    """`id` (every item of the log, sorted), `count` (its interactions outside the validation and
    evaluation targets: nothing leaks from the held-out items) and `weight` = count ** power."""
    ids = np.unique(split.items)
    held_out = np.zeros(len(split.items), bool)
    held_out[split.last - 1] = held_out[split.last - 2] = True
    counts = np.bincount(np.searchsorted(ids, split.items[~held_out]), minlength=len(ids)).astype(np.int64)
    return pa.table({"id": ids, "weight": counts.astype(np.float64) ** weight_power, "count": counts})


def prepare_sequences(
    interactions: pa.Table | pa.RecordBatch,
    *,
    user_field: str,
    item_field: str,
    time_field: str,
    max_seq_len: int,
    min_len: int = 3,
    action_field: str | None = None,
) -> Splits:
    """(train, valid, eval) sequence tables, one row per user with at least `min_len`
    interactions (the others are left out of all three).

    Columns: user_id, uih, uih_ts, target, target_ts, next_items (+ uih_actions with an
    `action_field`; see the module docstring).
    """
    split = _split(interactions, user_field, item_field, time_field, min_len, action_field)
    return _sequences(split, max_seq_len)


TABLES = ("train", "valid", "eval", "items")


@dataclass(frozen=True)
class Prepared:
    """A prepared folder (a local path or a URI): `train.parquet`, `valid.parquet`,
    `eval.parquet` and `items.parquet`, each one Parquet file (the in-process prepare) or a
    folder of Parquet shards read in name order (the Ray prepare; Spark writes the same)."""

    folder: str | Path

    def table(self, name: str) -> str:
        """Where table `name` (one of `TABLES`) lies: a file, or a folder of shards."""
        return child(self.folder, f"{name}.parquet")

    @property
    def train(self) -> str:
        return self.table("train")

    @property
    def valid(self) -> str:
        return self.table("valid")

    @property
    def eval(self) -> str:
        return self.table("eval")

    @property
    def items(self) -> str:
        return self.table("items")

    def check(self) -> None:
        """Every table is there: a missing one is an error naming the folder and the table."""
        missing = [f"{name}.parquet" for name in TABLES if not exists(self.table(name))]
        if missing:
            raise NegseqError(
                f"{self.folder}: not a prepared folder: no {', '.join(missing)} (a prepared folder "
                "holds train, valid, eval and items .parquet, each a file or a folder of shards)"
            )


def prepare(
    interactions: pa.Table,
    out: Path,
    *,
    user_field: str = "user_id",
    item_field: str = "item_id",
    time_field: str = "timestamp",
    max_seq_len: int = 200,
    min_len: int = 3,
    item_weight_power: float = 0.75,
    action_field: str | None = None,
) -> tuple[Prepared, dict[str, int]]:
    """Write the prepared folder for an interaction log; returns it and its row counts (and
    `max_action`, the largest action value, with an `action_field`). The one prepare of `negseq
    prepare` and `negseq run`. Item weights are count ** `item_weight_power` (0: uniform; 1: by
    popularity; 0.75: word2vec's unigram^0.75)."""
    split = _split(interactions, user_field, item_field, time_field, min_len, action_field)
    splits = _sequences(split, max_seq_len)
    items = _catalogue(split, item_weight_power)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    prepared = Prepared(folder)
    tables = {"train": splits.train, "valid": splits.valid, "eval": splits.eval}
    for name, table in {**tables, "items": items}.items():
        pq.write_table(table, prepared.table(name))
    counts = {"interactions": interactions.num_rows, **{n: t.num_rows for n, t in tables.items()}}
    if split.actions is not None:
        counts["max_action"] = int(split.actions.max()) if len(split.actions) else 0
    return prepared, {**counts, "items": items.num_rows}
