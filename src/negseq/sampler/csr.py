"""Edge tables as CSR adjacency: user row -> a slice of item rows, built once at load in O(E)."""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from negseq.sampler.id_index import IdIndex, distinct_ids
from negseq.sampler.tables import EdgeTable, ItemTable


@dataclass(frozen=True)
class UserItemsCSR:
    """`items[indptr[u]:indptr[u+1]]` are user row u's item rows (int32), in the builder's order."""

    users: IdIndex
    indptr: np.ndarray
    items: np.ndarray

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        return self.users.rows(user_ids)


@numba.njit(cache=True, nogil=True)
def _counting_sort(user_rows: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """indptr and a stable permutation grouping edges by user row."""
    indptr = np.zeros(num_users + 1, np.int64)
    for u in user_rows:
        indptr[u + 1] += 1
    for u in range(num_users):
        indptr[u + 1] += indptr[u]
    fill = indptr[:-1].copy()
    order = np.empty(user_rows.shape[0], np.int32)
    for e in range(user_rows.shape[0]):
        u = user_rows[e]
        order[fill[u]] = e
        fill[u] += 1
    return indptr, order


@numba.njit(cache=True, nogil=True)
def _sorted_item_lists(indptr: np.ndarray, order: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
    """Each user's item rows, ascending (for binary-search exclusion)."""
    out = np.empty(order.shape[0], np.int32)
    for e in range(order.shape[0]):
        out[e] = item_rows[order[e]]
    for u in range(indptr.shape[0] - 1):
        lo, hi = indptr[u], indptr[u + 1]
        if hi - lo > 32:
            out[lo:hi].sort()
            continue
        for e in range(lo + 1, hi):  # insertion sort: most users have a few dozen items
            value = out[e]
            j = e
            while j > lo and out[j - 1] > value:
                out[j] = out[j - 1]
                j -= 1
            out[j] = value
    return out


@numba.njit(cache=True, nogil=True)
def _ranked_item_lists(
    indptr: np.ndarray, order: np.ndarray, item_rows: np.ndarray, item_ids: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Each user's item rows by weight descending, then item id ascending (insertion sort:
    hard-negative lists are short)."""
    out = np.empty(order.shape[0], np.int32)
    for u in range(indptr.shape[0] - 1):
        lo = indptr[u]
        for e in range(lo, indptr[u + 1]):
            edge = order[e]
            j = e
            while j > lo:
                prev = order[j - 1]
                if weights[prev] > weights[edge] or (
                    weights[prev] == weights[edge] and item_ids[prev] <= item_ids[edge]
                ):
                    break
                order[j] = prev
                j -= 1
            order[j] = edge
        for e in range(lo, indptr[u + 1]):
            out[e] = item_rows[order[e]]
    return out


def _group_by_user(edges: EdgeTable) -> tuple[IdIndex, np.ndarray, np.ndarray]:
    users = IdIndex(distinct_ids(edges.user_ids))
    indptr, order = _counting_sort(users.rows(edges.user_ids, np.int32), len(users))
    return users, indptr, order


def positive_items_csr(edges: EdgeTable, items: ItemTable) -> UserItemsCSR:
    """User -> item rows sorted ascending, for binary-search exclusion."""
    item_rows = edges.check_items_known(items)
    users, indptr, order = _group_by_user(edges)
    return UserItemsCSR(users, indptr, _sorted_item_lists(indptr, order, item_rows))


def hard_items_csr(edges: EdgeTable, items: ItemTable) -> UserItemsCSR:
    """User -> item rows by weight descending, then item id ascending (deterministic order)."""
    if edges.weights is None:
        raise ValueError(f"{edges.source}: hard-negative edges need their weights (keep_weights=True)")
    item_rows = edges.check_items_known(items)
    users, indptr, order = _group_by_user(edges)
    ranked = _ranked_item_lists(indptr, order, item_rows, edges.item_ids, edges.weights)
    return UserItemsCSR(users, indptr, ranked)
