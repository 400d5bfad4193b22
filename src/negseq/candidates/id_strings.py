"""Byte-level numba kernels for delimited id strings ("1;2;3") over Arrow string buffers.

Arrow's own int-to-string cast plus a join costs a large share of a Python row loop, so the
string paths of the combines read and write the Arrow buffers (offsets + UTF-8 bytes) directly:
positives are copied verbatim, negatives are written digit by digit. All kernels release the GIL
so the local executor's threads run them in parallel.

Token grammar: an optional '-' then 1 to 19 ASCII digits, within int64. Anything else is an error
that the caller reports with its row and text.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from negseq.errors import NegseqError


@njit(cache=True, nogil=True)
def _delim_at(data, i, end, delim):
    dl = delim.shape[0]
    if i + dl > end:
        return False
    for j in range(dl):
        if data[i + j] != delim[j]:
            return False
    return True


@njit(cache=True, nogil=True)
def _token_end(data, i, end, delim):
    """Where the token starting at i ends: the next delimiter's position, or end."""
    while i < end and not _delim_at(data, i, end, delim):
        i += 1
    return i


_INT64_MAX_DIGITS = np.frombuffer(b"9223372036854775807", dtype=np.uint8)
_INT64_MIN_DIGITS = np.frombuffer(b"9223372036854775808", dtype=np.uint8)


@njit(cache=True, nogil=True)
def _token_ok(data, start, end):
    """True when data[start:end] is an optional '-' and 1..19 digits that fit int64."""
    i = start
    negative = i < end and data[i] == 45  # '-'
    if negative:
        i += 1
    n = end - i
    if n < 1 or n > 19:
        return False
    for j in range(i, end):
        if data[j] < 48 or data[j] > 57:
            return False
    if n == 19:  # equal-length digit strings compare like the numbers they spell
        limit = _INT64_MIN_DIGITS if negative else _INT64_MAX_DIGITS
        for j in range(19):
            if data[i + j] != limit[j]:
                return data[i + j] < limit[j]
    return True


@njit(cache=True, nogil=True)
def _token_value(data, start, end):
    """Value of a token `_token_ok` accepted (accumulated on the sign's side: no overflow)."""
    if data[start] == 45:
        value = 0
        for j in range(start + 1, end):
            value = value * 10 - (data[j] - 48)
        return value
    value = 0
    for j in range(start, end):
        value = value * 10 + (data[j] - 48)
    return value


@njit(cache=True, nogil=True)
def scan_tokens(offsets, data, valid, delim):
    """Count and validate the tokens of each row.

    Returns (counts int64 [B], error row or -1, error token start, error token end).
    A null row and an empty string count 0; every other token must be a valid id.
    """
    num_rows = offsets.shape[0] - 1
    counts = np.zeros(num_rows, dtype=np.int64)
    dl = delim.shape[0]
    for r in range(num_rows):
        if not valid[r]:
            continue
        start = offsets[r]
        end = offsets[r + 1]
        if start == end:
            continue
        k = 0
        tok = start
        while True:
            stop = _token_end(data, tok, end, delim)
            if not _token_ok(data, tok, stop):
                return counts, r, tok, stop
            k += 1
            if stop == end:
                break
            tok = stop + dl
        counts[r] = k
    return counts, -1, 0, 0


@njit(cache=True, nogil=True)
def parse_tokens(offsets, data, valid, delim, counts):
    """Parse the tokens that `scan_tokens` validated into one int64 array."""
    num_rows = offsets.shape[0] - 1
    out = np.empty(counts.sum(), dtype=np.int64)
    dl = delim.shape[0]
    q = 0
    for r in range(num_rows):
        if counts[r] == 0:
            continue
        start = offsets[r]
        end = offsets[r + 1]
        tok = start
        while True:
            stop = _token_end(data, tok, end, delim)
            out[q] = _token_value(data, tok, stop)
            q += 1
            if stop == end:
                break
            tok = stop + dl
    return out


_POW10 = np.array([10**i for i in range(19)], dtype=np.int64)
_DIGIT_PAIRS = np.frombuffer("".join(f"{i:02d}" for i in range(100)).encode(), dtype=np.uint8)
_INT64_MIN_TEXT = np.frombuffer(b"-9223372036854775808", dtype=np.uint8)


@njit(cache=True, nogil=True)
def _num_digits(v):
    """Characters needed to print int64 v (sign included): compares, no divisions."""
    if v < 0:
        if v == -9223372036854775807 - 1:
            return 20
        v = -v
        n = 2
    else:
        n = 1
    d = 1
    while d < 19 and v >= _POW10[d]:
        d += 1
    return n + d - 1


@njit(cache=True, nogil=True)
def _write_known(out, pos, v, width):
    """Write int64 v into out[pos:pos+width], `width` from `_num_digits`; return pos + width.

    Digits go backwards two at a time, in signed int64 arithmetic (numba's uint64 division is
    about twice as slow here)."""
    end = pos + width
    if v < 0:
        if v == -9223372036854775807 - 1:
            for j in range(20):
                out[pos + j] = _INT64_MIN_TEXT[j]
            return end
        out[pos] = 45
        v = -v
    p = end
    while v >= 100:
        q = v // 100
        r = (v - q * 100) * 2
        v = q
        p -= 2
        out[p] = _DIGIT_PAIRS[r]
        out[p + 1] = _DIGIT_PAIRS[r + 1]
    if v >= 10:
        r = v * 2
        out[p - 2] = _DIGIT_PAIRS[r]
        out[p - 1] = _DIGIT_PAIRS[r + 1]
    else:
        out[p - 1] = 48 + v
    return end


@njit(cache=True, nogil=True)
def join_ints(values, delim):
    """`delim.join(str(v) for v in values)` as bytes."""
    n = values.shape[0]
    dl = delim.shape[0]
    widths = np.empty(n, dtype=np.int64)
    total = 0
    for i in range(n):
        widths[i] = _num_digits(values[i])
        total += widths[i]
    if n > 1:
        total += (n - 1) * dl
    out = np.empty(total, dtype=np.uint8)
    pos = 0
    for i in range(n):
        if i > 0:
            for j in range(dl):
                out[pos + j] = delim[j]
            pos += dl
        pos = _write_known(out, pos, values[i], widths[i])
    return out


@njit(cache=True, nogil=True)
def interleave_strings(offsets, data, valid, delim, counts, negs, neg_per_pos):
    """Row r: each positive token (copied verbatim) followed by its `neg_per_pos` negatives.

    Returns (out_offsets int64 [B+1], out_data uint8).
    """
    num_rows = offsets.shape[0] - 1
    dl = delim.shape[0]
    n = neg_per_pos
    neg_len = np.empty(negs.shape[0] + 1, dtype=np.int64)
    neg_len[0] = 0
    for j in range(negs.shape[0]):
        neg_len[j + 1] = neg_len[j] + _num_digits(negs[j])
    out_offsets = np.empty(num_rows + 1, dtype=np.int64)
    out_offsets[0] = 0
    q = 0
    for r in range(num_rows):
        k = counts[r]
        size = 0
        if valid[r]:
            size = offsets[r + 1] - offsets[r]
        if k > 0:
            size += k * n * dl + neg_len[(q + k) * n] - neg_len[q * n]
        out_offsets[r + 1] = out_offsets[r] + size
        q += k
    out = np.empty(out_offsets[num_rows], dtype=np.uint8)
    pos = 0
    q = 0
    for r in range(num_rows):
        if counts[r] == 0:
            continue
        start = offsets[r]
        end = offsets[r + 1]
        tok = start
        while True:
            stop = _token_end(data, tok, end, delim)
            for j in range(tok, stop):
                out[pos] = data[j]
                pos += 1
            for m in range(q * n, (q + 1) * n):
                for j in range(dl):
                    out[pos + j] = delim[j]
                pos += dl
                pos = _write_known(out, pos, negs[m], neg_len[m + 1] - neg_len[m])
            q += 1
            if stop == end:
                break
            for j in range(dl):
                out[pos + j] = delim[j]
            pos += dl
            tok = stop + dl
    return out_offsets, out


# ---- Arrow buffer access -------------------------------------------------------------------


def string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets int64 [B+1] into data, data uint8, valid bool [B]) of a string/large_string array.

    Offsets keep their absolute positions in the data buffer, so sliced arrays need no copy.
    """
    offset_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=offset_type, count=arr.offset + len(arr) + 1)
    offsets = offsets[arr.offset :].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.empty(0, np.uint8)
    valid = validity(arr)
    return offsets, data, valid


def validity(arr: pa.Array) -> np.ndarray:
    if arr.null_count == 0:
        return np.ones(len(arr), dtype=np.bool_)
    return arr.is_valid().to_numpy(zero_copy_only=False)


def delim_bytes(seq_delim: str) -> np.ndarray:
    if not seq_delim:
        raise NegseqError("seq_delim must not be empty")
    raw = seq_delim.encode()
    if any(48 <= b <= 57 or b == 45 for b in raw):
        raise NegseqError(f"seq_delim {seq_delim!r} must not contain digits or '-'")
    return np.frombuffer(raw, dtype=np.uint8)


def count_tokens(arr: pa.Array, seq_delim: str, column: str) -> np.ndarray:
    """Tokens per row of a delimited id string column (int64 [B]); bad tokens raise NegseqError."""
    offsets, data, valid = string_buffers(arr)
    counts, bad_row, tok_start, tok_end = scan_tokens(offsets, data, valid, delim_bytes(seq_delim))
    if bad_row >= 0:
        token = bytes(data[tok_start:tok_end]).decode(errors="replace")
        row_text = bytes(data[offsets[bad_row] : offsets[bad_row + 1]]).decode(errors="replace")
        raise NegseqError(
            f"column {column!r}, row {bad_row}: token {token!r} is not an int64 id "
            f"(row value {row_text[:80]!r}, delimiter {seq_delim!r})"
        )
    return counts


def make_string_array(
    out_offsets: np.ndarray, out_data: np.ndarray, valid: np.ndarray, large: bool, column: str
) -> pa.Array:
    """Wrap kernel output as a string (or large_string) array with the given validity."""
    if large:
        typ, offsets = pa.large_string(), out_offsets
    else:
        if out_offsets[-1] > np.iinfo(np.int32).max:
            raise NegseqError(
                f"column {column!r}: combined strings hold {int(out_offsets[-1])} bytes, over the "
                "2 GiB of an Arrow string column; use smaller batches or a large_string column"
            )
        typ, offsets = pa.string(), out_offsets.astype(np.int32)
    null_count = int(len(valid) - np.count_nonzero(valid))
    bitmap = None
    if null_count:
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(
        typ, len(valid), [bitmap, pa.py_buffer(offsets), pa.py_buffer(out_data)], null_count
    )
