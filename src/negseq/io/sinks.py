"""Sampled outputs: one file a batch plus a manifest, written so that nothing is lost or corrupted.

Layout of a finished output folder:
- `part-{batch_index:06d}.parquet` (or `.arrow`), one a sampled batch; its key-value metadata
  (`negseq.batch`) holds the batch key, the rows read and the sampler's counts;
- `_manifest.parquet` (or `.arrow`): a file of zero rows whose Arrow schema is the parts' schema,
  exactly, and whose key-value metadata (`negseq.manifest`) is the manifest as JSON. Being a
  Parquet file of the same schema, it lets Polars (`scan_parquet('dir/')`), DuckDB
  (`read_parquet('dir/*.parquet')`) and pyarrow.dataset open the folder unchanged.
  The manifest: `negseq_version`, `format`, `rows_in`, `rows_out`, `num_files`, `files` (name,
  batch_index, rows), `schema` (text) and `arrow_schema` (the IPC-serialized schema, base64),
  `sampler_stats`, and what the run describes (`BatchWork.describe`): `sampler` (type and
  config), `num_sample`, `num_hard_sample`, `layout`, `neg_per_pos`, `seq_delim`, `seed`,
  `epoch`, `training`, `batch_size`, `input`, `candidate_column`, `attribute_columns` and the
  `config_hash` of those.

Safety (DESIGN §9):
- `SampledSink.create` checks before anything is written: the folder must be new, empty, or hold
  only what an earlier negseq run wrote there (files named by its manifests, its staging
  folders); it must not overlap the input.
- Parts are written into a staging folder inside the output (`.negseq-staging-<run>`), each to a
  temporary name then renamed, so a retried task rewrites the same name: exactly once.
- `finish` writes the complete manifest into the staging folder, then swaps: the previous manifest
  moves into the staging folder, the new parts move up, the previous run's parts the new one does
  not replace are removed, the new manifest moves up last. A run that fails before the swap leaves
  the previous output as it was; one cut during the swap leaves a folder without a manifest whose
  every file is still named by a manifest in the staging folder, so the next run can prove them
  negseq's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

import negseq
from negseq.candidates import SampledBatch
from negseq.errors import NegseqError
from negseq.io.sources import resolve_location
from negseq.sampler.exclusion import json_stats, total_stats

OUTPUT_FORMATS = {"parquet": "parquet", "ipc": "arrow"}
MANIFEST_STEM = "_manifest"
PREVIOUS_MANIFEST_STEM = "_previous_manifest"
STAGING_PREFIX = ".negseq-staging-"
PART_KEY = b"negseq.batch"
MANIFEST_KEY = b"negseq.manifest"
_STAGED_MANIFESTS = (MANIFEST_STEM, PREVIOUS_MANIFEST_STEM)
PART_RE = re.compile(r"^part-(\d{6,})\.(parquet|arrow)$")
_TMP_RE = re.compile(r"^\.part-\d{6,}\.(parquet|arrow)\.tmp-[0-9a-f]+$")


def part_name(batch_index: int, format: str = "parquet") -> str:
    return f"part-{batch_index:06d}.{_extension(format)}"


def _extension(format: str) -> str:
    if format not in OUTPUT_FORMATS:
        raise NegseqError(f"unknown output format {format!r} (parquet, ipc)")
    return OUTPUT_FORMATS[format]


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of a job config (keys sorted), to tell runs apart."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary-encoding: not id lists or candidate strings, whose values are
    nearly all distinct (encoding them costs a third of the write time and saves nothing)."""
    skip = (pa.types.is_list, pa.types.is_large_list, pa.types.is_string, pa.types.is_large_string)
    return [f.name for f in schema if not any(test(f.type) for test in skip)]


def _write_table(fs: pafs.FileSystem, path: str, table: pa.Table, format: str) -> None:
    with fs.open_output_stream(path) as sink:
        if format == "parquet":
            pq.write_table(table, sink, use_dictionary=_dictionary_columns(table.schema))
        else:
            with ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)


def _read_schema(fs: pafs.FileSystem, path: str) -> tuple[pa.Schema, int]:
    """(Arrow schema with its metadata, rows) of a part or manifest file, from its footer."""
    with fs.open_input_file(path) as handle:
        if path.endswith(".parquet"):
            metadata = pq.ParquetFile(handle).metadata
            return metadata.schema.to_arrow_schema(), metadata.num_rows
        reader = ipc.open_file(handle)
        return reader.schema, sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


def _entries(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    return fs.get_file_info(pafs.FileSelector(folder, recursive=False, allow_not_found=True))


def _manifest_in(fs: pafs.FileSystem, folder: str, stem: str = MANIFEST_STEM) -> dict[str, Any] | None:
    """The manifest `stem` in `folder` (None when there is none)."""
    for ext in OUTPUT_FORMATS.values():
        path = f"{folder}/{stem}.{ext}"
        if fs.get_file_info(path).type == pafs.FileType.File:
            schema, _ = _read_schema(fs, path)
            text = (schema.metadata or {}).get(MANIFEST_KEY)
            if text is None:
                raise NegseqError(f"{path}: not a negseq manifest (no {MANIFEST_KEY.decode()} metadata)")
            manifest = json.loads(text)
            manifest["_path"] = path
            return manifest
    return None


def _named_by(manifest: Mapping[str, Any] | None) -> set[str]:
    return {f["name"] for f in manifest["files"]} if manifest else set()


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


@dataclass(frozen=True)
class SampledSink:
    """One run's sampled-output folder: `create` (checks), `write` (any thread or actor),
    `finish` (the driver: manifest, then swap) or `abort`."""

    out: str
    filesystem: pafs.FileSystem
    format: str
    staging: str
    label: str
    made_folder: bool = False  # `create` made `out`: `abort` removes it again while it is empty

    @classmethod
    def create(
        cls,
        spec: str,
        *,
        format: str = "parquet",
        inputs: Iterable[str] = (),
        base_dir: Any = None,
    ) -> SampledSink:
        """Check the folder `spec` names, then make this run's staging folder in it.

        `inputs` are the input's paths on the same filesystem (files or folders): an output
        folder equal to one, inside one, or holding one is refused."""
        _extension(format)
        fs, out = resolve_location(spec, base_dir)
        out = out.rstrip("/")
        for path in inputs:
            if _inside(out, path) or _inside(path, out):
                raise NegseqError(
                    f"{spec}: the output folder overlaps the input {path}; write outputs elsewhere"
                )
        info = fs.get_file_info(out)
        if info.type == pafs.FileType.File:
            raise NegseqError(f"{spec}: is a file; the output must be a folder")
        if info.type == pafs.FileType.Directory:
            foreign = sorted(_foreign_entries(fs, out))
            if foreign:
                shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
                raise NegseqError(
                    f"{spec}: the folder holds files negseq did not write ({shown}); negseq only "
                    "replaces its own outputs: choose a new or empty folder"
                )
        staging = f"{out}/{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        fs.create_dir(staging, recursive=True)
        return cls(out, fs, format, staging, str(spec), info.type == pafs.FileType.NotFound)

    def write(self, sampled: SampledBatch) -> dict[str, Any]:
        """Write one batch's part (its `to_arrow()`) into the staging folder; returns its summary."""
        table = pa.Table.from_batches([sampled.to_arrow()])
        summary = {
            "seed": sampled.key.seed,
            "epoch": sampled.key.epoch,
            "batch_index": sampled.key.batch_index,
            "rows_in": sampled.num_rows,
            "rows_out": table.num_rows,
            "stats": json_stats(sampled.stats),
        }
        table = table.replace_schema_metadata({PART_KEY: json.dumps(summary, sort_keys=True)})
        name = part_name(sampled.key.batch_index, self.format)
        tmp = f"{self.staging}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            _write_table(self.filesystem, tmp, table, self.format)
            self.filesystem.move(tmp, f"{self.staging}/{name}")
        finally:
            if self.filesystem.get_file_info(tmp).type != pafs.FileType.NotFound:
                self.filesystem.delete_file(tmp)
        return {"name": name, **summary}

    def written(self) -> list[dict[str, Any]]:
        """The summaries of the parts staged so far, by batch index (read from their footers)."""
        summaries = []
        for entry in _entries(self.filesystem, self.staging):
            if PART_RE.match(entry.base_name):
                schema, rows = _read_schema(self.filesystem, entry.path)
                summary = json.loads((schema.metadata or {})[PART_KEY])
                summaries.append({"name": entry.base_name, **summary, "rows_out": rows, "_schema": schema})
        return sorted(summaries, key=lambda s: s["batch_index"])

    def finish(self, *, expected_batches: Sequence[int], describe: Mapping[str, Any]) -> dict[str, Any]:
        """Check that exactly `expected_batches` were written, write the manifest (with the
        `describe` fields: seed, sampler, layout, ...), swap it in; returns the manifest."""
        summaries = self.written()
        found = [s["batch_index"] for s in summaries]
        if found != sorted(expected_batches):
            missing = sorted(set(expected_batches) - set(found))[:10]
            extra = sorted(set(found) - set(expected_batches))[:10]
            raise NegseqError(
                f"{self.label}: the run wrote batches that differ from its plan (missing {missing}, "
                f"unexpected {extra})"
            )
        schemas = [s.pop("_schema").remove_metadata() for s in summaries]
        schema = schemas[0] if schemas else pa.schema([])
        for summary, other in zip(summaries, schemas, strict=True):
            if not other.equals(schema):
                raise NegseqError(
                    f"{self.label}: batch {summary['batch_index']} has columns {other}, batch "
                    f"{summaries[0]['batch_index']} has {schema}: the input's rows disagree on types"
                )
        totals = total_stats(s["stats"] for s in summaries)
        manifest = {
            "negseq_version": negseq.__version__,
            "format": self.format,
            "rows_in": sum(s["rows_in"] for s in summaries),
            "rows_out": sum(s["rows_out"] for s in summaries),
            "num_files": len(summaries),
            "files": [{k: s[k] for k in ("name", "batch_index", "rows_in", "rows_out")} for s in summaries],
            "schema": schema.to_string(show_schema_metadata=False),
            # the parts' Arrow schema, exactly: `pa.ipc.read_schema(pa.py_buffer(b64decode(...)))`
            "arrow_schema": base64.b64encode(schema.serialize().to_pybytes()).decode("ascii"),
            "sampler_stats": totals,
            **describe,
        }
        stem = f"{MANIFEST_STEM}.{_extension(self.format)}"
        body = schema.empty_table().replace_schema_metadata({MANIFEST_KEY: json.dumps(manifest)})
        _write_table(self.filesystem, f"{self.staging}/{stem}", body, self.format)
        self._swap(stem, {s["name"] for s in summaries})
        return manifest

    def _swap(self, stem: str, new_parts: set[str]) -> None:
        fs, out, staging = self.filesystem, self.out, self.staging
        stale = [
            e.path
            for e in _entries(fs, out)
            if e.type == pafs.FileType.Directory
            and e.base_name.startswith(STAGING_PREFIX)
            and e.path != staging
        ]
        # what earlier runs wrote: the finished one's parts, and those of a swap that was cut short
        earlier = set().union(*(_named_by(_manifest_in(fs, d, m)) for d in stale for m in _STAGED_MANIFESTS))
        previous = _manifest_in(fs, out)
        if previous is not None:
            earlier |= _named_by(previous)
            old_ext = PurePosixPath(previous["_path"]).suffix
            fs.move(previous["_path"], f"{staging}/{PREVIOUS_MANIFEST_STEM}{old_ext}")
        for name in sorted(new_parts):
            fs.move(f"{staging}/{name}", f"{out}/{name}")
        for name in sorted(earlier - new_parts):
            if fs.get_file_info(f"{out}/{name}").type == pafs.FileType.File:
                fs.delete_file(f"{out}/{name}")
        fs.move(f"{staging}/{stem}", f"{out}/{stem}")
        for folder in [staging, *stale]:
            fs.delete_dir(folder)

    def abort(self) -> None:
        """Remove this run's staging folder (and the output folder, when this run made it and it
        holds nothing else); the previous output stays as it was."""
        if self.filesystem.get_file_info(self.staging).type == pafs.FileType.Directory:
            self.filesystem.delete_dir(self.staging)
        if self.made_folder and not _entries(self.filesystem, self.out):
            self.filesystem.delete_dir(self.out)


def _foreign_entries(fs: pafs.FileSystem, out: str) -> list[str]:
    """Names in `out` that no negseq manifest there (top level or staged) accounts for."""
    ours: set[str] = set()
    entries = _entries(fs, out)
    for entry in entries:
        if entry.type == pafs.FileType.Directory and entry.base_name.startswith(STAGING_PREFIX):
            ours.add(entry.base_name)
            for stem in _STAGED_MANIFESTS:
                ours |= _named_by(_manifest_in(fs, entry.path, stem))
    top = _manifest_in(fs, out)
    if top is not None:
        ours |= _named_by(top) | {PurePosixPath(top["_path"]).name}
    return [e.base_name for e in entries if e.base_name not in ours]


def foreign_entries(spec: str, base_dir: Any = None) -> list[str]:
    """Names in the output folder `spec` that negseq did not write (none when it does not exist)."""
    fs, out = open_output(spec, base_dir)
    if fs.get_file_info(out).type != pafs.FileType.Directory:
        return []
    return sorted(_foreign_entries(fs, out))


def open_output(spec: str, base_dir: Any = None) -> tuple[pafs.FileSystem, str]:
    fs, out = resolve_location(spec, base_dir)
    return fs, out.rstrip("/")


def read_manifest(spec: str, base_dir: Any = None) -> dict[str, Any]:
    """The manifest of a finished output folder; an unfinished one is an error naming why."""
    fs, out = open_output(spec, base_dir)
    manifest = _manifest_in(fs, out)
    if manifest is None:
        staged = [e.base_name for e in _entries(fs, out) if e.base_name.startswith(STAGING_PREFIX)]
        why = (
            f"a run is in progress or was cut short (staging folder {staged[0]})"
            if staged
            else "the run did not finish, or this is not a negseq output folder"
        )
        raise NegseqError(f"{spec}: no {MANIFEST_STEM}.parquet or {MANIFEST_STEM}.arrow: {why}")
    manifest.pop("_path")
    return manifest


def verify_outputs(spec: str, base_dir: Any = None) -> list[str]:
    """Problems with a finished output folder against its manifest (empty list: consistent)."""
    fs, out = open_output(spec, base_dir)
    manifest = read_manifest(spec, base_dir)
    problems = []
    for entry in manifest["files"]:
        path = f"{out}/{entry['name']}"
        if fs.get_file_info(path).type != pafs.FileType.File:
            problems.append(f"{entry['name']}: listed in the manifest but missing")
            continue
        _, rows = _read_schema(fs, path)
        if rows != entry["rows_out"]:
            problems.append(f"{entry['name']}: {rows} rows, manifest says {entry['rows_out']}")
    listed = _named_by(manifest)
    for entry in _entries(fs, out):
        if PART_RE.match(entry.base_name) and entry.base_name not in listed:
            problems.append(f"{entry.base_name}: not listed in the manifest")
        if entry.base_name.startswith(STAGING_PREFIX) or _TMP_RE.match(entry.base_name):
            problems.append(f"{entry.base_name}: left over from an unfinished run")
    total = sum(f["rows_out"] for f in manifest["files"])
    if total != manifest["rows_out"]:
        problems.append(f"manifest rows_out {manifest['rows_out']} != sum over files {total}")
    return problems
