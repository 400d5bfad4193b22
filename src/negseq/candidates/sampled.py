"""`SampledBatch`: what sampling one keyed batch returns, typed and checked once where it is built.

`sample_batch` flattens a batch's positives, draws their negatives keyed by
(seed, epoch, batch_index), and keeps everything apart: the source columns, the positives
(ids and per-row counts), the negatives (ids, attribute columns, and the exact probability
each was drawn with under the sampler's `exclude` policy: `negseq.sampler.exclusion`), the hard
negatives with `hard_neg_indices`, the layout and the key. Two encoders read it and nothing
else does:

- `to_arrow()`: TorchEasyRec's columns (the candidate column in the input's type, the
  negatives' attribute columns aligned with it (`negseq.candidates.attributes`),
  `cand_pos_lengths`, `hard_neg_indices`) for files, the service and `negseq run`'s samples;
- `to_jagged()`: numpy arrays of dense item rows (`JaggedArrays`) for training, built from the
  ids directly: training never parses a string or list column back into ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from negseq.candidates.attributes import AttributeColumn, attribute_values, lay_out, plan_attributes
from negseq.candidates.combine import (
    combine_neg_as_candidate_sequence,
    combine_negs_to_candidate_suffix,
)
from negseq.candidates.flatten import build_sampler_input, column_of, flatten_id_column
from negseq.candidates.jagged_arrays import (
    LAYOUTS,
    BatchKey,
    JaggedArrays,
    Layout,
    offsets_of,
    truncate_recent,
)
from negseq.errors import NegseqError

CAND_POS_LENGTHS = "cand_pos_lengths"
HARD_NEG_INDICES = "hard_neg_indices"


class DenseRows(Protocol):
    """An item vocabulary: id -> 1-based embedding row, 0 for an unknown id."""

    def dense_rows(self, ids: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class CandidateSpec:
    """How a batch's candidates are laid out (DESIGN §4): `layout`, the negatives a positive
    gets in the interleaved layout (`neg_per_pos`; None: the sampler's num_sample) and the
    delimiter of string id sequences."""

    layout: Layout = "interleaved"
    neg_per_pos: int | None = None
    seq_delim: str = ";"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise NegseqError(f"[candidates] layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.neg_per_pos is not None and self.layout != "interleaved":
            raise NegseqError(
                "[candidates] neg_per_pos applies to the 'interleaved' layout; the 'suffix' layout "
                "appends the sampler's num_sample shared negatives"
            )
        if self.neg_per_pos is not None and self.neg_per_pos < 0:
            raise NegseqError(f"[candidates] neg_per_pos must be >= 0, got {self.neg_per_pos}")
        if not self.seq_delim:
            raise NegseqError("[candidates] seq_delim must not be empty")

    def check_sampler(self, sampler: Any) -> None:
        """Refuse a sampler this layout cannot carry (before anything is read or written)."""
        if self.layout == "interleaved" and sampler.is_hard:
            raise NegseqError(
                "hard negatives are shared by a batch, so they need the 'suffix' layout, not 'interleaved'"
            )

    def output_columns(self, sampler: Any) -> list[str]:
        """The columns `to_arrow` adds beside the source's (an input holding one is an error)."""
        return [CAND_POS_LENGTHS] + ([HARD_NEG_INDICES] if sampler.is_hard else [])

    def check_input(self, sampler: Any, schema: pa.Schema, where: str) -> tuple[AttributeColumn, ...]:
        """Refuse an input whose columns collide with what `to_arrow` writes (DESIGN §9), before
        anything is written; returns the attribute columns it will write."""
        clash = sorted(set(self.output_columns(sampler)) & set(schema.names))
        if clash:
            raise NegseqError(
                f"{where}: input column(s) {clash} are negseq output columns (is this a sampled "
                "output?); sample the original input instead"
            )
        try:
            return plan_attributes(sampler, schema, self.output_columns(sampler))
        except NegseqError as exc:
            raise NegseqError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class CandidateAttribute:
    """One attribute column of a sampled batch: what it is, and its values for the positives,
    the negatives, then the hard negatives (typed `column.value_type`)."""

    column: AttributeColumn
    values: pa.Array


@dataclass(frozen=True)
class SampledBatch:
    """One sampled batch (see the module docstring); built by `sample_batch`, checked here."""

    key: BatchKey
    spec: CandidateSpec
    source: pa.RecordBatch
    item_field: str
    positives: np.ndarray
    pos_lengths: np.ndarray
    negatives: np.ndarray
    neg_per_pos: int
    neg_attributes: pa.RecordBatch
    neg_probability: np.ndarray
    has_hard: bool
    hard_negatives: np.ndarray
    hard_attributes: pa.RecordBatch | None
    hard_neg_indices: np.ndarray | None
    stats: Mapping[str, int | float] = field(default_factory=dict)
    attributes: tuple[CandidateAttribute, ...] = ()

    def __post_init__(self) -> None:
        if len(self.pos_lengths) != self.source.num_rows or int(self.pos_lengths.sum()) != len(
            self.positives
        ):
            raise AssertionError("SampledBatch: positives disagree with their per-row counts")
        sampled = len(self.positives) * self.neg_per_pos if self.spec.layout == "interleaved" else None
        if sampled is not None and len(self.negatives) != sampled:
            raise AssertionError(f"SampledBatch: {len(self.negatives)} negatives, the layout needs {sampled}")
        if len(self.neg_probability) != len(self.negatives) or self.neg_attributes.num_rows != len(
            self.negatives
        ):
            raise AssertionError("SampledBatch: negatives, their attributes and probabilities disagree")
        if len(self.hard_negatives) and (
            self.hard_neg_indices is None or self.hard_neg_indices.shape != (len(self.hard_negatives), 2)
        ):
            raise AssertionError("SampledBatch: hard negatives need hard_neg_indices [H, 2]")
        total = len(self.positives) + len(self.negatives) + len(self.hard_negatives)
        if any(len(a.values) != total for a in self.attributes):
            raise AssertionError("SampledBatch: an attribute column disagrees with the candidates")

    @property
    def num_rows(self) -> int:
        return self.source.num_rows

    # ---- encoders --------------------------------------------------------------------

    def to_arrow(self) -> pa.RecordBatch:
        """The source columns with the item column replaced by the candidate sequences (same
        type family: strings stay strings, lists stay lists, an int64 column becomes
        list<int64>), each attribute column laid out as the candidates (an input column of
        that name in its place, a new one right after the candidate column), then
        `cand_pos_lengths` (int32) and, for a hard sampler, `hard_neg_indices` (list<int32>:
        flattened (query row, offset) pairs on the last row)."""
        positives = column_of(self.source, self.item_field)
        if self.spec.layout == "interleaved":
            candidates, _ = combine_neg_as_candidate_sequence(
                positives, self.negatives, self.neg_per_pos, self.spec.seq_delim
            )
        else:
            candidates, _ = combine_negs_to_candidate_suffix(
                positives, self.negatives, self.spec.seq_delim, hard_negs=self.hard_negatives
            )
        laid_out = self._attribute_columns(candidates)
        columns: list[tuple[str, pa.Array]] = []
        for name in self.source.schema.names:
            if name == self.item_field:
                columns.append((name, candidates))
                columns += [(n, a) for n, a in laid_out.items() if n not in self.source.schema.names]
            else:
                columns.append((name, laid_out.get(name, self.source.column(name))))
        arrays = [array for _, array in columns]
        fields = [pa.field(name, array.type) for name, array in columns]
        arrays.append(pa.array(self.pos_lengths, type=pa.int32()))
        fields.append(pa.field(CAND_POS_LENGTHS, pa.int32()))
        if self.has_hard:
            arrays.append(_hard_indices_column(self.num_rows, self.hard_neg_indices))
            fields.append(pa.field(HARD_NEG_INDICES, pa.list_(pa.int32())))
        return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))

    def _attribute_columns(self, candidates: pa.Array) -> dict[str, pa.Array]:
        """Each attribute's values in the candidates' order and rows."""
        if not self.attributes:
            return {}
        num_pos, lengths = len(self.positives), self.pos_lengths.astype(np.int64)
        if self.spec.layout == "interleaved":
            n = self.neg_per_pos
            block = np.empty((num_pos, 1 + n), np.int64)
            block[:, 0] = np.arange(num_pos)
            block[:, 1:] = num_pos + np.arange(num_pos * n).reshape(num_pos, n)
            order, row_lengths = block.reshape(-1), lengths * (1 + n)
        else:
            order = np.arange(num_pos + len(self.negatives) + len(self.hard_negatives), dtype=np.int64)
            row_lengths = lengths.copy()
            if self.num_rows:
                row_lengths[-1] += len(order) - num_pos
        return {
            a.column.name: lay_out(a.column, a.values, order, row_lengths, candidates, self.spec.seq_delim)
            for a in self.attributes
        }

    def to_jagged(
        self,
        vocab: DenseRows,
        *,
        uih_field: str,
        max_seq_len: int,
        timestamp_field: str | None = None,
        action_field: str | None = None,
    ) -> JaggedArrays:
        """The batch as `JaggedArrays`: the `uih_field` history (its most recent `max_seq_len`
        items, with `timestamp_field` and `action_field` beside it) and the candidates, as dense
        item rows."""
        history = _History(vocab, uih_field, max_seq_len, timestamp_field, action_field)
        uih_values, uih_offsets, timestamps, actions = history.arrays(self.source, self.key.batch_index)
        lengths = self.pos_lengths.astype(np.int64)
        if self.spec.layout == "interleaved":
            block = np.empty((len(self.positives), 1 + self.neg_per_pos), np.int64)
            block[:, 0] = self.positives
            block[:, 1:] = self.negatives.reshape(len(self.positives), self.neg_per_pos)
            candidates = block.reshape(-1)
            offsets = offsets_of(lengths * (1 + self.neg_per_pos))
            num_shared = num_hard = 0
        else:
            candidates = np.concatenate([self.positives, self.negatives, self.hard_negatives])
            offsets = offsets_of(lengths)
            num_shared, num_hard = len(self.negatives), len(self.hard_negatives)
            if self.num_rows:
                offsets[-1] += num_shared + num_hard
        return JaggedArrays(
            key=self.key,
            layout=self.spec.layout,
            uih_values=uih_values,
            uih_offsets=uih_offsets,
            uih_timestamps=timestamps,
            uih_actions=actions,
            candidate_values=np.asarray(vocab.dense_rows(candidates), np.int64),
            candidate_offsets=offsets,
            cand_pos_lengths=self.pos_lengths.astype(np.int32),
            neg_per_pos=self.neg_per_pos if self.spec.layout == "interleaved" else 0,
            num_shared_negatives=num_shared,
            num_hard_negatives=num_hard,
            hard_neg_indices=self.hard_neg_indices if num_hard else None,
            neg_probability=self.neg_probability,
        )


def _id_lists(batch: pa.RecordBatch, name: str) -> tuple[np.ndarray, np.ndarray]:
    return flatten_id_column(column_of(batch, name), column=name)


@dataclass(frozen=True)
class _History:
    """How a batch's history column becomes training arrays (`to_jagged`, `jagged_from_arrow`)."""

    vocab: DenseRows
    uih_field: str
    max_seq_len: int
    timestamp_field: str | None
    action_field: str | None = None

    def arrays(
        self, batch: pa.RecordBatch, batch_index: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(dense rows, offsets, timestamps, actions) of the most recent `max_seq_len` history items."""
        if self.max_seq_len < 1:
            raise NegseqError(f"max_seq_len must be >= 1, got {self.max_seq_len}")
        ids, counts = truncate_recent(*_id_lists(batch, self.uih_field), self.max_seq_len)
        beside = [
            self._beside(batch, batch_index, name, counts)
            for name in (self.timestamp_field, self.action_field)
        ]
        return np.asarray(self.vocab.dense_rows(ids), np.int64), offsets_of(counts), beside[0], beside[1]

    def _beside(
        self, batch: pa.RecordBatch, batch_index: int, name: str | None, counts: np.ndarray
    ) -> np.ndarray | None:
        """A list column aligned with the history (its most recent values), None when not asked."""
        if name is None:
            return None
        values, value_counts = truncate_recent(*_id_lists(batch, name), self.max_seq_len)
        if not np.array_equal(value_counts, counts):
            row = int(np.flatnonzero(value_counts != counts)[0])
            raise NegseqError(
                f"batch {batch_index}, row {row}: {name!r} and {self.uih_field!r} differ in length"
            )
        return values


def jagged_from_arrow(
    part: pa.RecordBatch | pa.Table,
    *,
    key: BatchKey,
    spec: CandidateSpec,
    item_field: str,
    vocab: DenseRows,
    uih_field: str,
    max_seq_len: int,
    timestamp_field: str | None = None,
    action_field: str | None = None,
) -> JaggedArrays:
    """A written sampled batch (`to_arrow`'s columns) as `JaggedArrays`, the candidate column read
    in its layout: what `to_jagged` gave when it was sampled, but for `neg_probability`, which
    files do not hold (None: no logQ correction)."""
    part, index = _as_record_batch(part), key.batch_index
    if uih_field == item_field:
        raise NegseqError(f"batch {index}: the history column {uih_field!r} is the candidate column")
    ids, counts = _in_batch(index, flatten_id_column, column_of(part, item_field), spec.seq_delim, item_field)
    pos_lengths = np.asarray(column_of(part, CAND_POS_LENGTHS).to_numpy(zero_copy_only=False), np.int32)
    num_pos = int(pos_lengths.sum())
    hard = None
    if HARD_NEG_INDICES in part.schema.names:
        pairs = column_of(part, HARD_NEG_INDICES).flatten().to_numpy(zero_copy_only=False)
        hard = np.asarray(pairs, np.int32).reshape(-1, 2) if len(pairs) else None
    num_hard = 0 if hard is None else len(hard)
    neg_per_pos = num_shared = 0
    if spec.layout == "interleaved":
        neg_per_pos = (len(ids) - num_pos) // num_pos if num_pos else spec.neg_per_pos or 0
    else:
        num_shared = len(ids) - num_pos - num_hard
    history = _History(vocab, uih_field, max_seq_len, timestamp_field, action_field)
    uih_values, uih_offsets, timestamps, actions = history.arrays(part, index)
    try:
        return JaggedArrays(
            key=key,
            layout=spec.layout,
            uih_values=uih_values,
            uih_offsets=uih_offsets,
            uih_timestamps=timestamps,
            uih_actions=actions,
            candidate_values=np.asarray(vocab.dense_rows(ids), np.int64),
            candidate_offsets=offsets_of(counts),
            cand_pos_lengths=pos_lengths,
            neg_per_pos=neg_per_pos,
            num_shared_negatives=num_shared,
            num_hard_negatives=num_hard,
            hard_neg_indices=hard,
        )
    except NegseqError as exc:  # a file whose columns were edited, or not negseq's
        raise NegseqError(f"{exc} (column {item_field!r} against {CAND_POS_LENGTHS})") from None


def _hard_indices_column(num_rows: int, hard_neg_indices: np.ndarray | None) -> pa.Array:
    """list<int32>: the last row holds the flattened (query row, offset) pairs, others empty."""
    pairs = np.empty(0, np.int32) if hard_neg_indices is None else hard_neg_indices.reshape(-1)
    offsets = np.zeros(num_rows + 1, dtype=np.int32)
    if num_rows:
        offsets[-1] = len(pairs)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(pairs.astype(np.int32)))


def _as_record_batch(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    if isinstance(batch, pa.RecordBatch):
        return batch
    return pa.RecordBatch.from_arrays([column_of(batch, n) for n in batch.schema.names], schema=batch.schema)


def sample_batch(
    batch: pa.RecordBatch | pa.Table,
    sampler: Any,
    spec: CandidateSpec,
    *,
    epoch: int = 0,
    batch_index: int = 0,
    training: bool = True,
) -> SampledBatch:
    """Flatten the batch's positives, draw their negatives keyed by (sampler.seed, epoch,
    batch_index), and return them typed. Interleaved: `spec.neg_per_pos` (default: the
    sampler's num_sample, or num_eval_sample out of training when set) negatives a positive;
    suffix: the sampler's shared negatives, then the hard ones. No positives, no negatives."""
    spec.check_sampler(sampler)
    source = _as_record_batch(batch)
    planned = spec.check_input(sampler, source.schema, f"batch {batch_index}")
    item_field = sampler.item_id_field
    flat, counts = build_sampler_input(source, item_field, sampler.user_id_field, spec.seq_delim)
    positives = np.asarray(flat[item_field].to_numpy(), np.int64)
    n = sampler.shared_sample_num(training) if spec.neg_per_pos is None else spec.neg_per_pos
    per_positive = n if spec.layout == "interleaved" else None
    key = BatchKey(int(sampler.seed), epoch, batch_index)
    if len(positives):
        result = sampler.get(
            flat,
            epoch=epoch,
            batch_index=batch_index,
            per_positive=per_positive,
            training=training,
            row_lengths=counts,
        )
        negatives, attributes, stats = result.ids, result.negatives, dict(result.stats)
        probability = sampler.probability(result)
        hard_ids, hard_attributes, hard_indices = (
            result.hard_ids,
            result.hard_negatives,
            result.hard_neg_indices,
        )
    else:
        negatives, stats, probability = np.empty(0, np.int64), {}, np.empty(0, np.float64)
        attributes = sampler.items.attributes(np.empty(0, np.int64), sampler.attr_fields, item_field)
        hard_ids, hard_attributes, hard_indices = np.empty(0, np.int64), None, None
    attribute_columns = tuple(
        CandidateAttribute(
            column,
            _in_batch(
                batch_index,
                attribute_values,
                column,
                source=source,
                item_field=item_field,
                items=sampler.items,
                positives=positives,
                pos_lengths=counts,
                negatives=attributes,
                hard_negatives=hard_attributes,
                seq_delim=spec.seq_delim,
            ),
        )
        for column in planned
    )
    return SampledBatch(
        key=key,
        spec=spec,
        source=source,
        item_field=item_field,
        positives=positives,
        pos_lengths=counts.astype(np.int32),
        negatives=negatives,
        neg_per_pos=n if spec.layout == "interleaved" else 0,
        neg_attributes=attributes,
        neg_probability=probability,
        has_hard=bool(sampler.is_hard),
        hard_negatives=hard_ids,
        hard_attributes=hard_attributes,
        hard_neg_indices=hard_indices,
        stats=stats,
        attributes=attribute_columns,
    )


def _in_batch(batch_index: int, function: Any, *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)`, its NegseqError naming the batch."""
    try:
        return function(*args, **kwargs)
    except NegseqError as exc:
        raise NegseqError(f"batch {batch_index}, {exc}") from None
