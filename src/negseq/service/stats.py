"""Request counters and latency percentiles for the `stats` action (thread-safe)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np

LATENCY_WINDOW = 10_000  # percentiles cover the most recent requests


class ServiceStats:
    """Counts requests, rows and errors; keeps the latencies of the last LATENCY_WINDOW requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.requests = 0
        self.rows = 0
        self.negatives = 0
        self.errors = 0
        self.in_flight = 0

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def end(self, *, rows: int, negatives: int, seconds: float, ok: bool) -> None:
        with self._lock:
            self.in_flight -= 1
            self.requests += 1
            if ok:
                self.rows += rows
                self.negatives += negatives
                self._latencies.append(seconds)
            else:
                self.errors += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            latencies = np.array(self._latencies, dtype=np.float64)
            out: dict[str, Any] = {
                "uptime_s": round(time.monotonic() - self._started, 3),
                "requests": self.requests,
                "rows": self.rows,
                "negatives": self.negatives,
                "errors": self.errors,
                "in_flight": self.in_flight,
            }
        for q in (50, 99):
            out[f"latency_p{q}_ms"] = (
                round(float(np.percentile(latencies, q)) * 1e3, 3) if len(latencies) else None
            )
        return out
