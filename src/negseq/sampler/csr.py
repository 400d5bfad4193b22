"""Edge tables as CSR adjacency: user row -> a slice of item rows, built once at load in O(E).

The builders stream the edge table in batches (`EdgeTable.batches`): one pass counts each
user's edges, a second scatters every batch's item rows straight into the CSR, so no
per-edge array other than the CSR itself (and, for hard negatives, the weights to rank by)
is held.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from negseq.sampler.id_index import IdIndex
from negseq.sampler.tables import EdgeTable, ItemTable, KnownItems

# Distinct users are counted in an array indexed by id while it costs at most this many
# slots per edge (ids >= 0 and small), else by sorting each batch's ids.
_DIRECT_SLOTS_PER_EDGE = 4


@dataclass(frozen=True)
class UserItemsCSR:
    """`items[indptr[u]:indptr[u+1]]` are user row u's item rows (int32), in the builder's order."""

    users: IdIndex
    indptr: np.ndarray
    items: np.ndarray

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        return self.users.rows(user_ids)


@numba.njit(cache=True, nogil=True)
def _count_ids(counts: np.ndarray, ids: np.ndarray) -> None:
    for v in ids:
        counts[v] += 1


class _UserCounter:
    """Distinct user ids (sorted) and each one's edge count, fed a batch of ids at a time."""

    def __init__(self, num_edges: int) -> None:
        self._limit = _DIRECT_SLOTS_PER_EDGE * num_edges + 1024
        self._dtype = np.int32 if num_edges < 2**31 else np.int64
        self._counts: np.ndarray | None = np.zeros(0, self._dtype)  # by id, while ids are compact
        self._pairs: list[tuple[np.ndarray, np.ndarray]] = []  # (distinct ids, counts) otherwise

    def add(self, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        if self._counts is not None:
            low, high = int(ids.min()), int(ids.max())
            if low >= 0 and high < self._limit:
                if high >= len(self._counts):  # grow geometrically: amortised O(1) a slot
                    grown = np.zeros(min(self._limit, max(high + 1, 2 * len(self._counts))), self._dtype)
                    grown[: len(self._counts)] = self._counts
                    self._counts = grown
                _count_ids(self._counts, ids)
                return
            present = np.flatnonzero(self._counts)
            self._pairs.append((present.astype(np.int64), self._counts[present].astype(np.int64)))
            self._counts = None
        self._pairs.append(np.unique(ids, return_counts=True))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self._counts is not None:
            present = np.flatnonzero(self._counts)
            return present.astype(np.int64), self._counts[present].astype(np.int64)
        ids = np.concatenate([p[0] for p in self._pairs])
        counts = np.concatenate([p[1] for p in self._pairs])
        distinct, inverse = np.unique(ids, return_inverse=True)
        return distinct, np.bincount(inverse, weights=counts, minlength=len(distinct)).astype(np.int64)


@numba.njit(cache=True, nogil=True)
def _scatter(fill: np.ndarray, user_rows: np.ndarray, values: np.ndarray, out: np.ndarray) -> None:
    """out[next slot of user_rows[e]] = values[e], in edge order (a stable counting sort)."""
    for e in range(user_rows.shape[0]):
        u = user_rows[e]
        out[fill[u]] = values[e]
        fill[u] += 1


@numba.njit(cache=True, nogil=True)
def _scatter_ranked(
    fill: np.ndarray,
    user_rows: np.ndarray,
    item_rows: np.ndarray,
    weights: np.ndarray,
    out_rows: np.ndarray,
    out_weights: np.ndarray,
) -> None:
    for e in range(user_rows.shape[0]):
        u = user_rows[e]
        slot = fill[u]
        out_rows[slot] = item_rows[e]
        out_weights[slot] = weights[e]
        fill[u] = slot + 1


@numba.njit(cache=True, nogil=True)
def _sort_each_user(indptr: np.ndarray, items: np.ndarray) -> None:
    """Each user's item rows ascending, in place (for binary-search exclusion)."""
    for u in range(indptr.shape[0] - 1):
        lo, hi = indptr[u], indptr[u + 1]
        if hi - lo > 32:
            items[lo:hi].sort()
            continue
        for e in range(lo + 1, hi):  # insertion sort: most users have a few dozen items
            value = items[e]
            j = e
            while j > lo and items[j - 1] > value:
                items[j] = items[j - 1]
                j -= 1
            items[j] = value


@numba.njit(cache=True, nogil=True)
def _rank_each_user(indptr: np.ndarray, rows: np.ndarray, weights: np.ndarray, item_ids: np.ndarray) -> None:
    """Each user's edges by weight descending, then item id (`item_ids[row]`) ascending, ties in
    edge order, in place (a stable insertion sort: hard-negative lists are short)."""
    for u in range(indptr.shape[0] - 1):
        lo = indptr[u]
        for e in range(lo + 1, indptr[u + 1]):
            row, weight = rows[e], weights[e]
            item = item_ids[row]
            j = e
            while j > lo and (
                weights[j - 1] < weight or (weights[j - 1] == weight and item_ids[rows[j - 1]] > item)
            ):
                rows[j], weights[j] = rows[j - 1], weights[j - 1]
                j -= 1
            rows[j], weights[j] = row, weight


@numba.njit(cache=True, nogil=True)
def distinct_rows(rows: np.ndarray, num_rows: int) -> np.ndarray:
    """The distinct values of `rows` (each in [0, num_rows)), ascending, as int32; a bitmap
    pass (np.bincount would first copy int32 rows to int64, 8 bytes an edge)."""
    seen = np.zeros(num_rows, np.bool_)
    count = 0
    for r in rows:
        if not seen[r]:
            seen[r] = True
            count += 1
    out = np.empty(count, np.int32)
    k = 0
    for r in range(num_rows):
        if seen[r]:
            out[k] = r
            k += 1
    return out


def _group_by_user(edges: EdgeTable) -> tuple[IdIndex, np.ndarray]:
    """The edges' distinct users and indptr (each user's edge count, summed), from one pass."""
    counter = _UserCounter(len(edges))
    for _start, users, _items, _weights in edges.batches(items=False):
        assert users is not None
        counter.add(users)
    distinct, counts = counter.result()
    indptr = np.zeros(len(distinct) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return IdIndex(distinct), indptr


def _scatter_by_user(edges: EdgeTable, items: ItemTable, *, weights: bool):
    """(users, indptr, item rows, their weights or None): every edge's item row in its user's
    slice, in edge order, from a counting pass and a scatter pass over the edge batches."""
    users, indptr = _group_by_user(edges)
    fill = indptr[:-1].copy()
    out = np.empty(len(edges), np.int32)
    out_weights = np.empty(len(edges), np.float64) if weights else None
    known = KnownItems(edges, items)
    for start, user_ids, item_ids, edge_weights in edges.batches(weights=weights):
        assert user_ids is not None and item_ids is not None
        item_rows = known.rows(item_ids, start)
        if known.first is not None:  # an unknown item: `check` raises once every batch is seen
            continue
        user_rows = users.rows(user_ids, np.int32)
        if out_weights is None:
            _scatter(fill, user_rows, item_rows, out)
        else:
            assert edge_weights is not None
            _scatter_ranked(fill, user_rows, item_rows, edge_weights, out, out_weights)
    known.check()
    return users, indptr, out, out_weights


def positive_items_csr(edges: EdgeTable, items: ItemTable) -> UserItemsCSR:
    """User -> item rows sorted ascending, for binary-search exclusion."""
    users, indptr, rows, _ = _scatter_by_user(edges, items, weights=False)
    _sort_each_user(indptr, rows)
    return UserItemsCSR(users, indptr, rows)


def hard_items_csr(edges: EdgeTable, items: ItemTable) -> UserItemsCSR:
    """User -> item rows by weight descending, then item id ascending (deterministic order)."""
    if not edges.has_weights:
        raise ValueError(f"{edges.source}: hard-negative edges need their weights (keep_weights=True)")
    users, indptr, rows, weights = _scatter_by_user(edges, items, weights=True)
    _rank_each_user(indptr, rows, weights, items.ids)
    return UserItemsCSR(users, indptr, rows)
