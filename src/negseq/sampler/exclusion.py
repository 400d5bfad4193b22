"""The `exclude` policy (which positives a drawn negative must not be) and the exact probability
with which each negative was drawn under it.

Policies of the samplers that draw from the item table (`NegativeSampler`, `HardNegativeSampler`):

- `"batch"` (TorchEasyRec, graph-learn): every positive of the call. The excluded set grows with
  the batch: 64 ML-100K users' histories hold about 6,800 positives over 1,682 items, most of the
  popular ones, so what is left to draw is the rare tail and the model learns popularity.
- `"user"`: the positives of the negative's own row. A row is one user's sequence, so a negative
  avoids that user's own history (all of it with the autoregressive objective, whose positives
  are the history shifted by one), and other users' positives stay valid negatives.
- `"none"`: nothing; a negative equal to its query's positive (an accidental hit) is left to the
  model's mask.

The V2 samplers always exclude the positive and its user's items of the positive edge table.

Exact probabilities. A draw from the proposal p (one item j with probability p_j), redrawn while
it falls in its excluded set S of proposal mass m = p(S), for at most R = `max_retries` rounds and
then kept, picks

    j not in S  with probability  p_j (1 + m + ... + m^R) = p_j (1 - m^(R+1)) / (1 - m)
    j in S      with probability  p_j m^R            (a collision kept after the last round)

which tends to p_j / (1 - m) off S and 0 on S: the proposal renormalised over what remains. The
total variation distance between that and the proposal is m, the `excluded_mass` of the stats:
above 0.5 the negatives follow the exclusion more than the item weights.

A negative's probability (`SampledBatch.neg_probability`, the p of the logQ correction
`-log(k p)`) is that of the draws it is scored among. In the interleaved layout a positive's n
negatives share one distribution. In the suffix layout every query scores every shared negative,
so a shared negative's probability is the average of the M draws' distributions (its expected
count among them, over M); under "batch" and "none" the draws share one distribution anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np

ExcludePolicy = Literal["batch", "user", "none"]
EXCLUDE_POLICIES: tuple[ExcludePolicy, ...] = ("batch", "user", "none")
Stats = dict[str, int | float]


def draws_per_positive(num_positives: int, group: int, num_draws: int) -> np.ndarray:
    """int64 [Q]: how many of the call's `num_draws` draws belong to each positive (draw s to
    positive s // group): `group` each in per-positive mode, the first positives' in shared mode."""
    counts = np.zeros(num_positives, np.int64)
    if num_positives and group:
        full, rest = divmod(num_draws, group)
        counts[: min(full, num_positives)] = group
        if rest and full < num_positives:
            counts[full] = rest
    return counts


@dataclass(frozen=True)
class Exclusion:
    """What one call's draws excluded, enough to give each draw's exact probability.

    Draw s belongs to positive s // `group`, whose excluded set is number `set_of_positive[q]`
    (None: one set, number 0, for every positive). `mass[e]` is set e's proposal mass, `draws[e]`
    how many of the call's draws avoided it. `kept` holds the draws (ascending) that are still in
    their set after the last redraw round. `members` (called only for the probabilities of
    several sets in shared mode, so `get` does not pay for it) gives each set's distinct item rows
    as sorted keys `e * num_items + row`.
    """

    group: int
    shared: bool
    max_retries: int
    mass: np.ndarray
    draws: np.ndarray
    kept: np.ndarray
    set_of_positive: np.ndarray | None = None
    members: Callable[[], np.ndarray] | None = None
    num_items: int = 0

    @classmethod
    def of_sets(
        cls,
        *,
        group: int,
        num_draws: int,
        shared: bool,
        max_retries: int,
        mass: np.ndarray,
        kept: np.ndarray,
        num_positives: int,
        set_of_positive: np.ndarray | None = None,
        members: Callable[[], np.ndarray] | None = None,
        num_items: int = 0,
    ) -> Exclusion:
        per_positive = draws_per_positive(num_positives, group, num_draws)
        if set_of_positive is None:
            draws = np.array([per_positive.sum()], np.int64)
        else:
            draws = np.bincount(set_of_positive, weights=per_positive, minlength=len(mass)).astype(np.int64)
        return cls(group, shared, max_retries, mass, draws, kept, set_of_positive, members, num_items)

    def stats(self) -> Stats:
        """`excluded_mass`: the proposal mass a draw could not land on, averaged over the call's
        draws; `excluded_mass_max`: the largest of any set a draw avoided."""
        total = int(self.draws.sum())
        if total == 0:
            return {"excluded_mass": 0.0, "excluded_mass_max": 0.0}
        used = self.draws > 0
        return {
            "excluded_mass": float(np.dot(self.draws, self.mass) / total),
            "excluded_mass_max": float(self.mass[used].max()),
        }

    def probability(self, proposal: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """float64 [N]: each draw's probability under the exclusion, from `proposal` [N] (the
        probability one draw of the proposal picks the drawn row) and the drawn `rows` [N]."""
        n = len(rows)
        proposal = np.asarray(proposal, np.float64)
        if n == 0:
            return proposal.copy()
        kept_rounds, free_rounds = _round_factors(self.mass, self.max_retries)
        if self.shared and len(self.mass) > 1:
            return proposal * self._mixture_factor(rows, kept_rounds, free_rounds)
        if self.set_of_positive is None:
            factor = np.full(n, free_rounds[0])
            factor[self.kept] = kept_rounds[0]
            return proposal * factor
        sets = self.set_of_positive
        factor = np.ones(n)  # a draw past the last positive's (a call without positives) avoided nothing
        owned = min(n, len(sets) * self.group)
        factor[:owned] = np.repeat(free_rounds[sets], self.group)[:owned]
        kept_sets = sets[self.kept // self.group]
        factor[self.kept] = kept_rounds[kept_sets]
        return proposal * factor

    def _mixture_factor(
        self, rows: np.ndarray, kept_rounds: np.ndarray, free_rounds: np.ndarray
    ) -> np.ndarray:
        """The average over the call's draws of each one's factor for item `rows[i]`: the factor
        off its set, less (free - kept) for the draws whose set holds the item."""
        share = self.draws / self.draws.sum()
        base = float(np.dot(share, free_rounds))
        assert self.members is not None and self.num_items > 0
        member_sets, member_items = np.divmod(self.members(), self.num_items)
        loss = share[member_sets] * (free_rounds - kept_rounds)[member_sets]
        order = np.argsort(member_items, kind="stable")
        items, starts = np.unique(member_items[order], return_index=True)
        if len(items) == 0:
            return np.full(len(rows), base)
        lost = np.add.reduceat(loss[order], starts)
        at = np.minimum(np.searchsorted(items, rows), len(items) - 1)
        return base - np.where(items[at] == rows, lost[at], 0.0)


def _round_factors(mass: np.ndarray, max_retries: int) -> tuple[np.ndarray, np.ndarray]:
    """(m^R, 1 + m + ... + m^R) per set: the factors of an item in and off a set of mass m."""
    mass = np.clip(np.asarray(mass, np.float64), 0.0, 1.0)
    kept = mass**max_retries
    with np.errstate(divide="ignore", invalid="ignore"):
        free = np.where(mass < 1.0, (1.0 - mass ** (max_retries + 1)) / (1.0 - mass), max_retries + 1.0)
    return kept, free


def no_exclusion(*, group: int, num_draws: int, shared: bool, num_positives: int) -> Exclusion:
    """The exclusion of a call that excluded nothing (`exclude = "none"`)."""
    return Exclusion.of_sets(
        group=group,
        num_draws=num_draws,
        shared=shared,
        max_retries=0,
        mass=np.zeros(1),
        kept=np.empty(0, np.int64),
        num_positives=num_positives,
    )


def json_stats(stats: Mapping[str, int | float]) -> Stats:
    """A sampler's stats as JSON values: counts as int, masses as float."""
    return {k: float(v) if isinstance(v, float | np.floating) else int(v) for k, v in stats.items()}


def total_stats(calls: Iterable[Mapping[str, int | float]]) -> Stats:
    """The stats of several calls: counts summed, `excluded_mass` averaged over their draws,
    `excluded_mass_max` the largest."""
    totals: Stats = {}
    weighted_mass = 0.0
    for stats in calls:
        for key, value in stats.items():
            if key == "excluded_mass":
                weighted_mass += float(value) * int(stats.get("draws", 0))
            elif key == "excluded_mass_max":
                totals[key] = max(float(totals.get(key, 0.0)), float(value))
            else:
                totals[key] = int(totals.get(key, 0)) + int(value)
        if "excluded_mass" in stats:
            totals.setdefault("excluded_mass", 0.0)
    if "excluded_mass" in totals:
        draws = int(totals.get("draws", 0))
        totals["excluded_mass"] = weighted_mass / draws if draws else 0.0
    return cast(Stats, totals)
