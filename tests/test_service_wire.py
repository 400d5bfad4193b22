"""What negatives mode sends: small-vocabulary attribute columns travel as dictionary codes, every
other column as the item table holds it, and the client gets the in-process answer back."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from negseq.errors import NegseqError
from negseq.sampler import EdgeTable, HardNegativeSampler, ItemTable, NegativeSampler
from negseq.service import Request, SamplerClient, SamplerServer
from negseq.service.protocol import decode_negatives
from negseq.service.wire import DICTIONARY_MAX_BYTES, dictionary_codes, wire_sampler

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

NUM_ITEMS = 400


def _items() -> ItemTable:
    rng = np.random.default_rng(7)
    ids = np.arange(NUM_ITEMS, dtype=np.int64) * 3 + 5
    return ItemTable.from_arrow(
        pa.table(
            {
                "id": ids,
                "weight": rng.random(NUM_ITEMS) + 0.1,
                "cate": pa.array(ids % 11, pa.int32()),  # 11 values: int8 codes
                "brand": pa.array([f"b{i % 300}" for i in range(NUM_ITEMS)]),  # 300: int16 codes
                "price": rng.random(NUM_ITEMS),  # float: as it is
                "rank": pa.array(np.arange(NUM_ITEMS), pa.int64()),  # all distinct, > int8: int16 codes
                "tag": pa.array([None if i % 5 == 0 else "x" for i in range(NUM_ITEMS)]),  # nulls: as it is
            }
        )
    )


def test_dictionary_codes_only_where_they_make_the_answer_smaller():
    codes, dictionary = dictionary_codes(pa.array(np.arange(1000) % 7, pa.int32()))
    assert codes.type == pa.int8() and dictionary.to_pylist() == list(range(7))
    assert dictionary.take(codes).equals(pa.array(np.arange(1000) % 7, pa.int32()))
    codes, dictionary = dictionary_codes(pa.array([f"s{i % 200}" for i in range(1000)]))
    assert codes.type == pa.int16() and len(dictionary) == 200
    assert dictionary_codes(pa.array(np.arange(1000) % 7, pa.int8())) is None  # codes no narrower
    assert dictionary_codes(pa.array(np.arange(1000) % 300, pa.int16())) is None
    assert dictionary_codes(pa.array(np.arange(40_000), pa.int32())) is None  # too many values
    assert dictionary_codes(pa.array(np.arange(70_000) % 40_000, pa.int64())) is None  # probed
    assert dictionary_codes(pa.array([1.0, 2.0, 1.0])) is None  # floats stay as they are
    assert dictionary_codes(pa.array([1, None, 1], pa.int32())) is None  # nulls too
    assert dictionary_codes(pa.array([], pa.int32())) is None
    wide = [f"{i:0>{DICTIONARY_MAX_BYTES // 100}}" for i in range(120)]  # 120 values, > the cap
    assert dictionary_codes(pa.array(wide * 2)) is None


def test_wire_sampler_codes_small_vocabularies_and_leaves_the_sampler_alone():
    items = _items()
    sampler = NegativeSampler(
        items, num_sample=8, attr_fields=["cate", "brand", "price", "rank", "tag"], item_id_field="item_id"
    )
    before = items.table
    wire, dictionaries = wire_sampler(sampler, pa.int32())
    assert sorted(dictionaries) == ["brand", "cate", "rank"]
    assert wire.items.table["cate"].type == pa.int8() and wire.items.table["brand"].type == pa.int16()
    assert wire.items.table["price"].type == pa.float64() and wire.items.table["tag"].type == pa.string()
    assert sampler.items is items and items.table is before and items.table["cate"].type == pa.int32()
    plain = NegativeSampler(items, num_sample=8, attr_fields=["price"], item_id_field="item_id")
    assert wire_sampler(plain, pa.int64()) == (plain, {})  # nothing to change: the sampler itself


@pytest.mark.parametrize("hard", [False, True])
def test_answer_carries_dictionaries_and_decodes_to_the_in_process_answer(hard):
    items = _items()
    common = dict(attr_fields=["item_id", "cate", "brand", "price", "tag"], item_id_field="item_id", seed=3)

    def make():
        if not hard:
            return NegativeSampler(items, num_sample=50, **common)
        rng = np.random.default_rng(1)
        users = np.repeat(np.arange(10, dtype=np.int64), 4)
        edges = pa.table(
            {
                "userid": users,
                "itemid": items.ids[rng.integers(0, NUM_ITEMS, len(users))],
                "weight": np.ones(len(users)),
            }
        )
        return HardNegativeSampler(
            items,
            EdgeTable.from_arrow(edges),
            num_sample=50,
            num_hard_sample=3,
            user_id_field="user_id",
            **common,
        )

    batch = pa.record_batch({"item_id": items.ids[[1, 7, 9, 300]], "user_id": np.array([0, 1, 2, 99])})
    server = SamplerServer(make())
    try:
        raw = flight.connect(server.location)
        writer, reader = raw.do_exchange(flight.FlightDescriptor.for_command(b""))
        writer.begin(batch.schema)
        for index in (4, 5):  # the dictionaries once, then answers that refer to them
            writer.write_with_metadata(
                batch, Request(epoch=1, batch_index=index, per_positive=2).to_metadata()
            )
            chunk = reader.read_chunk()
            meta = json.loads(bytes(chunk.app_metadata))
            assert meta["dict_attrs"] == ["cate", "brand"] and meta["id_attrs"] == {"item_id": 0}
            schema = chunk.data.schema
            assert schema.field("cate").type == pa.dictionary(pa.int8(), pa.int32())
            assert schema.field("brand").type == pa.dictionary(pa.int16(), pa.string())
            assert schema.field("price").type == pa.float64() and schema.field("tag").type == pa.string()
        writer.close()
        raw.close()
        with SamplerClient(server.location) as client:
            got = client.sample(batch, epoch=1, batch_index=5, per_positive=2)
        want = make().get(batch, epoch=1, batch_index=5, per_positive=2)
        np.testing.assert_array_equal(got.ids, want.ids)
        assert got.negatives.schema == want.negatives.schema and got.negatives.equals(want.negatives)
        if hard:
            assert len(want.hard_ids) > 0
            np.testing.assert_array_equal(got.hard_ids, want.hard_ids)
            assert got.hard_negatives.equals(want.hard_negatives)
    finally:
        server.shutdown()


def test_codes_out_of_the_dictionary_are_refused_not_read():
    dictionary = pa.array([10, 20, 30], pa.int32())
    batch = pa.record_batch(
        {
            "_id": pa.array([1, 2, 3], pa.int32()),
            "cate": pa.DictionaryArray.from_arrays(pa.array([0, 2, 1], pa.int8()), dictionary),
        }
    )
    meta = {"num_negatives": 3, "num_hard": 0, "expand_factor": 1, "dict_attrs": ["cate"]}
    assert decode_negatives(batch, meta).negatives.column("cate").to_pylist() == [10, 30, 20]
    for names in (["_id"], ["nope"]):
        with pytest.raises(NegseqError, match="which is no dictionary column"):
            decode_negatives(batch, {**meta, "dict_attrs": names})
    for codes in ([0, 3, 1], [0, -1, 1], [0, None, 7]):
        bad = pa.DictionaryArray.from_arrays(pa.array(codes, pa.int8()), dictionary, safe=False)
        with pytest.raises(IndexError):
            decode_negatives(batch.set_column(1, "cate", bad), meta)
