"""numpy views of Arrow columns and Arrow arrays over numpy, without pandas.

Arrow's `to_numpy` and `pa.array(ndarray)` import pandas when it is installed (for their
pandas-input checks): 30 to 50 MiB of RSS that a sampler never uses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negseq.errors import NegseqError


def numeric_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The values of a null-free integer or floating column as numpy, zero-copy when it is
    one chunk (read-only then, as Arrow's `to_numpy` gives it)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    typ = column.type
    if pa.types.is_integer(typ):
        dtype = np.dtype(f"{'i' if pa.types.is_signed_integer(typ) else 'u'}{typ.bit_width // 8}")
    elif pa.types.is_floating(typ):
        dtype = np.dtype(f"f{typ.bit_width // 8}")
    else:
        raise TypeError(f"not an integer or floating column: {typ}")
    parts = [
        np.frombuffer(chunk.buffers()[1], dtype, len(chunk), chunk.offset * dtype.itemsize)
        for chunk in chunks
        if len(chunk)
    ]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.empty(0, dtype)


def arrow_int64(values: np.ndarray) -> pa.Array:
    """An int64 Arrow array over a contiguous numpy int64 array, zero-copy (no pandas import)."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


INT64_MAX = np.iinfo(np.int64).max


def check_int64_ids(values: pa.Array | pa.ChunkedArray | np.ndarray, where: Callable[[int], str]) -> None:
    """Refuse an unsigned id above int64's range (a uint64 >= 2**63), which `astype(int64)`
    would wrap to a negative id and Arrow's safe cast would refuse without naming its row.
    `where(position)` names the value's place for the error: file, column, row."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind != "u" or values.dtype.itemsize < 8:
            return
        over = np.flatnonzero(values > INT64_MAX)
        if not len(over):
            return
        position, value = int(over[0]), int(values[over[0]])
    else:
        if not (pa.types.is_unsigned_integer(values.type) and values.type.bit_width == 64):
            return
        above = pc.fill_null(pc.greater(values, pa.scalar(INT64_MAX, pa.uint64())), False)
        position = pc.index(above, True).as_py()
        if position < 0:
            return
        value = values[position].as_py()
    raise NegseqError(f"{where(position)}: id {value} is above int64's range (negseq ids are int64)")
