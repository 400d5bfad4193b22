"""The negatives' attributes as candidate columns, named and laid out as TorchEasyRec does.

TorchEasyRec (tzrec/datasets/dataset.py: `launch_sampler_cluster`, `_merge_sampled_features`):
- an attr field of a grouped sequence takes the sequence's prefix: with `item_id_field =
  "cand_seq__video_id"`, the attr `cate` feeds the training column `cand_seq__cate`, and the attr
  `video_id` is the item id column itself;
- each sampled attribute is cast to its training column's type and appended to that column in
  the candidate layout, after the positives' own values, so it stays aligned with the ids.

negseq does the same. When the input holds the column, the positives' values come from it (row by
row they must line up with the item column); when it does not (TorchEasyRec then drops the
attribute with a warning), negseq writes the column anyway, right after the candidate column,
with the positives' values looked up in the item table (null for an id it does not hold) and the
type the item table declares. The item id attribute is never written twice: it is the candidate
column. A name that would replace a column negseq writes or the user column is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negseq.candidates.flatten import is_id_string_type
from negseq.errors import NegseqError

Family = Literal["string", "list", "scalar"]
SEQUENCE_SEPARATOR = "__"  # TorchEasyRec's grouped-sequence separator (`_` with USE_RTP, not read)


def sequence_prefix(item_field: str) -> str:
    """TorchEasyRec's grouped-sequence prefix of the item column: `cand_seq__` of
    `cand_seq__video_id`; "" for a column that is not a grouped sequence's."""
    head, sep, tail = item_field.partition(SEQUENCE_SEPARATOR)
    return head + sep if head and tail else ""


def family_of(typ: pa.DataType) -> Family:
    """How a column holds a row's values: delimited strings, a list, or one scalar."""
    if is_id_string_type(typ):
        return "string"
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        return "list"
    return "scalar"


@dataclass(frozen=True)
class AttributeColumn:
    """One attribute written beside the candidates: `name` in the output, `field` the sampler's
    attr field (an item-table column), `value_type` one value's declared type, `input_type` the
    input's column of that name (its values for the positives are kept) or None (a new column)."""

    name: str
    field: str
    value_type: pa.DataType
    input_type: pa.DataType | None
    family: Family  # the item column's


def _merged_value_type(name: str, typ: pa.DataType, family: Family, item: str, item_type: pa.DataType):
    fits = {
        "string": is_id_string_type(typ),
        "list": pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ),
        "scalar": not pa.types.is_nested(typ),
    }[family]
    if not fits:
        raise NegseqError(
            f"input column {name!r} ({typ}) collides with the negatives' attribute of that name: "
            f"beside the item column {item!r} ({item_type}) it must hold one value per positive, "
            "as the item column does (TorchEasyRec appends the negatives' values to it); rename or "
            "drop the input column, or the attr field"
        )
    if family == "list":
        return typ.value_type
    return pa.string() if family == "string" else typ


def plan_attributes(sampler: Any, schema: pa.Schema, reserved: Sequence[str]) -> tuple[AttributeColumn, ...]:
    """The attribute columns `to_arrow` writes for an input of `schema` (checked here, before
    anything is written). `reserved`: the columns negseq adds (`cand_pos_lengths`, ...)."""
    item = sampler.item_id_field
    if item not in schema.names:
        raise NegseqError(f"input has no item id column {item!r} (columns: {schema.names})")
    item_type = schema.field(item).type
    family = family_of(item_type)
    prefix = sequence_prefix(item)
    items = sampler.items
    planned: dict[str, AttributeColumn] = {}
    for field in sampler.attr_fields:
        name = field if not prefix or field.startswith(prefix) else prefix + field
        if name == item or field in (item, "id") or items.holds_ids(field):
            continue  # the item id attribute: the candidate column itself
        taken = "a column negseq writes" if name in reserved else None
        if name == sampler.user_id_field:
            taken = "the user id column"
        if name in planned:
            taken = f"attr field {planned[name].field!r}'s column"
        if taken:
            raise NegseqError(
                f"attr field {field!r}: its output column {name!r} would replace {taken}; "
                "rename the item table's column"
            )
        if name in schema.names:
            value_type = _merged_value_type(name, schema.field(name).type, family, item, item_type)
            planned[name] = AttributeColumn(name, field, value_type, schema.field(name).type, family)
        else:
            value_type = items.schema.field(field).type
            if family == "string" and pa.types.is_nested(value_type):
                raise NegseqError(
                    f"attr field {field!r} ({value_type}) cannot be written into a delimited string "
                    f"beside the item column {item!r}; use a list item column"
                )
            planned[name] = AttributeColumn(name, field, value_type, None, family)
    return tuple(planned.values())


def _input_values(
    column: AttributeColumn, array: pa.Array, pos_lengths: np.ndarray, seq_delim: str, item: str
) -> pa.Array:
    """The positives' values of a merged column, checked to line up with the item column."""
    if column.family == "string":
        nonempty = pc.fill_null(pc.greater(pc.utf8_length(array), 0), False)
        parts = pc.split_pattern(array, seq_delim)
        parts = pc.if_else(nonempty, parts, pa.scalar(None, parts.type))
        counts = pc.list_value_length(parts).fill_null(0).to_numpy(zero_copy_only=False)
        values = pc.list_flatten(parts)
    elif column.family == "list":
        counts = array.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
        values = array.flatten()
    else:
        counts = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), np.int64)
        values = array.drop_null()
    bad = np.flatnonzero(counts != pos_lengths)
    if len(bad):
        row = int(bad[0])
        raise NegseqError(
            f"row {row}: column {column.name!r} holds {counts[row]} value(s), the item column "
            f"{item!r} {pos_lengths[row]}: an attribute column must line up with the item column"
        )
    return values


def _cast(values: pa.Array, column: AttributeColumn, what: str) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.type == column.value_type:
        return values
    try:
        return values.cast(column.value_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise NegseqError(
            f"column {column.name!r}: {what} ({values.type}) do not fit its type {column.value_type}: {exc}"
        ) from None


def attribute_values(
    column: AttributeColumn,
    *,
    source: pa.RecordBatch,
    item_field: str,
    items: Any,
    positives: np.ndarray,
    pos_lengths: np.ndarray,
    negatives: pa.RecordBatch,
    hard_negatives: pa.RecordBatch | None,
    seq_delim: str,
) -> pa.Array:
    """One attribute's values for the positives, the negatives, then the hard negatives, typed."""
    if column.input_type is not None:
        array = source.column(column.name)
        pos = _input_values(column, array, pos_lengths, seq_delim, item_field)
    else:
        rows = np.asarray(items.rows(positives), np.int64)
        unknown = rows < 0
        index = pa.array(np.where(unknown, 0, rows), pa.int64(), mask=unknown if unknown.any() else None)
        pos = pc.take(items.table.column(column.field), index)
    parts = [_cast(pos, column, "the positives' values")]
    for batch in (negatives, hard_negatives):
        if batch is not None and batch.num_rows:
            values = batch.column(batch.schema.get_field_index(column.field))
            parts.append(_cast(values, column, f"the item table's {column.field!r} values"))
    values = pa.concat_arrays(parts)
    if column.family == "string" and len(values):
        text = values.cast(pa.string())
        clash = pc.fill_null(pc.match_substring(text, seq_delim), False).to_numpy(zero_copy_only=False)
        if clash.any():
            raise NegseqError(
                f"column {column.name!r}: the value {text[int(np.flatnonzero(clash)[0])].as_py()!r} holds "
                f"the sequence delimiter {seq_delim!r}, so a delimited string cannot keep it apart"
            )
    return values


def lay_out(
    column: AttributeColumn,
    values: pa.Array,
    order: np.ndarray,
    row_lengths: np.ndarray,
    candidates: pa.Array,
    seq_delim: str,
) -> pa.Array:
    """`values` taken in candidate `order`, `row_lengths` a row, null where `candidates` is: a
    list (the input's list type when merged) or, beside a string item column, delimited text."""
    taken = values.take(pa.array(order, pa.int64()))
    invalid = None
    if candidates.null_count:
        invalid = pa.array(~np.asarray(candidates.is_valid().to_numpy(zero_copy_only=False), bool))
    large = pa.types.is_large_list(candidates.type) or pa.types.is_large_string(candidates.type)
    offsets = np.zeros(len(row_lengths) + 1, np.int64)
    np.cumsum(row_lengths, out=offsets[1:])
    if column.family == "string":
        text = taken.cast(pa.string()).fill_null("")  # the delimiter was checked in attribute_values
        lists = pa.LargeListArray.from_arrays(pa.array(offsets), text)
        joined = pc.binary_join(lists, seq_delim)
        joined = pc.if_else(invalid, pa.scalar(None, pa.string()), joined) if invalid is not None else joined
        return joined.cast(pa.large_string() if large else pa.string())
    if large:
        out = pa.LargeListArray.from_arrays(pa.array(offsets), taken, mask=invalid)
    else:
        out = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), taken, mask=invalid)
    keep = column.input_type
    if keep is not None and (pa.types.is_list(keep) or pa.types.is_large_list(keep)):
        return out.cast(keep)  # the input's exact list type (its value field's name, large or not)
    return out
