"""numba kernels of the samplers' hot loops: alias tables, draws with redraw rounds.

A call's draws run in one kernel: round 0 draws every slot, each later round redraws
the slots whose draw hit an excluded item, with the next words of the call's Philox
stream, so the negatives are a pure function of the call's key. Draws and checks are
separate passes with no data-dependent branch in the draw loop, so the CPU overlaps the
random loads of many draws (the loop is memory-bound).
"""

from __future__ import annotations

import numba
import numpy as np

from negseq.sampler import philox
from negseq.sampler.intrinsics import mulhi, prefetch

_COIN_SCALE = 4294967296.0  # 2**32: keep thresholds are fixed-point fractions of it
_COIN_SHIFT = np.uint64(32)
_MAX_THRESHOLD = 0xFFFFFFFF
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_PREFETCH_AHEAD = 4  # positives
_PICK_AHEAD = 32  # draws; on the 1M-item bench 16 is 20% slower, 64 the same
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SIGNATURE_WORDS = 4  # 256 bits a user
_SIGNATURE_SHIFT = np.uint64(56)


@numba.njit(cache=True, nogil=True)
def build_alias_table(weights: np.ndarray) -> np.ndarray:
    """Vose's alias table, flattened [2n] uint32: (keep threshold, alias column) per column.

    Column j is drawn uniformly and kept when the draw's 32-bit coin is below
    table[2j], else column table[2j + 1] is taken. Every column, the last
    included, is reachable directly, so item i is drawn with probability
    weights[i] / sum(weights), to within 2**-32 per column. Both values share 8 bytes,
    so a draw costs one random load.
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
    # Leftovers are 1 up to rounding; their alias is themselves, so the coin never matters.
    for i in range(n_large):
        prob[large[i]] = 1.0
    for i in range(n_small):
        prob[small[i]] = 1.0
    table = np.empty(2 * n, np.uint32)
    for i in range(n):
        table[2 * i] = min(np.int64(prob[i] * _COIN_SCALE), _MAX_THRESHOLD)
        table[2 * i + 1] = alias[i]
    return table


@numba.njit(inline="always")
def _pick(word: np.uint64, table: np.ndarray, pool: np.ndarray) -> np.int64:
    """The item row drawn by one random 64-bit word, all integer arithmetic.

    The high word of word * n is the column (uniform, bias n / 2**64), the next 32 bits
    of the product are the coin against the column's keep threshold. With an empty
    table the draw is uniform over `pool`; otherwise the column maps through `pool`
    when there is one. `table` is the alias table flattened to [2n].
    """
    if table.shape[0] == 0:
        return np.int64(pool[mulhi(word, np.uint64(pool.shape[0]))])
    n = np.uint64(table.shape[0] >> 1)
    j = np.int64(mulhi(word, n))
    coin = (word * n) >> _COIN_SHIFT
    alias = np.int64(table[2 * j + 1])
    # Arithmetic select: a branch on the coin mispredicts half the time and stalls the loads.
    column = alias + (j - alias) * np.int64(coin < table[2 * j])
    return np.int64(pool[column]) if pool.shape[0] else column


@numba.njit(inline="always")
def _pick_all(words: np.ndarray, drawn: np.ndarray, table: np.ndarray, pool: np.ndarray) -> None:
    """drawn[i] = _pick(words[i], ...), prefetching the table (or pool) entry of a later draw.

    Without it, a draw's random load waits for the CPU to reach it; with it, about
    `_PICK_AHEAD` loads are in flight (the draws take half the time on the 1M-item bench).
    """
    m = words.shape[0]
    last = m - 1
    if table.shape[0]:
        columns = np.uint64(table.shape[0] >> 1)
        for i in range(m):
            prefetch(table, 2 * np.int64(mulhi(words[min(i + _PICK_AHEAD, last)], columns)))
            drawn[i] = _pick(words[i], table, pool)
    else:
        columns = np.uint64(pool.shape[0])
        for i in range(m):
            prefetch(pool, np.int64(mulhi(words[min(i + _PICK_AHEAD, last)], columns)))
            drawn[i] = _pick(words[i], table, pool)


@numba.njit(inline="always")
def _redraw_rounds(rows, table, pool, key0, key1, max_retries, keep_hits, context):
    """Fill `rows` by drawing, then redraw hits for up to `max_retries` rounds.

    `keep_hits(slots, rows, context)` moves the slots (ascending) whose draw must be
    redrawn to the front of `slots`, in order, and returns how many there are.
    Returns (redraws, the slots whose kept draw is still excluded: the collisions kept).
    """
    n = rows.shape[0]
    slots = np.arange(n).astype(np.int32)
    words = np.empty(n, np.uint64)
    drawn = np.empty(n, np.int32)
    counter = 0
    redraws = 0
    for round_ in range(max_retries + 1):
        m = slots.shape[0]
        if m == 0:
            break
        if round_ > 0:
            redraws += m
        philox.fill(key0, key1, counter, words[:m])
        counter += m
        # Contiguous stores only: stores through `slots` here would make every table load
        # wait on the addresses of the stores before it.
        _pick_all(words[:m], drawn[:m], table, pool)
        for i in range(m):
            rows[slots[i]] = drawn[i]
        slots = slots[: keep_hits(slots, rows, context)]
    return redraws, slots.copy()


@numba.njit(cache=True, nogil=True)
def row_bitmap(rows: np.ndarray, num_rows: int) -> np.ndarray:
    """One bit per item row, set for `rows` (negative rows, unknown ids, are ignored)."""
    bitmap = np.zeros((num_rows >> 3) + 1, np.uint8)
    for r in rows:
        if r >= 0:
            bitmap[r >> 3] |= np.uint8(1 << (r & 7))
    return bitmap


@numba.njit(cache=True, nogil=True)
def row_bitmap_mass(rows: np.ndarray, num_rows: int, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """`row_bitmap(rows, num_rows)` and the summed `weights` of its distinct rows (the weight an
    exclusion of those rows removes), in one pass."""
    bitmap = np.zeros((num_rows >> 3) + 1, np.uint8)
    mass = 0.0
    for r in rows:
        if r >= 0:
            bit = np.uint8(1 << (r & 7))
            if not bitmap[r >> 3] & bit:
                bitmap[r >> 3] |= bit
                mass += weights[r]
    return bitmap, mass


@numba.njit(inline="always")
def _no_hits(slots, rows, context):
    return 0


@numba.njit(cache=True, nogil=True)
def draw_rows(
    rows: np.ndarray, table: np.ndarray, pool: np.ndarray, key0: np.uint64, key1: np.uint64
) -> None:
    """Draw every slot once, excluding nothing (the words are those of the excluding kernels'
    first round, so a slot that none of them would redraw gets the same row)."""
    _redraw_rounds(rows, table, pool, key0, key1, 0, _no_hits, 0)


@numba.njit(inline="always")
def _bit(bitmap: np.ndarray, row) -> np.int64:
    return np.int64((bitmap[row >> 3] >> (row & 7)) & 1)


@numba.njit(inline="always")
def _hits_in_bitmap(slots, rows, bitmap):
    n_hits = 0
    for i in range(slots.shape[0]):  # compact in place, branch-free
        s = slots[i]
        slots[n_hits] = s
        n_hits += _bit(bitmap, rows[s])
    return n_hits


@numba.njit(cache=True, nogil=True)
def draw_excluding_rows(
    rows: np.ndarray,
    table: np.ndarray,
    pool: np.ndarray,
    excluded: np.ndarray,
    key0: np.uint64,
    key1: np.uint64,
    max_retries: int,
) -> tuple[int, np.ndarray]:
    """Draw every slot, redrawing rows set in the `excluded` bitmap (the call's positives)."""
    return _redraw_rounds(rows, table, pool, key0, key1, max_retries, _hits_in_bitmap, excluded)


@numba.njit(inline="always")
def _signature_bit(row) -> np.uint64:
    """Which of a user's 256 signature bits an item row sets: 0..255 from a multiplicative hash."""
    return (np.uint64(row) * _GOLDEN) >> _SIGNATURE_SHIFT


@numba.njit(cache=True, nogil=True)
def user_signatures(indptr: np.ndarray, user_items: np.ndarray) -> np.ndarray:
    """A 256-bit set of hashed item rows per user ([users * 4] uint64), a Bloom filter of one hash.

    A clear bit proves a draw is not one of the user's items without searching the list;
    with 50 items a user, about 18% of draws still need the search.
    """
    num_users = indptr.shape[0] - 1
    signatures = np.zeros(num_users * _SIGNATURE_WORDS, np.uint64)
    for u in range(num_users):
        for e in range(indptr[u], indptr[u + 1]):
            bit = _signature_bit(user_items[e])
            signatures[u * _SIGNATURE_WORDS + (bit >> np.uint64(6))] |= np.uint64(1) << (bit & np.uint64(63))
    return signatures


@numba.njit(inline="always")
def _in_sorted(values: np.ndarray, lo: np.int64, hi: np.int64, row) -> bool:
    """Whether row is in the ascending values[lo:hi] (branch-free lower bound, Khuong and Morin)."""
    n = hi - lo
    if n == 0:
        return False
    base = lo
    while n > 1:
        half = n >> 1
        base = base + half if values[base + half] < row else base
        n -= half
    base += values[base] < row
    return base < hi and values[base] == row


@numba.njit(cache=True, nogil=True)
def distinct_mass(indptr: np.ndarray, user_items: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """float64 [users]: each user's summed `probability` over its distinct items (ascending lists)."""
    num_users = indptr.shape[0] - 1
    mass = np.zeros(num_users)
    for u in range(num_users):
        for e in range(indptr[u], indptr[u + 1]):
            if e == indptr[u] or user_items[e] != user_items[e - 1]:
                mass[u] += probability[user_items[e]]
    return mass


@numba.njit(cache=True, nogil=True)
def in_user_items(
    rows: np.ndarray, user_rows: np.ndarray, indptr: np.ndarray, user_items: np.ndarray
) -> np.ndarray:
    """bool [Q]: whether rows[q] is one of user user_rows[q]'s items (an unknown user, -1, has none)."""
    out = np.zeros(rows.shape[0], np.bool_)
    for q in range(rows.shape[0]):
        u = user_rows[q]
        if u >= 0:
            out[q] = _in_sorted(user_items, indptr[u], indptr[u + 1], rows[q])
    return out


@numba.njit(inline="always")
def _hits_in_user_items(slots, rows, context):
    """Slots whose row is their positive itself or one of that positive's user's items.

    Slot s belongs to positive s // group (slots past the last positive never hit). The
    user's signature settles most draws; the rest search the user's sorted list.
    """
    group, positive_rows, user_rows, indptr, user_items, signatures = context
    # s // group as one multiply-high (Lemire): exact for s < 2**32 and group >= 2
    divisor = _ALL_ONES // np.uint64(max(group, 2)) + np.uint64(1)
    n_pos = positive_rows.shape[0]
    n_hits = 0
    for i in range(slots.shape[0]):
        s = slots[i]
        slots[n_hits] = s
        q = np.int64(s) if group == 1 else np.int64(mulhi(np.uint64(s), divisor))
        if q >= n_pos:
            continue
        # Start the misses of later positives now: their signature and list start, and the
        # indptr entry that locates the list of the one after.
        near = max(user_rows[min(q + _PREFETCH_AHEAD, n_pos - 1)], 0)
        far = max(user_rows[min(q + 2 * _PREFETCH_AHEAD, n_pos - 1)], 0)
        prefetch(signatures, near * _SIGNATURE_WORDS)
        prefetch(user_items, indptr[near])
        prefetch(indptr, far)
        row = rows[s]
        hit = row == positive_rows[q]
        u = user_rows[q]
        if u >= 0:
            bit = _signature_bit(row)
            word = signatures[u * _SIGNATURE_WORDS + (bit >> np.uint64(6))]
            if (word >> (bit & np.uint64(63))) & np.uint64(1):
                hit |= _in_sorted(user_items, indptr[u], indptr[u + 1], row)
        n_hits += hit
    return n_hits


@numba.njit(cache=True, nogil=True)
def draw_excluding_user_items(
    rows: np.ndarray,
    table: np.ndarray,
    pool: np.ndarray,
    group: int,
    positive_rows: np.ndarray,
    user_rows: np.ndarray,
    indptr: np.ndarray,
    user_items: np.ndarray,
    signatures: np.ndarray,
    key0: np.uint64,
    key1: np.uint64,
    max_retries: int,
) -> tuple[int, np.ndarray]:
    """Draw every slot, redrawing a slot's positive and its user's positive items."""
    context = (group, positive_rows, user_rows, indptr, user_items, signatures)
    return _redraw_rounds(rows, table, pool, key0, key1, max_retries, _hits_in_user_items, context)
