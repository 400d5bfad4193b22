"""The sampler service against real Flight servers on 127.0.0.1: round trips equal the in-process
samplers, every bad input is a named Flight error after which the server keeps serving, auth,
actions, and `negseq serve` draining on SIGTERM in a subprocess."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

from negseq.candidates import CandidateSpec, sample_batch
from negseq.errors import NegseqError
from negseq.sampler import (
    EdgeTable,
    HardNegativeSampler,
    HardNegativeSamplerV2,
    ItemTable,
    NegativeSampler,
    NegativeSamplerV2,
    SampleResult,
    build_sampler,
)
from negseq.service import Limits, Request, SamplerClient, SamplerServer
from negseq.service.auth import read_token_file
from negseq.service.job import CandidateDefaults, ServiceJob
from negseq.service.protocol import (
    decode_negatives,
    encode_negatives,
    id_attributes,
    id_type,
    parse_request,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

NUM_ITEMS, NUM_USERS = 300, 20
SRC = Path(__file__).resolve().parents[1] / "src"


def _item_table() -> pa.Table:
    rng = np.random.default_rng(3)
    ids = np.arange(NUM_ITEMS, dtype=np.int64) * 10 + 1
    return pa.table(
        {
            "id": ids,
            "weight": rng.random(NUM_ITEMS) + 0.1,
            "title": pa.array([f"t{i}" for i in ids]),
            "cate": pa.array(ids % 7, pa.int32()),
        }
    )


def _edge_table(per_user: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = _item_table()["id"].to_numpy()
    users = np.repeat(np.arange(NUM_USERS, dtype=np.int64) + 1000, per_user)
    picks = np.concatenate([rng.choice(NUM_ITEMS, per_user, replace=False) for _ in range(NUM_USERS)])
    return pa.table({"userid": users, "itemid": ids[picks], "weight": rng.random(len(users)).round(1)})


ITEMS = ItemTable.from_arrow(_item_table())
POS, HARD = EdgeTable.from_arrow(_edge_table(15, 1)), EdgeTable.from_arrow(_edge_table(4, 2))
COMMON = dict(attr_fields=["item_id", "title", "cate"], item_id_field="item_id", seed=11)


def _make(kind: str, num_sample: int = 40):
    users = dict(user_id_field="user_id")
    return {
        "v1": lambda: NegativeSampler(ITEMS, num_sample=num_sample, **COMMON),
        "v2": lambda: NegativeSamplerV2(ITEMS, POS, num_sample=num_sample, **users, **COMMON),
        "hard": lambda: HardNegativeSampler(
            ITEMS, HARD, num_sample=num_sample, num_hard_sample=3, **users, **COMMON
        ),
        "hard_v2": lambda: HardNegativeSamplerV2(
            ITEMS, POS, HARD, num_sample=num_sample, num_hard_sample=3, **users, **COMMON
        ),
    }[kind]()


def _batch(q: int, seed: int = 0) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    return pa.record_batch(
        {
            "item_id": ITEMS.ids[rng.integers(0, NUM_ITEMS, q)],
            "user_id": rng.integers(1000, 1000 + NUM_USERS + 3, q),  # a few unknown users
        }
    )


def settled(snapshot: Callable[[], dict]) -> dict:
    """The stats once no request is in flight: a server counts a request after writing its answer,
    so its client may hold the answer a moment before the counters move."""
    deadline = time.monotonic() + 10
    while (stats := snapshot())["in_flight"]:
        assert time.monotonic() < deadline, stats
        time.sleep(0.005)
    return stats


def _assert_same(got: SampleResult, want: SampleResult) -> None:
    np.testing.assert_array_equal(got.ids, want.ids)
    assert got.negatives.equals(want.negatives)
    np.testing.assert_array_equal(got.hard_ids, want.hard_ids)
    if want.hard_neg_indices is None:
        assert got.hard_neg_indices is None and got.hard_negatives is None
    else:
        np.testing.assert_array_equal(got.hard_neg_indices, want.hard_neg_indices)
        assert got.hard_negatives.equals(want.hard_negatives)
    assert got.expand_factor == want.expand_factor
    assert got.stats == want.stats


@pytest.fixture(scope="module")
def servers():
    """One server per sampler kind (each with its own sampler object, built like the reference)."""
    started = {
        kind: SamplerServer(
            _make(kind),
            limits=Limits(max_rows=5000, max_bytes=200_000, max_negatives=100_000),
            candidates=CandidateDefaults(layout="suffix", neg_per_pos=None, seq_delim=";"),
        )
        for kind in ("v1", "v2", "hard", "hard_v2")
    }
    yield started
    for server in started.values():
        server.shutdown()


@pytest.fixture(scope="module")
def clients(servers):
    opened = {kind: SamplerClient(server.location) for kind, server in servers.items()}
    yield opened
    for client in opened.values():
        client.close()


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on `port`, as the kernel reports them
    (/proc/net/tcp and tcp6): what was really bound, not what the server was asked for. An IPv6
    socket bound to an IPv4-mapped address (gRPC binds 127.0.0.1 so) counts as that IPv4 address."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, port_hex = local.split(":")
                if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                    continue
                raw = bytes.fromhex(address)  # each 32-bit word printed in host (little-endian) order
                ip = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
                mapped = getattr(ip, "ipv4_mapped", None)
                found.add(str(mapped or ip))
    return found


def test_server_binds_loopback_by_default(servers):
    server = SamplerServer(_make("v1"))  # no host given
    try:
        assert listening_addresses(server.port) == {"127.0.0.1"}
        assert server.location == f"grpc://127.0.0.1:{server.port}"
    finally:
        server.shutdown()


@pytest.mark.parametrize("kind", ["v1", "v2", "hard", "hard_v2"])
@pytest.mark.parametrize("per_positive", [None, 3])
def test_round_trip_equals_in_process(clients, kind, per_positive):
    reference = _make(kind)
    for q, batch_index in ((1, 0), (7, 5), (64, 2**32 - 1)):
        batch = _batch(q, seed=batch_index % 97)
        got = clients[kind].sample(batch, epoch=2, batch_index=batch_index, per_positive=per_positive)
        want = reference.get(batch, epoch=2, batch_index=batch_index, per_positive=per_positive)
        _assert_same(got, want)
    if kind.startswith("hard"):
        assert len(want.hard_ids) > 0  # the hard path was really exercised


def test_request_seed_overrides_the_job_seed(clients):
    batch = _batch(16)
    got = clients["v2"].sample(batch, epoch=1, batch_index=3, seed=99)
    common = {**COMMON, "seed": 99}
    reference = NegativeSamplerV2(ITEMS, POS, num_sample=40, user_id_field="user_id", **common)
    _assert_same(got, reference.get(batch, epoch=1, batch_index=3))
    default = clients["v2"].sample(batch, epoch=1, batch_index=3)
    assert not np.array_equal(default.ids, got.ids)


def test_stream_answers_each_batch_in_order(clients):
    reference = _make("hard")
    batches = [_batch(10 + i, seed=i) for i in range(5)]
    requests = [(b, Request(epoch=0, batch_index=i)) for i, b in enumerate(batches)]
    answers = list(clients["hard"].stream(requests))
    assert [meta["batch_index"] for meta, _ in answers] == list(range(5))
    for i, (_, got) in enumerate(answers):
        _assert_same(got, reference.get(batches[i], epoch=0, batch_index=i))


def test_hard_sampler_without_hard_negatives_round_trips(clients):
    batch = pa.record_batch({"item_id": ITEMS.ids[:3], "user_id": np.array([5, 6, 7])})  # unknown users
    got = clients["hard"].sample(batch, epoch=0, batch_index=1)
    assert len(got.hard_ids) == 0 and got.hard_neg_indices is None
    _assert_same(got, _make("hard").get(batch, epoch=0, batch_index=1))


@pytest.mark.parametrize("ids_type", [pa.int32(), pa.int64()])
def test_protocol_encode_decode_is_lossless(ids_type):
    sampler = _make("hard_v2")
    result = sampler.get(_batch(9), epoch=4, batch_index=8, per_positive=2)
    batch, meta = encode_negatives(result, hard=True, ids_type=ids_type)
    assert batch.schema.names == ["_id", "item_id", "title", "cate", "_hard_query_row", "_hard_offset"]
    assert batch.schema.field("_id").type == ids_type
    assert batch.column("_hard_query_row").null_count == len(result.ids)
    decoded = decode_negatives(batch, json.loads(json.dumps(meta)))
    _assert_same(decoded, result)
    for ids in (decoded.ids, decoded.hard_ids):  # as the in-process sampler gives them
        assert ids.dtype == np.int64 and ids.flags.writeable


def test_attributes_that_are_the_ids_stay_off_the_wire():
    sampler = _make("hard_v2")
    assert id_attributes(sampler) == ("item_id",)  # COMMON lists the item id among attr_fields
    result = sampler.get(_batch(9), epoch=4, batch_index=8, per_positive=2)
    batch, meta = encode_negatives(result, hard=True, ids_type=pa.int32(), id_attrs=id_attributes(sampler))
    assert batch.schema.names == ["_id", "title", "cate", "_hard_query_row", "_hard_offset"]
    assert meta["id_attrs"] == {"item_id": 0}
    decoded = decode_negatives(batch, json.loads(json.dumps(meta)))
    _assert_same(decoded, result)  # item_id is back, in its place, as int64
    assert decoded.negatives.schema == result.negatives.schema
    copies = ItemTable.from_arrow(_item_table().append_column("id_copy", pa.array(ITEMS.ids)))
    both = NegativeSampler(copies, num_sample=4, attr_fields=["cate", "id_copy"], item_id_field="item_id")
    assert id_attributes(both) == ("id_copy",)
    plain = NegativeSampler(ITEMS, num_sample=4, attr_fields=["cate"], item_id_field="item_id")
    assert id_attributes(plain) == ()


def test_id_type_is_int32_only_when_every_item_id_fits():
    assert id_type(ITEMS.ids) == pa.int32()
    assert id_type(np.array([-(2**31), 2**31 - 1])) == pa.int32()
    assert id_type(np.array([1, 2**31])) == pa.int64()
    assert id_type(np.array([-(2**31) - 1, 5])) == pa.int64()


def test_negatives_mode_gathers_int32_ids_and_leaves_the_sampler_alone():
    sampler = _make("hard")
    server = SamplerServer(sampler)
    try:
        assert server._negatives_sampler.items.ids.dtype == np.int32  # gathered as they travel
        assert sampler.items.ids.dtype == np.int64 and server.sampler is sampler
        batch = _batch(12)
        with SamplerClient(server.location) as client:
            got = client.sample(batch, epoch=1, batch_index=5)
            seeded = client.sample(batch, epoch=1, batch_index=5, seed=7)
        _assert_same(got, _make("hard").get(batch, epoch=1, batch_index=5))
        reference = HardNegativeSampler(
            ITEMS, HARD, num_sample=40, num_hard_sample=3, user_id_field="user_id", **{**COMMON, "seed": 7}
        )
        _assert_same(seeded, reference.get(batch, epoch=1, batch_index=5))
    finally:
        server.shutdown()


def test_ids_beyond_int32_travel_as_int64():
    table = _item_table()
    table = table.set_column(0, "id", pa.array(table["id"].to_numpy() + 2**40))
    items = ItemTable.from_arrow(table)
    sampler = NegativeSampler(items, num_sample=40, **COMMON)
    server = SamplerServer(sampler)
    try:
        batch = pa.record_batch({"item_id": items.ids[:7]})
        with SamplerClient(server.location) as client:
            assert client.config()["id_type"] == "int64"
            got = client.sample(batch, epoch=3, batch_index=1, per_positive=2)
        reference = NegativeSampler(items, num_sample=40, **COMMON)
        _assert_same(got, reference.get(batch, epoch=3, batch_index=1, per_positive=2))
        assert got.ids.min() > 2**40
    finally:
        server.shutdown()


@pytest.mark.parametrize(("kind", "layout"), [("v1", "interleaved"), ("v2", "suffix"), ("hard_v2", "suffix")])
def test_candidates_equal_sample_candidates(clients, kind, layout):
    rng = np.random.default_rng(5)
    rows = [";".join(str(i) for i in ITEMS.ids[rng.integers(0, NUM_ITEMS, k)]) for k in (1, 3, 0, 2)]
    batch = pa.record_batch(
        {"item_id": pa.array(rows), "user_id": pa.array([1001, 1002, 1003, 1004]), "label": [1, 0, 1, 1]}
    )
    n = 2 if layout == "interleaved" else None  # suffix: the sampler's num_sample shared negatives
    got = clients[kind].candidates(batch, epoch=1, batch_index=9, layout=layout, neg_per_pos=n)
    spec = CandidateSpec(layout=layout, neg_per_pos=n)
    want = sample_batch(batch, _make(kind), spec, epoch=1, batch_index=9).to_arrow()
    assert got.equals(want)


def test_candidates_use_the_job_defaults(clients):
    batch = pa.record_batch({"item_id": pa.array([[1, 11], [21]]), "user_id": pa.array([1000, 1001])})
    got = clients["v1"].candidates(batch, epoch=0, batch_index=4)  # layout from CandidateDefaults
    want = sample_batch(batch, _make("v1"), CandidateSpec(layout="suffix"), epoch=0, batch_index=4).to_arrow()
    assert got.equals(want)
    # `sample(..., layout=...)` answers with the candidate sequences too
    assert clients["v1"].sample(batch, epoch=0, batch_index=4, layout="suffix").equals(want)
    # ... and does not drop an option that mode does not take
    with pytest.raises(flight.FlightServerError, match="'per_positive' belongs to mode 'negatives'"):
        clients["v1"].sample(batch, epoch=0, batch_index=4, layout="suffix", per_positive=2)


def _raw_exchange(location: str, batch: pa.RecordBatch, metadata: bytes, headers=()) -> None:
    client = flight.connect(location)
    try:
        options = flight.FlightCallOptions(headers=list(headers))
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(b""), options)
        writer.begin(batch.schema)
        writer.write_with_metadata(batch, metadata)
        writer.done_writing()
        reader.read_chunk()
        writer.close()
    finally:
        client.close()


BAD_REQUESTS = {
    "missing item column": (
        lambda: pa.record_batch({"user_id": [1000]}),
        {},
        "missing item id column 'item_id'",
    ),
    "wrong item type": (
        lambda: pa.record_batch({"item_id": pa.array(["1;11"]), "user_id": [1000]}),
        {},
        "column 'item_id' must hold int64 ids",
    ),
    "wrong user type": (
        lambda: pa.record_batch({"item_id": [1, 11], "user_id": pa.array([1.5, 2.5])}),
        {},
        "column 'user_id' must hold int64 ids",
    ),
    "null id": (
        lambda: pa.record_batch({"item_id": pa.array([1, None]), "user_id": [1000, 1001]}),
        {},
        "column 'item_id', row 1: null id",
    ),
    "over max_rows": (lambda: _batch(5001), {}, "5001 rows, over the server's max_rows 5000"),
    "over max_bytes": (
        lambda: pa.record_batch({"item_id": [1], "user_id": [1000], "pad": [b"x" * 300_000]}),
        {},
        "over the server's max_bytes 200000",
    ),
    "over max_negatives": (lambda: _batch(100), {"per_positive": 1001}, "over the server's max_negatives"),
    "missing epoch": (lambda: _batch(3), {"epoch": None}, "missing 'epoch'"),
    "unknown key": (lambda: _batch(3), {"bacth_index": 1}, "unknown key\\(s\\) bacth_index"),
    "bad mode": (lambda: _batch(3), {"mode": "both"}, "'mode' must be one of"),
    "layout in negatives mode": (lambda: _batch(3), {"layout": "suffix"}, "'layout' belongs to mode"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_is_a_named_flight_error_and_the_server_keeps_serving(servers, clients, case):
    make_batch, overrides, message = BAD_REQUESTS[case]
    meta = {k: v for k, v in {"epoch": 0, "batch_index": 1, **overrides}.items() if v is not None}
    before = clients["v2"].stats()["errors"]
    with pytest.raises(flight.FlightServerError, match=message):
        _raw_exchange(servers["v2"].location, make_batch(), json.dumps(meta).encode())
    assert clients["v2"].stats()["errors"] == before + 1
    assert clients["v2"].health() == "ok"
    batch = _batch(8)
    _assert_same(clients["v2"].sample(batch, batch_index=1), _make("v2").get(batch, batch_index=1))


def test_non_id_token_is_named(servers, clients):
    batch = pa.record_batch({"item_id": pa.array(["1;11", "21;x7;31"]), "user_id": [1000, 1001]})
    with pytest.raises(flight.FlightServerError, match="row 1.*x7"):
        clients["v1"].candidates(batch, epoch=0, batch_index=0, layout="interleaved")
    assert clients["v1"].health() == "ok"


def test_mode_change_within_one_exchange_is_refused(clients):
    batch = _batch(4)
    requests = [
        (batch, Request(epoch=0, batch_index=0)),
        (batch, Request(epoch=0, batch_index=1, mode="candidates")),
    ]
    with pytest.raises(flight.FlightServerError, match="mode or input schema changed within one exchange"):
        list(clients["v1"].stream(requests))


def test_user_column_of_the_wrong_length_is_refused_before_sending(clients):
    # An Arrow record batch cannot hold columns of different lengths (the server's IPC reader refuses
    # such a message), so a dict of columns is checked where it becomes a batch.
    with pytest.raises(NegseqError, match="columns have different lengths"):
        clients["v2"].sample({"item_id": ITEMS.ids[:5], "user_id": np.arange(4)}, batch_index=0)


def test_actions():
    server = SamplerServer(_make("hard"), limits=Limits(max_rows=5000))  # its own: counts from zero
    try:
        with SamplerClient(server.location) as client:
            answer = client.sample(_batch(32), batch_index=0)
            with pytest.raises(flight.FlightServerError, match="missing 'epoch'"):
                _raw_exchange(server.location, _batch(3), b'{"batch_index": 0}')
            stats = settled(client.stats)
            assert (stats["requests"], stats["rows"], stats["errors"], stats["in_flight"]) == (2, 32, 1, 0)
            assert stats["negatives"] == len(answer.ids) + len(answer.hard_ids)
            assert stats["errors_by_kind"]["bad_request"] == 1
            assert stats["latency_p50_ms"] > 0 and stats["latency_p99_ms"] >= stats["latency_p50_ms"]
            config = client.config()
            assert config["sampler"] == "HardNegativeSampler" and config["num_hard_sample"] == 3
            assert config["limits"]["max_rows"] == 5000 and config["num_items"] == NUM_ITEMS
            assert config["id_type"] == "int32"  # every id of ITEMS fits: `_id` travels as int32
            with pytest.raises(flight.FlightServerError, match="unknown action 'reboot'"):
                list(client._client.do_action(flight.Action("reboot", b"")))
    finally:
        server.shutdown()


def test_bearer_token(tmp_path):
    server = SamplerServer(_make("v1"), token="s3cret")
    try:
        batch = _batch(5)
        with SamplerClient(server.location) as anonymous:
            with pytest.raises(flight.FlightUnauthenticatedError, match="missing bearer token"):
                anonymous.sample(batch, batch_index=0)
            with pytest.raises(flight.FlightUnauthenticatedError):
                anonymous.health()
        with SamplerClient(server.location, token="wrong") as wrong:
            with pytest.raises(flight.FlightUnauthenticatedError, match="wrong bearer token"):
                wrong.sample(batch, batch_index=0)
        with SamplerClient(server.location, token="s3cret") as client:
            assert client.health() == "ok"
            _assert_same(client.sample(batch, batch_index=0), _make("v1").get(batch, batch_index=0))
            assert "s3cret" not in json.dumps(client.config())
    finally:
        server.shutdown()


def test_parse_request_defaults_and_errors():
    assert parse_request(b'{"epoch": 1, "batch_index": 2}') == Request(epoch=1, batch_index=2)
    for metadata, message in [
        (None, "missing"),
        (b"[1]", "must be a JSON object"),
        (b"{bad", "not a UTF-8 JSON object"),
        (b'{"epoch": -1, "batch_index": 0}', "'epoch' must be an integer"),
        (b'{"epoch": 0, "batch_index": true}', "'batch_index' must be an integer"),
        (b'{"epoch": 0, "batch_index": 0, "training": "yes"}', "'training' must be true or false"),
    ]:
        with pytest.raises(NegseqError, match=message):
            parse_request(metadata)


# -- `negseq serve` in a subprocess ------------------------------------------------------------


def _write_job(folder: Path, extra: str = "") -> Path:
    pq.write_table(_item_table(), folder / "items.parquet")
    pq.write_table(_edge_table(4, 2), folder / "hard.parquet")
    job = folder / "job.toml"
    job.write_text(
        "[sampler.hard_negative_sampler]\n"
        'item_input_path = "items.parquet"\n'
        'hard_neg_edge_input_path = "hard.parquet"\n'
        "num_sample = 64\nnum_hard_sample = 3\nseed = 5\n"
        'attr_fields = ["item_id", "title"]\nitem_id_field = "item_id"\nuser_id_field = "user_id"\n'
        '[candidates]\nlayout = "suffix"\n'
        "[service]\nmax_rows = 100000\n" + extra
    )
    return job


class _Serve:
    """`negseq serve` in a subprocess; its stderr is collected by a thread (a full pipe would block it)."""

    def __init__(self, job: Path, *args: str, port: int = 0) -> None:
        env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "negseq.cli", "serve", "--config", str(job), "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._stderr: list[str] = []
        self._reader = threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True)
        self._reader.start()
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise AssertionError(f"negseq serve did not start: {line!r} {self.stderr()}")
        self.location = line.rsplit(" ", 1)[1].strip()

    def stop(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        self._reader.join(10)
        return "".join(self._stderr)


@pytest.mark.timeout(90)
def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path):
    job = _write_job(tmp_path)
    serve = _Serve(job, "--log-level", "DEBUG")
    location = serve.location
    served = ServiceJob.from_toml(job)
    reference = build_sampler(served.sampler_config)
    batch = _batch(10_000, seed=1)  # big enough that requests are in flight when SIGTERM lands
    answered, refused, wrong, unexpected = [], [], [], []
    lock = threading.Lock()

    def worker(worker_id: int) -> None:
        with SamplerClient(location, timeout=60) as client:
            for i in range(1000):
                index = worker_id * 1000 + i
                try:
                    got = client.sample(batch, epoch=0, batch_index=index, per_positive=4)
                except flight.FlightError as exc:  # refused or closed: never accepted
                    with lock:
                        refused.append(str(exc))
                    return
                except Exception as exc:
                    with lock:
                        unexpected.append(repr(exc))
                    return
                want = reference.get(batch, epoch=0, batch_index=index, per_positive=4)
                with lock:
                    answered.append(index)
                    if not np.array_equal(got.ids, want.ids):
                        wrong.append(index)

    idle = flight.connect(location)  # an open exchange that sends nothing more must not block the drain
    idle_writer, idle_reader = idle.do_exchange(flight.FlightDescriptor.for_command(b""))
    idle_writer.begin(batch.schema)
    idle_writer.write_with_metadata(_batch(3), Request(epoch=0, batch_index=10**6).to_metadata())
    assert idle_reader.read_chunk().data.num_rows >= 64
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    with SamplerClient(location) as probe:
        deadline = time.monotonic() + 30
        while probe.stats()["in_flight"] < 1 or len(answered) < 3:
            assert time.monotonic() < deadline, "no request ever went in flight"
            time.sleep(0.01)
    serve.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    rc = serve.proc.wait(60)
    stderr = serve.stderr()
    assert rc == 0, stderr[-2000:]
    assert wrong == [] and unexpected == []
    assert len(refused) == 3, refused  # every client eventually found the server gone
    drained = json.loads(stderr.split("drained: ", 1)[1].splitlines()[0])
    # Every request the server accepted was answered, and every answer reached its client
    # (the probe's stats calls are actions, not requests).
    assert drained["errors"] == 0 and drained["in_flight"] == 0
    served = [line for line in stderr.splitlines() if "request peer=" in line]
    assert drained["requests"] == len(answered) + 1, (sorted(answered), refused, served)  # + the idle one
    with contextlib.suppress(pa.ArrowException):  # the server cut it: closing reports that
        idle_writer.close()
    idle.close()
    assert "request peer=" in stderr and "status=ok" in stderr  # the debug line a request


@pytest.mark.timeout(60)
def test_drain_timeout_ends_a_stuck_drain_with_exit_1(tmp_path):
    serve = _Serve(_write_job(tmp_path), "--drain-timeout", "0.1", "--max-rows", "1000000")
    location = serve.location
    batch = _batch(200_000)  # 3.2M negatives with attributes: far over 0.1 s of work
    done = threading.Event()

    def slow_request() -> None:
        with SamplerClient(location) as client, contextlib.suppress(flight.FlightError):
            client.sample(batch, batch_index=0, per_positive=16)
        done.set()

    threading.Thread(target=slow_request, daemon=True).start()
    with SamplerClient(location) as probe:
        while probe.stats()["in_flight"] < 1:
            assert not done.is_set(), "the slow request finished before it was seen in flight"
            time.sleep(0.005)
    assert serve.stop(30) == 1
    assert "drain timeout" in serve.stderr()


def test_serve_bad_job_is_one_line_and_exit_2(tmp_path):
    job = _write_job(tmp_path, extra="bogus = 1\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-m", "negseq.cli", "serve", "--config", str(job)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f'negseq serve: error: {job}: [service] unknown key "bogus"; known: host, port, max_rows, '
        "max_bytes, max_negatives, token_file, drain_timeout, log_level, tls_cert, tls_key, "
        "tls_client_ca, insecure, max_concurrent, metrics_port"
    ]


def test_service_job_reads_candidates_and_service_tables(tmp_path):
    job = ServiceJob.from_toml(_write_job(tmp_path, extra='host = "::1"\nport = 9000\n'))
    assert job.candidates == CandidateDefaults(layout="suffix", neg_per_pos=None, seq_delim=";")
    assert (job.config.service.host, job.config.service.port, job.limits.max_rows) == ("::1", 9000, 100000)
    assert job.limits.max_bytes == Limits().max_bytes and job.config.base_dir == str(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text('[sampler.negative_sampler]\nnum_sample = 1\n[candidates]\nlayout = "zigzag"\n')
    with pytest.raises(NegseqError, match=r'\[candidates\] layout: expected one of .*got "zigzag"'):
        ServiceJob.from_toml(bad)


def test_token_file(tmp_path):
    (tmp_path / "token").write_text("  abc\n")
    (tmp_path / "token").chmod(0o600)
    assert read_token_file(tmp_path / "token") == "abc"
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "empty").chmod(0o600)
    with pytest.raises(NegseqError, match="token file is empty"):
        read_token_file(tmp_path / "empty")
    with pytest.raises(NegseqError, match="cannot read token file"):
        read_token_file(tmp_path / "missing")


def test_candidates_over_max_negatives_is_refused_before_work(clients):
    batch = pa.record_batch({"item_id": pa.array([[1, 11, 21]] * 50), "user_id": [1000] * 50})
    with pytest.raises(flight.FlightServerError, match="150 positives x neg_per_pos 1000.*max_negatives"):
        clients["v1"].candidates(batch, batch_index=0, layout="interleaved", neg_per_pos=1000)
    assert clients["v1"].health() == "ok"


def test_max_negatives_counts_num_eval_sample_out_of_training():
    """Out of training the sampler draws num_eval_sample: the limit checks that, in both modes."""
    sampler = NegativeSampler(ITEMS, num_sample=40, num_eval_sample=500, **COMMON)
    server = SamplerServer(sampler, limits=Limits(max_negatives=100))
    lists = pa.record_batch({"item_id": pa.array([[1, 11], [21]])})
    try:
        with SamplerClient(server.location) as client:
            assert len(client.sample(_batch(4), batch_index=0, training=True).ids) == 40
            with pytest.raises(flight.FlightServerError, match="500 negatives .*num_eval_sample"):
                client.sample(_batch(4), batch_index=0, training=False)
            client.candidates(lists, batch_index=0, layout="suffix", training=True)
            with pytest.raises(flight.FlightServerError, match="500 negatives .*num_eval_sample"):
                client.candidates(lists, batch_index=0, layout="suffix", training=False)
            with pytest.raises(flight.FlightServerError, match="3 positives x neg_per_pos 500"):
                client.candidates(lists, batch_index=0, layout="interleaved", training=False)
            assert client.health() == "ok"
    finally:
        server.shutdown()
