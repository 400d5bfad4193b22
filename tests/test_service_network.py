"""The sampler service beyond one host, against real Flight servers on 127.0.0.1: TLS and mutual
TLS with certificates made here, no plaintext token off the loopback, owner-only secret files,
one authorization header a call, the client's retries (a `negseq serve` killed and restarted
mid-stream), per-call deadlines, the cap on concurrent calls, and Prometheus metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from certs import make_pki
from prometheus_client.parser import text_string_to_metric_families
from test_service import SRC, _assert_same, _batch, _make, _raw_exchange, _Serve, _write_job, settled

from negseq.errors import NegseqError
from negseq.sampler import build_sampler
from negseq.service import Request, SamplerClient, SamplerServer, ServiceJob
from negseq.service.auth import read_secret_file, read_token_file
from negseq.service.server import check_token_transport
from negseq.service.tls import ServerTls

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tls_server(pki, *, mutual: bool, **kwargs) -> SamplerServer:
    tls = ServerTls(pki.server.cert, pki.server.key, pki.ca.cert if mutual else None)
    return SamplerServer(_make("v1"), tls=tls, **kwargs)


def _refusal(client_kwargs: dict, location: str) -> flight.FlightError:
    with SamplerClient(location, retries=0, timeout=10, **client_kwargs) as client:
        with pytest.raises(flight.FlightError) as caught:
            client.sample(_batch(4), batch_index=0)
    return caught.value


# -- TLS -----------------------------------------------------------------------------------------


def test_tls_client_succeeds_and_plaintext_or_untrusted_clients_are_refused(pki):
    server = _tls_server(pki, mutual=False, token="s3cret")
    try:
        assert server.location == f"grpc+tls://127.0.0.1:{server.port}"
        batch = _batch(9)
        with SamplerClient(server.location, token="s3cret", tls_root_certs=pki.ca.cert_file) as client:
            _assert_same(client.sample(batch, batch_index=3), _make("v1").get(batch, batch_index=3))
            assert client.health() == "ok"
        plain = f"grpc://127.0.0.1:{server.port}"
        assert isinstance(_refusal({}, plain), flight.FlightUnavailableError)
        untrusted = _refusal({"tls_root_certs": pki.other_ca.cert}, server.location)
        assert "handshake failed" in str(untrusted).lower()
        # a handshake the server refused is not retried: raised at once, with no "gave up" note
        with SamplerClient(server.location, retries=5, tls_root_certs=pki.other_ca.cert) as client:
            started = time.monotonic()
            with pytest.raises(flight.FlightUnavailableError) as caught:
                client.health()
            assert not getattr(caught.value, "__notes__", None)
            assert time.monotonic() - started < 5
        assert settled(server.stats.snapshot)["requests"] == 1  # only the trusted client's
    finally:
        server.shutdown()


def test_a_client_refuses_a_server_whose_certificate_it_does_not_trust(pki):
    tls = ServerTls(pki.other_server.cert, pki.other_server.key)  # signed by the other CA
    server = SamplerServer(_make("v1"), tls=tls)
    try:
        error = _refusal({"tls_root_certs": pki.ca.cert}, server.location)
        assert "handshake failed" in str(error).lower()
    finally:
        server.shutdown()


def test_mutual_tls_refuses_clients_without_a_certificate_of_its_ca(pki):
    server = _tls_server(pki, mutual=True)
    try:
        batch = _batch(5)
        mine = {"tls_root_certs": pki.ca.cert, "cert_chain": pki.client.cert, "private_key": pki.client.key}
        with SamplerClient(server.location, **mine) as client:
            _assert_same(client.sample(batch, batch_index=1), _make("v1").get(batch, batch_index=1))
        assert isinstance(
            _refusal({"tls_root_certs": pki.ca.cert}, server.location), flight.FlightUnavailableError
        )
        intruder = {
            "tls_root_certs": pki.ca.cert,
            "cert_chain": pki.other_client.cert,
            "private_key": pki.other_client.key,
        }
        assert isinstance(_refusal(intruder, server.location), flight.FlightUnavailableError)
        assert settled(server.stats.snapshot)["requests"] == 1
    finally:
        server.shutdown()


def test_server_tls_files_are_checked_before_binding(pki, tmp_path):
    assert ServerTls.from_files(None, None) is None
    tls = ServerTls.from_files(pki.server.cert_file, pki.server.key_file, pki.ca.cert_file)
    assert (tls.cert_chain, tls.private_key, tls.client_ca) == (pki.server.cert, pki.server.key, pki.ca.cert)
    with pytest.raises(NegseqError, match="tls_cert is set but tls_key is not"):
        ServerTls.from_files(pki.server.cert_file, None)
    with pytest.raises(NegseqError, match="tls_client_ca .* needs tls_cert and tls_key"):
        ServerTls.from_files(None, None, pki.ca.cert_file)
    not_a_key = tmp_path / "not_a.key"
    not_a_key.write_bytes(pki.server.cert)  # a certificate where the key belongs
    not_a_key.chmod(0o600)
    with pytest.raises(NegseqError, match=f"{not_a_key}: TLS private key holds no PEM block"):
        ServerTls.from_files(pki.server.cert_file, not_a_key)
    with pytest.raises(NegseqError, match=f"{pki.server.key_file}: TLS certificate holds no PEM block"):
        ServerTls.from_files(pki.server.key_file, pki.server.key_file)
    readable = tmp_path / "readable.key"
    readable.write_bytes(pki.server.key)
    readable.chmod(0o644)
    with pytest.raises(NegseqError, match=f"{readable}: TLS private key has mode 0644"):
        ServerTls.from_files(pki.server.cert_file, readable)


def test_a_token_never_crosses_a_network_in_plaintext(pki):
    with pytest.raises(NegseqError, match="refusing to serve on 0.0.0.0 with a bearer token.*--insecure"):
        SamplerServer(_make("v1"), host="0.0.0.0", token="s3cret")
    with pytest.raises(NegseqError, match="refusing to serve on 10.1.2.3 .*--tls-cert"):
        check_token_transport("10.1.2.3", "s3cret", None, insecure=False)
    check_token_transport("10.1.2.3", "s3cret", None, insecure=True)  # the operator said so
    check_token_transport("10.1.2.3", "s3cret", ServerTls(pki.server.cert, pki.server.key), insecure=False)
    check_token_transport("0.0.0.0", None, None, insecure=False)  # nothing secret to leak
    for host in ("127.0.0.1", "::1", "localhost"):
        check_token_transport(host, "s3cret", None, insecure=False)
    # the client will not send its token in plaintext off the loopback either
    with pytest.raises(NegseqError, match="refusing to send the token in plaintext to sampler"):
        SamplerClient("grpc://sampler:8815", token="s3cret")
    SamplerClient("grpc://sampler:8815", token="s3cret", insecure=True).close()
    SamplerClient("grpc+tls://sampler:8815", token="s3cret").close()


def test_serve_refuses_a_plaintext_token_off_the_loopback_before_loading(tmp_path):
    job = _write_job(tmp_path)
    token = tmp_path / "token"
    token.write_text("s3cret")
    token.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    command = [sys.executable, "-m", "negseq.cli", "serve", "--config", str(job), "--token-file", str(token)]
    out = subprocess.run(
        [*command, "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert 'a token would cross the network in plaintext to "0.0.0.0"' in line and "--insecure" in line


@pytest.mark.timeout(120)
def test_serve_with_mutual_tls_and_metrics_from_the_job_file(pki, tmp_path):
    extra = (
        f'tls_cert = "{pki.server.cert_file}"\ntls_key = "{pki.server.key_file}"\n'
        f'tls_client_ca = "{pki.ca.cert_file}"\nmetrics_port = 0\nmax_concurrent = 5\n'
    )
    serve = _Serve(_write_job(tmp_path, extra=extra))
    try:
        assert serve.location.startswith("grpc+tls://127.0.0.1:")
        metrics_line = serve.proc.stdout.readline()
        assert metrics_line.startswith("negseq serve: metrics on http://127.0.0.1:")
        url = metrics_line.rsplit(" ", 1)[1].strip()
        mine = {"tls_root_certs": pki.ca.cert, "cert_chain": pki.client.cert, "private_key": pki.client.key}
        with SamplerClient(serve.location, **mine) as client:
            assert client.config()["sampler"] == "HardNegativeSampler"
            assert client.stats()["max_concurrent"] == 5
        assert _scrape(url)["negseq_max_concurrent_calls"][()] == 5
        assert isinstance(
            _refusal({"tls_root_certs": pki.ca.cert}, serve.location), flight.FlightUnavailableError
        )
        assert serve.stop() == 0
    finally:
        if serve.proc.poll() is None:
            serve.proc.kill()


# -- the token ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666, 0o610])
def test_a_token_file_others_can_reach_is_refused(tmp_path, mode):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(mode)
    with pytest.raises(NegseqError, match=f"{token}: token file has mode {mode:04o}.*owner only"):
        read_token_file(token)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_an_owner_only_token_file_is_read(tmp_path, mode):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(mode)
    assert read_token_file(token) == "s3cret"
    assert read_secret_file(token, "token file") == b"s3cret\n"


def test_serve_refuses_a_world_readable_token_file(tmp_path):
    job = _write_job(tmp_path)
    token = tmp_path / "token"
    token.write_text("s3cret")
    token.chmod(0o644)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-m", "negseq.cli", "serve", "--config", str(job), "--token-file", str(token)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"negseq serve: error: {token}: token file has mode 0644, which lets others on this machine "
        f"read it; it must be readable by its owner only (chmod 600 {token})"
    )


def test_a_call_with_several_authorization_headers_is_refused():
    server = SamplerServer(_make("v1"), token="s3cret")
    good = (b"authorization", b"Bearer s3cret")
    try:
        _raw_exchange(server.location, _batch(2), Request(epoch=0, batch_index=0).to_metadata(), [good])
        for headers in ([good, good], [good, (b"authorization", b"Bearer wrong")]):
            with pytest.raises(flight.FlightUnauthenticatedError, match="2 authorization headers"):
                _raw_exchange(
                    server.location, _batch(2), Request(epoch=0, batch_index=0).to_metadata(), headers
                )
        stats = settled(server.stats.snapshot)
        assert stats["requests"] == 1 and stats["errors_by_kind"]["unauthenticated"] == 2
    finally:
        server.shutdown()


# -- retries and deadlines -----------------------------------------------------------------------


def test_refused_calls_are_never_retried():
    server = SamplerServer(_make("v1"), token="s3cret")
    try:
        with SamplerClient(server.location, token="wrong", retries=5) as client:
            with pytest.raises(flight.FlightUnauthenticatedError):
                client.sample(_batch(3), batch_index=0)
        with SamplerClient(server.location, token="s3cret", retries=5) as client:
            with pytest.raises(flight.FlightServerError, match="'layout' belongs to mode 'candidates'"):
                list(client.stream([(_batch(3), Request(epoch=0, batch_index=0, layout="suffix"))]))
        stats = settled(server.stats.snapshot)
        assert stats["errors_by_kind"]["unauthenticated"] == 1
        assert (stats["requests"], stats["errors_by_kind"]["bad_request"]) == (1, 1)
    finally:
        server.shutdown()


class _SlowSampler:
    """A real sampler whose calls numbered in `slow` (from 1) take `delay` seconds first (a stalled
    server)."""

    def __init__(self, sampler, delay: float, slow: set[int]) -> None:
        self._sampler, self.delay, self.slow = sampler, delay, slow
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._sampler, name)

    def get(self, *args, **kwargs):
        self.calls += 1
        if self.calls in self.slow:
            time.sleep(self.delay)
        return self._sampler.get(*args, **kwargs)


def test_a_call_past_its_deadline_times_out_and_is_retried():
    sampler = _SlowSampler(_make("v1"), delay=2.0, slow={1, 2})
    server = SamplerServer(sampler)
    batch = _batch(6)
    try:
        with SamplerClient(server.location, timeout=0.3, retries=0) as client:
            started = time.monotonic()
            with pytest.raises(flight.FlightTimedOutError):
                client.sample(batch, batch_index=2)
            assert time.monotonic() - started < 1.5
        with SamplerClient(server.location, timeout=0.3, retries=3, backoff_initial=0.01) as client:
            _assert_same(client.sample(batch, batch_index=2), _make("v1").get(batch, batch_index=2))
        assert sampler.calls == 3  # the second slow call timed out too; the third answered
    finally:
        server.shutdown()


@pytest.mark.timeout(180)
def test_a_stream_survives_the_server_killed_and_restarted_mid_stream(tmp_path):
    """SIGKILL `negseq serve` in the middle of a stream, start it again on the same port a little
    later: the client retries, reopens the exchange and resends the unanswered request, and its
    answers equal the uninterrupted in-process sampler's, one for each request, in order."""
    job = _write_job(tmp_path)
    port = _free_port()
    served = ServiceJob.from_toml(job)
    reference = build_sampler(served.sampler_config)
    servers = [_Serve(job, port=port)]
    restarted = threading.Event()
    batches = [_batch(50 + i, seed=i) for i in range(30)]

    def restart_later() -> None:
        time.sleep(1.0)  # the client finds the port closed for a while and backs off
        servers.append(_Serve(job, port=port))
        restarted.set()

    restarter = threading.Thread(target=restart_later, daemon=True)

    def requests():
        for i, batch in enumerate(batches):
            if i == 12:  # the stream is open, 12 answers in
                servers[0].proc.send_signal(signal.SIGKILL)
                servers[0].proc.wait(30)
                restarter.start()
            yield batch, Request(epoch=1, batch_index=i, per_positive=2)

    try:
        client = SamplerClient(servers[0].location, retries=40, backoff_initial=0.05, backoff_max=0.5)
        with client:
            answers = list(client.stream(requests()))
            assert restarted.is_set()
            assert [meta["batch_index"] for meta, _ in answers] == list(range(30))
            for i, (_, got) in enumerate(answers):
                _assert_same(got, reference.get(batches[i], epoch=1, batch_index=i, per_positive=2))
            stats = settled(client.stats)  # the restarted server answered the rest, from request 12 on
            assert (stats["requests"], stats["errors"]) == (18, 0)
            keyed = [(b, Request(epoch=1, batch_index=i, per_positive=2)) for i, b in enumerate(batches)]
            uninterrupted = list(client.stream(keyed))  # the same stream, nothing killed
            for (meta, got), (want_meta, want) in zip(answers, uninterrupted, strict=True):
                assert meta == want_meta
                _assert_same(got, want)
        assert servers[1].stop() == 0
    finally:
        if restarter.is_alive():  # a failed stream must not leave the restarted server behind
            restarter.join(60)
        for serve in servers:
            if serve.proc.poll() is None:
                serve.proc.kill()
                serve.proc.wait(30)


# -- exchanges kept open between calls ------------------------------------------------------------


def _open_calls_become(server: SamplerServer, count: int, within: float = 10.0) -> None:
    """Wait until the server holds `count` open calls (a closed call completes asynchronously)."""
    deadline = time.monotonic() + within
    while server.stats.snapshot()["open_calls"] != count:
        assert time.monotonic() < deadline, server.stats.snapshot()
        time.sleep(0.01)


def test_calls_reuse_an_open_exchange_per_mode_and_schema():
    server = SamplerServer(_make("v2"))
    reference = _make("v2")
    try:
        with SamplerClient(server.location) as client:
            for i in range(5):
                batch = _batch(6 + i, seed=i)
                _assert_same(client.sample(batch, batch_index=i), reference.get(batch, batch_index=i))
            assert server.stats.snapshot()["open_calls"] == 1  # one exchange served all five
            wider = _batch(4).append_column("label", pa.array([1, 0, 1, 1]))
            _assert_same(client.sample(wider, batch_index=9), reference.get(wider, batch_index=9))
            assert server.stats.snapshot()["open_calls"] == 2  # another input schema, another exchange
            assert settled(server.stats.snapshot)["requests"] == 6
        _open_calls_become(server, 0)  # close() closed them
    finally:
        server.shutdown()


def test_keep_open_zero_and_idle_close_give_the_slots_back():
    server = SamplerServer(_make("v1"))
    try:
        with SamplerClient(server.location, keep_open=0) as client:
            client.sample(_batch(3), batch_index=0)
            _open_calls_become(server, 0)
        with SamplerClient(server.location, idle_close=0.3) as client:
            client.sample(_batch(3), batch_index=0)
            assert server.stats.snapshot()["open_calls"] == 1
            _open_calls_become(server, 0, within=5)  # closed by the client's watchdog, unused
            client.sample(_batch(3), batch_index=1)  # and a new one opens when needed
            assert settled(server.stats.snapshot)["requests"] == 3
        with pytest.raises(NegseqError, match="keep_open >= 0 and idle_close > 0"):
            SamplerClient(server.location, keep_open=-1)
    finally:
        server.shutdown()


def test_a_stream_answer_past_its_deadline_times_out_on_an_open_exchange():
    sampler = _SlowSampler(_make("v1"), delay=2.0, slow={2, 3})
    server = SamplerServer(sampler)
    batches = [_batch(5, seed=i) for i in range(3)]
    try:
        with SamplerClient(server.location, retries=0, timeout=30) as client:
            requests = [(b, Request(epoch=0, batch_index=i)) for i, b in enumerate(batches)]
            answers = client.stream(requests, timeout=0.3)
            _assert_same(next(answers)[1], _make("v1").get(batches[0], batch_index=0))
            started = time.monotonic()
            with pytest.raises(
                flight.FlightTimedOutError, match="no answer within the client's timeout of 0.3 s"
            ):
                next(answers)
            assert time.monotonic() - started < 1.5
        with SamplerClient(server.location, timeout=0.3, retries=2, backoff_initial=0.01) as client:
            # the third call is slow too; the retry (a fourth call, fast) answers
            _assert_same(client.sample(batches[2], batch_index=2), _make("v1").get(batches[2], batch_index=2))
            _assert_same(client.sample(batches[1], batch_index=1), _make("v1").get(batches[1], batch_index=1))
        assert sampler.calls == 5
    finally:
        server.shutdown()


# -- the cap on concurrent calls -----------------------------------------------------------------


class _OpenExchange:
    """An exchange that has been answered once and stays open, holding its slot."""

    def __init__(self, location: str) -> None:
        self.client = flight.connect(location)
        self.writer, self.reader = self.client.do_exchange(flight.FlightDescriptor.for_command(b""))
        batch = _batch(3)
        self.writer.begin(batch.schema)
        self.writer.write_with_metadata(batch, Request(epoch=0, batch_index=0).to_metadata())
        assert self.reader.read_chunk().data.num_rows == 40

    def close(self) -> None:
        self.writer.done_writing()
        self.writer.close()
        self.client.close()


def test_calls_past_the_cap_are_refused_as_busy_until_one_closes():
    cap = 3
    server = SamplerServer(_make("v1"), max_concurrent=cap)
    held = [_OpenExchange(server.location) for _ in range(cap)]
    batch = _batch(7)
    want = _make("v1").get(batch, batch_index=5)
    try:
        with SamplerClient(server.location, retries=0) as client:
            for call in (lambda: client.sample(batch, batch_index=5), client.health):
                started = time.monotonic()
                with pytest.raises(flight.FlightUnavailableError, match="busy: all 3 call slots") as caught:
                    call()
                assert caught.value.extra_info == b"busy"
                assert time.monotonic() - started < 5  # refused, not queued
            assert server.stats.snapshot()["errors_by_kind"]["busy"] == 2
            assert server.stats.snapshot()["open_calls"] == cap
            held.pop().close()
            deadline = time.monotonic() + 10
            while server.stats.snapshot()["open_calls"] == cap:  # the slot comes back when it completes
                assert time.monotonic() < deadline
                time.sleep(0.01)
            _assert_same(client.sample(batch, batch_index=5), want)
    finally:
        for exchange in held:
            exchange.close()
        server.shutdown()


def test_the_client_retries_a_busy_server_until_a_slot_frees():
    server = SamplerServer(_make("v1"), max_concurrent=2)
    held = [_OpenExchange(server.location) for _ in range(2)]
    batch = _batch(7)
    try:
        threading.Timer(0.5, held.pop().close).start()
        with SamplerClient(server.location, retries=30, backoff_initial=0.02, backoff_max=0.2) as client:
            _assert_same(client.sample(batch, batch_index=5), _make("v1").get(batch, batch_index=5))
        assert server.stats.snapshot()["errors_by_kind"]["busy"] >= 1
    finally:
        time.sleep(0.6)
        for exchange in held:
            exchange.close()
        server.shutdown()


def test_callers_without_the_token_never_take_a_slot():
    server = SamplerServer(_make("v1"), token="s3cret", max_concurrent=2)
    try:
        for _ in range(5):
            with SamplerClient(server.location, token="wrong", retries=0) as intruder:
                with pytest.raises(flight.FlightUnauthenticatedError):
                    intruder.sample(_batch(3), batch_index=0)
        stats = server.stats.snapshot()
        assert (stats["open_calls"], stats["errors_by_kind"]["unauthenticated"]) == (0, 5)
        with (
            SamplerClient(server.location, token="s3cret") as one,
            SamplerClient(server.location, token="s3cret") as two,
        ):
            one.sample(_batch(3), batch_index=0)
            two.sample(_batch(3), batch_index=1)
            assert server.stats.snapshot()["open_calls"] == 2  # both slots were free
    finally:
        server.shutdown()


def test_max_concurrent_defaults_to_the_machine():
    server = SamplerServer(_make("v1"))
    try:
        assert server.max_concurrent == max(16, 8 * len(os.sched_getaffinity(0)))
    finally:
        server.shutdown()
    with pytest.raises(NegseqError, match="max_concurrent must be >= 1, got 0"):
        SamplerServer(_make("v1"), max_concurrent=0)


# -- Prometheus metrics ----------------------------------------------------------------------------


def _scrape(url: str) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from a Prometheus text endpoint."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_endpoint_counts_real_requests():
    one = SamplerServer(_make("hard"), metrics_port=0)
    two = SamplerServer(_make("v1"), metrics_port=0)  # a second registry in the same process
    try:
        assert one.metrics.url == f"http://127.0.0.1:{one.metrics.port}/metrics"
        before = _scrape(one.metrics.url)
        assert before["negseq_requests_total"][(("mode", "negatives"),)] == 0
        assert before["negseq_in_flight_requests"][()] == 0
        with SamplerClient(one.location) as client:
            answers = [client.sample(_batch(q, seed=q), batch_index=q) for q in (5, 9, 11)]
            cands = client.candidates(
                pa.record_batch({"item_id": pa.array([[1, 11], [21]]), "user_id": [1000, 1001]}),
                batch_index=0,
                layout="suffix",
            )
            with pytest.raises(flight.FlightServerError):
                _raw_exchange(one.location, _batch(3), b'{"batch_index": 0}')
        settled(one.stats.snapshot)
        after = _scrape(one.metrics.url)
        neg, cand = (("mode", "negatives"),), (("mode", "candidates"),)
        assert after["negseq_requests_total"][neg] == 3 and after["negseq_requests_total"][cand] == 1
        assert after["negseq_requests_total"][(("mode", "unknown"),)] == 1  # the bad one
        assert after["negseq_rows_total"][neg] == 5 + 9 + 11 and after["negseq_rows_total"][cand] == 2
        drawn = sum(len(a.ids) + len(a.hard_ids) for a in answers)
        assert after["negseq_negatives_total"][neg] == drawn
        assert after["negseq_negatives_total"][cand] == 40  # suffix: num_sample shared negatives
        assert after["negseq_errors_total"][(("kind", "bad_request"),)] == 1
        assert after["negseq_errors_total"][(("kind", "busy"),)] == 0
        assert after["negseq_request_duration_seconds_count"][neg] == 3
        assert after["negseq_request_duration_seconds_sum"][neg] > 0
        assert after["negseq_in_flight_requests"][()] == 0
        assert after["negseq_max_concurrent_calls"][()] == one.max_concurrent
        assert cands.num_rows == 2
        untouched = _scrape(two.metrics.url)
        assert untouched["negseq_requests_total"][neg] == 0  # its own registry
    finally:
        one.shutdown()
        two.shutdown()
    with pytest.raises(OSError):
        urllib.request.urlopen(one.metrics.url, timeout=5)  # closed with the server


def test_metrics_port_in_use_is_a_named_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(NegseqError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            SamplerServer(_make("v1"), metrics_port=port)


# -- the job file's [service] keys ---------------------------------------------------------------


def test_service_job_reads_the_network_keys(tmp_path):
    job = ServiceJob.from_toml(
        _write_job(
            tmp_path,
            extra='tls_cert = "c.pem"\ntls_key = "/abs/k.pem"\ntls_client_ca = "ca.pem"\n'
            "insecure = true\nmax_concurrent = 7\nmetrics_port = 9100\n",
        )
    )
    svc = job.config.service
    assert (svc.tls_cert, svc.tls_key, svc.tls_client_ca) == (
        str(tmp_path / "c.pem"),
        "/abs/k.pem",
        str(tmp_path / "ca.pem"),
    )
    assert (svc.insecure, svc.max_concurrent, svc.metrics_port) == (True, 7, 9100)
    plain = ServiceJob.from_toml(_write_job(tmp_path)).config.service
    assert (plain.tls_cert, plain.insecure, plain.max_concurrent, plain.metrics_port) == (
        None,
        False,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("port = true", r"port: expected an integer in \[0, 65535\], got true \(a bool\)"),
        ("port = 1.5", r"port: expected an integer in \[0, 65535\], got 1.5 \(a float\)"),
        ('port = "8815"', r'port: expected an integer in \[0, 65535\], got "8815" \(a string\)'),
        ("port = 70000", r"port: expected an integer in \[0, 65535\], got 70000"),
        ("max_concurrent = 0", "max_concurrent: expected an integer >= 1, got 0"),
        ("max_concurrent = 2.0", r"max_concurrent: expected an integer >= 1, got 2.0 \(a float\)"),
        ("metrics_port = -1", r"metrics_port: expected an integer in \[0, 65535\], got -1"),
        ("max_bytes = false", r"max_bytes: expected an integer >= 1, got false \(a bool\)"),
        ("insecure = 1", r"insecure: expected true or false, got 1 \(an integer\)"),
        ('insecure = "yes"', r'insecure: expected true or false, got "yes" \(a string\)'),
        ("tls_cert = 5", r"tls_cert: expected .*, got 5 \(an integer\)"),
        ('tls_key = ""', r'tls_key: expected .*, got ""'),
        ("host = 127", r"host: expected a non-empty string, got 127 \(an integer\)"),
    ],
)
def test_service_keys_are_typed(tmp_path, line, message):
    job = _write_job(tmp_path, extra=line + "\n")
    with pytest.raises(NegseqError, match=f"{job}: \\[service\\] {message}"):
        ServiceJob.from_toml(job)


# -- the client stays light ------------------------------------------------------------------------


def test_the_client_imports_neither_torch_nor_ray():
    code = (
        "import sys, json\n"
        "from negseq.service import SamplerClient\n"
        "import negseq.service.client\n"
        "print(json.dumps([m for m in ('torch', 'ray', 'negseq.candidates') if m in sys.modules]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
