"""Edge tables as CSR adjacency: user row -> a slice of item rows, built once at load."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from negseq.sampler.id_index import IdIndex
from negseq.sampler.tables import EdgeTable, ItemTable


def _distinct(ids: np.ndarray) -> np.ndarray:
    """Sorted distinct ids; a counting pass when ids are compact, else a sort."""
    if len(ids) and ids.min() >= 0 and ids.max() < 4 * len(ids) + 1024:
        return np.flatnonzero(np.bincount(ids)).astype(np.int64)
    return np.unique(ids)


@dataclass(frozen=True)
class UserItemsCSR:
    """`items[indptr[u]:indptr[u+1]]` are user row u's item rows, in the order the builder chose."""

    users: IdIndex
    indptr: np.ndarray
    items: np.ndarray

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        return self.users.rows(user_ids)

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)


def _csr(user_rows: np.ndarray, item_rows: np.ndarray, num_users: int, users: IdIndex) -> UserItemsCSR:
    counts = np.bincount(user_rows, minlength=num_users)
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return UserItemsCSR(users, indptr, np.ascontiguousarray(item_rows))


def positive_items_csr(edges: EdgeTable, items: ItemTable) -> UserItemsCSR:
    """User -> item rows sorted ascending (for binary-search exclusion); duplicates collapse."""
    item_rows = edges.check_items_known(items)
    users = IdIndex(_distinct(edges.user_ids))
    user_rows = users.rows(edges.user_ids)
    keys = np.sort(user_rows * np.int64(len(items)) + item_rows)
    if len(keys):
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    return _csr(keys // len(items), keys % len(items), len(users), users)


def hard_items_csr(edges: EdgeTable, items: ItemTable) -> UserItemsCSR:
    """User -> item rows by weight descending, then item id ascending (deterministic order)."""
    item_rows = edges.check_items_known(items)
    users = IdIndex(_distinct(edges.user_ids))
    user_rows = users.rows(edges.user_ids)
    order = np.lexsort((edges.item_ids, -edges.weights, user_rows))
    return _csr(user_rows[order], item_rows[order], len(users), users)
