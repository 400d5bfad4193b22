"""Map int64 ids to table rows, vectorized: a direct array when ids are compact, else a sorted search."""

from __future__ import annotations

import numba
import numpy as np

# A direct lookup array is used while it costs at most this many slots per id.
_DIRECT_SLOTS_PER_ID = 4


@numba.njit(cache=True, nogil=True)
def _direct_rows(direct: np.ndarray, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
    n = direct.shape[0]
    for i in range(ids.shape[0]):
        v = ids[i]
        out[i] = direct[v] if 0 <= v < n else -1
    return out


def distinct_ids(ids: np.ndarray) -> np.ndarray:
    """Sorted distinct ids; a counting pass when ids are compact, else a sort."""
    if len(ids) and ids.min() >= 0 and ids.max() < _DIRECT_SLOTS_PER_ID * len(ids) + 1024:
        return np.flatnonzero(np.bincount(ids)).astype(np.int64)
    return np.unique(ids)


class IdIndex:
    """Row of each id in `ids` (unique), and -1 for ids it does not hold."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        n = len(self.ids)
        lo = int(self.ids.min()) if n else 0
        hi = int(self.ids.max()) if n else -1
        self._direct: np.ndarray | None = None
        if n and lo >= 0 and hi < _DIRECT_SLOTS_PER_ID * n + 1024:
            direct = np.full(hi + 1, -1, dtype=np.int32 if n < 2**31 else np.int64)
            direct[self.ids] = np.arange(n)
            self._direct = direct
        else:
            self._order = np.argsort(self.ids, kind="stable")
            self._sorted = self.ids[self._order]

    def __len__(self) -> int:
        return len(self.ids)

    def first_duplicate(self) -> int | None:
        """An id that occurs more than once, or None when ids are unique."""
        if self._direct is not None:
            counts = np.bincount(self.ids)
            repeated = np.flatnonzero(counts > 1)
            return int(repeated[0]) if len(repeated) else None
        repeated = np.flatnonzero(self._sorted[1:] == self._sorted[:-1])
        return int(self._sorted[repeated[0]]) if len(repeated) else None

    def rows(self, ids: np.ndarray, dtype: type = np.int64) -> np.ndarray:
        """Row of each id, -1 where the id is unknown (int32 halves the memory of large lookups)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self._direct is not None:
            return _direct_rows(self._direct, ids, np.empty(ids.shape[0], dtype))
        if len(self.ids) == 0:
            return np.full(ids.shape, -1, dtype=dtype)
        pos = np.searchsorted(self._sorted, ids)
        pos_clipped = np.minimum(pos, len(self._sorted) - 1)
        found = self._sorted[pos_clipped] == ids
        return np.where(found, self._order[pos_clipped], -1).astype(dtype, copy=False)
