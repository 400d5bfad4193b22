"""Map int64 ids to table rows, vectorized: a direct array when ids are compact, else a sorted search."""

from __future__ import annotations

import numpy as np

# A direct lookup array is used while it costs at most this many slots per id.
_DIRECT_SLOTS_PER_ID = 4


class IdIndex:
    """Row of each id in `ids` (unique), and -1 for ids it does not hold."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        n = len(self.ids)
        lo = int(self.ids.min()) if n else 0
        hi = int(self.ids.max()) if n else -1
        self._direct: np.ndarray | None = None
        if n and lo >= 0 and hi < _DIRECT_SLOTS_PER_ID * n + 1024:
            direct = np.full(hi + 1, -1, dtype=np.int64)
            direct[self.ids] = np.arange(n, dtype=np.int64)
            self._direct = direct
        else:
            self._order = np.argsort(self.ids, kind="stable")
            self._sorted = self.ids[self._order]

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 where the id is unknown."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._direct is not None:
            inside = (ids >= 0) & (ids < len(self._direct))
            out = np.full(ids.shape, -1, dtype=np.int64)
            out[inside] = self._direct[ids[inside]]
            return out
        if len(self.ids) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self._sorted, ids)
        pos_clipped = np.minimum(pos, len(self._sorted) - 1)
        found = self._sorted[pos_clipped] == ids
        return np.where(found, self._order[pos_clipped], -1)
