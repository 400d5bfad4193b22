"""The open DoExchange calls of one `SamplerClient`: idle ones kept for the next request, busy
ones under a deadline.

Why keep exchanges open: a new Flight call a request costs gRPC a new stream, headers, a schema
message each way, a hand-off to a server thread, and a closing round trip: measured on the load
benchmark, that was about a tenth of the service's CPU a request (4096 positives x 32 negatives)
and half of it for small requests. So a finished request leaves its exchange idle here, and the
next request with the same mode and input schema writes into it.

Why a watchdog: an exchange outlives any one request, so the Flight call deadline cannot be the
request's deadline. One daemon thread a client cancels a busy exchange whose answer is overdue (the
request then fails as timed out and is retried on a new exchange) and closes an exchange left idle
longer than `idle_close` seconds, so a client that stopped calling gives the server back its slots.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

_DESCRIPTOR = flight.FlightDescriptor.for_command(b"")


class Exchange:
    """One open DoExchange call whose writer has begun with one schema."""

    def __init__(
        self, client: flight.FlightClient, options: flight.FlightCallOptions, schema: pa.Schema, key: Any
    ) -> None:
        self.key = key
        self.writer, self.reader = client.do_exchange(_DESCRIPTOR, options)
        self.writer.begin(schema)
        self.deadline = math.inf  # while busy under a deadline
        self.idle_since = 0.0  # while idle
        self.timed_out = False  # the watchdog cancelled it: never reuse it

    def cancel(self) -> None:
        with contextlib.suppress(pa.ArrowException):
            self.reader.cancel()

    def abandon(self) -> None:
        """End the call after a failure: cancel it (so closing does not wait on the server)."""
        self.cancel()
        with contextlib.suppress(pa.ArrowException):  # close re-raises the call's error
            self.writer.close()

    def finish(self) -> None:
        """End the call after every answer is in. A server that is draining ends the call right
        after answering, so half-closing or closing may fail; that changes nothing."""
        with contextlib.suppress(pa.ArrowException):
            self.writer.done_writing()
        with contextlib.suppress(pa.ArrowException):
            self.writer.close()


class ExchangePool:
    """Idle exchanges by key (at most `keep_open` in all), busy ones under deadlines, and the
    thread that enforces both."""

    def __init__(self, keep_open: int, idle_close: float) -> None:
        self.keep_open = keep_open
        self.idle_close = idle_close
        self._cond = threading.Condition()
        self._idle: dict[Any, list[Exchange]] = {}
        self._idle_count = 0
        self._busy: set[Exchange] = set()
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- idle exchanges ------------------------------------------------------------------------

    def take(self, key: Any) -> Exchange | None:
        """An idle exchange for `key`, the most recently used first, or None."""
        with self._cond:
            idle = self._idle.get(key)
            if not idle:
                return None
            self._idle_count -= 1
            return idle.pop()

    def give_back(self, exchange: Exchange) -> None:
        """Keep a finished exchange for reuse, or close it when the pool is full or closed."""
        if exchange.timed_out:
            exchange.abandon()
            return
        with self._cond:
            keep = not self._closed and self._idle_count < self.keep_open
            if keep:
                exchange.idle_since = time.monotonic()
                self._idle.setdefault(exchange.key, []).append(exchange)
                self._idle_count += 1
                self._wake(exchange.idle_since + self.idle_close)
        if not keep:
            exchange.finish()

    def discard_idle(self) -> None:
        """Drop every idle exchange (after a failure they most likely share: a restarted server)."""
        with self._cond:
            dropped = [e for idle in self._idle.values() for e in idle]
            self._idle.clear()
            self._idle_count = 0
        for exchange in dropped:
            exchange.abandon()

    # -- deadlines -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def deadline(self, exchange: Exchange, timeout: float | None) -> Iterator[None]:
        """Cancel `exchange` if the block has not ended within `timeout` seconds (None: never);
        `exchange.timed_out` then says so."""
        if timeout is None:
            yield
            return
        with self._cond:
            exchange.deadline = time.monotonic() + timeout
            self._busy.add(exchange)
            self._wake(exchange.deadline)
        try:
            yield
        finally:
            with self._cond:
                self._busy.discard(exchange)

    # -- the watchdog --------------------------------------------------------------------------

    def _wake(self, at: float) -> None:
        """Make the watchdog look again by `at` (the caller holds the lock)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="negseq-client-exchanges", daemon=True)
            self._thread.start()
        if at < self._wake_at:  # usually not: deadlines and idle times come in order
            self._wake_at = at
            self._cond.notify()

    def _watch(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._wake_at > time.monotonic():
                    left = self._wake_at - time.monotonic()
                    self._cond.wait(None if left == math.inf else left)
                if self._closed:
                    return
                overdue, stale = self._due(time.monotonic())
            for exchange in overdue:
                exchange.cancel()
            for exchange in stale:
                exchange.finish()

    def _due(self, now: float) -> tuple[list[Exchange], list[Exchange]]:
        """Take out the busy exchanges past their deadline and the idle ones past idle_close, and
        set the next wake-up (the caller holds the lock)."""
        overdue = [e for e in self._busy if e.deadline <= now]
        for exchange in overdue:
            exchange.timed_out = True
            self._busy.discard(exchange)
        stale = []
        for key in list(self._idle):
            idle = self._idle[key]
            stale += [e for e in idle if e.idle_since + self.idle_close <= now]
            idle[:] = [e for e in idle if e.idle_since + self.idle_close > now]
            if not idle:
                del self._idle[key]
        self._idle_count -= len(stale)
        upcoming = [e.deadline for e in self._busy]
        upcoming += [e.idle_since + self.idle_close for idle in self._idle.values() for e in idle]
        self._wake_at = min(upcoming, default=math.inf)
        return overdue, stale

    def close(self) -> None:
        """Close every idle exchange and stop the watchdog (busy ones end with their calls)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self.discard_idle()
