"""The sampler service's wire format: what a request batch carries and what its answer looks like.

Transport: one Arrow Flight `do_exchange` call streams request batches; the server answers each,
in order, with exactly one response batch. The descriptor is ignored (send an empty command).

Request = a record batch + its `app_metadata`, a UTF-8 JSON object:

    {"mode": "negatives",           # or "candidates"; default "negatives"
     "epoch": 0, "batch_index": 17, # required: with the seed, the key of the random draws
     "seed": 42,                    # optional: default the job file's sampler seed
     "training": true,              # optional: false uses num_eval_sample when the sampler has one
     "per_positive": null,          # negatives mode: null = shared (num_sample), n = n a positive
     "layout": "suffix",            # candidates mode: default the job's [candidates] layout
     "neg_per_pos": 4,              # candidates mode: default [candidates] neg_per_pos
     "seq_delim": ";"}              # candidates mode: default [candidates] seq_delim

The same (seed, epoch, batch_index) gives the same answer as the in-process sampler called with
that key. Unknown keys are refused, so a typo cannot silently fall back to a default.

- negatives mode: the batch holds the sampler's `item_id_field` (integer, one positive a row) and,
  for the V2 and hard samplers, its `user_id_field` (integer, aligned). Other columns are ignored.
- candidates mode: the batch is what `negseq.candidates.sample_batch` takes (the item column
  may be int64, delimited id strings or a list of ids).

Response, negatives mode: one record batch, with rows [0, num_negatives) the simple negatives and
rows [num_negatives, num_negatives + num_hard) the hard negatives:

    _id               int32   the negative's item id (SampleResult.ids, then .hard_ids): int32 when
                      or int64  every id of the sampler's item table fits in int32 (the `config`
                                action's `id_type` says which), else int64; the client widens it
    <attr_fields...>          the sampler's attribute columns, typed as the item table declares,
                              except those that hold the item ids again (`id_attributes`, e.g.
                              TorchEasyRec's `item_id`): left out, `id_attrs` in the metadata maps
                              each to its position among the attribute columns (int64, = `_id`);
                              and except those with few distinct values (`wire.dictionary_codes`):
                              dictionary<int8 or int16, the declared type>, the dictionary sent
                              once an exchange, named by `dict_attrs` in the metadata
    _hard_query_row   int32   hard samplers only: hard_neg_indices[:, 0]; null on simple rows
    _hard_offset      int32   hard samplers only: hard_neg_indices[:, 1]; null on simple rows

and `app_metadata` JSON: the request key plus `num_negatives`, `num_hard`, `expand_factor`, the
sampler's `stats`, when some were left out, `id_attrs`, and when some travel as codes,
`dict_attrs`. Response, candidates mode: the batch's `SampledBatch.to_arrow()`, as files hold it
(the item column replaced by candidate sequences; the sampler's attribute columns, named and laid
out as the candidates
(`negseq.candidates.attributes`); `cand_pos_lengths` and, for hard samplers, `hard_neg_indices`),
with `app_metadata` JSON: the request key plus `stats`. A request
whose columns collide with those (an already sampled batch, an attribute column that cannot line
up with the item column) is refused, naming the column.

A Flight stream has one schema, so one exchange answers one mode (and, in candidates mode, one
input schema); a request that would change the response schema is refused: open a new exchange.
A bad request ends its exchange with a `FlightServerError` whose message names the problem; the
server keeps serving other exchanges.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negseq.errors import NegseqError
from negseq.layout import LAYOUTS, Layout
from negseq.sampler import SampleResult
from negseq.sampler.arrow_numpy import arrow_int64
from negseq.sampler.exclusion import json_stats

MODES = ("negatives", "candidates")
ID_COLUMN = "_id"
HARD_QUERY_ROW_COLUMN = "_hard_query_row"
HARD_OFFSET_COLUMN = "_hard_offset"
RESERVED_COLUMNS = (ID_COLUMN, HARD_QUERY_ROW_COLUMN, HARD_OFFSET_COLUMN)
_KEY_LIMIT = 1 << 32
_SEED_LIMIT = 1 << 64
_INT32 = np.iinfo(np.int32)
INT64 = pa.int64()


@dataclass(frozen=True)
class Request:
    """One request batch's options, parsed from its app_metadata."""

    epoch: int
    batch_index: int
    mode: str = "negatives"
    seed: int | None = None
    training: bool = True
    per_positive: int | None = None
    layout: Layout | None = None
    neg_per_pos: int | None = None
    seq_delim: str | None = None

    def to_metadata(self) -> bytes:
        return json.dumps({k: v for k, v in vars(self).items() if v is not None}).encode()


@overload
def _int_field(raw: dict[str, Any], name: str, low: int, high: int, required: Literal[True]) -> int: ...
@overload
def _int_field(raw: dict[str, Any], name: str, low: int, high: int, required: bool) -> int | None: ...
def _int_field(raw: dict[str, Any], name: str, low: int, high: int, required: bool) -> int | None:
    value = raw.get(name)
    if value is None:
        if required:
            raise NegseqError(f"request metadata: missing {name!r} (the batch's random key needs it)")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise NegseqError(f"request metadata: {name!r} must be an integer in [{low}, {high}), got {value!r}")
    return value


def parse_request(metadata: bytes | None) -> Request:
    """The options of one request; every malformed or unknown field is an error naming it."""
    if not metadata:
        raise NegseqError(
            "request metadata: missing; each batch needs JSON app_metadata with at least "
            '{"epoch": ..., "batch_index": ...}'
        )
    try:
        raw = json.loads(bytes(metadata).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NegseqError(f"request metadata: not a UTF-8 JSON object ({exc})") from exc
    if not isinstance(raw, dict):
        raise NegseqError(f"request metadata: must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(Request.__dataclass_fields__))
    if unknown:
        raise NegseqError(
            f"request metadata: unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(Request.__dataclass_fields__)}"
        )
    mode = raw.get("mode", "negatives")
    if mode not in MODES:
        raise NegseqError(f"request metadata: 'mode' must be one of {MODES}, got {mode!r}")
    layout = raw.get("layout")
    if layout is not None and layout not in LAYOUTS:
        raise NegseqError(f"request metadata: 'layout' must be one of {LAYOUTS}, got {layout!r}")
    training = raw.get("training", True)
    if not isinstance(training, bool):
        raise NegseqError(f"request metadata: 'training' must be true or false, got {training!r}")
    seq_delim = raw.get("seq_delim")
    if seq_delim is not None and (not isinstance(seq_delim, str) or not seq_delim):
        raise NegseqError(f"request metadata: 'seq_delim' must be a non-empty string, got {seq_delim!r}")
    return Request(
        epoch=_int_field(raw, "epoch", 0, _KEY_LIMIT, required=True),
        batch_index=_int_field(raw, "batch_index", 0, _KEY_LIMIT, required=True),
        mode=mode,
        seed=_int_field(raw, "seed", 0, _SEED_LIMIT, required=False),
        training=training,
        per_positive=_int_field(raw, "per_positive", 0, _KEY_LIMIT, required=False),
        layout=layout,
        neg_per_pos=_int_field(raw, "neg_per_pos", 0, _KEY_LIMIT, required=False),
        seq_delim=seq_delim,
    )


def id_type(item_ids: np.ndarray) -> pa.DataType:
    """The `_id` column's type for a sampler over these item ids: int32 when every id fits, which
    halves the bytes of the id column (a third of a 4096 x 32 answer with one int32 attribute),
    else int64. Fixed by the item table, so every answer of a server has the same schema."""
    if len(item_ids) == 0 or (item_ids.min() >= _INT32.min and item_ids.max() <= _INT32.max):
        return pa.int32()
    return pa.int64()


def id_attributes(sampler: Any) -> tuple[str, ...]:
    """The sampler's attribute fields that hold the item ids again (TorchEasyRec lists the item id
    among `attr_fields`; the item table may also have an int64 copy of `id`): the sampler fills
    them with the ids it drew, so an answer would carry every id twice."""
    items = sampler.items
    columns = set(items.table.column_names)
    return tuple(f for f in sampler.attr_fields if items.holds_ids(f if f in columns else "id"))


def negatives_schema(attr_schema: pa.Schema, hard: bool, ids: pa.DataType = INT64) -> pa.Schema:
    """The response schema of negatives mode for a sampler with these attribute columns and `_id`
    type."""
    fields = [pa.field(ID_COLUMN, ids), *attr_schema]
    if hard:
        fields += [pa.field(HARD_QUERY_ROW_COLUMN, pa.int32()), pa.field(HARD_OFFSET_COLUMN, pa.int32())]
    return pa.schema(fields)


def encode_negatives(
    result: SampleResult,
    hard: bool,
    ids_type: pa.DataType = INT64,
    id_attrs: Sequence[str] = (),
    dictionaries: Mapping[str, pa.Array] | None = None,
) -> tuple[pa.RecordBatch, dict[str, Any]]:
    """One response batch (simple rows, then hard rows) and its metadata fields; `ids_type` is the
    server's `id_type` (int32 only when every id of the item table fits). Attribute columns named
    in `id_attrs` hold the ids again (`id_attributes`): they stay out of the batch, and the
    metadata's `id_attrs` says where `decode_negatives` puts them back. Attribute columns named in
    `dictionaries` hold codes into their dictionary (`wire.dictionary_codes`): they travel
    dictionary-encoded, and the metadata's `dict_attrs` names them for `decode_negatives`."""
    num_neg, num_hard = len(result.ids), len(result.hard_ids)
    # without hard negatives and with int64 ids the ids are used as they are (zero-copy): a copy a
    # request showed up in the server's profile under the GIL
    id_values = np.concatenate([result.ids, result.hard_ids]) if num_hard else result.ids
    ids = pa.array(id_values.astype(ids_type.to_pandas_dtype(), copy=False), ids_type)
    attrs = result.negatives
    if num_hard:
        attrs = pa.concat_batches([attrs, result.hard_negatives])
    left_out = {name: i for i, name in enumerate(attrs.schema.names) if name in id_attrs}
    if left_out:
        attrs = attrs.drop_columns(list(left_out))
    dictionaries = dictionaries or {}
    names = attrs.schema.names
    coded = [name for name in names if name in dictionaries]
    if coded:  # the codes came from the dictionary's own encoding: no bounds check needed
        attrs = pa.RecordBatch.from_arrays(
            [
                pa.DictionaryArray.from_arrays(column, dictionaries[name], safe=False)
                if name in coded
                else column
                for name, column in zip(names, attrs.columns, strict=True)
            ],
            names=names,
        )
    columns = [ids, *attrs.columns]
    if hard:
        indices = result.hard_neg_indices
        if indices is None or not num_hard:
            indices = np.empty((0, 2), np.int32)
        nulls = np.concatenate([np.ones(num_neg, bool), np.zeros(num_hard, bool)])
        for j in (0, 1):
            values = np.concatenate([np.zeros(num_neg, np.int32), indices[:, j].astype(np.int32)])
            columns.append(pa.array(values, pa.int32(), mask=nulls))
    schema = negatives_schema(attrs.schema, hard, ids_type)
    batch = pa.RecordBatch.from_arrays(columns, schema=schema)
    meta: dict[str, Any] = {
        "num_negatives": num_neg,
        "num_hard": num_hard,
        "expand_factor": result.expand_factor,
        "stats": json_stats(result.stats),
    }
    if left_out:
        meta["id_attrs"] = left_out
    if coded:
        meta["dict_attrs"] = coded
    return batch, meta


def decode_negatives(batch: pa.RecordBatch, meta: dict[str, Any]) -> SampleResult:
    """The `SampleResult` a negatives-mode response batch encodes (inverse of `encode_negatives`)."""
    num_neg, num_hard = int(meta["num_negatives"]), int(meta["num_hard"])
    if batch.num_rows != num_neg + num_hard:
        raise NegseqError(
            f"response: {batch.num_rows} rows, metadata promises {num_neg} + {num_hard} hard negatives"
        )
    # widened (or copied) into a new, writable int64 array, as the in-process sampler returns it
    ids = batch.column(ID_COLUMN).to_numpy().astype(np.int64)
    attr_names = [n for n in batch.schema.names if n not in RESERVED_COLUMNS]
    attrs = batch.select(attr_names)
    for name in meta.get("dict_attrs", ()):  # back to the values, typed as the item table declares
        position = attrs.schema.get_field_index(name)
        if position < 0 or not pa.types.is_dictionary(attrs.schema.field(position).type):
            raise NegseqError(f"response: dict_attrs names {name!r}, which is no dictionary column")
        attrs = attrs.set_column(position, name, _dictionary_values(attrs.column(position)))
    for name, position in sorted(meta.get("id_attrs", {}).items(), key=lambda item: item[1]):
        attrs = attrs.add_column(int(position), name, arrow_int64(ids))  # as the sampler makes it
    hard_negatives = hard_indices = None
    if num_hard:
        hard_negatives = attrs.slice(num_neg)
        hard_indices = np.stack(
            [
                batch.column(HARD_QUERY_ROW_COLUMN).slice(num_neg).to_numpy(),
                batch.column(HARD_OFFSET_COLUMN).slice(num_neg).to_numpy(),
            ],
            axis=1,
        ).astype(np.int32)
    return SampleResult(
        ids=ids[:num_neg],
        negatives=attrs.slice(0, num_neg),
        hard_ids=ids[num_neg:],
        hard_negatives=hard_negatives,
        hard_neg_indices=hard_indices,
        expand_factor=int(meta["expand_factor"]),
        stats=dict(meta.get("stats", {})),
    )


def _dictionary_values(column: pa.DictionaryArray) -> pa.Array:
    """A dictionary-encoded answer column as its values. The codes came over the network, so they
    are checked: all at once by numpy's min and max, a tenth of what Arrow's take spends checking
    them one by one, which then runs unchecked; codes with nulls take Arrow's checked path."""
    codes, dictionary = column.indices, column.dictionary
    if codes.null_count == 0 and len(codes):
        values = codes.to_numpy()
        if values.min() >= 0 and values.max() < len(dictionary):
            return pc.take(dictionary, codes, boundscheck=False)
    return pc.take(dictionary, codes)  # an out-of-range code raises IndexError here


def encode_metadata(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields).encode()


def decode_metadata(metadata: pa.Buffer | bytes | None) -> dict[str, Any]:
    if metadata is None:
        raise NegseqError("response: batch without app_metadata")
    return json.loads(bytes(metadata).decode("utf-8"))
