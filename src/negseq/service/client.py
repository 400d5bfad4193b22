"""`SamplerClient`: call a `negseq serve` sampler service from any process (no tables loaded).

    client = SamplerClient("grpc://127.0.0.1:8815", token=token)
    res = client.sample(batch, epoch=0, batch_index=7)        # a negseq.sampler.SampleResult
    cands = client.candidates(batch, epoch=0, batch_index=7, layout="suffix")  # a pa.RecordBatch

    tls = SamplerClient("grpc+tls://sampler:8815", token=token, tls_root_certs="ca.crt",
                        cert_chain="client.crt", private_key="client.key")   # mutual TLS

`sample` answers as `sampler.get(batch, epoch=..., batch_index=..., per_positive=...)` would in
process, for the same key. Requests travel over Flight exchanges that stay open between calls (up
to `keep_open` of them, each closed after `idle_close` seconds unused; see `exchanges`); `stream`
sends many batches over one. The client is thread-safe; share one per process.

Retries. A keyed request `(seed, epoch, batch_index)` gets the same answer however often it is
sent, so a call that failed for a reason that may pass is sent again: the server unreachable or
restarting, the connection dropped, the server busy (at its cap on concurrent calls) or draining,
the deadline passed. Up to `retries` times, waiting a random time in [0, min(backoff_max,
backoff_initial * 2**k)] before retry k ("full jitter", so clients that failed together do not
come back together). A refused call is never retried: a wrong or missing token, a bad request, a
TLS handshake the server refused, an internal server error. After the last try the last error is
raised, with a note saying how many attempts were made. A stream resumes on a new exchange from
the first request it has no answer for.

Deadline: `timeout` seconds for each request's answer (`sample`, `candidates`, each request of a
`stream`) and for each action; past it the call fails with `FlightTimedOutError` (and is retried).
This module does not import torch or ray.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeAlias, TypeVar
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from negseq.errors import NegseqError
from negseq.layout import Layout
from negseq.sampler import SampleResult
from negseq.service.auth import bearer_headers
from negseq.service.exchanges import Exchange, ExchangePool
from negseq.service.protocol import Request, decode_metadata, decode_negatives
from negseq.service.tls import PemSource, is_loopback, pem_bytes

log = logging.getLogger("negseq.service.client")

DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 8
DEFAULT_BACKOFF_INITIAL = 0.1
DEFAULT_BACKOFF_MAX = 10.0
DEFAULT_KEEP_OPEN = 8
DEFAULT_IDLE_CLOSE = 5.0
RETRYABLE = (flight.FlightUnavailableError, flight.FlightTimedOutError)
T = TypeVar("T")
_CLIENT_TIMEOUT = object()  # stream(timeout=...) not given: the client's timeout

BatchLike: TypeAlias = pa.RecordBatch | Mapping[str, pa.Array | np.ndarray]


def _as_record_batch(batch: BatchLike) -> pa.RecordBatch:
    """A record batch from a batch or a dict of columns (whose lengths must agree)."""
    if isinstance(batch, pa.RecordBatch):
        return batch
    if isinstance(batch, pa.Table):
        columns = [
            pa.concat_arrays(col.chunks) if col.num_chunks else pa.array([], col.type)
            for col in batch.columns
        ]
        return pa.RecordBatch.from_arrays(columns, schema=batch.schema)
    lengths = {name: len(col) for name, col in batch.items()}
    if len(set(lengths.values())) > 1:
        raise NegseqError(f"batch: columns have different lengths {lengths}; a request needs aligned columns")
    return pa.RecordBatch.from_pydict({name: pa.array(col) for name, col in batch.items()})


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed call may succeed if sent again: unavailable (down, restarting, dropped,
    busy, draining) or timed out, but not a TLS handshake the server refused."""
    return isinstance(exc, RETRYABLE) and "handshake failed" not in str(exc).lower()


def _plaintext_remote(location: str) -> str | None:
    """The host of a plaintext gRPC location that is not the loopback, else None."""
    parts = urlsplit(location)
    if parts.scheme not in ("grpc", "grpc+tcp"):
        return None
    host = parts.hostname or ""
    return None if is_loopback(host) else host


class SamplerClient:
    """A connection to one sampler service.

    `location`: grpc://host:port, or grpc+tls://host:port for TLS. `tls_root_certs`: the CA that
    signed the server's certificate (default: the system's roots); `cert_chain` and
    `private_key`: this client's certificate for mutual TLS. Each of those is PEM bytes or the
    path of a PEM file. A token is not sent in plaintext to a host other than the loopback
    unless `insecure`. `timeout`, `retries`, `backoff_initial`, `backoff_max`: see the module
    docstring (seconds; `retries=0` never retries). `keep_open`: exchanges kept open between
    calls (each holds one of the server's call slots; 0 closes each after its call);
    `idle_close`: seconds an open exchange may stay unused."""

    def __init__(
        self,
        location: str,
        token: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff_initial: float = DEFAULT_BACKOFF_INITIAL,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        tls_root_certs: PemSource | None = None,
        cert_chain: PemSource | None = None,
        private_key: PemSource | None = None,
        override_hostname: str | None = None,
        insecure: bool = False,
        keep_open: int = DEFAULT_KEEP_OPEN,
        idle_close: float = DEFAULT_IDLE_CLOSE,
    ) -> None:
        if keep_open < 0 or idle_close <= 0:
            raise NegseqError(
                f"SamplerClient: need keep_open >= 0 and idle_close > 0, got keep_open={keep_open}, "
                f"idle_close={idle_close}"
            )
        if retries < 0 or backoff_initial < 0 or backoff_max < backoff_initial:
            raise NegseqError(
                f"SamplerClient: need retries >= 0 and 0 <= backoff_initial <= backoff_max, got retries="
                f"{retries}, backoff_initial={backoff_initial}, backoff_max={backoff_max}"
            )
        if timeout is not None and timeout <= 0:
            raise NegseqError(f"SamplerClient: timeout must be > 0 seconds (or None), got {timeout}")
        if (cert_chain is None) != (private_key is None):
            raise NegseqError("SamplerClient: cert_chain and private_key go together (mutual TLS)")
        remote = _plaintext_remote(location)
        if token is not None and remote is not None and not insecure:
            raise NegseqError(
                f"SamplerClient: refusing to send the token in plaintext to {remote}; use "
                f"grpc+tls://, or insecure=True on a network you trust"
            )
        self.location = location
        self.timeout = timeout
        self.retries = retries
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._headers = bearer_headers(token)
        self._jitter = random.Random()
        tls: dict[str, Any] = {}
        if tls_root_certs is not None:
            tls["tls_root_certs"] = pem_bytes(tls_root_certs, "TLS root certificates")
        if cert_chain is not None and private_key is not None:
            tls["cert_chain"] = pem_bytes(cert_chain, "TLS client certificate")
            tls["private_key"] = pem_bytes(private_key, "TLS client private key")
        if override_hostname is not None:
            tls["override_hostname"] = override_hostname
        # gRPC waits up to 120 s between reconnects by default; a restarted server should be found
        # by the next retry, so the channel reconnects at least as eagerly as the retries come.
        reconnect_ms = max(1, int(backoff_initial * 1000))
        self._client = flight.connect(
            location,
            generic_options=[
                ("grpc.initial_reconnect_backoff_ms", reconnect_ms),
                ("grpc.min_reconnect_backoff_ms", reconnect_ms),
                ("grpc.max_reconnect_backoff_ms", max(reconnect_ms, int(backoff_max * 1000))),
            ],
            **tls,
        )
        self._action_options = flight.FlightCallOptions(timeout=timeout, headers=self._headers)
        self._exchange_options = flight.FlightCallOptions(headers=self._headers)  # they outlive calls
        self._exchanges = ExchangePool(keep_open, idle_close)

    def close(self) -> None:
        self._exchanges.close()
        self._client.close()

    def __enter__(self) -> SamplerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- retries ---------------------------------------------------------------------------

    def _before_retry(self, exc: flight.FlightError, attempt: int, started: float) -> None:
        """Wait before retry `attempt` (0-based) of a call that failed with `exc`, or raise `exc`
        when it is not worth retrying or the retries are spent."""
        if not is_retryable(exc) or attempt >= self.retries:
            if attempt:
                exc.add_note(
                    f"negseq client: gave up after {attempt + 1} attempts over "
                    f"{time.monotonic() - started:.1f} s"
                )
            raise exc
        delay = self._jitter.uniform(0, min(self.backoff_max, self.backoff_initial * 2**attempt))
        log.info("retry %d of %d in %.2f s after: %s", attempt + 1, self.retries, delay, exc)
        time.sleep(delay)

    def _retrying(self, call: Callable[[], T]) -> T:
        started, attempt = time.monotonic(), 0
        while True:
            try:
                return call()
            except flight.FlightError as exc:
                self._before_retry(exc, attempt, started)
                attempt += 1

    # -- actions ---------------------------------------------------------------------------

    def _action(self, name: str) -> bytes:
        def call() -> bytes:
            results = list(self._client.do_action(flight.Action(name, b""), options=self._action_options))
            return b"".join(r.body.to_pybytes() for r in results)

        return self._retrying(call)

    def health(self) -> str:
        """'ok', or 'draining' while the server shuts down."""
        return self._action("health").decode()

    def stats(self) -> dict[str, Any]:
        return decode_metadata(self._action("stats"))

    def config(self) -> dict[str, Any]:
        return decode_metadata(self._action("config"))

    # -- sampling --------------------------------------------------------------------------

    def sample(
        self,
        batch: BatchLike,
        *,
        epoch: int = 0,
        batch_index: int = 0,
        per_positive: int | None = None,
        layout: Layout | None = None,
        seed: int | None = None,
        training: bool = True,
    ) -> SampleResult | pa.RecordBatch:
        """The negatives for the batch's positives, as the in-process sampler's `get` returns them;
        with a `layout`, the combined candidate sequences instead (`candidates`, a RecordBatch).
        Every option is sent, so one the mode does not take is the server's named error."""
        request = Request(
            mode="negatives" if layout is None else "candidates",
            epoch=epoch,
            batch_index=batch_index,
            seed=seed,
            training=training,
            per_positive=per_positive,
            layout=layout,
        )
        return self._one(batch, request)

    def candidates(
        self,
        batch: BatchLike,
        *,
        epoch: int = 0,
        batch_index: int = 0,
        layout: Layout | None = None,
        neg_per_pos: int | None = None,
        seq_delim: str | None = None,
        seed: int | None = None,
        training: bool = True,
    ) -> pa.RecordBatch:
        """The batch with its item column replaced by candidate sequences (`sample_candidates`);
        unset options take the server job's `[candidates]` defaults."""
        request = Request(
            mode="candidates",
            epoch=epoch,
            batch_index=batch_index,
            seed=seed,
            training=training,
            layout=layout,
            neg_per_pos=neg_per_pos,
            seq_delim=seq_delim,
        )
        return self._one(batch, request)

    def _one(self, batch: BatchLike, request: Request) -> SampleResult | pa.RecordBatch:
        """The answer to one request: a stream of one."""
        ((_, result),) = self.stream([(batch, request)])
        return result

    def stream(
        self, requests: Iterable[tuple[BatchLike, Request]], *, timeout: Any = _CLIENT_TIMEOUT
    ) -> Iterator[tuple[dict[str, Any], SampleResult | pa.RecordBatch]]:
        """Send (batch, request) pairs over one exchange, yielding (response metadata, answer) in
        order: a SampleResult in negatives mode, a RecordBatch in candidates mode. All requests of
        one stream share a mode (and, in candidates mode, an input schema). `timeout`: seconds to
        wait for each answer (default the client's; None waits forever). A retryable failure
        reopens the exchange and sends again the request it has no answer for (the answers are
        keyed, so they are the same)."""
        per_answer = self.timeout if timeout is _CLIENT_TIMEOUT else timeout
        exchange: Exchange | None = None
        between_requests = True  # the exchange holds no unanswered request: it can be reused
        try:
            for batch, request in requests:
                record_batch = _as_record_batch(batch)
                started, attempt = time.monotonic(), 0
                between_requests = False
                while True:
                    try:
                        if exchange is None:
                            exchange = self._open((request.mode, record_batch.schema), record_batch.schema)
                        answer = self._ask(exchange, record_batch, request, per_answer)
                        break
                    except flight.FlightError as exc:
                        if exchange is not None:
                            exchange.abandon()
                            exchange = None
                        if is_retryable(exc):  # the idle ones most likely broke the same way
                            self._exchanges.discard_idle()
                        self._before_retry(exc, attempt, started)
                        attempt += 1
                between_requests = True
                yield answer
        except BaseException:
            if exchange is not None and not between_requests:
                exchange.abandon()
                exchange = None
            raise
        finally:
            if exchange is not None:
                self._exchanges.give_back(exchange)

    def _open(self, key: tuple, schema: pa.Schema) -> Exchange:
        """An idle exchange for `key`, else a new one."""
        return self._exchanges.take(key) or Exchange(self._client, self._exchange_options, schema, key)

    def _ask(
        self, exchange: Exchange, batch: pa.RecordBatch, request: Request, timeout: float | None
    ) -> tuple[dict[str, Any], SampleResult | pa.RecordBatch]:
        """Write one request into the exchange and read its answer, within `timeout` seconds."""
        with self._exchanges.deadline(exchange, timeout):
            try:
                exchange.writer.write_with_metadata(batch, request.to_metadata())
                chunk = exchange.reader.read_chunk()
            except (StopIteration, pa.ArrowException) as exc:
                if exchange.timed_out:
                    raise flight.FlightTimedOutError(
                        f"negseq service: no answer within the client's timeout of {timeout} s"
                    ) from None
                if isinstance(exc, StopIteration):
                    raise flight.FlightUnavailableError(
                        "negseq service closed the exchange before answering (it is draining)"
                    ) from None
                raise
        meta = decode_metadata(chunk.app_metadata)
        if request.mode == "negatives":
            return meta, decode_negatives(chunk.data, meta)
        return meta, chunk.data
