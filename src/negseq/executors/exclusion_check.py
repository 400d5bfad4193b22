"""Before training, how much of the sampler's probability mass its exclusion removes.

Excluding positives moves a draw from the proposal (item weights) to the proposal renormalised
over what is left; the total variation distance between the two is the excluded mass m
(`negseq.sampler.exclusion`). Above one half, the negatives follow the exclusion more than the
item weights: with `exclude = "batch"` and long sequences, the batch's positives cover most
popular items and the negatives are the rare tail. `negseq run` samples the first batches of its
first epoch exactly as training will (same keys), and says so once, not for every batch.
"""

from __future__ import annotations

from negseq.candidates import sample_batch
from negseq.executors.plan import BatchWork
from negseq.io.sources import SourceReader
from negseq.sampler.exclusion import Stats, total_stats

EXCLUDED_MASS_LIMIT = 0.5  # total variation distance from the proposal: more moved than kept
CHECKED_BATCHES = 8


def excluded_mass_stats(work: BatchWork, batches: int = CHECKED_BATCHES) -> Stats:
    """The sampler stats of the first `batches` batches of the plan's first epoch."""
    plan = work.plan
    if not plan.epochs:
        return {}
    reader = SourceReader(plan.source)
    return total_stats(
        sample_batch(
            reader.read(descriptor),
            work.sampler,
            plan.spec,
            epoch=plan.epochs[0],
            batch_index=descriptor.batch_index,
            training=plan.training,
        ).stats
        for descriptor in plan.descriptors[:batches]
    )


def exclusion_warning(work: BatchWork, *, limit: float = EXCLUDED_MASS_LIMIT) -> str | None:
    """One line when an average draw of the first batches could not land on more than `limit`
    of the sampler's probability mass; None otherwise."""
    stats = excluded_mass_stats(work)
    mass = float(stats.get("excluded_mass", 0.0))
    if mass <= limit:
        return None
    policy = getattr(work.sampler, "exclude", None)
    what = f'exclude = "{policy}"' if policy else "the exclusion of each user's positive items"
    batches = min(CHECKED_BATCHES, work.plan.num_batches)
    advice = ' (try exclude = "user", or a smaller [candidates] batch_size)' if policy == "batch" else ""
    return (
        f"warning: {what} removes {mass:.0%} of the sampler's probability mass from an average draw "
        f"(first {batches} batches, at most {float(stats['excluded_mass_max']):.0%}): the negatives "
        f"are mostly what is left over, not what the item weights say{advice}"
    )
