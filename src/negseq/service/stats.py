"""What the service counts, and the two ways it shows it: the `stats` action (JSON, latency
percentiles of the recent requests) and Prometheus metrics on their own HTTP port.

Every outcome is recorded once, here, into both. The Prometheus collectors live in a registry of
the server's own (not prometheus_client's global one), so several servers in one process never
clash and each endpoint shows only its server.

Metrics (all prefixed `negseq_`):
  requests_total{mode}                requests read from exchanges (answered or not)
  rows_total{mode}                    rows (positives) of answered requests
  negatives_total{mode}               negatives drawn for answered requests
  errors_total{kind}                  bad_request, internal, cancelled, transport (a request that
                                      failed), busy, unauthenticated (a call refused at the door)
  request_duration_seconds{mode}      histogram: reading a request to writing its answer
  in_flight_requests                  requests being answered now
  open_calls                          Flight calls (exchanges, actions) holding a slot of the cap
  max_concurrent_calls                the cap
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_WINDOW = 10_000  # percentiles cover the most recent requests
MODE_LABELS = ("negatives", "candidates", "unknown")  # unknown: the request's metadata was unreadable
REQUEST_ERRORS = ("bad_request", "internal", "cancelled", "transport")
CALL_REFUSALS = ("busy", "unauthenticated")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceStats:
    """Thread-safe counters of one server: plain numbers for the `stats` action, and the same
    outcomes as Prometheus collectors in `registry`."""

    def __init__(self, max_concurrent: int | None = None) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.requests = 0
        self.rows = 0
        self.negatives = 0
        self.errors = 0  # requests that failed (call refusals are counted in errors_by_kind only)
        self.errors_by_kind = dict.fromkeys(REQUEST_ERRORS + CALL_REFUSALS, 0)
        self.in_flight = 0
        self.open_calls = 0
        self.max_concurrent = max_concurrent

        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        requests = Counter("negseq_requests", "Requests read from exchanges", ["mode"], registry=reg)
        rows = Counter("negseq_rows", "Rows (positives) of answered requests", ["mode"], registry=reg)
        negatives = Counter(
            "negseq_negatives", "Negatives drawn for answered requests", ["mode"], registry=reg
        )
        errors = Counter(
            "negseq_errors", "Failed requests and refused calls, by kind", ["kind"], registry=reg
        )
        latency = Histogram(
            "negseq_request_duration_seconds",
            "Seconds from reading a request to writing its answer (answered requests)",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        # Children resolved once (a labels() lookup a request is measurable) and present at 0 from
        # the start, so rate() sees every series.
        self._m_requests = {m: requests.labels(m) for m in MODE_LABELS}
        self._m_rows = {m: rows.labels(m) for m in MODE_LABELS}
        self._m_negatives = {m: negatives.labels(m) for m in MODE_LABELS}
        self._m_latency = {m: latency.labels(m) for m in MODE_LABELS}
        self._m_errors = {k: errors.labels(k) for k in self.errors_by_kind}
        self._m_in_flight = Gauge("negseq_in_flight_requests", "Requests being answered", registry=reg)
        self._m_open_calls = Gauge(
            "negseq_open_calls", "Flight calls (exchanges, actions) holding a slot of the cap", registry=reg
        )
        cap = Gauge("negseq_max_concurrent_calls", "The cap on concurrent Flight calls", registry=reg)
        if max_concurrent is not None:
            cap.set(max_concurrent)

    # -- recording -------------------------------------------------------------------------

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1
        self._m_in_flight.inc()

    def end(self, *, mode: str | None, rows: int, negatives: int, seconds: float, error: str | None) -> None:
        """A request is over: answered (`error` None) or failed with an error of kind `error`."""
        label = mode if mode in MODE_LABELS else "unknown"
        with self._lock:
            self.in_flight -= 1
            self.requests += 1
            if error is None:
                self.rows += rows
                self.negatives += negatives
                self._latencies.append(seconds)
            else:
                self.errors += 1
                self.errors_by_kind[error] += 1
        self._m_in_flight.dec()
        self._m_requests[label].inc()
        if error is None:
            self._m_rows[label].inc(rows)
            self._m_negatives[label].inc(negatives)
            self._m_latency[label].observe(seconds)
        else:
            self._m_errors[error].inc()

    def refused(self, kind: str) -> None:
        """A call was refused before it reached a handler (busy, unauthenticated)."""
        with self._lock:
            self.errors_by_kind[kind] += 1
        self._m_errors[kind].inc()

    def call_opened(self) -> None:
        with self._lock:
            self.open_calls += 1
        self._m_open_calls.inc()

    def call_closed(self) -> None:
        with self._lock:
            self.open_calls -= 1
        self._m_open_calls.dec()

    # -- reading ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            latencies = np.array(self._latencies, dtype=np.float64)
            out: dict[str, Any] = {
                "uptime_s": round(time.monotonic() - self._started, 3),
                "requests": self.requests,
                "rows": self.rows,
                "negatives": self.negatives,
                "errors": self.errors,
                "errors_by_kind": dict(self.errors_by_kind),
                "in_flight": self.in_flight,
                "open_calls": self.open_calls,
                "max_concurrent": self.max_concurrent,
            }
        for q in (50, 99):
            out[f"latency_p{q}_ms"] = (
                round(float(np.percentile(latencies, q)) * 1e3, 3) if len(latencies) else None
            )
        return out


class MetricsEndpoint:
    """The Prometheus text endpoint (`GET /metrics`, plain HTTP) of one registry, on its own port."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.host = host

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
