"""Edge tables streamed in batches into CSRs: a Parquet file of many row groups gives the same
CSR as the table in memory, and a bad row anywhere is named by its row in the whole file."""

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negseq.errors import NegseqError
from negseq.sampler import EdgeTable, ItemTable, arrow_numpy, tables
from negseq.sampler.csr import _UserCounter, hard_items_csr, positive_items_csr

NUM_ITEMS = 300


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of 7 rows: every table here spans many batches and row groups."""
    monkeypatch.setattr(tables, "EDGE_BATCH_ROWS", 7)


def _items() -> ItemTable:
    ids = np.arange(NUM_ITEMS, dtype=np.int64)[::-1] * 1_000_003 + 11  # sparse: a hash index
    return ItemTable.from_arrow(pa.table({"id": ids, "weight": np.ones(NUM_ITEMS)}))


def _edge_table(num_edges: int, seed: int, user_ids: np.ndarray | None = None) -> pa.Table:
    rng = np.random.default_rng(seed)
    items = _items()
    users = rng.choice(user_ids if user_ids is not None else np.arange(5, 45), num_edges)  # unsorted
    return pa.table(
        {
            "userid": users.astype(np.int64),
            "itemid": items.ids[rng.integers(0, NUM_ITEMS, num_edges)],  # repeats: ties on item id
            "weight": rng.integers(0, 4, num_edges).astype(np.float64) / 2,  # ties on weight
        }
    )


def _write(table: pa.Table, path, row_group_size: int = 50):
    pq.write_table(table, path, row_group_size=row_group_size)
    assert pq.ParquetFile(path).metadata.num_row_groups > 1
    return path


def _reference(table: pa.Table, items: ItemTable, ranked: bool):
    """The CSR by plain numpy: users sorted, each user's items ascending or ranked (stable)."""
    users = table["userid"].to_numpy()
    item_ids = table["itemid"].to_numpy()
    rows = items.rows(item_ids)
    distinct, user_rows = np.unique(users, return_inverse=True)
    if ranked:
        order = np.lexsort((item_ids, -table["weight"].to_numpy(), user_rows))
    else:
        order = np.lexsort((rows, user_rows))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(user_rows, minlength=len(distinct)))])
    return distinct, indptr, rows[order].astype(np.int32)


def _assert_csr(csr, expected):
    distinct, indptr, rows = expected
    assert csr.users.ids.tolist() == distinct.tolist()
    assert csr.indptr.tolist() == indptr.tolist()
    assert csr.items.dtype == np.int32
    assert csr.items.tolist() == rows.tolist()


@pytest.mark.parametrize("user_ids", [None, np.array([-3, 2**40, 17, 5])], ids=["compact", "sparse"])
def test_streamed_parquet_csr_equals_in_memory(tmp_path, small_batches, user_ids):
    items = _items()
    table = _edge_table(400, seed=1, user_ids=user_ids)
    path = _write(table, tmp_path / "edges.parquet")
    from_file = EdgeTable.read(path)
    in_memory = EdgeTable.from_arrow(table)
    for ranked, build in ((False, positive_items_csr), (True, hard_items_csr)):
        expected = _reference(table, items, ranked)
        _assert_csr(build(from_file, items), expected)
        _assert_csr(build(in_memory, items), expected)
    assert from_file._arrays is None  # building streamed the file, it loaded no arrays


def test_file_backed_edge_table_reads_its_arrays_when_asked(tmp_path, small_batches):
    table = _edge_table(100, seed=2)
    edges = EdgeTable.read(_write(table, tmp_path / "e.parquet", 30), keep_weights=False)
    assert len(edges) == 100 and not edges.has_weights and edges.weights is None
    assert edges.user_ids.tolist() == table["userid"].to_pylist()
    assert edges.item_ids.tolist() == table["itemid"].to_pylist()
    weighted = EdgeTable.read(tmp_path / "e.parquet")
    assert weighted.weights.tolist() == table["weight"].to_pylist()
    copy = pickle.loads(pickle.dumps(weighted))
    assert copy.item_ids.tolist() == table["itemid"].to_pylist() and copy.source == weighted.source


def test_hard_csr_needs_weights(tmp_path):
    edges = EdgeTable.read(_write(_edge_table(100, seed=3), tmp_path / "e.parquet"), keep_weights=False)
    with pytest.raises(ValueError, match="need their weights"):
        hard_items_csr(edges, _items())


def test_file_removed_after_read_still_streams_changed_file_is_an_error(tmp_path, small_batches):
    items = _items()
    table = _edge_table(120, seed=4)
    path = _write(table, tmp_path / "e.parquet")
    edges = EdgeTable.read(path)
    path.unlink()  # the open file still holds what was validated
    _assert_csr(positive_items_csr(edges, items), _reference(table, items, ranked=False))
    changed = EdgeTable.read(_write(table, tmp_path / "f.parquet"))
    _write(_edge_table(130, seed=5), tmp_path / "f.parquet")  # rewritten in place: same inode
    with pytest.raises(NegseqError, match=r"f.parquet: the file changed after it was read"):
        positive_items_csr(changed, items)


@pytest.mark.parametrize(
    "columns, message",
    [
        (
            {"userid": pa.float64(), "itemid": pa.int64()},
            "column 'userid' must hold integer ids, found double",
        ),
        (
            {"userid": pa.int64(), "itemid": pa.int64(), "weight": pa.bool_()},
            "column 'weight' must be numeric",
        ),
    ],
)
def test_empty_file_with_a_bad_column_type_fails_as_from_arrow_does(tmp_path, columns, message):
    path = tmp_path / "edges.parquet"
    pq.write_table(pa.schema(columns).empty_table(), path)
    for read in (
        lambda: EdgeTable.read(path),
        lambda: EdgeTable.from_arrow(pq.read_table(path), source=str(path)),
    ):
        with pytest.raises(NegseqError, match=f"{path}: {message}"):
            read()


def test_missing_parquet_file_is_named(tmp_path):
    path = tmp_path / "none.parquet"
    for kwargs in ({}, {"format": "parquet"}):
        with pytest.raises(NegseqError, match=f"{path}: no such file or folder"):
            EdgeTable.read(path, **kwargs)


def _with_value(table: pa.Table, name: str, row: int, value, typ=None) -> pa.Table:
    values = table[name].to_pylist()
    values[row] = value
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, typ))


@pytest.mark.parametrize(
    "name, value, typ, message",
    [
        ("userid", None, pa.int64(), "column 'userid', row 137: null id"),
        ("itemid", None, pa.int64(), "column 'itemid', row 137: null id"),
        ("weight", -1.0, None, "column 'weight', row 137: weight -1.0 must be finite"),
        ("weight", float("nan"), None, "column 'weight', row 137: weight nan"),
        ("weight", None, pa.float64(), "column 'weight', row 137: null weight"),
    ],
)
def test_bad_row_in_a_later_row_group_names_its_row(tmp_path, small_batches, name, value, typ, message):
    table = _with_value(_edge_table(200, seed=6), name, 137, value, typ)  # row group 2 of 4, batch 20
    path = _write(table, tmp_path / "edges.parquet")
    with pytest.raises(NegseqError) as err:
        EdgeTable.read(path)
    assert f"{path}: {message}" in str(err.value)


def test_unparsable_string_id_in_a_later_batch_names_its_row(tmp_path, small_batches):
    table = _edge_table(60, seed=7)
    users = [str(u) for u in table["userid"].to_pylist()]
    users[44] = "u44"
    table = table.set_column(0, "userid", pa.array(users))
    path = _write(table, tmp_path / "edges.parquet", 20)
    with pytest.raises(NegseqError, match=r"column 'userid', row 44: cannot parse 'u44'"):
        EdgeTable.read(path)


def test_unknown_item_in_a_later_batch_names_its_row_and_counts_all(tmp_path, small_batches):
    items = _items()
    table = _with_value(_edge_table(200, seed=8), "itemid", 150, 5)
    table = _with_value(table, "itemid", 190, 6)
    path = _write(table, tmp_path / "edges.parquet")
    for edges in (EdgeTable.read(path), EdgeTable.from_arrow(table, source=str(path))):
        for build in (positive_items_csr, hard_items_csr):
            with pytest.raises(NegseqError) as err:
                build(edges, items)
            assert str(err.value) == (
                f"{path}: column 'itemid', row 150: item 5 is not in the item table <arrow> (2 such edges)"
            )


@pytest.mark.parametrize(
    "batches",
    [
        [[3, 1, 3], [7, 1]],  # compact throughout
        [[3, 1, 3], [-2, 3], [9]],  # turns sparse in the second batch
        [[2**40, 5], [5, 6]],  # sparse from the start
        [[], [4, 4]],
    ],
)
def test_user_counter_counts_distinct_users(batches):
    counter = _UserCounter(sum(map(len, batches)))
    for batch in batches:
        counter.add(np.array(batch, np.int64))
    ids, counts = counter.result()
    expected_ids, expected_counts = np.unique(np.concatenate(batches).astype(np.int64), return_counts=True)
    assert ids.dtype == np.int64 and ids.tolist() == expected_ids.tolist()
    assert counts.tolist() == expected_counts.tolist()


def test_numeric_values_views_chunks_and_slices():
    chunked = pa.chunked_array([pa.array([1, 2, 3], pa.int32()).slice(1), pa.array([7], pa.int32())])
    assert arrow_numpy.numeric_values(chunked).tolist() == [2, 3, 7]
    sliced = pa.array([1.5, 2.5, 3.5]).slice(1)
    view = arrow_numpy.numeric_values(sliced)
    assert view.tolist() == [2.5, 3.5] and view.dtype == np.float64 and not view.flags.owndata
    assert arrow_numpy.numeric_values(pa.chunked_array([], pa.uint16())).dtype == np.uint16
    assert arrow_numpy.arrow_int64(np.array([4, 5])).to_pylist() == [4, 5]


@pytest.mark.timeout(120)
def test_loading_from_parquet_does_not_import_pandas(tmp_path):
    """pyarrow's to_numpy and pa.array(ndarray) import pandas (30-50 MiB) when it is installed."""
    pq.write_table(pa.table({"id": np.arange(10), "weight": np.ones(10)}), tmp_path / "items.parquet")
    edges = pa.table({"userid": np.arange(10) % 3, "itemid": np.arange(10), "weight": np.ones(10)})
    pq.write_table(edges, tmp_path / "edges.parquet")
    script = textwrap.dedent(
        f"""
        import sys
        from negseq import sampler as ns
        items = ns.ItemTable.read({str(tmp_path / "items.parquet")!r})
        edges = ns.EdgeTable.read({str(tmp_path / "edges.parquet")!r})
        ns.HardNegativeSamplerV2(
            items, edges, edges, num_hard_sample=2, num_sample=4, item_id_field="id", user_id_field="u"
        )
        print("pandas" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=110, check=True
    )
    assert out.stdout.strip() == "False"


def test_parquet_file_read_a_column_at_a_time_equals_arrow_read(tmp_path, small_batches):
    table = pa.table(
        {
            "id": pa.array(range(40), pa.int64()),
            "title": pa.array([None if i % 5 == 0 else f"t{i}" * (i % 3) for i in range(40)]),
            "tags": pa.array([[i, i + 1] for i in range(40)]),
            "score": pa.array([i / 4 for i in range(40)], pa.float32()),
        }
    ).replace_schema_metadata({"origin": "test"})
    path = _write(table, tmp_path / "items.parquet", 9)
    read = tables.read_table(path)
    assert read.equals(pq.read_table(path), check_metadata=True)
    assert all(column.num_chunks == 1 for column in read.columns)
    empty = tmp_path / "empty.parquet"
    pq.write_table(table.slice(0, 0), empty)
    assert tables.read_table(empty).equals(pq.read_table(empty), check_metadata=True)


def test_parquet_file_with_repeated_column_names_reads_whole(tmp_path):
    table = pa.Table.from_arrays([pa.array([1, 2]), pa.array(["a", "b"])], names=["id", "id"])
    pq.write_table(table, tmp_path / "dup.parquet")
    assert tables.read_table(tmp_path / "dup.parquet").equals(table)
