"""What negatives mode gathers: the item table as its answers travel, not as the sampler holds it.

An answer is mostly gathered item columns, and every byte of it costs CPU on both sides of the
connection (gRPC, the kernel's copies, Flight reassembling the message). So the server's negatives
sampler is a shallow copy of the sampler whose item table holds what goes on the wire:

- the ids as int32 when `_id` travels as int32 (`protocol.id_type`): the gather reads half the
  bytes at random and nothing is cast afterwards;
- an attribute column with few distinct values (a category, a brand) as its dictionary codes
  (int8 or int16): the gather reads a quarter or half of the bytes, and the answer carries the
  column dictionary-encoded, its dictionary sent once an exchange (`dictionary_codes`).

Draws, exclusion and the attributes' values do not depend on either: the client decodes the answer
to what the in-process sampler returns (`protocol.decode_negatives`). Candidates mode keeps the
sampler as it is (its sequences hold int64 ids and plain attribute columns).
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negseq.sampler import ItemTable, Sampler

# A dictionary is sent once on each exchange (and again on each new one): kept small next to an
# answer (4096 x 32 rows of int32 ids alone are 512 KiB).
DICTIONARY_MAX_BYTES = 1 << 16
_CODES = ((pa.int8(), 1 << 7), (pa.int16(), 1 << 15))  # index type, most distinct values it codes
_PROBE_ROWS = 1 << 16  # rows looked at first, so a high-cardinality column is not hashed whole


def dictionary_codes(column: pa.Array) -> tuple[pa.Array, pa.Array] | None:
    """(codes, dictionary) with `dictionary.take(codes)` equal to `column`, when that makes an
    answer smaller: an integer or string/binary column without nulls whose distinct values fit
    int8 or int16 codes narrower than the values, in a dictionary of at most DICTIONARY_MAX_BYTES.
    Otherwise None (floats stay as they are: their equality is not their bits')."""
    kind = column.type
    fixed = pa.types.is_integer(kind)
    variable = any(
        check(kind)
        for check in (
            pa.types.is_string,
            pa.types.is_large_string,
            pa.types.is_binary,
            pa.types.is_large_binary,
        )
    )
    if not (fixed or variable) or column.null_count or len(column) == 0:
        return None
    most = _CODES[-1][1]
    if len(column) > _PROBE_ROWS and pc.count_distinct(column.slice(0, _PROBE_ROWS)).as_py() > most:
        return None
    encoded = pc.dictionary_encode(column)
    dictionary, count = encoded.dictionary, len(encoded.dictionary)
    index_type = next((t for t, limit in _CODES if count <= limit), None)
    if index_type is None or dictionary.nbytes > DICTIONARY_MAX_BYTES:
        return None
    if fixed and index_type.bit_width >= kind.bit_width:
        return None
    return encoded.indices.cast(index_type), dictionary


def wire_sampler(
    sampler: Any, ids_type: pa.DataType, skip: Collection[str] = ()
) -> tuple[Any, dict[str, pa.Array]]:
    """The sampler negatives mode draws with and the dictionaries of the attribute columns its item
    table holds as codes (`protocol.encode_negatives` puts them back together). `skip`: attribute
    columns that stay off the wire anyway (`protocol.id_attributes`). Anything but one of negseq's
    samplers over an `ItemTable` (a wrapper) is used as it is."""
    if not isinstance(sampler, Sampler) or not isinstance(sampler.items, ItemTable):
        return sampler, {}
    items = copy.copy(sampler.items)
    if ids_type == pa.int32():
        items.ids = sampler.items.ids.astype(np.int32)
    dictionaries = {}
    for name in sampler.attr_fields:
        if name in skip or name in dictionaries or name not in items.table.column_names:
            continue
        encoded = dictionary_codes(items.table[name].chunk(0))  # ItemTable holds one chunk
        if encoded is not None:
            codes, dictionaries[name] = encoded
            items.table = items.table.set_column(items.table.schema.get_field_index(name), name, codes)
    if items.ids is sampler.items.ids and not dictionaries:
        return sampler, {}
    wire = copy.copy(sampler)
    wire.items = items
    return wire, dictionaries
