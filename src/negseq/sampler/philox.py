"""numpy's Philox4x64-10 stream, computed inside numba kernels.

A sampler call is keyed by `numpy.random.Philox(key=[seed, epoch << 32 | batch_index])`.
Drawing its random words in the kernel that uses them saves a Python round trip per
redraw round; `fill(k0, k1, start, out)` writes exactly
`Philox(key=[k0, k1]).random_raw(start + len(out))[start:]`, which the tests check.
"""

from __future__ import annotations

import numba
import numpy as np

from negseq.sampler.intrinsics import mulhi

_M0 = np.uint64(0xD2E7470EE14C6C93)
_M1 = np.uint64(0xCA5A826395121157)
_W0 = np.uint64(0x9E3779B97F4A7C15)
_W1 = np.uint64(0xBB67AE8584CAA73B)
_ROUNDS = 10


@numba.njit(inline="always")
def _block(counter: np.uint64, k0: np.uint64, k1: np.uint64):
    """The four 64-bit outputs for one counter value (upper counter words are 0)."""
    c0, c1, c2, c3 = counter, np.uint64(0), np.uint64(0), np.uint64(0)
    for r in range(_ROUNDS):
        r64 = np.uint64(r)
        hi0, lo0 = mulhi(_M0, c0), _M0 * c0
        hi1, lo1 = mulhi(_M1, c2), _M1 * c2
        c0, c1, c2, c3 = hi1 ^ c1 ^ (k0 + r64 * _W0), lo1, hi0 ^ c3 ^ (k1 + r64 * _W1), lo0
    return c0, c1, c2, c3


@numba.njit(cache=True, nogil=True)
def fill(k0: np.uint64, k1: np.uint64, start: np.int64, out: np.ndarray) -> None:
    """out[i] = 64-bit word number start + i of numpy's Philox(key=[k0, k1]) stream.

    numpy's k-th output is lane k % 4 of the block for counter k // 4 + 1.
    """
    n = out.shape[0]
    position = start
    i = 0
    while i < n:
        lanes = _block(np.uint64(position // 4 + 1), k0, k1)
        lane = position % 4
        if lane == 0 and i + 4 <= n:
            out[i], out[i + 1], out[i + 2], out[i + 3] = lanes
            i += 4
            position += 4
            continue
        while lane < 4 and i < n:
            out[i] = lanes[lane]
            i += 1
            lane += 1
            position += 1
