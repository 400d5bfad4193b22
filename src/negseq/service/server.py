"""The sampler service: an Arrow Flight server that answers request batches with negatives.

The sampler (and its tables) is built once; every exchange shares it (sampling is a pure function
of the batch and its key, so concurrent requests need no lock). Wire format: `protocol`.
Every call passes two middlewares before a handler runs: the bearer token (`auth`), then the cap
on concurrent calls (`admission`). TLS and mutual TLS are Flight's own. Counters and Prometheus
metrics: `stats`.
Lifecycle: `serve_until_signalled` blocks until SIGTERM/SIGINT, then drains: new calls are refused,
each exchange answers the request it has read and closes, and the drain ends (code 0) once no
request is in flight.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.flight as flight

from negseq.errors import NegseqError
from negseq.sampler.exclusion import json_stats
from negseq.service.admission import ConcurrencyCapMiddlewareFactory, default_max_concurrent
from negseq.service.auth import BearerTokenMiddlewareFactory
from negseq.service.job import CandidateDefaults
from negseq.service.limits import Limits
from negseq.service.protocol import (
    RESERVED_COLUMNS,
    Request,
    encode_metadata,
    encode_negatives,
    id_attributes,
    id_type,
    parse_request,
)
from negseq.service.stats import MetricsEndpoint, ServiceStats
from negseq.service.tls import ServerTls, is_loopback
from negseq.service.wire import wire_sampler

log = logging.getLogger("negseq.service")

IDLE_GRACE_S = 1.0  # how long a drain waits on open exchanges that have no request in flight
ACTIONS = {
    "health": "'ok', or 'draining' once shutdown has begun",
    "stats": "requests, rows, negatives, errors, in-flight requests, latency p50/p99 (ms), as JSON",
    "config": "the sampler, its config, the candidate defaults and the limits, as JSON",
}


def grpc_location(host: str, port: int, tls: bool = False) -> str:
    scheme = "grpc+tls" if tls else "grpc"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _error_kind(exc: flight.FlightError) -> str:
    """The errors_total kind of a Flight error raised while answering (the client went away, ...)."""
    return "cancelled" if isinstance(exc, flight.FlightCancelledError) else "transport"


def _max_positives(column: pa.Array, seq_delim: str) -> int:
    """An upper bound on the positives a candidates-mode item column holds, without parsing it."""
    if pa.types.is_fixed_size_list(column.type):
        return len(column) * column.type.list_size
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return len(column.flatten())
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        # K tokens of >= 1 character need >= K + (K - 1) * d bytes in a row.
        data = column.buffers()[2]
        size = data.size if data is not None else 0
        return (size + len(column) * len(seq_delim)) // (1 + len(seq_delim))
    return len(column)


def _shared_negatives(sampler: Any, training: bool) -> tuple[int, str]:
    """How many negatives the sampler draws for a batch when not told a number a positive, and
    which setting says so (as `sampler.get` and `sample_candidates` choose it)."""
    setting = "num_sample" if training or sampler.num_eval_sample is None else "num_eval_sample"
    return sampler.shared_sample_num(training), f"the sampler's {setting}"


def check_token_transport(host: str, token: str | None, tls: ServerTls | None, insecure: bool) -> None:
    """Refuse a bearer token that would cross a network in plaintext (unless `insecure`)."""
    if token is not None and tls is None and not insecure and not is_loopback(host):
        raise NegseqError(
            f"refusing to serve on {host} with a bearer token but without TLS: the token and every "
            "answer would cross the network in plaintext. Give --tls-cert and --tls-key "
            "([service] tls_cert, tls_key), or --insecure ([service] insecure = true) on a network "
            "you trust"
        )


class SamplerServer(flight.FlightServerBase):
    """Flight server around one sampler; starts serving on construction (port 0 picks a free one).

    `tls` serves grpc+tls (with `client_ca`, mutual TLS); a token on a non-loopback host without
    TLS is refused unless `insecure`. `max_concurrent` caps open calls (default: sized to the
    CPUs); `metrics_port` serves Prometheus metrics on `host` (0 picks a free port)."""

    def __init__(
        self,
        sampler: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        limits: Limits | None = None,
        candidates: CandidateDefaults | None = None,
        config: dict[str, Any] | None = None,
        tls: ServerTls | None = None,
        insecure: bool = False,
        max_concurrent: int | None = None,
        metrics_port: int | None = None,
    ) -> None:
        clash = sorted(set(sampler.attr_fields) & set(RESERVED_COLUMNS))
        if clash:
            raise NegseqError(f"sampler attr_fields {clash} clash with the service's reserved columns")
        check_token_transport(host, token, tls, insecure)
        max_concurrent = default_max_concurrent() if max_concurrent is None else max_concurrent
        if max_concurrent < 1:
            raise NegseqError(f"max_concurrent must be >= 1, got {max_concurrent}")
        self.sampler = sampler
        self.id_type = id_type(sampler.items.ids)  # the `_id` column's type in every answer
        self.id_attrs = id_attributes(sampler)  # attribute columns an answer leaves out (= `_id`)
        # what negatives mode gathers: int32 ids, small-vocabulary attributes as codes (`wire`)
        self._negatives_sampler, self.dictionaries = wire_sampler(sampler, self.id_type, self.id_attrs)
        self.limits = limits or Limits()
        self.candidates = candidates or CandidateDefaults()
        self.sampler_config = config
        self.stats = ServiceStats(max_concurrent)
        self.host = host
        self.tls = tls
        self.max_concurrent = max_concurrent
        self._draining = threading.Event()
        middleware: dict[str, flight.ServerMiddlewareFactory] = {}
        if token:  # first: a caller without the token never takes a slot
            middleware["auth"] = BearerTokenMiddlewareFactory(token, on_refused=self.stats.refused)
        middleware["cap"] = ConcurrencyCapMiddlewareFactory(max_concurrent, self.stats)
        tls_options: dict[str, Any] = {}
        if tls is not None:
            tls_options = {
                "tls_certificates": [flight.CertKeyPair(cert=tls.cert_chain, key=tls.private_key)],
                "verify_client": tls.client_ca is not None,
                "root_certificates": tls.client_ca,
            }
        super().__init__(grpc_location(host, port, tls is not None), middleware=middleware, **tls_options)
        self.metrics: MetricsEndpoint | None = None
        if metrics_port is not None:
            try:
                self.metrics = MetricsEndpoint(self.stats.registry, host, metrics_port)
            except OSError as exc:
                super().shutdown()
                raise NegseqError(f"cannot serve metrics on {host}:{metrics_port}: {exc.strerror}") from exc

    @property
    def location(self) -> str:
        return grpc_location(self.host, self.port, self.tls is not None)

    def shutdown(self) -> None:
        """Stop serving Flight calls (waiting for open ones), then the metrics endpoint."""
        super().shutdown()
        if self.metrics is not None:
            self.metrics.close()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def begin_drain(self) -> None:
        """Make each exchange close after the batch it is answering (`shutdown` waits for them)."""
        self._draining.set()

    # -- exchanges -------------------------------------------------------------------------

    def do_exchange(self, context, descriptor, reader, writer) -> None:
        peer = context.peer()
        identity = context.peer_identity()  # the client certificate's subject, under mutual TLS
        if identity:
            peer = f"{peer} ({identity.decode(errors='replace')})"
        stream_key: tuple | None = None
        for chunk in _chunks(reader):
            stream_key = self._answer_one(chunk, writer, stream_key, peer)
            if self._draining.is_set():
                log.info("closing exchange with %s after its current request: server is draining", peer)
                return

    def _answer_one(self, chunk, writer, stream_key: tuple | None, peer: str) -> tuple:
        started = time.perf_counter()
        self.stats.begin()
        rows = negatives = 0
        error: str | None = "internal"
        request: Request | None = None
        try:
            request = parse_request(chunk.app_metadata)
            batch = chunk.data
            if batch is None:
                raise NegseqError("request: app_metadata without a record batch")
            rows = batch.num_rows
            self.limits.check_batch(batch)
            key = (request.mode,) if request.mode == "negatives" else (request.mode, batch.schema)
            if stream_key is not None and key != stream_key:
                raise NegseqError(
                    "request: mode or input schema changed within one exchange (a Flight stream "
                    "has one schema); open a new exchange for it"
                )
            if request.mode == "negatives":
                out, meta, negatives = self._negatives(batch, request)
            else:
                out, meta, negatives = self._candidates(batch, request)
            if stream_key is None:
                writer.begin(out.schema)
            meta.update(epoch=request.epoch, batch_index=request.batch_index, mode=request.mode)
            writer.write_with_metadata(out, encode_metadata(meta))
            error = None
            return key
        except NegseqError as exc:
            error = "bad_request"
            log.info("bad request from %s: %s", peer, exc)
            raise flight.FlightServerError(str(exc), b"bad_request") from None
        except flight.FlightError as exc:
            error = _error_kind(exc)
            raise
        except Exception as exc:
            log.exception("request from %s failed", peer)
            raise flight.FlightInternalError(
                f"negseq service internal error: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            seconds = time.perf_counter() - started
            mode = getattr(request, "mode", None)
            self.stats.end(mode=mode, rows=rows, negatives=negatives, seconds=seconds, error=error)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "request peer=%s mode=%s epoch=%s batch_index=%s rows=%d negatives=%d "
                    "latency_ms=%.2f status=%s",
                    peer,
                    mode,
                    getattr(request, "epoch", None),
                    getattr(request, "batch_index", None),
                    rows,
                    negatives,
                    seconds * 1e3,
                    error or "ok",
                )

    def _sampler_for(self, seed: int | None, base: Any = None) -> Any:
        """`base` (default the sampler), or a shallow copy (tables shared) keyed by the request's
        seed."""
        base = self.sampler if base is None else base
        if seed is None or seed == base.seed:
            return base
        keyed = copy.copy(base)
        keyed.seed = seed
        return keyed

    def _negatives(self, batch: pa.RecordBatch, request: Request) -> tuple[pa.RecordBatch, dict, int]:
        for name in ("layout", "neg_per_pos", "seq_delim"):
            if getattr(request, name) is not None:
                raise NegseqError(f"request metadata: {name!r} belongs to mode 'candidates', not 'negatives'")
        sampler = self._sampler_for(request.seed, self._negatives_sampler)
        if request.per_positive is None:
            self.limits.check_negatives(*_shared_negatives(sampler, request.training))
        else:
            total = batch.num_rows * request.per_positive
            self.limits.check_negatives(total, f"per_positive {request.per_positive} x {batch.num_rows} rows")
        result = sampler.get(
            batch,
            epoch=request.epoch,
            batch_index=request.batch_index,
            per_positive=request.per_positive,
            training=request.training,
        )
        out, meta = encode_negatives(result, sampler.is_hard, self.id_type, self.id_attrs, self.dictionaries)
        return out, meta, out.num_rows

    def _candidates(self, batch: pa.RecordBatch, request: Request) -> tuple[pa.RecordBatch, dict, int]:
        from negseq.candidates import CandidateSpec, sample_batch  # here: clients never load them

        if request.per_positive is not None:
            raise NegseqError(
                "request metadata: 'per_positive' belongs to mode 'negatives'; "
                "candidates mode takes 'neg_per_pos'"
            )
        layout = request.layout or self.candidates.layout
        if layout is None:
            raise NegseqError(
                "request metadata: candidates mode needs a 'layout' (the job file sets no default)"
            )
        neg_per_pos = request.neg_per_pos
        if neg_per_pos is None and layout == "interleaved":  # the job's default is for interleaved only
            neg_per_pos = self.candidates.neg_per_pos
        seq_delim = request.seq_delim or self.candidates.seq_delim
        sampler = self._sampler_for(request.seed)
        item_field = sampler.item_id_field
        if item_field not in batch.schema.names:
            raise NegseqError(f"batch: missing item id column {item_field!r}; found {batch.schema.names}")
        if layout == "interleaved":
            n = _shared_negatives(sampler, request.training)[0] if neg_per_pos is None else neg_per_pos
            bound = _max_positives(batch.column(item_field), seq_delim) * n
            self.limits.check_negatives(bound, f"up to {bound // max(n, 1)} positives x neg_per_pos {n}")
        else:
            self.limits.check_negatives(*_shared_negatives(sampler, request.training))
        sampled = sample_batch(
            batch,
            sampler,
            CandidateSpec(layout=layout, neg_per_pos=neg_per_pos, seq_delim=seq_delim),
            epoch=request.epoch,
            batch_index=request.batch_index,
            training=request.training,
        )
        stats = json_stats(sampled.stats)
        return sampled.to_arrow(), {"layout": layout, "stats": stats}, int(stats.get("draws", 0))

    # -- actions ---------------------------------------------------------------------------

    def list_actions(self, context) -> list[tuple[str, str]]:
        return list(ACTIONS.items())

    def do_action(self, context, action) -> Iterator[bytes]:
        if action.type == "health":
            return iter([b"draining" if self.draining else b"ok"])
        if action.type == "stats":
            return iter([json.dumps(self.stats.snapshot()).encode()])
        if action.type == "config":
            return iter([json.dumps(self.describe()).encode()])
        raise flight.FlightServerError(
            f"unknown action {action.type!r}; known: {', '.join(ACTIONS)}", b"bad_request"
        )

    def describe(self) -> dict[str, Any]:
        """What a client needs to know to call this server (never the token)."""
        s = self.sampler
        hard = getattr(s, "hard", None)
        return {
            "sampler": type(s).__name__,
            "sampler_config": self.sampler_config,
            "item_id_field": s.item_id_field,
            "user_id_field": s.user_id_field,
            "attr_fields": list(s.attr_fields),
            "num_sample": s.num_sample,
            "num_eval_sample": s.num_eval_sample,
            "num_hard_sample": None if hard is None else hard.num_hard_sample,
            "is_hard": bool(s.is_hard),
            "seed": s.seed,
            "num_items": len(s.items),
            "id_type": str(self.id_type),
            "candidates": dataclasses.asdict(self.candidates),
            "limits": dataclasses.asdict(self.limits),
        }


def _chunks(reader) -> Iterator[flight.FlightStreamChunk]:
    while True:
        try:
            yield reader.read_chunk()
        except StopIteration:
            return


class DrainOutcome(NamedTuple):
    """How a drain ended: the exit code, and whether the Flight server finished shutting down
    (if not, calls are still parked in server threads and the process should exit hard)."""

    code: int
    complete: bool


def serve_until_signalled(
    server: SamplerServer,
    *,
    drain_timeout: float = 60.0,
    idle_grace: float = IDLE_GRACE_S,
    on_ready: Callable[[], None] | None = None,
) -> DrainOutcome:
    """Serve until SIGTERM or SIGINT, then drain: code 0 once no request is in flight (exchanges
    that stay open without sending are cut after `idle_grace` seconds with none in flight), 1 if
    requests were still running after `drain_timeout` seconds."""
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if on_ready is not None:
            on_ready()
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    server.begin_drain()
    closer = threading.Thread(target=server.shutdown, name="negseq-drain", daemon=True)
    closer.start()
    deadline = time.monotonic() + drain_timeout
    idle_since: float | None = None
    while True:
        closer.join(0.05)
        if not closer.is_alive():
            log.info("drained: %s", json.dumps(server.stats.snapshot()))
            return DrainOutcome(0, complete=True)
        now = time.monotonic()
        if server.stats.in_flight:
            idle_since = None
        else:
            idle_since = idle_since if idle_since is not None else now
            if now - idle_since >= min(idle_grace, drain_timeout):
                log.info("cutting open exchanges that have no request in flight")
                log.info("drained: %s", json.dumps(server.stats.snapshot()))
                return DrainOutcome(0, complete=False)
        if now >= deadline:
            log.error("requests still running after the %.1f s drain timeout; exiting anyway", drain_timeout)
            return DrainOutcome(1, complete=False)
