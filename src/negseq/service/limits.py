"""Per-request size limits, checked on the received batch before any sampling work starts."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from negseq.errors import NegseqError

DEFAULT_MAX_ROWS = 1 << 20
DEFAULT_MAX_BYTES = 256 << 20
DEFAULT_MAX_NEGATIVES = 1 << 24


@dataclass(frozen=True)
class Limits:
    """`max_rows` and `max_bytes` bound a request batch; `max_negatives` bounds the negatives it asks
    for (per_positive * rows, or num_sample), so a small request cannot ask for a huge answer."""

    max_rows: int = DEFAULT_MAX_ROWS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_negatives: int = DEFAULT_MAX_NEGATIVES

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_bytes", "max_negatives"):
            if getattr(self, name) < 1:
                raise NegseqError(f"service limits: {name} must be >= 1, got {getattr(self, name)}")

    def check_batch(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows > self.max_rows:
            raise NegseqError(
                f"request has {batch.num_rows} rows, over the server's max_rows {self.max_rows}"
            )
        size = batch.get_total_buffer_size()
        if size > self.max_bytes:
            raise NegseqError(f"request has {size} bytes, over the server's max_bytes {self.max_bytes}")

    def check_negatives(self, count: int, what: str) -> None:
        if count > self.max_negatives:
            raise NegseqError(
                f"request asks for {count} negatives ({what}), over the server's "
                f"max_negatives {self.max_negatives}"
            )
