"""`negseq import-config`: a TorchEasyRec pipeline config -> a `negseq sample` job file.

What carries over: the sampler message (one of the four negseq has, its fields 1:1, paths
resolved as TorchEasyRec resolves them, against the folder the command runs in), the batch size,
the input (`train_input_path`; `eval_input_path` as the command that samples it), the dataset
type (Parquet or CSV with its delimiter and column names), and for a candidate sequence (the
sampler's `item_id_field` is a grouped sequence sub-feature, as in HSTU) its `sequence_delim`;
the sequences' `sequence_length`s are reported, not written. The layout is TorchEasyRec's:
`suffix`, and so is the exclusion of the samplers that have the key: `exclude = "batch"`
(graph-learn's). Every other field present in the config is reported, named, with why it cannot
be carried over (and so is a required sampler field that is absent: protobuf's text parser lets
it be). What TorchEasyRec's own protos would refuse (a syntax error, an unknown sampler field, a
value of the wrong type) is an error naming file, line and field. The sampler field lists here
are TorchEasyRec's alone: negseq's own keys (seed, max_retries, ...) cannot appear in a pipeline
config.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negseq.errors import NegseqError
from negseq.textproto import EnumName, Field, Message, Scalar, parse_file

_STR, _UINT, _STRS = "string", "uint32", "repeated string"
_COMMON = {
    "num_sample": _UINT,
    "attr_fields": _STRS,
    "item_id_field": _STR,
    "attr_delimiter": _STR,
    "num_eval_sample": _UINT,
    "field_delimiter": _STR,
}
_GRAPH = {"user_input_path": _STR, "item_input_path": _STR, "user_id_field": _STR}
# tzrec/protos/sampler.proto: the fields of the four sampler messages negseq has, with types.
SAMPLER_MESSAGES: dict[str, dict[str, str]] = {
    "negative_sampler": {"input_path": _STR, **_COMMON, "item_id_delim": _STR},
    "negative_sampler_v2": {**_GRAPH, "pos_edge_input_path": _STR, **_COMMON},
    "hard_negative_sampler": {
        **_GRAPH,
        "hard_neg_edge_input_path": _STR,
        "num_hard_sample": _UINT,
        **_COMMON,
    },
    "hard_negative_sampler_v2": {
        **_GRAPH,
        "pos_edge_input_path": _STR,
        "hard_neg_edge_input_path": _STR,
        "num_hard_sample": _UINT,
        **_COMMON,
    },
}
_REQUIRED = {
    "negative_sampler": {"input_path", "num_sample", "item_id_field"},
    "negative_sampler_v2": {
        "user_input_path",
        "item_input_path",
        "pos_edge_input_path",
        "num_sample",
        "item_id_field",
        "user_id_field",
    },
    "hard_negative_sampler": {
        "user_input_path",
        "item_input_path",
        "hard_neg_edge_input_path",
        "num_sample",
        "num_hard_sample",
        "item_id_field",
        "user_id_field",
    },
    "hard_negative_sampler_v2": {
        "user_input_path",
        "item_input_path",
        "pos_edge_input_path",
        "hard_neg_edge_input_path",
        "num_sample",
        "num_hard_sample",
        "item_id_field",
        "user_id_field",
    },
}
_PATH_FIELDS = {
    "input_path",
    "user_input_path",
    "item_input_path",
    "pos_edge_input_path",
    "hard_neg_edge_input_path",
}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PYARROW_SCHEMES = frozenset(
    {"file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"}
)  # FileSystem.from_uri

_NOT_TRAINING = "negseq sample writes candidate sequences; it does not train, evaluate or export a model"
_FG = (
    "feature generation (bucketing, hashing, embeddings) is TorchEasyRec's; "
    "negseq samples on the raw id column"
)
# Why a field of EasyRecConfig / DataConfig cannot be carried over (the others: _GENERIC).
_REASONS = {
    "model_dir": "negseq sample writes its outputs to [output] dir, set to 'sampled' here",
    "train_config": _NOT_TRAINING,
    "eval_config": _NOT_TRAINING,
    "export_config": _NOT_TRAINING,
    "model_config": _NOT_TRAINING,
    "label_fields": "labels are the trainer's; negseq sample passes every input column through unchanged",
    "num_workers": "TorchEasyRec's DataLoader workers; negseq's [run] workers (default 2) sizes its "
    "sampling pool: set it for this machine",
    "pin_memory": "a DataLoader setting of TorchEasyRec's trainer",
    "fg_mode": _FG,
    "fg_encoded": _FG,
    "fg_encoded_multival_sep": _FG,
    "fg_threads": _FG,
    "eval_batch_size": "negseq sample has one [candidates] batch_size; set it when sampling the eval input",
    "drop_remainder": "negseq never drops rows: the last, smaller batch is sampled too",
    "shuffle": "negseq sample keeps the input's order (outputs are keyed by batch index, for exactly-once)",
    "shuffle_buffer_size": "negseq sample keeps the input's order (outputs are keyed by batch index)",
    "sample_mask_prob": "masking samples is the trainer's",
    "negative_sample_mask_prob": "masking sampled negatives is the trainer's",
    "force_base_data_group": "a TorchEasyRec batching detail of its model inputs",
    "sample_weight_fields": "sample weights are the trainer's; the column passes through unchanged",
    "is_orderby_partition": "ODPS tables: negseq reads local files",
    "odps_data_quota_name": "ODPS tables: negseq reads local files",
    "odps_data_compression": "ODPS tables: negseq reads local files",
    "in_order": "negseq's outputs are always in input order",
    "sample_cost_field": "cost-based batching is TorchEasyRec's; negseq batches by row count",
    "batch_cost_size": "cost-based batching is TorchEasyRec's; negseq batches by row count",
    "tdm_sampler": "TDMSampler (tree-based sampling) is not one of negseq's four samplers",
}
_GENERIC = "no negseq counterpart"
_DATASET_FORMATS = {"ParquetDataset": "parquet", "CsvDataset": "csv"}
_CSV_FIELDS = ("delimiter", "with_header", "input_fields", "input_fields_str")


@dataclass
class Imported:
    """The job file's tables (in order) and what could not be carried over: (field, why)."""

    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    comments: dict[tuple[str, str], str] = field(default_factory=dict)
    not_carried: list[tuple[str, str]] = field(default_factory=list)
    eval_input: str | None = None

    def drop(self, name: str, why: str) -> None:
        self.not_carried.append((name, why))


class _Reader:
    """Typed access to a parsed config, every error naming file, line and field."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def error(self, node: Field | Message, message: str) -> NegseqError:
        return NegseqError(f"{self.source}:{node.line}: {message}")

    def one(self, message: Message, name: str, where: str) -> Field | None:
        fields = message.all(name)
        if len(fields) > 1:
            raise self.error(
                fields[1], f"{where}{name} is set {len(fields)} times; it is not a repeated field"
            )
        return fields[0] if fields else None

    def message(self, message: Message, name: str, where: str) -> Message | None:
        found = self.one(message, name, where)
        if found is None:
            return None
        if not isinstance(found.value, Message):
            raise self.error(found, f"{where}{name} must be a message {{ ... }}, got {found.value!r}")
        return found.value

    def scalar(self, node: Field, kind: str, where: str) -> Scalar:
        value = node.value
        if kind == _STR and isinstance(value, str) and not isinstance(value, EnumName):
            return value
        if kind == _UINT and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32:
            return value
        if kind == "bool" and isinstance(value, bool):
            return value
        if kind == "enum" and isinstance(value, EnumName):
            return str(value)
        shown = f"{value!s}" if isinstance(value, EnumName) else repr(value)
        raise self.error(node, f"{where}{node.name} must be a {kind}, got {shown}")

    def get(self, message: Message, name: str, kind: str, where: str) -> Any:
        found = self.one(message, name, where)
        return None if found is None else self.scalar(found, kind, where)


def _resolve_path(value: str, base_dir: Path, where: str, out: Imported) -> str:
    """A path as TorchEasyRec's command would open it: relative to the folder it runs in."""
    if not value:
        out.drop(where, "empty in the config: set it before sampling")
        return value
    scheme = _URL.match(value)
    if scheme and scheme.group(1).lower() not in _PYARROW_SCHEMES:
        out.drop(
            where,
            f"{scheme.group(1)}:// tables: negseq reads local files and pyarrow filesystems "
            f"({', '.join(sorted(_PYARROW_SCHEMES))}); export it to Parquet there",
        )
        return value
    if scheme:
        return value
    return str(Path(os.path.normpath(base_dir / value)))


def _sampler(reader: _Reader, data: Message, base_dir: Path, out: Imported) -> tuple[str, dict[str, Any]]:
    kinds = [name for name in data.names() if name in SAMPLER_MESSAGES or name == "tdm_sampler"]
    if not kinds:
        raise NegseqError(
            f"{reader.source}: data_config has no sampler ({', '.join(SAMPLER_MESSAGES)}): nothing to sample"
        )
    if len(kinds) > 1:
        raise NegseqError(f"{reader.source}: data_config sets {', '.join(kinds)}; they are one oneof")
    kind = kinds[0]
    node = reader.one(data, kind, "data_config.")
    assert node is not None
    if kind == "tdm_sampler":
        raise reader.error(node, f"data_config.tdm_sampler: {_REASONS['tdm_sampler']}")
    if not isinstance(node.value, Message):
        raise reader.error(node, f"data_config.{kind} must be a message {{ ... }}")
    where = f"data_config.{kind}."
    fields: dict[str, Any] = {}
    known = SAMPLER_MESSAGES[kind]
    for name in node.value.names():
        if name not in known:
            raise reader.error(
                node.value.all(name)[0],
                f"{where}{name} is not a field of TorchEasyRec's {kind} message; "
                f"its fields: {', '.join(known)}",
            )
        if known[name] == _STRS:
            fields[name] = [reader.scalar(f, _STR, where) for f in node.value.all(name)]
        else:
            fields[name] = reader.get(node.value, name, known[name], where)
    for name in sorted(_REQUIRED[kind] - set(fields)):  # protobuf's text parser lets them be absent
        out.drop(where + name, "required by TorchEasyRec's sampler.proto but absent: set it before sampling")
    for name in _PATH_FIELDS & set(fields):
        fields[name] = _resolve_path(fields[name], base_dir, where + name, out)
    return kind, {name: fields[name] for name in known if name in fields}  # the proto's order


@dataclass(frozen=True)
class _Sequence:
    name: str
    length: int | None
    delim: str
    columns: tuple[str, ...]  # the input columns it holds


def _sequences(reader: _Reader, config: Message) -> list[_Sequence]:
    """Grouped `sequence_feature`s (columns `<sequence_name>__<feature_name>`) and the older
    `sequence_*_feature`s (one column each), with their delimiter and length."""
    found = []
    for node in config.all("feature_configs"):
        if not isinstance(node.value, Message):
            raise reader.error(node, "feature_configs must be a message { ... }")
        for inner in node.value.fields:
            if not isinstance(inner.value, Message):
                continue
            spec = inner.value
            if inner.name == "sequence_feature":
                name = reader.get(spec, "sequence_name", _STR, "sequence_feature.")
                subs = []
                for sub in spec.all("features"):
                    for feature in sub.value.fields if isinstance(sub.value, Message) else []:
                        if isinstance(feature.value, Message):
                            sub_name = reader.get(feature.value, "feature_name", _STR, f"{name}.features.")
                            if sub_name:
                                subs.append(f"{name}__{sub_name}")
            elif inner.name.startswith("sequence_"):
                name = reader.get(spec, "feature_name", _STR, f"{inner.name}.")
                subs = [name] if name else []
            else:
                continue
            length = reader.get(spec, "sequence_length", _UINT, f"{name}.")
            delim = reader.get(spec, "sequence_delim", _STR, f"{name}.")
            found.append(_Sequence(str(name), length, ";" if delim is None else delim, tuple(subs)))
    return found


def _input(reader: _Reader, config: Message, data: Message, base_dir: Path, out: Imported) -> None:
    """[input]: train_input_path (one file or folder) and the dataset type's format; [candidates]
    batch_size."""
    table = out.tables.setdefault("input", {})
    path_field = reader.one(config, "train_input_path", "")
    if path_field is None:
        out.drop("train_input_path", "absent: set [input] path")
    else:
        path = str(reader.scalar(path_field, _STR, ""))
        paths = [_resolve_path(p, base_dir, "train_input_path", out) for p in path.split(",") if p]
        table["path"] = paths[0] if len(paths) == 1 else paths  # files, folders and globs as given
    eval_field = reader.one(config, "eval_input_path", "")
    if eval_field is not None:
        eval_path = str(reader.scalar(eval_field, _STR, ""))
        if eval_path:
            out.eval_input = _resolve_path(eval_path, base_dir, "eval_input_path", out)
            out.drop(
                "eval_input_path",
                "a job samples one input: sample it with the command written above [input] "
                "(negseq sample draws num_sample there too, not num_eval_sample)",
            )
    batch_size = reader.get(data, "batch_size", _UINT, "data_config.")
    candidates = out.tables.setdefault("candidates", {"layout": "suffix"})
    candidates["batch_size"] = 1024 if batch_size is None else batch_size  # TorchEasyRec's default
    dataset = reader.get(data, "dataset_type", "enum", "data_config.") or "OdpsDataset"
    fmt = _DATASET_FORMATS.get(dataset)
    if fmt is None:
        out.drop("data_config.dataset_type", f"{dataset}: negseq reads local Parquet, Arrow IPC or CSV files")
    else:
        table["format"] = fmt
    if fmt == "csv":
        table["delimiter"] = reader.get(data, "delimiter", _STR, "data_config.") or ","
        if not reader.get(data, "with_header", "bool", "data_config."):
            names = [
                reader.get(f.value, "input_name", _STR, "data_config.input_fields.")
                for f in data.all("input_fields")
                if isinstance(f.value, Message)
            ]
            text = reader.get(data, "input_fields_str", _STR, "data_config.")
            if text:
                names = [part.split(":")[0].strip() for part in text.split(";") if part.strip()]
            if names:
                table["column_names"] = names
            else:
                out.drop(
                    "data_config.with_header",
                    "a CSV without a header and no input_fields: name its columns in [input] column_names",
                )
    elif dataset in _DATASET_FORMATS:
        for name in _CSV_FIELDS:
            if data.all(name):
                out.drop(f"data_config.{name}", f"CsvDataset only; this config reads a {dataset}")


def _candidates(reader: _Reader, config: Message, sampler: dict[str, Any], out: Imported) -> None:
    """[candidates] (TorchEasyRec's suffix layout, the candidate sequence's delimiter) when
    item_id_field is in a sequence; the sequences' lengths are reported (negseq sample keeps
    whole sequences; a history's length is negseq run's [data] max_seq_len, set by the user)."""
    cand = out.tables.setdefault("candidates", {"layout": "suffix"})
    item_field = sampler["item_id_field"]
    sequences = _sequences(reader, config)
    holding = [s for s in sequences if item_field in s.columns]
    item_id_delim = sampler.get("item_id_delim")
    if not holding:  # a scalar item id (DSSM), or item_id_delim alone names the delimiter
        return
    candidate = holding[0]
    cand["seq_delim"] = candidate.delim
    if item_id_delim is not None and item_id_delim != candidate.delim:
        del sampler["item_id_delim"]
        out.drop(
            f"data_config.negative_sampler.item_id_delim {item_id_delim!r}",
            f"{candidate.name}'s sequence_delim {candidate.delim!r} is what TorchEasyRec splits "
            "the column by; it became [candidates] seq_delim",
        )
    if candidate.length is not None:
        out.drop(
            f"{candidate.name}.sequence_length",
            f"{candidate.length}: negseq keeps every candidate (the suffix layout's last row holds "
            "all num_sample negatives)",
        )
    history = [s for s in sequences if s is not candidate]
    lengths = sorted({s.length for s in history if s.length is not None})
    if len(lengths) == 1:
        names = ", ".join(s.name for s in history)
        out.drop(
            f"{names}.sequence_length",
            f"{lengths[0]}: the history `negseq run` keeps is its [data] max_seq_len; "
            "`negseq sample` keeps histories whole",
        )
    elif len(lengths) > 1:
        out.drop(
            "feature_configs.sequence_length",
            f"history sequences of different lengths {lengths}: set [data] max_seq_len yourself",
        )


def import_pipeline_config(path: str | Path, *, base_dir: str | Path | None = None) -> Imported:
    """Read a TorchEasyRec pipeline config; relative paths resolve against `base_dir` (default:
    the current folder, where TorchEasyRec's own command would resolve them)."""
    source = Path(path)
    config = parse_file(source)
    reader = _Reader(source)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    out = Imported()
    data = reader.message(config, "data_config", "")
    if data is None:
        raise NegseqError(f"{source}: no data_config: it holds the sampler, nothing to import without it")
    _input(reader, config, data, base, out)
    kind, fields = _sampler(reader, data, base, out)
    _candidates(reader, config, fields, out)
    if kind in ("negative_sampler", "hard_negative_sampler"):  # graph-learn's exclusion, not negseq's default
        fields["exclude"] = "batch"
        out.comments[(f"sampler.{kind}", "exclude")] = (
            'graph-learn\'s: every positive of the batch (default "user")'
        )
    out.tables[f"sampler.{kind}"] = fields
    out.tables["output"] = {"dir": "sampled"}
    handled = {"train_input_path", "eval_input_path", "data_config", "feature_configs"}
    for name in config.names():
        if name not in handled:
            out.drop(name, _REASONS.get(name, _GENERIC))
    handled_data = {"batch_size", "dataset_type", *_CSV_FIELDS, kind}
    for name in data.names():
        if name not in handled_data:
            out.drop(f"data_config.{name}", _REASONS.get(name, _GENERIC))
    features = config.all("feature_configs")
    if features:
        out.drop(f"feature_configs ({len(features)} features)", _FG)
    order = ["input", f"sampler.{kind}", "candidates", "data", "output"]
    out.tables = {name: out.tables[name] for name in order if name in out.tables}
    return out


# ---- TOML ------------------------------------------------------------------------------------

_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    def escape(char: str) -> str:
        if char in _TOML_ESCAPES:
            return _TOML_ESCAPES[char]
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return f"\\u{ord(char):04x}"
        return char

    return '"' + "".join(escape(c) for c in text) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            repr(value)
            if math.isfinite(value)
            else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
        )
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def to_toml(imported: Imported, source: str | Path, version: str) -> str:
    """The job file: a header saying where it came from and what was left out, then the tables."""
    lines = [
        f"# negseq sample job imported from {source} by `negseq import-config` (negseq {version}).",
        "# Paths in the config were resolved as TorchEasyRec resolves them: against the folder",
        "# the command ran in.",
    ]
    if imported.not_carried:
        lines.append(f"# Not carried over ({len(imported.not_carried)}):")
        lines += [f"#   {name}: {why}" for name, why in imported.not_carried]
    for table, values in imported.tables.items():
        lines.append("")
        if table == "input" and imported.eval_input:
            lines.append(
                f"# eval input: negseq sample <this file> --input {imported.eval_input} --out sampled_eval"
            )
        lines.append(f"[{table}]")
        for key, value in values.items():
            comment = imported.comments.get((table, key))
            lines.append(f"{key} = {_toml_value(value)}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines) + "\n"
