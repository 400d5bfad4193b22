"""The samplers' numba kernels against plain references: numpy's Philox stream, Python set checks."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from negseq.sampler import kernels, philox

U64 = st.integers(0, 2**64 - 1)


@settings(max_examples=60, deadline=None)
@given(key0=U64, key1=U64, start=st.integers(0, 600), n=st.integers(0, 70))
def test_philox_words_are_numpys_philox_stream(key0, key1, start, n):
    expected = np.random.Philox(key=np.array([key0, key1], np.uint64)).random_raw(start + n)[start:]
    got = np.empty(n, np.uint64)
    philox.fill(np.uint64(key0), np.uint64(key1), start, got)
    assert np.array_equal(got, expected)


@st.composite
def user_lists(draw):
    num_items = draw(st.integers(1, 300))
    num_users = draw(st.integers(1, 6))
    lists = [
        sorted(draw(st.sets(st.integers(0, num_items - 1), max_size=min(num_items, 80))))
        for _ in range(num_users)
    ]
    q = draw(st.integers(0, 12))
    positives = draw(st.lists(st.integers(0, num_items - 1), min_size=q, max_size=q))
    users = draw(st.lists(st.integers(-1, num_users - 1), min_size=q, max_size=q))  # -1: unknown user
    group = draw(st.integers(1, 9))
    total = draw(st.integers(0, group * max(q, 1) + 3))
    return num_items, lists, positives, users, group, total


@settings(max_examples=80, deadline=None)
@given(case=user_lists(), seed=U64)
def test_user_item_exclusion_matches_a_set_reference(case, seed):
    num_items, lists, positives, users, group, total = case
    indptr = np.cumsum([0] + [len(items) for items in lists]).astype(np.int64)
    user_items = np.array([i for items in lists for i in items], np.int32)
    rows = np.empty(total, np.int64)
    _, kept = kernels.draw_excluding_user_items(
        rows,
        np.empty(0, np.uint32),  # uniform over the pool
        np.arange(num_items, dtype=np.int32),
        group,
        np.array(positives, np.int64),
        np.array(users, np.int64),
        indptr,
        user_items,
        kernels.user_signatures(indptr, user_items),
        np.uint64(seed),
        np.uint64(1),
        0,  # no redraws: `kept` holds the first round's hits
    )
    expected = []
    for slot, row in enumerate(rows.tolist()):
        q = slot // group
        if q < len(positives):
            own = set(lists[users[q]]) if users[q] >= 0 else set()
            if row == positives[q] or row in own:
                expected.append(slot)
    assert kept.tolist() == expected
    assert ((rows >= 0) & (rows < num_items)).all()


def test_alias_thresholds_reproduce_the_weights():
    weights = np.random.default_rng(0).random(1000) ** 3
    table = kernels.build_alias_table(weights).astype(np.float64)
    keep, alias = table[0::2] / 2**32, table[1::2].astype(np.int64)
    # Column j gives itself with keep[j] and its alias with 1 - keep[j], each column 1/n.
    mass = keep.copy()
    np.add.at(mass, alias, 1.0 - keep)
    np.testing.assert_allclose(mass / len(weights), weights / weights.sum(), atol=len(weights) * 2**-32)
