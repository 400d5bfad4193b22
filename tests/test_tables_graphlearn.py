"""graph-learn tables exactly as TorchEasyRec's docs and tests write them, read by position.

Each fixture copies the writer of a TorchEasyRec source (header, delimiters, type names, row
format), cited above it, so these tables are the files a TorchEasyRec user already has.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from negseq.candidates.flatten import flatten_id_column
from negseq.errors import NegseqError
from negseq.sampler import EdgeTable, ItemTable, NegativeSampler, build_sampler, read_table

ITEM_HEADER = "id:int64\tweight:float\tattrs:string"  # TorchEasyRec's docs and tests
EDGE_HEADER = "userid:int64\titemid:int64\tweight:float"
GL_INT_TYPES = ["int", "int32", "long", "int64"]
GL_FLOAT_TYPES = ["float", "double"]


def _write(path: Path, header: str, rows: list[str]) -> Path:
    """Written as TorchEasyRec's tests do: f.write(header + "\\n"), then one f.write per row."""
    with path.open("w") as f:
        f.write(header + "\n")
        for row in rows:
            f.write(row + "\n")
    return path


def _sampler_test_items(path: Path, id_type: str = "int64") -> Path:
    # tzrec/datasets/sampler_test.py _create_item_gl_data
    return _write(
        path,
        f"id:{id_type}\tweight:float\tattrs:string",
        [f"{i}\t{1}\t{i}:{i + 1000}:我们{i}" for i in range(100)],
    )


def _sampler_test_users(path: Path) -> Path:
    # tzrec/datasets/sampler_test.py _create_user_gl_data
    return _write(path, "id:int64\tweight:float", [f"{i}\t{1}" for i in range(100)])


def _sampler_test_clk_edges(path: Path) -> Path:
    # tzrec/datasets/sampler_test.py _create_clk_edge_gl_data
    return _write(path, "userid:int64\titemid:int64\tweight:float", [f"{i}\t{i}\t{1}" for i in range(100)])


def _sampler_test_noclk_edges(path: Path) -> Path:
    # tzrec/datasets/sampler_test.py _create_noclk_edge_gl_data
    return _write(
        path, "userid:int64\titemid:int64\tweight:float", [f"{i}\t{99 - i}\t{1}" for i in range(100)]
    )


def _dssm_doc_items(path: Path) -> Path:
    # docs/source/models/dssm.md: "id:int64\tweight:float\tattrs:string", the attrs of
    # attr_fields adgroup_id, cate_id, campaign_id, customer, brand, price joined by "\x02"
    # (attr_delimiter: "\x02" in the doc's negative_sampler and examples/dssm_taobao.config)
    rows = [
        f"{i}\t{0.5 + i % 3}\t" + "\x02".join([str(i), str(i % 7), str(i * 10), f"c{i}", "", f"{i * 1.5}"])
        for i in range(1, 21)
    ]
    return _write(path, "id:int64\tweight:float\tattrs:string", rows)


DSSM_ATTRS = ["adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price"]


def test_sampler_test_item_table_by_position(tmp_path):
    items = ItemTable.read(
        _sampler_test_items(tmp_path / "item_gl"),
        attr_fields=["int_a", "float_b", "str_c"],
        schema={"int_a": pa.int64(), "float_b": pa.float64(), "str_c": pa.string()},
        item_id_field="item_id",
    )
    assert items.ids.tolist() == list(range(100))
    assert items.weights.tolist() == [1.0] * 100
    assert items.table["int_a"].to_pylist()[:3] == [0, 1, 2]
    assert items.table["float_b"].to_pylist()[:2] == [1000.0, 1001.0]
    assert items.table["str_c"].to_pylist()[99] == "我们99"
    sampler = NegativeSampler(
        items, num_sample=8, attr_fields=["int_a", "float_b", "str_c"], item_id_field="item_id"
    )
    result = sampler.get({"item_id": pa.array([0, 1, 2, 3])})
    assert result.negatives.schema.names == ["int_a", "float_b", "str_c"]
    assert [f"我们{i}" for i in result.negatives.column("int_a").to_pylist()] == result.negatives.column(
        "str_c"
    ).to_pylist()


def test_dssm_doc_item_table_holds_the_item_id_among_its_attrs(tmp_path):
    items = ItemTable.read(
        _dssm_doc_items(tmp_path / "taobao_ad_feature_gl_v1"),
        attr_fields=DSSM_ATTRS,
        attr_delimiter="\x02",
        item_id_field="adgroup_id",
        schema={"price": pa.float64(), "cate_id": pa.int64()},
    )
    assert items.ids.tolist() == list(range(1, 21))
    assert items.table["adgroup_id"].type == pa.int64()  # the item id field: int64 without a schema
    assert items.table["adgroup_id"].to_pylist() == list(range(1, 21))
    assert items.table["price"].to_pylist()[:2] == [1.5, 3.0]
    assert items.table["customer"].to_pylist()[0] == "c1"
    assert items.table["brand"].to_pylist()[:2] == ["", ""]  # a string without a schema: as written
    assert items.weights[:3].tolist() == [1.5, 2.5, 0.5]


@pytest.mark.parametrize("int_type", GL_INT_TYPES)
@pytest.mark.parametrize("float_type", GL_FLOAT_TYPES)
def test_every_graphlearn_type_name(tmp_path, int_type, float_type):
    path = _write(
        tmp_path / "item_gl",
        f"id:{int_type}\tweight:{float_type}\tattrs:string",
        ["7\t2\t7:a", "9\t0.25\t9:b"],
    )
    assert read_table(path).schema.names == ["id", "weight", "attrs"]  # not a CSV column 'id:int64'
    items = ItemTable.read(path, attr_fields=["item_id", "title"], item_id_field="item_id")
    assert items.ids.tolist() == [7, 9]
    assert items.weights.tolist() == [2.0, 0.25]
    assert items.table["title"].to_pylist() == ["a", "b"]
    edges = EdgeTable.read(
        _write(
            tmp_path / "edge_gl", f"src_id:{int_type}\tdst_id:{int_type}\tweight:{float_type}", ["1\t7\t3"]
        )
    )
    assert (edges.user_ids.tolist(), edges.item_ids.tolist(), edges.weights.tolist()) == ([1], [7], [3.0])


@pytest.mark.parametrize("attrs_name", ["attrs", "feature", "features", "item_attrs"])
def test_any_header_names(tmp_path, attrs_name):
    path = _write(
        tmp_path / "item_gl", f"itemid:int64\tw:double\t{attrs_name}:string", ["5\t1\t5:x", "6\t2\t6:y"]
    )
    items = ItemTable.read(path, attr_fields=["item_id", "name"], item_id_field="item_id")
    assert items.ids.tolist() == [5, 6] and items.table["name"].to_pylist() == ["x", "y"]
    users = ItemTable.read(_write(tmp_path / "user_gl", "userid:int64\tweight:float", ["1\t1", "2\t1"]))
    assert users.ids.tolist() == [1, 2]


def test_user_table_headed_userid_as_the_proto_comment_writes_it(tmp_path):
    """tzrec/protos/sampler.proto: `user_input_path` "schema => userid:int64 | weight:float"."""
    _sampler_test_items(tmp_path / "item_gl")
    users = _write(tmp_path / "user_gl", "userid:int64\tweight:float", ["1\t1", "2\t1"])
    _write(tmp_path / "hard_neg_edge_gl", EDGE_HEADER, ["1\t7\t1", "2\t8\t1"])
    config = {
        "hard_negative_sampler": {
            "user_input_path": "user_gl",
            "item_input_path": "item_gl",
            "hard_neg_edge_input_path": "hard_neg_edge_gl",
            "num_sample": 2,
            "num_hard_sample": 1,
            "attr_fields": ["int_a", "float_b", "str_c"],
            "item_id_field": "item_id",
            "user_id_field": "user_id",
        }
    }
    sampler = build_sampler(config, base_dir=tmp_path)
    result = sampler.get({"item_id": pa.array([1, 2]), "user_id": pa.array([1, 2])})
    assert result.hard_ids.tolist() == [7, 8]
    # the user table is read (by position), not skipped: its bad row is named
    _write(users, "userid:int64\tweight:float", ["1\t1", "u2\t1"])
    with pytest.raises(NegseqError, match=r"user_gl: column 'userid', row 1: cannot parse 'u2' as int64"):
        build_sampler(config, base_dir=tmp_path)


def test_tdm_style_edge_header(tmp_path):
    # tzrec/datasets/dataset_test.py: edge.write("src_id:int64\tdst_id:int\tweight:float\n")
    path = _write(
        tmp_path / "edge",
        "src_id:int64\tdst_id:int\tweight:float",
        [f"{i}\t{i // 2}\t{1.0}" for i in range(4)],
    )
    edges = EdgeTable.read(path)
    assert edges.user_ids.tolist() == [0, 1, 2, 3]
    assert edges.item_ids.tolist() == [0, 0, 1, 1]


def test_torcheasyrec_sampler_configs_on_its_own_tables(tmp_path):
    """The four samplers built from tables and config fields as TorchEasyRec's sampler_test sets them."""
    _sampler_test_items(tmp_path / "item_gl")
    _sampler_test_users(tmp_path / "user_gl")
    _sampler_test_clk_edges(tmp_path / "pos_edge_gl")
    _sampler_test_noclk_edges(tmp_path / "hard_neg_edge_gl")
    common = {
        "num_sample": 8,
        "attr_fields": ["int_a", "float_b", "str_c"],
        "item_id_field": "item_id",
        "attr_delimiter": ":",
        "num_eval_sample": 4,
        "field_delimiter": "\t",
    }
    paths = {
        "user_input_path": "user_gl",
        "item_input_path": "item_gl",
        "pos_edge_input_path": "pos_edge_gl",
        "hard_neg_edge_input_path": "hard_neg_edge_gl",
    }
    configs = {
        "negative_sampler": {"input_path": "item_gl", "item_id_delim": ";", **common},
        "negative_sampler_v2": {**common, "user_id_field": "user_id", **paths},
        "hard_negative_sampler": {**common, "user_id_field": "user_id", "num_hard_sample": 2, **paths},
        "hard_negative_sampler_v2": {**common, "user_id_field": "user_id", "num_hard_sample": 2, **paths},
    }
    configs["negative_sampler_v2"].pop("hard_neg_edge_input_path")
    configs["hard_negative_sampler"].pop("pos_edge_input_path")
    batch = {"item_id": pa.array([0, 1, 2, 3]), "user_id": pa.array([0, 1, 2, 3])}
    for kind, fields in configs.items():
        sampler = build_sampler({kind: fields}, base_dir=tmp_path)
        result = sampler.get(batch)
        assert len(result.ids) == 8, kind
        assert result.negatives.column("str_c").to_pylist() == [f"我们{i}" for i in result.ids], kind
        if kind.startswith("hard"):
            # user u's hard negative is item 99 - u (its only edge)
            assert sorted(result.hard_ids.tolist()) == [96, 97, 98, 99], kind


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (ITEM_HEADER, ["1\t1\ta", "2\t1"], r"row 1: 2 field\(s\) split by '\\t', the header has 3"),
        (ITEM_HEADER, ["1\t1\ta", "x2\t1\tb"], r"column 'id', row 1: cannot parse 'x2'"),
        ("itemid:int64\tw:float\tattrs:string", ["1\tabc\ta"], r"column 'w', row 0: cannot parse 'abc'"),
        (ITEM_HEADER, ["1\t1\t1:a", "1\t1\t1:b"], r"column 'id', rows \[0, 1\]: duplicate id 1"),
        (ITEM_HEADER, ["1\t-1\t1:a"], r"column 'weight', row 0: weight -1.0"),
        (ITEM_HEADER, ["1\t1\t1:a", "\t1\t:b"], r"column 'id', row 1: null id"),
        (
            "id:int64\tweight:float32\tattrs:string",
            ["1\t1\ta"],
            r"'weight:float32': unknown graph-learn type",
        ),
        (
            "id:int64\tattrs:string",
            ["1\ta"],
            r"header column 2 'attrs:string' is read by position as the node table's 'weight'",
        ),
        ("id:int64\tweight:float\tattrs:string\tx:int", ["1\t1\ta\t2"], r"header has 4 column\(s\)"),
        (ITEM_HEADER, ["1\t1\t1:a", "2\t1\t2"], r"column 'attrs', row 1: 1 values for 2 attr_fields"),
        (
            ITEM_HEADER,
            ["18446744073709551615\t1\t1:a"],
            r"column 'id', row 0: cannot parse '18446744073709551615' as int64",
        ),
    ],
)
def test_bad_graphlearn_item_tables_name_file_column_and_row(tmp_path, header, rows, message):
    path = _write(tmp_path / "item_gl", header, rows)
    with pytest.raises(NegseqError, match=message) as err:
        ItemTable.read(path, attr_fields=["item_id", "title"], item_id_field="item_id")
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (EDGE_HEADER, ["1\t2\t1", "1\tx\t1"], r"column 'itemid', row 1: cannot parse 'x'"),
        ("src_id:int64\tdst_id:int\tweight:float", ["1\t2\t1", "1\t2"], r"row 1: 2 field\(s\)"),
        (EDGE_HEADER, ["1\t2\tnan"], r"column 'weight', row 0: weight nan"),
        ("userid:int64\titemid:double\tweight:float", ["1\t2\t1"], r"header column 2 'itemid:double'"),
    ],
)
def test_bad_graphlearn_edge_tables_name_file_column_and_row(tmp_path, header, rows, message):
    path = _write(tmp_path / "edge_gl", header, rows)
    with pytest.raises(NegseqError, match=message) as err:
        EdgeTable.read(path)
    assert str(path) in str(err.value)


# ---- ids above int64 (uint64 >= 2**63): an error naming where, never a wrap to a negative id ----

BIG = 2**63 + 5


def test_uint64_item_ids_above_int64_are_refused_by_the_tables():
    table = pa.table({"id": pa.array([1, BIG], pa.uint64()), "weight": [1.0, 1.0]})
    with pytest.raises(NegseqError, match=rf"items.parquet: column 'id', row 1: id {BIG} is above int64"):
        ItemTable.from_arrow(table, source="items.parquet")
    edges = pa.table({"userid": pa.array([BIG], pa.uint64()), "itemid": [1]})
    with pytest.raises(NegseqError, match=rf"edges.parquet: column 'userid', row 0: id {BIG}"):
        EdgeTable.from_arrow(edges, source="edges.parquet")
    fits = ItemTable.from_arrow(pa.table({"id": pa.array([1, 2**63 - 1], pa.uint64())}))
    assert fits.ids.tolist() == [1, 2**63 - 1]


def test_uint64_ids_above_int64_are_refused_by_the_sampler_batch():
    items = ItemTable.from_arrow(pa.table({"id": np.arange(10)}))
    sampler = NegativeSampler(items, num_sample=2, attr_fields=None, item_id_field="item_id")
    for column in (pa.array([1, BIG], pa.uint64()), np.array([1, BIG], np.uint64)):
        with pytest.raises(NegseqError, match=rf"column 'item_id', row 1: id {BIG} is above int64"):
            sampler.get({"item_id": column})
    assert len(sampler.get({"item_id": pa.array([1, 2], pa.uint64())}).ids) == 2


def test_uint64_ids_above_int64_are_refused_when_flattening_positives():
    with pytest.raises(NegseqError, match=rf"column 'item_id', row 2: id {BIG}"):
        flatten_id_column(pa.array([1, None, BIG], pa.uint64()))
    with pytest.raises(NegseqError, match=rf"column 'item_id', row 2: id {BIG}"):
        flatten_id_column(pa.array([[1], [], [3, BIG]], pa.list_(pa.uint64())))
    ids, counts = flatten_id_column(pa.array([[1], [2**63 - 1]], pa.list_(pa.uint64())))
    assert ids.tolist() == [1, 2**63 - 1] and counts.tolist() == [1, 1]
