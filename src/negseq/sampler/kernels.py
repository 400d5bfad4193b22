"""numba kernels of the samplers' hot loops: alias-table draws and exclusion checks.

Draws and checks are separate passes with no data-dependent branch in the draw loop, so
the CPU overlaps the random loads of many draws (the loop is memory-bound). A check
returns the slots whose draw hit an excluded item; the caller redraws exactly those
with fresh uniforms, one round per `max_retries`, so the random stream stays a pure
function of the call's key.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def build_alias_table(weights: np.ndarray) -> np.ndarray:
    """Vose's alias table as [n, 2] float64 rows (keep-probability, alias column).

    Column j is drawn uniformly and kept with probability table[j, 0], else table[j, 1]
    is taken. Every column, the last included, is reachable directly, so item i is drawn
    with probability weights[i] / sum(weights) up to float64 rounding. Both values of a
    column share one cache line, so a draw costs one random load.
    """
    n = weights.shape[0]
    prob = weights * (n / weights.sum())
    alias = np.arange(n)
    small = np.empty(n, np.int64)
    large = np.empty(n, np.int64)
    n_small = 0
    n_large = 0
    for i in range(n):
        if prob[i] < 1.0:
            small[n_small] = i
            n_small += 1
        else:
            large[n_large] = i
            n_large += 1
    while n_small > 0 and n_large > 0:
        n_small -= 1
        s = small[n_small]
        g = large[n_large - 1]
        alias[s] = g
        prob[g] = (prob[g] + prob[s]) - 1.0
        if prob[g] < 1.0:
            n_large -= 1
            small[n_small] = g
            n_small += 1
    # Leftovers are 1 up to rounding.
    for i in range(n_large):
        prob[large[i]] = 1.0
    for i in range(n_small):
        prob[small[i]] = 1.0
    table = np.empty((n, 2), np.float64)
    table[:, 0] = prob
    table[:, 1] = alias
    return table


@numba.njit(cache=True, nogil=True)
def alias_draw(slots: np.ndarray, uniforms: np.ndarray, table: np.ndarray, out_rows: np.ndarray) -> None:
    """out_rows[slots[i]] = the column drawn by uniforms[i] (one uniform gives column and coin)."""
    n = table.shape[0]
    for i in range(slots.shape[0]):
        x = uniforms[i] * n
        j = min(np.int64(x), n - 1)
        alias = np.int64(table[j, 1])
        out_rows[slots[i]] = j if (x - j) < table[j, 0] else alias


@numba.njit(cache=True, nogil=True)
def pool_draw(
    slots: np.ndarray, uniforms: np.ndarray, table: np.ndarray, pool: np.ndarray, out_rows: np.ndarray
) -> None:
    """Like `alias_draw`, then maps the drawn column to an item row through `pool`."""
    n = table.shape[0]
    for i in range(slots.shape[0]):
        x = uniforms[i] * n
        j = min(np.int64(x), n - 1)
        alias = np.int64(table[j, 1])
        out_rows[slots[i]] = pool[j if (x - j) < table[j, 0] else alias]


@numba.njit(cache=True, nogil=True)
def uniform_pool_draw(
    slots: np.ndarray, uniforms: np.ndarray, pool: np.ndarray, out_rows: np.ndarray
) -> None:
    """out_rows[slots[i]] = a uniformly drawn entry of `pool`."""
    n = pool.shape[0]
    for i in range(slots.shape[0]):
        out_rows[slots[i]] = pool[min(np.int64(uniforms[i] * n), n - 1)]


@numba.njit(cache=True, nogil=True)
def row_bitmap(rows: np.ndarray, num_rows: int) -> np.ndarray:
    """One bit per item row, set for `rows` (negative rows, unknown ids, are ignored)."""
    bitmap = np.zeros((num_rows >> 3) + 1, np.uint8)
    for r in rows:
        if r >= 0:
            bitmap[r >> 3] |= np.uint8(1 << (r & 7))
    return bitmap


@numba.njit(cache=True, nogil=True)
def hits_in_bitmap(slots: np.ndarray, rows: np.ndarray, bitmap: np.ndarray) -> np.ndarray:
    """The slots whose row is set in `bitmap`."""
    hits = np.empty(slots.shape[0], np.int64)
    n_hits = 0
    for i in range(slots.shape[0]):
        r = rows[slots[i]]
        hits[n_hits] = slots[i]
        n_hits += (bitmap[r >> 3] >> (r & 7)) & 1
    return hits[:n_hits]


@numba.njit(cache=True, nogil=True)
def hits_in_user_items(
    slots: np.ndarray,
    rows: np.ndarray,
    group: int,
    positive_rows: np.ndarray,
    user_rows: np.ndarray,
    indptr: np.ndarray,
    user_items: np.ndarray,
) -> np.ndarray:
    """The slots whose row is their positive's own row or one of its user's items.

    Slot s belongs to positive s // group; `user_items[indptr[u]:indptr[u+1]]` is sorted.
    A slot past the last positive (a call with no positives) is never a hit.
    """
    hits = np.empty(slots.shape[0], np.int64)
    n_hits = 0
    n_pos = positive_rows.shape[0]
    for i in range(slots.shape[0]):
        s = slots[i]
        q = s // group
        if q >= n_pos:
            continue
        row = rows[s]
        hit = row == positive_rows[q]
        u = user_rows[q]
        if u >= 0 and indptr[u + 1] > indptr[u]:
            base = indptr[u]
            end = indptr[u + 1]
            n = end - base
            while n > 1:  # branch-free lower bound (Khuong and Morin)
                half = n >> 1
                base = base + half if user_items[base + half] < row else base
                n -= half
            base += user_items[base] < row
            hit |= base < end and user_items[base] == row
        hits[n_hits] = s
        n_hits += hit
    return hits[:n_hits]
