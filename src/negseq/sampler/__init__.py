"""Tables (items, users, edges), alias tables and the four negative samplers."""

from negseq.sampler.config import SAMPLER_TYPES, build_sampler
from negseq.sampler.samplers import (
    HardNegativeIndex,
    HardNegativeSampler,
    HardNegativeSamplerV2,
    NegativeSampler,
    NegativeSamplerV2,
    SampleResult,
    expand_factor,
)
from negseq.sampler.tables import EdgeTable, ItemTable, read_table

Sampler = NegativeSampler | NegativeSamplerV2 | HardNegativeSampler | HardNegativeSamplerV2

__all__ = [
    "SAMPLER_TYPES",
    "EdgeTable",
    "HardNegativeIndex",
    "HardNegativeSampler",
    "HardNegativeSamplerV2",
    "ItemTable",
    "NegativeSampler",
    "NegativeSamplerV2",
    "SampleResult",
    "Sampler",
    "build_sampler",
    "expand_factor",
    "read_table",
]
