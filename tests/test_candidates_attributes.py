"""The negatives' attributes beside the candidates (issue 16 item 3): TorchEasyRec's naming for
grouped sequences, the positives' values kept from the input's column of that name (else looked
up in the item table), the declared type, both layouts, and every collision refused before
anything is written; files, the service and `negseq sample` carry them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from negseq.candidates import CandidateSpec, sample_batch
from negseq.cli import main
from negseq.errors import NegseqError
from negseq.sampler import EdgeTable, HardNegativeSampler, ItemTable, NegativeSampler, build_sampler

IDS = np.arange(1, 31, dtype=np.int64)
CATE = {int(i): f"c{i % 4}" for i in IDS}
PRICE = {int(i): float(i) * 0.5 for i in IDS}


def _items() -> ItemTable:
    return ItemTable.from_arrow(
        pa.table(
            {
                "id": IDS,
                "cate": pa.array([CATE[int(i)] for i in IDS]),
                "price": pa.array([PRICE[int(i)] for i in IDS], pa.float64()),
                "item_id": IDS,  # the ids again: TorchEasyRec lists the item id among attr_fields
            }
        )
    )


def _sampler(item_field: str, hard: bool = False, attrs=("item_id", "cate", "price")):
    common = dict(num_sample=3, attr_fields=list(attrs), item_id_field=item_field, seed=5)
    if not hard:
        return NegativeSampler(_items(), user_id_field="user", **common)
    edges = EdgeTable.from_arrow(
        pa.table({"userid": [1, 1, 2], "itemid": [7, 8, 9], "weight": [3.0, 2.0, 1.0]})
    )
    return HardNegativeSampler(_items(), edges, num_hard_sample=2, user_id_field="user", **common)


def _rows_of(value) -> list:
    """A candidate or attribute row as a list of tokens (a null row: empty)."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split(";") if value else []
    return list(value)


def _positive_slots(kind: str, layout: str, counts: list[int], n: int, row: int) -> list[int]:
    """Where a row's positives sit among its candidates."""
    if layout == "interleaved":
        return [k * (1 + n) for k in range(counts[row])]
    return list(range(counts[row]))


rows_st = st.lists(st.lists(st.integers(1, 40), min_size=0, max_size=3), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(
    rows=rows_st,
    kind=st.sampled_from(["string", "list", "int"]),
    layout=st.sampled_from(["interleaved", "suffix"]),
    hard=st.booleans(),
    merged=st.booleans(),
    n=st.integers(0, 3),
)
def test_attributes_line_up_with_the_candidates(rows, kind, layout, hard, merged, n):
    """Against a plain-Python reader: every attribute value is the item table's value of the
    candidate beside it, except a positive's, which is the input's own value when the input holds
    the column (unknown ids: null)."""
    if kind == "int":
        rows = [r[:1] for r in rows]
    if hard:
        layout = "suffix"
    prefix = "" if kind == "int" else "seq__"
    item = f"{prefix}item_id"
    sampler = _sampler(item, hard)
    users = [1 + i % 3 for i in range(len(rows))]
    columns: dict[str, pa.Array] = {"user": pa.array(users, pa.int64())}
    cate_in = [[f"in{v}" for v in r] for r in rows]
    if kind == "string":
        columns[item] = pa.array([";".join(map(str, r)) for r in rows])
        if merged:
            columns[f"{prefix}cate"] = pa.array([";".join(r) for r in cate_in])
    elif kind == "list":
        columns[item] = pa.array(rows, pa.list_(pa.int64()))
        if merged:
            columns[f"{prefix}cate"] = pa.array(cate_in, pa.list_(pa.string()))
    else:
        columns[item] = pa.array([r[0] if r else None for r in rows], pa.int64())
        if merged:
            columns["cate"] = pa.array([r[0] if r else None for r in cate_in])
    spec = CandidateSpec(layout=layout, neg_per_pos=n if layout == "interleaved" else None)
    out = sample_batch(pa.record_batch(columns), sampler, spec, batch_index=2).to_arrow()

    cate, price = f"{prefix}cate", f"{prefix}price"
    # the item id attribute is the candidate column, not a second column
    assert [c for c in out.schema.names if c.endswith("item_id")] == [item]
    order = out.schema.names
    if not merged:  # new columns follow the candidate column, in attr_fields order
        assert order[order.index(item) + 1 : order.index(item) + 3] == [cate, price]
    assert out.schema.field(price).type == (pa.string() if kind == "string" else pa.list_(pa.float64()))
    counts = out.column("cand_pos_lengths").to_pylist()
    for row, (ids, cates, prices) in enumerate(
        zip(
            out.column(item).to_pylist(),
            out.column(cate).to_pylist(),
            out.column(price).to_pylist(),
            strict=True,
        )
    ):
        ids = _rows_of(ids)
        # delimited text splits into one token a candidate: "" is one empty value beside one id
        cates, prices = ([] if not ids else _rows_of(v) or [""] for v in (cates, prices))
        assert len(cates) == len(prices) == len(ids)
        want_cate = [CATE.get(int(i)) for i in ids]
        want_price = [PRICE.get(int(i)) for i in ids]
        if merged:
            for k, slot in enumerate(_positive_slots(kind, layout, counts, n, row)):
                want_cate[slot] = cate_in[row][k]
        if kind == "string":  # delimited text: a null value is an empty token
            want_cate = ["" if v is None else v for v in want_cate]
            want_price = ["" if v is None else f"{v:g}" for v in want_price]
            prices = [p if p == "" else f"{float(p):g}" for p in prices]
        assert cates == want_cate, row
        assert prices == want_price, row


def test_torcheasyrec_grouped_sequence_tables_as_its_tests_write_them(tmp_path):
    """tzrec/datasets/dataset_test.py's grouped-sequence case: a graph-learn item table whose
    attrs are `item_id:cat_id:duration`, bare attr_fields, the item column `click_seq__item_id`:
    the attributes land in `click_seq__cat_id` / `click_seq__duration`, cast to their types."""
    table = tmp_path / "item_gl"
    table.write_text(
        "id:int64\tweight:float\tattrs:string\n"
        + "".join(f"{i}\t1.0\t{i}:{i + 1000}:0.5\n" for i in range(100))
    )
    sampler = build_sampler(
        {
            "negative_sampler": {
                "input_path": str(table),
                "num_sample": 4,
                "attr_fields": ["item_id", "cat_id", "duration"],
                "item_id_field": "click_seq__item_id",
            }
        }
    )
    batch = pa.record_batch(
        {
            "click_seq__item_id": pa.array([[1, 2], [3], [4, 5, 6], [7]], pa.list_(pa.int64())),
            "click_seq__cat_id": pa.array([[11, 12], [13], [14, 15, 16], [17]], pa.list_(pa.int64())),
            "click_seq__duration": pa.array(
                [[0.1, 0.2], [0.3], [0.4, 0.5, 0.6], [0.7]], pa.list_(pa.float32())
            ),
            "label": pa.array([1, 0, 1, 0], pa.int32()),
        }
    )
    out = sample_batch(batch, sampler, CandidateSpec(layout="suffix")).to_arrow()
    assert out.schema.names == [
        "click_seq__item_id",
        "click_seq__cat_id",
        "click_seq__duration",
        "label",
        "cand_pos_lengths",
    ]
    assert out.schema.field("click_seq__cat_id").type == pa.list_(pa.int64())
    assert out.schema.field("click_seq__duration").type == pa.list_(pa.float32())
    ids = out.column("click_seq__item_id").to_pylist()
    cats = out.column("click_seq__cat_id").to_pylist()
    durations = out.column("click_seq__duration").to_pylist()
    assert cats[:3] == [[11, 12], [13], [14, 15, 16]] and ids[:3] == [[1, 2], [3], [4, 5, 6]]
    assert ids[3][0] == 7 and cats[3][0] == 17 and len(ids[3]) == 1 + 4
    assert cats[3][1:] == [i + 1000 for i in ids[3][1:]]  # the negatives' own cat_id, as int64
    assert durations[3][1:] == [pytest.approx(0.5)] * 4


def test_hard_negatives_carry_their_attributes_after_the_simple_ones():
    sampler = _sampler("item", hard=True, attrs=("cate",))
    batch = pa.record_batch(
        {"user": pa.array([1, 2], pa.int64()), "item": pa.array([[3], [4]], pa.list_(pa.int64()))}
    )
    out = sample_batch(batch, sampler, CandidateSpec(layout="suffix")).to_arrow()
    last_ids, last_cates = out.column("item").to_pylist()[-1], out.column("cate").to_pylist()[-1]
    assert last_ids[-3:] == [7, 8, 9]  # user 1's two hard negatives, then user 2's one
    assert last_cates == [CATE[i] for i in last_ids]


@pytest.mark.parametrize(
    ("columns", "attrs", "message"),
    [
        ({"cate": pa.array(["x", "y"])}, ("cate",), r"input column 'cate' \(string\) collides"),
        ({"user": pa.array([1, 2])}, ("user",), "would replace the user id column"),
        ({}, ("cand_pos_lengths",), "would replace a column negseq writes"),
    ],
)
def test_colliding_attribute_columns_are_refused(columns, attrs, message):
    items = ItemTable.from_arrow(
        pa.table(
            {
                "id": IDS,
                "cate": pa.array([CATE[int(i)] for i in IDS]),
                "user": IDS + 100,
                "cand_pos_lengths": IDS * 2,
            }
        )
    )
    sampler = NegativeSampler(
        items, num_sample=2, attr_fields=list(attrs), item_id_field="item", user_id_field="user"
    )
    batch = pa.record_batch({"user": pa.array([1, 2]), "item": pa.array([[1, 2], [3]]), **columns})
    with pytest.raises(NegseqError, match=message):
        sample_batch(batch, sampler, CandidateSpec())


def test_an_attribute_column_out_of_line_with_the_item_column_is_named():
    batch = pa.record_batch(
        {"user": pa.array([1, 2]), "item": pa.array([[1, 2], [3]]), "cate": pa.array([["a"], ["b"]])}
    )
    with pytest.raises(
        NegseqError, match=r"batch 4, row 0: column 'cate' holds 1 value\(s\), the item column 'item' 2"
    ):
        sample_batch(batch, _sampler("item", attrs=("cate",)), CandidateSpec(layout="suffix"), batch_index=4)


def test_a_value_holding_the_sequence_delimiter_is_named():
    items = ItemTable.from_arrow(pa.table({"id": IDS, "cate": pa.array(["x;y"] * len(IDS))}))
    sampler = NegativeSampler(items, num_sample=2, attr_fields=["cate"], item_id_field="item")
    batch = pa.record_batch({"item": pa.array(["1;2", "3"])})
    with pytest.raises(NegseqError, match=r"column 'cate': the value 'x;y' holds the sequence delimiter ';'"):
        sample_batch(batch, sampler, CandidateSpec(layout="suffix"))


def test_values_that_do_not_fit_the_declared_type_are_named():
    sampler = _sampler("item", attrs=("cate",))
    batch = pa.record_batch(
        {
            "user": pa.array([1, 2]),
            "item": pa.array([[1], [2]]),
            "cate": pa.array([[1], [2]], pa.list_(pa.int32())),
        }
    )
    with pytest.raises(
        NegseqError, match=r"column 'cate': the item table's 'cate' values \(string\) do not fit"
    ):
        sample_batch(batch, sampler, CandidateSpec(layout="suffix"))


SAMPLE_JOB = """
[input]
path = "input.parquet"

[sampler.negative_sampler]
input_path = "items.parquet"
num_sample = 2
attr_fields = ["item_id", "cate", "price"]
item_id_field = "item_id"

[candidates]
batch_size = 2

[output]
dir = "sampled"
"""


def test_negseq_sample_writes_the_attributes_and_refuses_a_collision_before_writing(tmp_path, capsys):
    pq.write_table(_items().table, tmp_path / "items.parquet")
    rows = {
        "user": pa.array([1, 2, 3], pa.int64()),
        "item_id": pa.array([[1, 2], [3], [40]], pa.list_(pa.int64())),
    }
    pq.write_table(pa.table(rows), tmp_path / "input.parquet")
    (tmp_path / "job.toml").write_text(SAMPLE_JOB)
    assert main(["sample", str(tmp_path / "job.toml"), "--quiet"]) == 0
    parts = pq.read_table(tmp_path / "sampled", schema=None).select(["item_id", "cate", "price"])
    assert pq.read_schema(tmp_path / "sampled" / "part-000000.parquet").names == [
        "user", "item_id", "cate", "price", "cand_pos_lengths",
    ]  # fmt: skip
    for ids, cates, prices in zip(*(parts.column(c).to_pylist() for c in parts.column_names), strict=True):
        assert cates == [CATE.get(i) for i in ids] and prices == [PRICE.get(i) for i in ids]
    manifest = pq.read_schema(tmp_path / "sampled" / "_manifest.parquet").metadata[b"negseq.manifest"]
    assert b'"attribute_columns": {"cate": "cate", "price": "price"}' in manifest

    # an input column `cate` holding one string a row cannot take the candidates' categories
    pq.write_table(pa.table({**rows, "cate": pa.array(["a", "b", "c"])}), tmp_path / "input.parquet")
    (tmp_path / "job.toml").write_text(SAMPLE_JOB.replace('dir = "sampled"', 'dir = "other"'))
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "job.toml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "input column 'cate' (string) collides" in err and err.count("\n") == 1
    assert not (tmp_path / "other").exists()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_the_service_answers_candidates_with_their_attributes():
    from negseq.service import SamplerClient, SamplerServer

    server = SamplerServer(_sampler("item", attrs=("item_id", "cate")))
    try:
        batch = pa.record_batch({"user": pa.array([1, 2], pa.int64()), "item": pa.array(["1;2", "5"])})
        got = SamplerClient(server.location).candidates(
            batch, epoch=0, batch_index=3, layout="interleaved", neg_per_pos=1
        )
    finally:
        server.shutdown()
    assert got.schema.names == ["user", "item", "cate", "cand_pos_lengths"]
    for ids, cates in zip(got.column("item").to_pylist(), got.column("cate").to_pylist(), strict=True):
        assert cates.split(";") == [CATE[int(i)] for i in ids.split(";")]
