"""The prefetching gathers against Arrow's `take`, the reference they replace."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from negseq.sampler import gather

_FIXED_WIDTH = [
    pa.int8(),
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.uint8(),
    pa.uint64(),
    pa.float16(),
    pa.float32(),
    pa.float64(),
    pa.date32(),
    pa.timestamp("us", tz="UTC"),
    pa.duration("ms"),
]
_VARIABLE_WIDTH = [pa.string(), pa.large_string(), pa.binary(), pa.large_binary()]


@st.composite
def arrays_and_rows(draw, types):
    """An array (maybe a slice, maybe with nulls) of one of `types` and in-range rows into it."""
    kind = draw(st.sampled_from(types))
    length = draw(st.integers(1, 60))
    nulls = draw(st.booleans())
    if kind in _VARIABLE_WIDTH:
        values = draw(st.lists(st.text(max_size=40), min_size=length, max_size=length))
        if kind in (pa.binary(), pa.large_binary()):
            values = [v.encode() for v in values]
    else:
        values = draw(st.lists(st.integers(0, 100), min_size=length, max_size=length))
    if nulls:
        values[draw(st.integers(0, length - 1))] = None
    if kind in _VARIABLE_WIDTH:
        array = pa.array(values, type=kind)
    else:  # same-width integers, reinterpreted: any bit pattern is a valid value of these types
        array = pa.array(values, type=getattr(pa, f"int{kind.bit_width}")()).view(kind)
    start = draw(st.integers(0, length - 1))
    array = array.slice(start)  # a non-zero offset into the buffers
    rows = draw(st.lists(st.integers(0, len(array) - 1), max_size=200))
    return array, np.array(rows, np.int64)


@settings(max_examples=150, deadline=None)
@given(arrays_and_rows(_FIXED_WIDTH + _VARIABLE_WIDTH))
def test_take_equals_arrow_take(case):
    array, rows = case
    got = gather.take(array, rows)
    assert got.type == array.type
    assert got.equals(array.take(pa.array(rows, pa.int64())))


def test_take_keeps_other_types_through_arrow():
    for array in (
        pa.array([True, False, None]),
        pa.array([[1], [2, 3], []]),
        pa.array(["a", "b"]).dictionary_encode(),
    ):
        rows = np.array([2, 0, 1, 1]) % len(array)
        assert gather.take(array, rows).equals(array.take(pa.array(rows)))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=50), st.data())
def test_take_numpy_equals_fancy_indexing(values, data):
    values = np.array(values, np.int64)
    rows = np.array(data.draw(st.lists(st.integers(0, len(values) - 1), max_size=100)), np.int64)
    np.testing.assert_array_equal(gather.take_numpy(values, rows), values[rows])


@pytest.mark.parametrize("bad", [-1, 5])
def test_out_of_range_row_is_named(bad):
    rows = np.array([0, 1, bad])
    for call in (
        lambda: gather.take(pa.array(["a", "b", "c", "d", "e"]), rows),
        lambda: gather.take(pa.array(np.arange(5)), rows),
        lambda: gather.take_numpy(np.arange(5), rows),
    ):
        with pytest.raises(IndexError, match=rf"rows\[2\] = {bad} is out of range for a column of 5 rows"):
            call()


def test_take_reads_a_buffer_longer_than_its_values():
    # A valid array over a buffer whose size is no multiple of the value width (foreign or
    # hand-made buffers): Arrow takes from it, so the kernels must too.
    ten_bytes = pa.py_buffer(np.arange(2, dtype=np.int64).tobytes()[:10])
    ints = pa.Array.from_buffers(pa.int64(), 1, [None, ten_bytes])
    offsets = pa.py_buffer(np.array([0, 1, 3], np.int32).tobytes() + b"\0")
    strings = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"abc")])
    for array in (ints, strings, strings.slice(1)):
        rows = np.zeros(3, np.int64)
        assert gather.take(array, rows).equals(array.take(pa.array(rows)))


def test_take_refuses_offsets_outside_the_data():
    # Offsets past the data buffer pass Arrow's cheap validation (only the last offset is
    # checked); the copy must not read beyond the buffer.
    offsets = pa.py_buffer(np.array([0, 100_000, 1], np.int32))
    array = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"x")])
    message = r"row 0: bytes \[0, 100000\) outside the column's 1 data bytes"
    with pytest.raises(pa.ArrowInvalid, match=message):
        gather.take(array, np.array([0, 1]))
