"""The in-process executor: `BatchWork` on a bounded pool of threads, results in batch order.

Rows are read on the calling thread, in order (pyarrow's readers have their own I/O threads,
and a CSV source streams forward); each worker samples, writes and collates one batch. At most
`max_in_flight` batches are held at once. numpy, the numba kernels and Arrow release the GIL,
so the threads run in parallel.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from negseq.executors.plan import BatchWork
from negseq.io.sources import SourceReader

T = TypeVar("T")
U = TypeVar("U")


def ordered_map(
    fn: Callable[[U], T], items: Iterable[U], *, num_workers: int, max_in_flight: int | None = None
) -> Iterator[T]:
    """fn(item) on a thread pool, results in input order, at most `max_in_flight` held."""
    limit = max_in_flight or 2 * num_workers
    pending: deque[Future[T]] = deque()
    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="negseq") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                while len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


class LocalExecutor:
    """Runs a `BatchWork` over every batch of an epoch of its plan, in batch order."""

    def __init__(self, work: BatchWork, *, num_workers: int = 2, max_in_flight: int | None = None) -> None:
        self.work = work
        self.num_workers = max(1, num_workers)
        self.max_in_flight = max_in_flight

    def run(self, epoch: int, *, batches: Iterable[int] | None = None) -> Iterator[Any]:
        """The work's result for each batch of `epoch` (or just `batches`), in batch order."""
        plan = self.work.plan
        reader = SourceReader(plan.source)
        indices = range(plan.num_batches) if batches is None else batches
        rows = ((reader.read(plan.descriptors[i]), i) for i in indices)
        yield from ordered_map(
            lambda item: self.work(item[0], epoch, item[1]),
            rows,
            num_workers=self.num_workers,
            max_in_flight=self.max_in_flight,
        )
