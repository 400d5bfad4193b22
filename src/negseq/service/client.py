"""`SamplerClient`: call a `negseq serve` sampler service from any process (no tables loaded).

    client = SamplerClient("grpc://127.0.0.1:8815", token=token)
    res = client.sample(batch, epoch=0, batch_index=7)        # a negseq.sampler.SampleResult
    cands = client.candidates(batch, epoch=0, batch_index=7, layout="suffix")  # a pa.RecordBatch

`sample` answers as `sampler.get(batch, epoch=..., batch_index=..., per_positive=...)` would in
process, for the same key. Each call is one Flight exchange; `stream` sends many batches over one.
The client is thread-safe (a gRPC channel is); share one per process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from negseq.errors import NegseqError
from negseq.sampler import SampleResult
from negseq.service.auth import bearer_headers
from negseq.service.protocol import Request, decode_metadata, decode_negatives

BatchLike = pa.RecordBatch | Mapping[str, pa.Array | np.ndarray]


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


class SamplerClient:
    """A connection to one sampler service."""

    def __init__(self, location: str, token: str | None = None, *, timeout: float | None = None) -> None:
        self.location = location
        self._client = flight.connect(location)
        self._options = flight.FlightCallOptions(timeout=timeout, headers=bearer_headers(token))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SamplerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- actions ---------------------------------------------------------------------------

    def _action(self, name: str) -> bytes:
        results = list(self._client.do_action(flight.Action(name, b""), options=self._options))
        return b"".join(r.body.to_pybytes() for r in results)

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
        layout: str | None = None,
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
        layout: str | None = None,
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
        self, requests: Iterable[tuple[BatchLike, Request]]
    ) -> Iterator[tuple[dict[str, Any], SampleResult | pa.RecordBatch]]:
        """Send (batch, request) pairs over one exchange, yielding (response metadata, answer) in
        order: a SampleResult in negatives mode, a RecordBatch in candidates mode. All requests of
        one stream share a mode (and, in candidates mode, an input schema)."""
        writer, reader = self._client.do_exchange(flight.FlightDescriptor.for_command(b""), self._options)
        try:
            began = False
            for batch, request in requests:
                record_batch = _as_record_batch(batch)
                if not began:
                    writer.begin(record_batch.schema)
                    began = True
                writer.write_with_metadata(record_batch, request.to_metadata())
                yield self._read_answer(reader, request)
        except BaseException:
            with contextlib.suppress(pa.ArrowException):  # close re-raises the error being raised
                writer.close()
            raise
        # Every answer is in. A server that is draining ends the call right after answering, so
        # half-closing or closing may fail; that changes nothing about the answers.
        with contextlib.suppress(pa.ArrowException):
            writer.done_writing()
        with contextlib.suppress(pa.ArrowException):
            writer.close()

    @staticmethod
    def _read_answer(reader, request: Request) -> tuple[dict[str, Any], SampleResult | pa.RecordBatch]:
        try:
            chunk = reader.read_chunk()
        except StopIteration:
            raise flight.FlightUnavailableError(
                "negseq service closed the exchange before answering (it is draining); retry elsewhere"
            ) from None
        meta = decode_metadata(chunk.app_metadata)
        if request.mode == "negatives":
            return meta, decode_negatives(chunk.data, meta)
        return meta, chunk.data
