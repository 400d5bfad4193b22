"""`build_sampler`: a sampler from a `[sampler.<kind>]` config, one of TorchEasyRec's four sampler
messages. The keys, types, ranges and defaults are `negseq.config.SamplerConfig`'s."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from negseq.config import SAMPLER_KINDS, SamplerConfig, sampler_config
from negseq.sampler.samplers import (
    HardNegativeSampler,
    HardNegativeSamplerV2,
    NegativeSampler,
    NegativeSamplerV2,
    _Sampler,
)
from negseq.sampler.tables import EdgeTable, ItemTable

SAMPLER_TYPES = SAMPLER_KINDS


def build_sampler(
    config: SamplerConfig | Mapping[str, Any], *, base_dir: str | Path | None = None
) -> _Sampler:
    """Build a sampler from a checked `SamplerConfig`, or from `{"negative_sampler": {...}}` (or
    `_v2`, `hard_...`), which is checked as a job file's `[sampler.<kind>]` table (relative paths
    against `base_dir`). Reads and validates the tables it names."""
    if not isinstance(config, SamplerConfig):
        config = sampler_config(config, base_dir=base_dir)
    attr_fields = list(config.attr_fields) if config.attr_fields is not None else None
    item_id_field = config.item_id_field
    assert item_id_field is not None and config.num_sample is not None  # required keys: checked

    def edges(path: str | None, *, keep_weights: bool) -> EdgeTable:
        # positive edges are a set (their weights unused); hard edges rank by weight
        assert path is not None
        return EdgeTable.read(path, field_delimiter=config.field_delimiter, keep_weights=keep_weights)

    if config.user_input_path is not None:  # validated as graph-learn loads it; not used to sample
        ItemTable.read(config.user_input_path, field_delimiter=config.field_delimiter)
    item_table = config.item_table
    assert item_table is not None
    items = ItemTable.read(
        item_table,
        attr_fields=attr_fields,
        attr_delimiter=config.attr_delimiter,
        field_delimiter=config.field_delimiter,
        item_id_field=item_id_field,
    )
    common: dict[str, Any] = {
        "num_sample": config.num_sample,
        "attr_fields": attr_fields,
        "item_id_field": item_id_field,
        "num_eval_sample": config.num_eval_sample,
        "max_retries": config.max_retries,
        "seed": config.seed,
    }
    builders: dict[str, Callable[[], _Sampler]] = {
        "negative_sampler": lambda: NegativeSampler(
            items, user_id_field=config.user_id_field, exclude=config.exclude, **common
        ),
        "negative_sampler_v2": lambda: NegativeSamplerV2(
            items,
            edges(config.pos_edge_input_path, keep_weights=False),
            user_id_field=config.user_id_field,
            weighted=config.weighted,
            **common,
        ),
        "hard_negative_sampler": lambda: HardNegativeSampler(
            items,
            edges(config.hard_neg_edge_input_path, keep_weights=True),
            num_hard_sample=config.num_hard_sample,
            user_id_field=config.user_id_field,
            exclude=config.exclude,
            **common,
        ),
        "hard_negative_sampler_v2": lambda: HardNegativeSamplerV2(
            items,
            edges(config.pos_edge_input_path, keep_weights=False),
            edges(config.hard_neg_edge_input_path, keep_weights=True),
            num_hard_sample=config.num_hard_sample,
            user_id_field=config.user_id_field,
            weighted=config.weighted,
            **common,
        ),
    }
    return builders[config.kind]()
