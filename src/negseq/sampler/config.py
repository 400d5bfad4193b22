"""`build_sampler`: a sampler from TorchEasyRec's sampler config (one of its four sampler messages)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from negseq.errors import NegseqError
from negseq.sampler.samplers import (
    HardNegativeSampler,
    HardNegativeSamplerV2,
    NegativeSampler,
    NegativeSamplerV2,
    _Sampler,
)
from negseq.sampler.tables import EdgeTable, ItemTable

_COMMON = {
    "num_sample",
    "attr_fields",
    "item_id_field",
    "attr_delimiter",
    "num_eval_sample",
    "field_delimiter",
    "seed",
    "max_retries",
}
_V2 = {"user_input_path", "item_input_path", "pos_edge_input_path", "user_id_field", "weighted"}
_HARD = {"user_input_path", "item_input_path", "hard_neg_edge_input_path", "num_hard_sample", "user_id_field"}
# Keys each sampler message accepts (TorchEasyRec's names, plus negseq's seed/max_retries/weighted).
_KEYS = {
    # item_id_delim: str, default ";": the delimiter of item ids in a sequence item column
    # ("1;2;3"), TorchEasyRec's NegativeSampler field 8 (that message only), negseq's
    # [candidates] seq_delim by another name. The job files read it (`sequence_delimiter`);
    # the sampler itself takes flattened ids.
    "negative_sampler": _COMMON | {"input_path", "user_id_field", "item_id_delim"},
    "negative_sampler_v2": _COMMON | _V2,
    "hard_negative_sampler": _COMMON | _HARD,
    "hard_negative_sampler_v2": _COMMON | _V2 | _HARD,
}
_REQUIRED_COMMON = {"num_sample", "item_id_field"}
_REQUIRED_V2 = {"item_input_path", "pos_edge_input_path", "user_id_field"}
_REQUIRED_HARD = {"item_input_path", "hard_neg_edge_input_path", "num_hard_sample", "user_id_field"}
_REQUIRED = {
    "negative_sampler": _REQUIRED_COMMON | {"input_path"},
    "negative_sampler_v2": _REQUIRED_COMMON | _REQUIRED_V2,
    "hard_negative_sampler": _REQUIRED_COMMON | _REQUIRED_HARD,
    "hard_negative_sampler_v2": _REQUIRED_COMMON | _REQUIRED_V2 | _REQUIRED_HARD,
}
SAMPLER_TYPES = tuple(_KEYS)


DEFAULT_SEQ_DELIM = ";"


def sequence_delimiter(sampler: Mapping[str, Any], candidates: Mapping[str, Any], source: str | Path) -> str:
    """The delimiter of ids in a sequence item column: `[candidates] seq_delim`, or the sampler's
    `item_id_delim` (TorchEasyRec's name for it), else ";". Both set and different is an error
    naming both, as is an empty or non-string delimiter."""
    delims = {
        f"[sampler.{kind}] item_id_delim": fields["item_id_delim"]
        for kind, fields in sampler.items()
        if isinstance(fields, Mapping) and "item_id_delim" in fields
    }
    if "seq_delim" in candidates:
        delims["[candidates] seq_delim"] = candidates["seq_delim"]
    for key, value in delims.items():
        if not isinstance(value, str) or not value:
            raise NegseqError(f"{source}: {key} must be a non-empty string, got {value!r}")
    if len(set(delims.values())) > 1:
        raise NegseqError(
            f"{source}: {' and '.join(f'{key} = {value!r}' for key, value in delims.items())} "
            "disagree; they name the same delimiter (set one)"
        )
    return next(iter(delims.values()), DEFAULT_SEQ_DELIM)


def _split_attr_fields(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [f.strip() for f in value.split(",") if f.strip()]
    return [str(f) for f in value]


def build_sampler(config: Mapping[str, Any], *, base_dir: str | Path | None = None) -> _Sampler:
    """Build a sampler from `{"negative_sampler": {...}}` (or `_v2`, `hard_...`); relative paths
    resolve against `base_dir`. Unknown or missing keys are errors that name them."""
    if len(config) != 1:
        raise NegseqError(
            f"sampler config must hold exactly one of {', '.join(SAMPLER_TYPES)}; got {sorted(config)}"
        )
    ((kind, fields),) = config.items()
    if kind not in _KEYS:
        raise NegseqError(f"sampler config: unknown sampler {kind!r}; known: {', '.join(SAMPLER_TYPES)}")
    unknown = sorted(set(fields) - _KEYS[kind])
    if unknown:
        raise NegseqError(f"sampler config {kind}: unknown key(s) {', '.join(unknown)}")
    missing = sorted(_REQUIRED[kind] - set(fields))
    if missing:
        raise NegseqError(f"sampler config {kind}: missing key(s) {', '.join(missing)}")

    base = Path(base_dir) if base_dir is not None else Path.cwd()
    field_delimiter = fields.get("field_delimiter", "\t")
    attr_fields = _split_attr_fields(fields.get("attr_fields"))
    item_id_field = fields["item_id_field"]

    def path(key: str) -> Path:
        return base / fields[key]

    def edges(key: str) -> EdgeTable:
        keep_weights = key == "hard_neg_edge_input_path"  # positive edges are a set: weights unused
        return EdgeTable.read(path(key), field_delimiter=field_delimiter, keep_weights=keep_weights)

    if "user_input_path" in fields:  # validated like graph-learn loads it; sampling does not use it
        ItemTable.read(path("user_input_path"), field_delimiter=field_delimiter)
    items = ItemTable.read(
        path("input_path" if kind == "negative_sampler" else "item_input_path"),
        attr_fields=attr_fields,
        attr_delimiter=fields.get("attr_delimiter", ":"),
        field_delimiter=field_delimiter,
        item_id_field=item_id_field,
    )
    common = {
        "num_sample": int(fields["num_sample"]),
        "attr_fields": attr_fields,
        "item_id_field": item_id_field,
        "num_eval_sample": fields.get("num_eval_sample"),
        "max_retries": int(fields.get("max_retries", 5)),
        "seed": int(fields.get("seed", 0)),
    }
    builders: dict[str, Callable[[], _Sampler]] = {
        "negative_sampler": lambda: NegativeSampler(
            items, user_id_field=fields.get("user_id_field"), **common
        ),
        "negative_sampler_v2": lambda: NegativeSamplerV2(
            items,
            edges("pos_edge_input_path"),
            user_id_field=fields["user_id_field"],
            weighted=bool(fields.get("weighted", False)),
            **common,
        ),
        "hard_negative_sampler": lambda: HardNegativeSampler(
            items,
            edges("hard_neg_edge_input_path"),
            num_hard_sample=int(fields["num_hard_sample"]),
            user_id_field=fields["user_id_field"],
            **common,
        ),
        "hard_negative_sampler_v2": lambda: HardNegativeSamplerV2(
            items,
            edges("pos_edge_input_path"),
            edges("hard_neg_edge_input_path"),
            num_hard_sample=int(fields["num_hard_sample"]),
            user_id_field=fields["user_id_field"],
            weighted=bool(fields.get("weighted", False)),
            **common,
        ),
    }
    return builders[kind]()
