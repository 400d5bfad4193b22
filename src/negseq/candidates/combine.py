"""Candidate sequences: positives and their negatives in one column, in two layouts.

- interleaved (TorchEasyRec #462): each positive followed by its own n negatives,
  "p1;n1_1;..;n1_n;p2;n2_1;..".
- suffix (TorchEasyRec master): row i < B-1 holds its positives only; row B-1 holds its
  positives, then all shared negatives, then all hard negatives.

The output type follows the input: strings in, strings out; lists in, lists out (an int64 column,
one positive a row, gives list<int64>). Null rows stay null and empty rows stay empty; both count
0 positives. One exception, in the suffix layout only: a null last row that must carry negatives
becomes a row holding just the negatives (count 0), because dropping negatives would be worse.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from negseq.candidates import id_strings
from negseq.candidates.flatten import flatten_id_column, is_id_string_type
from negseq.errors import NegseqError


def _as_array(data: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(data, pa.ChunkedArray):
        return pa.concat_arrays(data.chunks) if data.num_chunks != 1 else data.chunk(0)
    if not isinstance(data, pa.Array):
        raise NegseqError(f"positive column must be a pyarrow Array, got {type(data).__name__}")
    return data


def _as_ids(data: pa.Array | pa.ChunkedArray | np.ndarray | None, what: str) -> np.ndarray:
    """Negative ids as contiguous int64 numpy; nulls are an error."""
    if data is None:
        return np.empty(0, dtype=np.int64)
    if isinstance(data, pa.ChunkedArray | pa.Array):
        if data.null_count:
            raise NegseqError(f"{what} hold {data.null_count} null ids")
        if not pa.types.is_integer(data.type):
            raise NegseqError(f"{what} must be integer ids, got {data.type}")
        data = data.to_numpy()
    ids = np.asarray(data)
    if ids.ndim == 1 and ids.size == 0:
        return np.empty(0, dtype=np.int64)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise NegseqError(f"{what} must be a 1-d integer array, got {ids.dtype} {ids.shape}")
    return np.ascontiguousarray(ids, dtype=np.int64)


def _list_type(pos_type: pa.DataType) -> pa.DataType:
    if pa.types.is_large_list(pos_type):
        return pa.large_list(pa.int64())
    return pa.list_(pa.int64())


def _make_list_array(typ: pa.DataType, lengths: np.ndarray, child: pa.Array, valid: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    offset_type = np.int64 if pa.types.is_large_list(typ) else np.int32
    if offset_type is np.int32 and offsets[-1] > np.iinfo(np.int32).max:
        raise NegseqError("combined lists hold over 2^31 ids; use smaller batches or large_list")
    null_count = int(len(valid) - np.count_nonzero(valid))
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if null_count else None
    return pa.Array.from_buffers(
        typ,
        len(lengths),
        [bitmap, pa.py_buffer(offsets.astype(offset_type))],
        null_count,
        children=[child],
    )


def _check_neg_count(num_negs: int, num_pos: int, neg_per_pos: int) -> None:
    if neg_per_pos < 0:
        raise NegseqError(f"neg_per_pos must be >= 0, got {neg_per_pos}")
    if num_negs != num_pos * neg_per_pos:
        raise NegseqError(
            f"interleaved combine needs {num_pos} positives x {neg_per_pos} negatives = "
            f"{num_pos * neg_per_pos} negative ids, got {num_negs}"
        )


def combine_neg_as_candidate_sequence(
    pos_data: pa.Array | pa.ChunkedArray,
    neg_data: pa.Array | np.ndarray,
    neg_per_pos: int,
    seq_delim: str = ";",
) -> tuple[pa.Array, np.ndarray]:
    """Interleaved layout: each positive followed by its own `neg_per_pos` negatives.

    `neg_data` is row-major: positive j's negatives are neg_data[j*n:(j+1)*n]. Returns the
    candidate column and `cand_pos_lengths` (int32, positives per row).
    """
    pos = _as_array(pos_data)
    negs = _as_ids(neg_data, "negatives")
    valid = id_strings.validity(pos)
    if is_id_string_type(pos.type):
        counts = id_strings.count_tokens(pos, seq_delim, "positives")
        _check_neg_count(len(negs), int(counts.sum()), neg_per_pos)
        offsets, data, _ = id_strings.string_buffers(pos)
        out_offsets, out_data = id_strings.interleave_strings(
            offsets, data, valid, id_strings.delim_bytes(seq_delim), counts, negs, neg_per_pos
        )
        large = pa.types.is_large_string(pos.type)
        out = id_strings.make_string_array(out_offsets, out_data, valid, large, "candidates")
        return out, counts.astype(np.int32)
    ids, counts = flatten_id_column(pos, seq_delim, "positives")
    _check_neg_count(len(negs), len(ids), neg_per_pos)
    # Arrow's memory pool reuses freed blocks: no fresh-page faults as with np.empty.
    size = len(ids) * (1 + neg_per_pos)
    buf = pa.allocate_buffer(size * 8)
    block = np.frombuffer(buf, dtype=np.int64).reshape(len(ids), 1 + neg_per_pos)
    block[:, 0] = ids
    block[:, 1:] = negs.reshape(len(ids), neg_per_pos)
    child = pa.Array.from_buffers(pa.int64(), size, [None, buf])
    out = _make_list_array(_list_type(pos.type), counts * (1 + neg_per_pos), child, valid)
    return out, counts.astype(np.int32)


def combine_negs_to_candidate_suffix(
    pos_data: pa.Array | pa.ChunkedArray,
    negs: pa.Array | np.ndarray,
    seq_delim: str = ";",
    hard_negs: pa.Array | np.ndarray | None = None,
) -> tuple[pa.Array, np.ndarray]:
    """Suffix layout: the last row gets all shared negatives, then all hard negatives.

    Returns the candidate column and `cand_pos_lengths` (int32, positives per row).
    """
    pos = _as_array(pos_data)
    suffix = np.concatenate([_as_ids(negs, "negatives"), _as_ids(hard_negs, "hard negatives")])
    valid = id_strings.validity(pos).copy()
    num_rows = len(pos)
    if num_rows == 0:
        if len(suffix):
            raise NegseqError(f"suffix combine got {len(suffix)} negatives for an empty batch")
        counts = np.zeros(0, dtype=np.int32)
        out_type = _list_type(pos.type) if not is_id_string_type(pos.type) else pos.type
        return pa.array([], type=out_type), counts
    if is_id_string_type(pos.type):
        counts = id_strings.count_tokens(pos, seq_delim, "positives")
        offsets, data, _ = id_strings.string_buffers(pos)
        delim = id_strings.delim_bytes(seq_delim)
        start, last = offsets[0], offsets[-2]
        last_len = offsets[-1] - last if valid[-1] else 0
        head = data[start : last + last_len]
        added = np.empty(0, dtype=np.uint8)
        if len(suffix):
            added = id_strings.join_ints(suffix, delim)
            if last_len:
                added = np.concatenate([delim, added])
            valid[-1] = True
        out_offsets = offsets - start
        out_offsets[-1] = out_offsets[-2] + last_len + len(added)
        out_data = np.concatenate([head, added])
        large = pa.types.is_large_string(pos.type)
        out = id_strings.make_string_array(out_offsets, out_data, valid, large, "candidates")
        return out, counts.astype(np.int32)
    ids, counts = flatten_id_column(pos, seq_delim, "positives")
    lengths = counts.copy()
    lengths[-1] += len(suffix)
    if len(suffix):
        valid[-1] = True
    child = pa.array(np.concatenate([ids, suffix]), type=pa.int64())
    out = _make_list_array(_list_type(pos.type), lengths, child, valid)
    return out, counts.astype(np.int32)
