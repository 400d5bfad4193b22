"""Item and edge tables: every format round-trips, every bad table fails naming file, column, row."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from negseq.errors import NegseqError
from negseq.sampler import EdgeTable, ItemTable


def _items() -> pa.Table:
    return pa.table(
        {
            "id": pa.array([10, 20, 30, 40], pa.int64()),
            "weight": pa.array([1.0, 2.0, 0.5, 3.0]),
            "title": pa.array(["a", "b", "c", "d"]),
            "cate": pa.array([1, 2, 1, 3], pa.int64()),
        }
    )


def _write_gl_items(path: Path, rows: list[tuple], delim: str = ":") -> Path:
    lines = ["id:int64\tweight:float\tfeature:string"]
    lines += [f"{i}\t{w}\t{delim.join(map(str, feats))}" for i, w, feats in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("fmt", ["parquet", "ipc", "csv"])
def test_item_table_round_trips(tmp_path, fmt):
    table = _items()
    path = tmp_path / {"parquet": "items.parquet", "ipc": "items.arrow", "csv": "items.csv"}[fmt]
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "ipc":
        feather.write_feather(table, path)
    else:
        path.write_text("id,weight,title,cate\n10,1.0,a,1\n20,2.0,b,2\n30,0.5,c,1\n40,3.0,d,3\n")
    items = ItemTable.read(path, schema={"cate": pa.int64()})
    assert len(items) == 4
    assert items.ids.tolist() == [10, 20, 30, 40]
    assert items.weights.tolist() == [1.0, 2.0, 0.5, 3.0]
    assert items.table["title"].to_pylist() == ["a", "b", "c", "d"]
    assert items.table["cate"].to_pylist() == [1, 2, 1, 3]
    assert items.schema.field("cate").type == pa.int64()


def test_graphlearn_item_table_splits_features(tmp_path):
    path = _write_gl_items(tmp_path / "item_gl", [(10, 1.0, (10, "a", 1)), (20, 2.0, (20, "", 2))])
    items = ItemTable.read(
        path,
        attr_fields=["item_id", "title", "cate"],
        item_id_field="item_id",
        schema={"title": pa.string(), "cate": pa.int64()},
    )
    assert items.ids.tolist() == [10, 20]
    assert items.table["item_id"].type == pa.int64()
    assert items.table["item_id"].to_pylist() == [10, 20]
    assert items.table["title"].to_pylist() == ["a", None]  # empty string -> null
    assert items.table["cate"].to_pylist() == [1, 2]
    untyped = ItemTable.read(path, attr_fields=["item_id", "title", "cate"])
    assert untyped.table["title"].to_pylist() == ["a", ""]  # strings stay as written without a schema


def test_graphlearn_edge_table(tmp_path):
    path = tmp_path / "edges"
    path.write_text("userid:int64\titemid:int64\tweight:float\n1\t10\t0.5\n2\t20\t1.5\n")
    edges = EdgeTable.read(path)
    assert edges.user_ids.tolist() == [1, 2]
    assert edges.item_ids.tolist() == [10, 20]
    assert edges.weights.tolist() == [0.5, 1.5]


def test_edge_table_parquet_round_trip(tmp_path):
    table = pa.table({"userid": [1, 1, 2], "itemid": [10, 20, 30], "weight": [1.0, 2.0, 3.0]})
    pq.write_table(table, tmp_path / "e.parquet")
    edges = EdgeTable.read(tmp_path / "e.parquet")
    assert edges.item_ids.tolist() == [10, 20, 30] and len(edges) == 3


def _set(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values))


@pytest.mark.parametrize(
    "table, message",
    [
        (_set(_items(), "id", [10, 20, 20, 40]), "column 'id', rows [1, 2]: duplicate id 20"),
        (_set(_items(), "id", pa.array([10, None, 30, 40], pa.int64())), "column 'id', row 1: null id"),
        (_set(_items(), "weight", [1.0, -1.0, 1.0, 1.0]), "column 'weight', row 1: weight -1.0"),
        (_set(_items(), "weight", [1.0, 1.0, float("nan"), 1.0]), "column 'weight', row 2: weight nan"),
        (_set(_items(), "weight", [0.0, 0.0, 0.0, 0.0]), "all weights are zero"),
        (_items().drop_columns(["id"]), "missing column(s) 'id'"),
        (_set(_items(), "id", [1.5, 2.5, 3.5, 4.5]), "column 'id' must hold integer ids"),
    ],
)
def test_bad_item_tables_name_the_problem(table, message):
    with pytest.raises(NegseqError) as err:
        ItemTable.from_arrow(table, source="items.parquet")
    assert message in str(err.value)
    assert "items.parquet" in str(err.value)


def test_unparsable_value_names_file_column_and_row(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("id,weight\n1,1.0\n2,x\n")
    with pytest.raises(NegseqError, match=r"items.csv: column 'weight', row 1: cannot parse 'x'"):
        ItemTable.read(path)
    path.write_text("id,weight\n1,1.0\nabc,1.0\n")
    with pytest.raises(NegseqError, match=r"column 'id', row 1: cannot parse 'abc'"):
        ItemTable.read(path)


def test_graphlearn_feature_count_mismatch(tmp_path):
    path = _write_gl_items(tmp_path / "item_gl", [(1, 1.0, (1, "a")), (2, 1.0, (2,))])
    with pytest.raises(NegseqError, match=r"column 'feature', row 1: 1 values for 2 attr_fields"):
        ItemTable.read(path, attr_fields=["item_id", "title"])


def test_missing_attr_field_named(tmp_path):
    with pytest.raises(NegseqError, match=r"missing column\(s\) 'nope'"):
        ItemTable.from_arrow(_items(), attr_fields=["title", "nope"])


def test_bad_edges_name_the_problem():
    with pytest.raises(NegseqError, match=r"column 'itemid', row 1: null id"):
        EdgeTable.from_arrow(pa.table({"userid": [1, 2], "itemid": pa.array([3, None], pa.int64())}))
    with pytest.raises(NegseqError, match=r"column 'weight', row 0: weight -2.0"):
        EdgeTable.from_arrow(pa.table({"userid": [1], "itemid": [3], "weight": [-2.0]}))
    with pytest.raises(NegseqError, match=r"missing column\(s\) 'userid'"):
        EdgeTable.from_arrow(pa.table({"itemid": [3]}))


def test_dense_rows_map_unknown_ids_to_zero():
    items = ItemTable.from_arrow(_items())
    assert items.dense_rows(np.array([40, 10, 99, -5])).tolist() == [4, 1, 0, 0]


def test_sparse_ids_use_a_hash_lookup():
    ids = np.array([5, 1 << 40, -3, 77], dtype=np.int64)
    items = ItemTable.from_arrow(pa.table({"id": ids}))
    assert items.rows(np.array([77, -3, 1 << 40, 6])).tolist() == [3, 2, 1, -1]
    rng = np.random.default_rng(0)
    many = rng.choice(1 << 50, 50_000, replace=False) - (1 << 49)
    table = ItemTable.from_arrow(pa.table({"id": many}))
    probe = rng.integers(0, len(many), 10_000)
    assert np.array_equal(table.rows(many[probe]), probe)
    with pytest.raises(NegseqError, match=r"rows \[1, 3\]: duplicate id 1099511627776"):
        ItemTable.from_arrow(pa.table({"id": [7, 1 << 40, -2, 1 << 40]}))


def test_attr_field_naming_the_item_id_is_the_id_column(tmp_path):
    pq.write_table(_items(), tmp_path / "items.parquet")
    items = ItemTable.read(
        tmp_path / "items.parquet", attr_fields=["item_id", "title"], item_id_field="item_id"
    )
    gathered = items.attributes(np.array([1, 0]), ["item_id", "title"], "item_id")
    assert gathered.column("item_id").to_pylist() == [20, 10]
    assert gathered.column("title").to_pylist() == ["b", "a"]


def test_attributes_reuse_gathered_ids_only_for_columns_equal_to_id():
    table = pa.table(
        {
            "id": [10, 20, 30],
            "item_id": [10, 20, 30],  # the id again: filled from the caller's gathered ids
            "shifted": [11, 21, 31],  # int64 but not the id: gathered
            "ids_as_int32": pa.array([10, 20, 30], pa.int32()),  # the id, other type: gathered
        }
    )
    items = ItemTable.from_arrow(table)
    rows = np.array([2, 0, 2])
    fields = ["item_id", "shifted", "ids_as_int32"]
    wrong_ids = np.array([-1, -2, -3])  # what a reused column would show
    gathered = items.attributes(rows, fields, "item_id", ids=wrong_ids)
    assert gathered.column("item_id").to_pylist() == [-1, -2, -3]
    assert gathered.column("shifted").to_pylist() == [31, 11, 31]
    assert gathered.column("ids_as_int32").to_pylist() == [30, 10, 30]
    assert gathered.schema.field("ids_as_int32").type == pa.int32()
    assert items.attributes(rows, fields, "item_id").column("item_id").to_pylist() == [30, 10, 30]
