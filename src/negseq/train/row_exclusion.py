"""What `exclude = "user"` means when `negseq run` trains: no negative is one of its query's own
row's positives (the user's own items), whatever the layout.

In the interleaved layout each positive's negatives are its own draws, so the sampler redraws a
draw that hits the row's positives (`negseq.sampler.exclusion`), and the model masks the few
collisions kept after the last redraw round. In the suffix layout every query scores every
shared negative: a shared draw belongs to one positive (draw r to positive r // ef, DESIGN §3),
so excluding at draw time would keep only the batch's first users' items out, for every user.
There the sampler draws from its item weights with no exclusion (the logQ correction then uses
the proposal's probabilities, exact) and the model masks, per query, the shared negatives that
are positives of the query's row, as it masks accidental hits. The sampled softmax then
estimates the softmax over the items outside the user's own positives, as the full-corpus
evaluation ranks the items outside the user's history.
"""

from __future__ import annotations

from dataclasses import replace

from negseq.config import JobConfig, SamplerConfig


def _excludes_user(sampler: SamplerConfig | None) -> bool:
    """`exclude = "user"` on a sampler that has the key (the V2 samplers have no `exclude`)."""
    return sampler is not None and sampler.table()[sampler.kind].get("exclude") == "user"


def masks_row_positives(config: JobConfig) -> bool:
    """Whether the model masks each query's row positives among its negatives (`"user"`)."""
    return _excludes_user(config.sampler)


def training_sampler_config(config: JobConfig) -> SamplerConfig:
    """The sampler `negseq run` draws with: the job's, with no draw-time exclusion under
    `"user"` in the suffix layout (the model's per-query mask excludes instead)."""
    sampler = config.sampler
    assert sampler is not None
    if config.candidates.layout == "suffix" and _excludes_user(sampler):
        return replace(sampler, exclude="none")
    return sampler
