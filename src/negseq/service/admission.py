"""The cap on concurrent Flight calls: a server middleware that gives each call a slot, or refuses
it at once as "busy" when every slot is taken.

gRPC runs each call in a thread of its own for as long as the call is open (an exchange a client
keeps open between requests holds its thread idle), so without a cap N open exchanges hold N
threads. A refused call is not queued: its thread returns at once with `FlightUnavailableError`
(detail b"busy"), which `SamplerClient` retries with backoff. Actions take a slot too (they are
short); the health probe treats "busy" as alive.
"""

from __future__ import annotations

import os
import threading

import pyarrow.flight as flight

from negseq.service.stats import ServiceStats

BUSY = b"busy"
CALLS_PER_CPU = 8


def default_max_concurrent() -> int:
    """The default cap: CALLS_PER_CPU calls for each CPU this process may run on, at least 16.
    Sampling is CPU-bound, so more calls than that only queue for the cores; the margin is for
    exchanges that sit idle between a trainer's steps."""
    try:
        cpus = len(os.sched_getaffinity(0))  # a container's cpuset, not the host's core count
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(16, CALLS_PER_CPU * cpus)


class _Slot(flight.ServerMiddleware):
    """Holds one slot for the length of one call and gives it back when the call completes."""

    def __init__(self, gate: ConcurrencyCapMiddlewareFactory) -> None:
        super().__init__()
        self._gate = gate

    def call_completed(self, exception: BaseException | None) -> None:
        self._gate.release()


class ConcurrencyCapMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Lets at most `max_concurrent` calls be open at once; refuses the rest as busy."""

    def __init__(self, max_concurrent: int, stats: ServiceStats) -> None:
        super().__init__()
        self.max_concurrent = max_concurrent
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._stats = stats

    def start_call(self, info: flight.CallInfo, headers: dict) -> flight.ServerMiddleware:
        if not self._slots.acquire(blocking=False):
            self._stats.refused("busy")
            raise flight.FlightUnavailableError(
                f"negseq service busy: all {self.max_concurrent} call slots are taken "
                "(max_concurrent); retry with backoff",
                BUSY,
            )
        self._stats.call_opened()
        return _Slot(self)

    def release(self) -> None:
        self._stats.call_closed()
        self._slots.release()
