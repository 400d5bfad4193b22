"""The four negative samplers: weighted (V1), user-conditioned (V2), and their hard-negative variants.

All share one `get` (validate the call, key the generator, draw, gather attributes, add
hard negatives); a sampler differs only in how it draws (`_draw`) and whether it has a
hard-negative index. The expand factor is computed in every call, from that call's Q.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa

from negseq.errors import NegseqError
from negseq.sampler import gather, kernels
from negseq.sampler.arrow_numpy import check_int64_ids, numeric_values
from negseq.sampler.csr import UserItemsCSR, distinct_rows, hard_items_csr, positive_items_csr
from negseq.sampler.exclusion import EXCLUDE_POLICIES, ExcludePolicy, Exclusion, Stats, no_exclusion
from negseq.sampler.tables import EdgeTable, ItemTable

Batch = pa.RecordBatch | Mapping[str, pa.Array | pa.ChunkedArray | np.ndarray]
_KEY_LIMIT = 1 << 32  # epoch and batch_index share the generator's second key word
_NO_POOL = np.empty(0, np.int32)  # alias-table columns are item rows themselves
_UNIFORM = np.empty(0, np.uint32)  # no alias table: uniform over the pool


def expand_factor(num_sample: int, num_positives: int) -> int:
    """The dynamic expand factor of one call: `max(1, ceil(num_sample / max(1, Q)))`."""
    return max(1, math.ceil(num_sample / max(1, num_positives)))


def _row_of_positive(row_lengths: np.ndarray | None, num_positives: int) -> np.ndarray | None:
    """int64 [Q]: the source row of each positive (None: a row a positive)."""
    if row_lengths is None:
        return None
    lengths = np.asarray(row_lengths)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer) or (lengths < 0).any():
        raise NegseqError("row_lengths must be a 1-d array of counts >= 0")
    if int(lengths.sum()) != num_positives:
        raise NegseqError(f"row_lengths sum to {int(lengths.sum())}, the batch has {num_positives} positives")
    return np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)


@dataclass(frozen=True)
class _Draws:
    """One call's draws: fill `rows`; slot s belongs to positive s // `group` (`shared`: the call's
    num_sample draws, else `group` a positive); `row_of` the source row of each positive (None: a
    row a positive); `key` the call's Philox key."""

    rows: np.ndarray
    group: int
    shared: bool
    positives: np.ndarray
    users: np.ndarray | None
    row_of: np.ndarray | None
    key: tuple[np.uint64, np.uint64]


@dataclass
class SampleResult:
    """What one `get` call drew. `ids` are always there; hard fields are empty/None when H = 0."""

    ids: np.ndarray
    negatives: pa.RecordBatch
    hard_ids: np.ndarray
    hard_negatives: pa.RecordBatch | None
    hard_neg_indices: np.ndarray | None
    expand_factor: int
    stats: Stats = field(default_factory=dict)
    rows: np.ndarray | None = None  # the negatives' item-table rows (None when decoded off the wire)
    exclusion: Exclusion | None = None  # what the draws excluded (None when decoded off the wire)


def _column(batch: Batch, name: str, role: str) -> np.ndarray:
    """An int64 numpy view of a batch column; missing, non-integer, null or out-of-int64 values
    (an unsigned id >= 2**63, which would wrap negative) name the problem."""
    names = batch.schema.names if isinstance(batch, pa.RecordBatch) else list(batch)
    if name not in names:
        raise NegseqError(f"batch: missing {role} column {name!r}; found {names}")
    column = batch.column(name) if isinstance(batch, pa.RecordBatch) else batch[name]
    if isinstance(column, np.ndarray):
        if not np.issubdtype(column.dtype, np.integer):
            raise NegseqError(f"batch: column {name!r} must hold int64 ids, found {column.dtype}")
    else:
        if not pa.types.is_integer(column.type):
            raise NegseqError(
                f"batch: column {name!r} must hold int64 ids (one a row), found {column.type}; "
                "flatten multi-value columns with negseq.candidates.build_sampler_input first"
            )
        if column.null_count:
            nulls = np.flatnonzero(np.asarray(column.is_null().to_numpy(zero_copy_only=False)))
            raise NegseqError(f"batch: column {name!r}, row {int(nulls[0])}: null id")
    check_int64_ids(column, lambda row: f"batch: column {name!r}, row {row}")
    if isinstance(column, np.ndarray):
        return column.astype(np.int64, copy=False)
    return numeric_values(column).astype(np.int64, copy=False)  # to_numpy would import pandas


class HardNegativeIndex:
    """Each user's hard-negative items, top by weight then item id."""

    def __init__(self, items: ItemTable, hard_edges: EdgeTable, num_hard_sample: int) -> None:
        if num_hard_sample < 0:
            raise NegseqError(f"num_hard_sample must be >= 0, got {num_hard_sample}")
        self.num_hard_sample = num_hard_sample
        self.csr: UserItemsCSR = hard_items_csr(hard_edges, items)

    def lookup(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(item rows [H], indices [H, 2] = (query row, offset in that row's hard list))."""
        user_rows = self.csr.user_rows(user_ids)
        known = user_rows >= 0
        starts = np.where(known, self.csr.indptr[np.maximum(user_rows, 0)], 0)
        ends = np.where(known, self.csr.indptr[np.maximum(user_rows, 0) + 1], 0)
        counts = np.minimum(ends - starts, self.num_hard_sample)
        query = np.repeat(np.arange(len(user_ids), dtype=np.int64), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        offset = np.arange(len(query), dtype=np.int64) - first
        rows = self.csr.items[starts[query] + offset]
        return rows, np.stack([query, offset], axis=1).astype(np.int32)


class _Sampler:
    """Shared setup and the `get` call; subclasses implement `_draw`."""

    def __init__(
        self,
        items: ItemTable,
        *,
        num_sample: int,
        attr_fields: Sequence[str] | None,
        item_id_field: str,
        user_id_field: str | None,
        num_eval_sample: int | None,
        max_retries: int,
        seed: int,
    ) -> None:
        name = type(self).__name__
        if num_sample < 0:
            raise NegseqError(f"{name}: num_sample must be >= 0, got {num_sample}")
        if num_eval_sample is not None and num_eval_sample < 0:
            raise NegseqError(f"{name}: num_eval_sample must be >= 0, got {num_eval_sample}")
        if max_retries < 0:
            raise NegseqError(f"{name}: max_retries must be >= 0, got {max_retries}")
        if not 0 <= seed < 2**64:
            raise NegseqError(f"{name}: seed must be in [0, 2**64), got {seed}")
        self.items = items
        self.num_sample = num_sample
        self.num_eval_sample = num_eval_sample
        self.item_id_field = item_id_field
        self.user_id_field = user_id_field
        self.attr_fields = list(attr_fields) if attr_fields else [item_id_field]
        for attr in self.attr_fields:
            if attr not in items.table.column_names and attr != item_id_field:
                raise NegseqError(
                    f"{name}: attr field {attr!r} is not a column of the item table {items.source} "
                    f"(columns {items.table.column_names})"
                )
        self.max_retries = max_retries
        self.seed = seed
        self.hard: HardNegativeIndex | None = None  # set by the hard-negative samplers

    @property
    def is_hard(self) -> bool:
        return self.hard is not None

    def shared_sample_num(self, training: bool = True) -> int:
        """Negatives a shared-mode call draws: `num_eval_sample` out of training if set, else `num_sample`."""
        if not training and self.num_eval_sample is not None:
            return self.num_eval_sample
        return self.num_sample

    def estimated_sample_num(self, batch_size: int) -> int:
        """Negatives a call yields, as TorchEasyRec estimates it (hard ones capped at 8 per row)."""
        if self.hard is None:
            return self.num_sample
        return self.num_sample + min(self.hard.num_hard_sample, 8) * batch_size

    def get(
        self,
        batch: Batch,
        *,
        epoch: int = 0,
        batch_index: int = 0,
        per_positive: int | None = None,
        training: bool = True,
        row_lengths: np.ndarray | None = None,
    ) -> SampleResult:
        """Draw negatives for the batch's positives: `num_sample` shared, or `per_positive` each.

        `row_lengths` [B] (sum Q): how many of the positives, in order, each source row holds,
        the rows whose positives `exclude = "user"` keeps apart (default: a row a positive)."""
        positives = _column(batch, self.item_id_field, "item id")
        users = None
        if self.user_id_field is not None:
            users = _column(batch, self.user_id_field, "user id")
            if len(users) != len(positives):
                raise NegseqError(
                    f"batch: user column {self.user_id_field!r} has {len(users)} rows, "
                    f"item column {self.item_id_field!r} has {len(positives)}"
                )
        if not (0 <= epoch < _KEY_LIMIT and 0 <= batch_index < _KEY_LIMIT):
            raise NegseqError(f"epoch and batch_index must be in [0, 2**32), got {epoch}, {batch_index}")
        num_pos = len(positives)
        row_of = _row_of_positive(row_lengths, num_pos)
        if per_positive is None:
            total = self.shared_sample_num(training)
            group = expand_factor(total, num_pos)
        else:
            if per_positive < 0:
                raise NegseqError(f"per_positive must be >= 0, got {per_positive}")
            total, group = num_pos * per_positive, per_positive
        key = (np.uint64(self.seed), np.uint64((epoch << 32) | batch_index))
        rows = np.empty(total, dtype=np.int64)
        draws = _Draws(rows, group, per_positive is None, positives, users, row_of, key)
        redraws, exclusion = self._draw(draws)
        stats: Stats = {
            "draws": total,
            "redraws": int(redraws),
            "collisions_kept": len(exclusion.kept),
            **exclusion.stats(),
        }
        hard_rows = np.empty(0, np.int64)
        hard_indices = None
        if self.hard is not None and users is not None:
            hard_rows, hard_indices = self.hard.lookup(users)
            if len(hard_rows) == 0:
                hard_indices = None
        attrs = self.items.attributes
        ids, hard_ids = gather.take_numpy(self.items.ids, rows), gather.take_numpy(self.items.ids, hard_rows)
        negatives = attrs(rows, self.attr_fields, self.item_id_field, ids)
        assert negatives.num_rows == total, (
            f"{type(self).__name__}: {negatives.num_rows} negatives, promised {total}"
        )
        return SampleResult(
            ids=ids,
            negatives=negatives,
            hard_ids=hard_ids,
            hard_negatives=None
            if hard_indices is None
            else attrs(hard_rows, self.attr_fields, self.item_id_field, hard_ids),
            hard_neg_indices=hard_indices,
            expand_factor=group,
            stats=stats,
            rows=rows,
            exclusion=exclusion,
        )

    def draw_probability(self, rows: np.ndarray) -> np.ndarray:
        """float64 [len(rows)]: the probability that one draw of the proposal picks each item
        row, before any exclusion redraw."""
        raise NotImplementedError

    def probability(self, result: SampleResult) -> np.ndarray:
        """float64 [len(result.ids)]: the exact probability with which each negative of `result`
        was drawn, after its exclusion (`negseq.sampler.exclusion`): the p of the logQ correction."""
        if result.rows is None or result.exclusion is None:
            raise NegseqError("probability: the result does not say what it drew (decoded off the wire?)")
        return result.exclusion.probability(self.draw_probability(result.rows), result.rows)

    def _draw(self, draws: _Draws) -> tuple[int, Exclusion]:
        """Fill `draws.rows` with drawn item rows; returns (redraws, what the draws excluded)."""
        raise NotImplementedError


class NegativeSampler(_Sampler):
    """Draws items by weight (alias table), redrawing a draw that is an excluded positive.

    `exclude` (`negseq.sampler.exclusion`): "batch", every positive of the call (graph-learn's
    behaviour, this class's default: a drop-in for TorchEasyRec); "user", the positives of the
    draw's own row (`get`'s `row_lengths`); "none", nothing.
    """

    def __init__(
        self,
        items: ItemTable,
        *,
        num_sample: int,
        attr_fields: Sequence[str] | None = None,
        item_id_field: str,
        num_eval_sample: int | None = None,
        max_retries: int = 5,
        seed: int = 0,
        user_id_field: str | None = None,
        exclude: ExcludePolicy = "batch",
    ) -> None:
        super().__init__(
            items,
            num_sample=num_sample,
            attr_fields=attr_fields,
            item_id_field=item_id_field,
            user_id_field=user_id_field,
            num_eval_sample=num_eval_sample,
            max_retries=max_retries,
            seed=seed,
        )
        if exclude not in EXCLUDE_POLICIES:
            raise NegseqError(
                f"{type(self).__name__}: exclude must be one of {EXCLUDE_POLICIES}, got {exclude!r}"
            )
        self.exclude: ExcludePolicy = exclude
        self._alias = kernels.build_alias_table(items.weights)
        self._total_weight = float(items.weights.sum())

    def draw_probability(self, rows: np.ndarray) -> np.ndarray:
        return self.items.weights[rows] / self._total_weight

    def _draw(self, draws: _Draws) -> tuple[int, Exclusion]:
        rows, key, retries = draws.rows, draws.key, self.max_retries
        sets = {"group": draws.group, "num_draws": len(rows), "shared": draws.shared}
        num_positives = len(draws.positives)
        if self.exclude == "none":
            kernels.draw_rows(rows, self._alias, _NO_POOL, *key)
            return 0, no_exclusion(num_positives=num_positives, **sets)
        num_items = len(self.items)
        positive_rows = self.items.rows(draws.positives)
        if self.exclude == "batch":
            excluded, weight = kernels.row_bitmap_mass(positive_rows, num_items, self.items.weights)
            redraws, kept = kernels.draw_excluding_rows(rows, self._alias, _NO_POOL, excluded, *key, retries)
            mass = np.array([weight / self._total_weight])
            return redraws, Exclusion.of_sets(
                max_retries=retries, mass=mass, kept=kept, num_positives=num_positives, **sets
            )
        # "user": set r holds row r's distinct positives, searched as the V2 kernel searches a user's
        row_of = draws.row_of if draws.row_of is not None else np.arange(num_positives, dtype=np.int64)
        num_sets = int(row_of[-1]) + 1 if num_positives else 0
        known = positive_rows >= 0
        members = np.unique(row_of[known] * num_items + positive_rows[known])
        set_of_member, member_rows = np.divmod(members, num_items)
        indptr = np.zeros(num_sets + 1, np.int64)
        np.cumsum(np.bincount(set_of_member, minlength=num_sets), out=indptr[1:])
        set_items = member_rows.astype(np.int32)
        weights = np.bincount(set_of_member, weights=self.items.weights[set_items], minlength=num_sets)
        redraws, kept = kernels.draw_excluding_user_items(
            rows,
            self._alias,
            _NO_POOL,
            draws.group,
            positive_rows,
            row_of,
            indptr,
            set_items,
            kernels.user_signatures(indptr, set_items),
            *key,
            retries,
        )
        return redraws, Exclusion.of_sets(
            max_retries=retries,
            mass=weights / self._total_weight,
            kept=kept,
            num_positives=num_positives,
            set_of_positive=row_of,
            members=lambda: members,
            num_items=num_items,
            **sets,
        )


class NegativeSamplerV2(_Sampler):
    """Draws from the positive edges' distinct items, redrawing a user's own positive items."""

    def __init__(
        self,
        items: ItemTable,
        pos_edges: EdgeTable,
        *,
        num_sample: int,
        attr_fields: Sequence[str] | None = None,
        item_id_field: str,
        user_id_field: str,
        weighted: bool = False,
        num_eval_sample: int | None = None,
        max_retries: int = 5,
        seed: int = 0,
    ) -> None:
        super().__init__(
            items,
            num_sample=num_sample,
            attr_fields=attr_fields,
            item_id_field=item_id_field,
            user_id_field=user_id_field,
            num_eval_sample=num_eval_sample,
            max_retries=max_retries,
            seed=seed,
        )
        self._positives: UserItemsCSR = positive_items_csr(pos_edges, items)
        self._signatures = kernels.user_signatures(self._positives.indptr, self._positives.items)
        self._pool = distinct_rows(self._positives.items, len(items))
        if len(self._pool) == 0:
            raise NegseqError(f"{pos_edges.source}: the positive edge table is empty")
        self.weighted = weighted
        pool_weights = items.weights[self._pool] if weighted else np.ones(len(self._pool))
        if not pool_weights.any():
            raise NegseqError(f"{pos_edges.source}: every edge item has weight 0, nothing can be drawn")
        # An empty alias table draws uniformly from the pool.
        self._alias = kernels.build_alias_table(pool_weights) if weighted else _UNIFORM
        self._pool_weight = float(pool_weights.sum())
        self._pool_probability = np.zeros(len(items))  # one draw's probability of each item row
        self._pool_probability[self._pool] = pool_weights / self._pool_weight
        self._user_mass = kernels.distinct_mass(
            self._positives.indptr, self._positives.items, self._pool_probability
        )

    def draw_probability(self, rows: np.ndarray) -> np.ndarray:
        if self.weighted:
            return self.items.weights[rows] / self._pool_weight
        return np.full(len(rows), 1.0 / len(self._pool))

    def _draw(self, draws: _Draws) -> tuple[int, Exclusion]:
        csr = self._positives
        positive_rows = self.items.rows(draws.positives)
        user_rows = csr.user_rows(draws.users)
        redraws, kept = kernels.draw_excluding_user_items(
            draws.rows,
            self._alias,
            self._pool,
            draws.group,
            positive_rows,
            user_rows,
            csr.indptr,
            csr.items,
            self._signatures,
            *draws.key,
            self.max_retries,
        )
        return redraws, self._exclusion(draws, positive_rows, user_rows, kept)

    def _exclusion(
        self, draws: _Draws, positive_rows: np.ndarray, user_rows: np.ndarray, kept: np.ndarray
    ) -> Exclusion:
        """Set q: positive q and its user's items; its mass, and in shared mode its members."""
        csr, num_items, num_positives = self._positives, len(self.items), len(positive_rows)
        known_user = user_rows >= 0
        mass = np.where(known_user, self._user_mass[np.maximum(user_rows, 0)], 0.0)
        own = kernels.in_user_items(positive_rows, user_rows, csr.indptr, csr.items)
        extra = (positive_rows >= 0) & ~own
        mass[extra] += self._pool_probability[positive_rows[extra]]
        members = partial(self._members, draws, positive_rows, user_rows) if draws.shared else None
        return Exclusion.of_sets(
            group=draws.group,
            num_draws=len(draws.rows),
            shared=draws.shared,
            max_retries=self.max_retries,
            mass=mass,
            kept=kept,
            num_positives=num_positives,
            set_of_positive=np.arange(num_positives, dtype=np.int64),
            members=members,
            num_items=num_items,
        )

    def _members(self, draws: _Draws, positive_rows: np.ndarray, user_rows: np.ndarray) -> np.ndarray:
        """The sets of the positives that own draws, as sorted keys set * num_items + item row."""
        csr, num_items = self._positives, len(self.items)
        owners = np.arange(min(len(positive_rows), -(-len(draws.rows) // draws.group)), dtype=np.int64)
        users = user_rows[owners]
        known = users >= 0
        starts = np.where(known, csr.indptr[np.maximum(users, 0)], 0)
        counts = np.where(known, csr.indptr[np.maximum(users, 0) + 1] - starts, 0)
        edges = np.repeat(starts + counts - np.cumsum(counts), counts) + np.arange(int(counts.sum()))
        own_rows = positive_rows[owners]
        has = own_rows >= 0
        keys = [
            np.repeat(owners, counts) * num_items + csr.items[edges],
            owners[has] * num_items + own_rows[has],
        ]
        return np.unique(np.concatenate(keys))


class HardNegativeSampler(NegativeSampler):
    """NegativeSampler plus each query user's top `num_hard_sample` hard-negative items.

    Keywords other than `num_hard_sample` are NegativeSampler's; `user_id_field` is required.
    """

    def __init__(
        self, items: ItemTable, hard_edges: EdgeTable, *, num_hard_sample: int, user_id_field: str, **options
    ) -> None:
        super().__init__(items, user_id_field=user_id_field, **options)
        self.hard = HardNegativeIndex(items, hard_edges, num_hard_sample)


class HardNegativeSamplerV2(NegativeSamplerV2):
    """NegativeSamplerV2 plus each query user's top `num_hard_sample` hard-negative items.

    Keywords other than `num_hard_sample` are NegativeSamplerV2's.
    """

    def __init__(
        self,
        items: ItemTable,
        pos_edges: EdgeTable,
        hard_edges: EdgeTable,
        *,
        num_hard_sample: int,
        **options,
    ) -> None:
        super().__init__(items, pos_edges, **options)
        self.hard = HardNegativeIndex(items, hard_edges, num_hard_sample)
