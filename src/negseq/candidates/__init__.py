"""Candidate sequences: flatten a batch's positives, sample them, and keep the result typed.

`sample_batch` returns a `SampledBatch`; its two encoders are the only readers: `to_arrow()`
(TorchEasyRec's columns) and `to_jagged()` (`JaggedArrays` for training). Loads neither torch
nor ray.
"""

from negseq.candidates.combine import (
    combine_neg_as_candidate_sequence,
    combine_negs_to_candidate_suffix,
)
from negseq.candidates.flatten import build_sampler_input, flatten_id_column
from negseq.candidates.jagged_arrays import (
    LAYOUTS,
    BatchKey,
    JaggedArrays,
    Layout,
    arrays_from_table,
    arrays_to_table,
)
from negseq.candidates.sampled import (
    CAND_POS_LENGTHS,
    HARD_NEG_INDICES,
    CandidateSpec,
    SampledBatch,
    jagged_from_arrow,
    sample_batch,
)

__all__ = [
    "CAND_POS_LENGTHS",
    "HARD_NEG_INDICES",
    "LAYOUTS",
    "BatchKey",
    "CandidateSpec",
    "JaggedArrays",
    "Layout",
    "SampledBatch",
    "arrays_from_table",
    "arrays_to_table",
    "build_sampler_input",
    "combine_neg_as_candidate_sequence",
    "combine_negs_to_candidate_suffix",
    "flatten_id_column",
    "jagged_from_arrow",
    "sample_batch",
]
