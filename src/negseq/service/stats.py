"""What the service counts, and the two ways it shows it: the `stats` action (JSON, latency
percentiles of the recent requests) and Prometheus metrics on their own HTTP port.

Every outcome is recorded once, as plain numbers under one lock; the Prometheus endpoint reads
them when it is scraped (a collector of this server's own registry, not prometheus_client's
global one, so several servers in one process never clash and each endpoint shows only its
server). A request pays one lock for its counters, not one a metric.

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

import bisect
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_WINDOW = 10_000  # percentiles cover the most recent requests
MODE_LABELS = ("negatives", "candidates", "unknown")  # unknown: the request's metadata was unreadable
REQUEST_ERRORS = ("bad_request", "internal", "cancelled", "transport")
CALL_REFUSALS = ("busy", "unauthenticated")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _ByMode:
    """One mode's counters."""

    __slots__ = ("requests", "rows", "negatives", "latency_buckets", "latency_sum")

    def __init__(self) -> None:
        self.requests = self.rows = self.negatives = 0
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last: over every bound
        self.latency_sum = 0.0


class ServiceStats:
    """Thread-safe counters of one server, read by the `stats` action (`snapshot`) and by the
    Prometheus collector in `registry`."""

    def __init__(self, max_concurrent: int | None = None) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._by_mode = {mode: _ByMode() for mode in MODE_LABELS}
        self.errors_by_kind = dict.fromkeys(REQUEST_ERRORS + CALL_REFUSALS, 0)
        self.in_flight = 0
        self.open_calls = 0
        self.max_concurrent = max_concurrent
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_PrometheusView(self))

    # -- recording -------------------------------------------------------------------------

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def end(self, *, mode: str | None, rows: int, negatives: int, seconds: float, error: str | None) -> None:
        """A request is over: answered (`error` None) or failed with an error of kind `error`."""
        counts = self._by_mode[mode if mode in MODE_LABELS else "unknown"]
        with self._lock:
            self.in_flight -= 1
            counts.requests += 1
            if error is None:
                counts.rows += rows
                counts.negatives += negatives
                counts.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
                counts.latency_sum += seconds
                self._latencies.append(seconds)
            else:
                self.errors_by_kind[error] += 1

    def refused(self, kind: str) -> None:
        """A call was refused before it reached a handler (busy, unauthenticated)."""
        with self._lock:
            self.errors_by_kind[kind] += 1

    def call_opened(self) -> None:
        with self._lock:
            self.open_calls += 1

    def call_closed(self) -> None:
        with self._lock:
            self.open_calls -= 1

    # -- reading ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            latencies = np.array(self._latencies, dtype=np.float64)
            modes = self._by_mode.values()
            out: dict[str, Any] = {
                "uptime_s": round(time.monotonic() - self._started, 3),
                "requests": sum(m.requests for m in modes),
                "rows": sum(m.rows for m in modes),
                "negatives": sum(m.negatives for m in modes),
                "errors": sum(self.errors_by_kind[k] for k in REQUEST_ERRORS),  # requests that failed
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

    def metrics(self) -> list[Metric]:
        """The Prometheus metric families, from one consistent reading of the counters."""
        requests = CounterMetricFamily("negseq_requests", "Requests read from exchanges", labels=["mode"])
        rows = CounterMetricFamily("negseq_rows", "Rows (positives) of answered requests", labels=["mode"])
        negatives = CounterMetricFamily(
            "negseq_negatives", "Negatives drawn for answered requests", labels=["mode"]
        )
        errors = CounterMetricFamily(
            "negseq_errors", "Failed requests and refused calls, by kind", labels=["kind"]
        )
        latency = HistogramMetricFamily(
            "negseq_request_duration_seconds",
            "Seconds from reading a request to writing its answer (answered requests)",
            labels=["mode"],
        )
        with self._lock:
            for mode, counts in self._by_mode.items():
                requests.add_metric([mode], counts.requests)
                rows.add_metric([mode], counts.rows)
                negatives.add_metric([mode], counts.negatives)
                cumulative = np.cumsum(counts.latency_buckets).tolist()
                bounds = [str(b) for b in LATENCY_BUCKETS] + ["+Inf"]
                latency.add_metric([mode], list(zip(bounds, cumulative, strict=True)), counts.latency_sum)
            for kind, count in self.errors_by_kind.items():
                errors.add_metric([kind], count)
            gauges = [
                GaugeMetricFamily("negseq_in_flight_requests", "Requests being answered", self.in_flight),
                GaugeMetricFamily(
                    "negseq_open_calls",
                    "Flight calls (exchanges, actions) holding a slot of the cap",
                    self.open_calls,
                ),
            ]
        if self.max_concurrent is not None:
            gauges.append(
                GaugeMetricFamily(
                    "negseq_max_concurrent_calls", "The cap on concurrent Flight calls", self.max_concurrent
                )
            )
        return [requests, rows, negatives, errors, latency, *gauges]


class _PrometheusView(Collector):
    """The collector a server's registry holds: its counters, read at each scrape."""

    def __init__(self, stats: ServiceStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from self._stats.metrics()


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
