"""numpy views of Arrow columns and Arrow arrays over numpy, without pandas.

Arrow's `to_numpy` and `pa.array(ndarray)` import pandas when it is installed (for their
pandas-input checks): 30 to 50 MiB of RSS that a sampler never uses.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


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
