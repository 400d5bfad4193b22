"""Map int64 ids to table rows in O(1): a direct array when ids are compact, else a hash table."""

from __future__ import annotations

import numba
import numpy as np

# A direct lookup array is used while it costs at most this many slots per id.
_DIRECT_SLOTS_PER_ID = 4
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, nogil=True)
def _direct_rows(direct: np.ndarray, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
    n = direct.shape[0]
    for i in range(ids.shape[0]):
        v = ids[i]
        out[i] = direct[v] if 0 <= v < n else -1
    return out


@numba.njit(inline="always")
def _slot(key: np.int64, shift: np.uint64) -> np.int64:
    return np.int64((np.uint64(key) * _GOLDEN) >> shift)


@numba.njit(cache=True, nogil=True)
def _build_hash(ids: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.int64]:
    """Open addressing with linear probing; returns (keys, rows, first duplicated row or -1)."""
    size = 1 << bits
    mask = size - 1
    shift = np.uint64(64 - bits)
    keys = np.empty(size, np.int64)
    rows = np.full(size, -1, np.int32)
    for row in range(ids.shape[0]):
        key = ids[row]
        h = _slot(key, shift)
        while rows[h] != -1:
            if keys[h] == key:
                return keys, rows, np.int64(row)
            h = (h + 1) & mask
        keys[h] = key
        rows[h] = row
    return keys, rows, np.int64(-1)


@numba.njit(cache=True, nogil=True)
def _hash_rows(keys: np.ndarray, rows: np.ndarray, bits: int, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
    mask = keys.shape[0] - 1
    shift = np.uint64(64 - bits)
    for i in range(ids.shape[0]):
        key = ids[i]
        h = _slot(key, shift)
        found = -1
        while rows[h] != -1:
            if keys[h] == key:
                found = rows[h]
                break
            h = (h + 1) & mask
        out[i] = found
    return out


def _compact(ids: np.ndarray) -> bool:
    """Whether an array indexed by id costs at most `_DIRECT_SLOTS_PER_ID` slots an id."""
    return len(ids) > 0 and ids.min() >= 0 and ids.max() < _DIRECT_SLOTS_PER_ID * len(ids) + 1024


class IdIndex:
    """Row of each id in `ids`, and -1 for ids it does not hold."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        n = len(self.ids)
        self._direct: np.ndarray | None = None
        self._duplicate_row = -1
        if _compact(self.ids):
            direct = np.full(int(self.ids.max()) + 1, -1, dtype=np.int32 if n < 2**31 else np.int64)
            direct[self.ids] = np.arange(n)
            self._direct = direct
            counts = np.bincount(self.ids)
            repeated = np.flatnonzero(counts > 1)
            if len(repeated):
                self._duplicate_row = int(np.flatnonzero(self.ids == repeated[0])[1])
        else:
            self._bits = max(4, int(2 * n - 1).bit_length())  # load factor at most 1/2
            self._keys, self._rows, dup = _build_hash(self.ids, self._bits)
            self._duplicate_row = int(dup)

    def __len__(self) -> int:
        return len(self.ids)

    def first_duplicate(self) -> int | None:
        """An id that occurs more than once, or None when ids are unique."""
        return None if self._duplicate_row < 0 else int(self.ids[self._duplicate_row])

    def rows(self, ids: np.ndarray, dtype: type = np.int64) -> np.ndarray:
        """Row of each id, -1 where the id is unknown (int32 halves the memory of large lookups)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        out: np.ndarray = np.empty(ids.shape[0], dtype)
        if self._direct is not None:
            return _direct_rows(self._direct, ids, out)
        return _hash_rows(self._keys, self._rows, self._bits, ids, out)
