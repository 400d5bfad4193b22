"""Folders `negseq run` and `negseq prepare` write into, claimed only when negseq can prove it
owns what is there (DESIGN §9): they never overwrite or delete a file negseq did not write.

A claimed folder holds `_negseq_run.json`, written before anything else: the files negseq writes
there (relative paths) and its sink folders (`samples/`, whose own manifest proves what is
negseq's, `negseq.io.sinks`). A folder may be claimed when it does not exist, is empty, or holds
only what records in it account for: files a record lists (a record in a subfolder, such as the
one `negseq prepare` leaves in `prepared/`, counts for that subfolder), sampled-output folders
whose manifests account for every file in them (`samples/`, or `negseq sample`'s folder inside a
prepared one), and negseq's temporary folders (`.negseq-ray-train-*`, `.negseq-prepare-*`, which
the run that made them removes).

A prepared table is one file (`train.parquet`) or, prepared on Ray, a folder of shards
(`train.parquet/part-00000.parquet`, ...): the record names every shard, so the number of shards
is fixed before anything is written (`prepared_files`). `install_prepared` replaces the tables
of a claimed folder: only what the claim proved negseq's is removed.
Anything else is refused, named, before anything is written.

`negseq run`'s folder (`runs/<name>/` by default) holds `prepared/`, `samples/`, `export/`,
`embeddings/`, `metrics.json` and, while it trains on Ray, Ray Train's temporary folder.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import negseq
from negseq.errors import NegseqError
from negseq.io.sinks import MANIFEST_STEM, STAGING_PREFIX, foreign_entries

RECORD = "_negseq_run.json"
PREPARE_STAGING_PREFIX = ".negseq-prepare-"
TEMPORARY_PREFIXES = (".negseq-ray-train-", PREPARE_STAGING_PREFIX, f".{RECORD}.tmp-")
PREPARED_FILES = ("train.parquet", "valid.parquet", "eval.parquet", "items.parquet")
EXPORT_FILES = (
    "export/user_tower.pt2",
    "export/item_tower.pt2",
    "export/item_ids.arrow",
    "export/towers.json",
)
EMBEDDING_FILES = ("embeddings/user_embeddings.arrow", "embeddings/item_embeddings.arrow")
SAMPLES = "samples"


def shard_name(index: int) -> str:
    """The name of a prepared table's shard `index` (`negseq.io.prepare_ray` writes them)."""
    return f"part-{index:05d}.parquet"


def prepared_files(shards: int | None) -> list[str]:
    """What a prepare writes in its folder: the four tables as files (`shards` None), or as
    folders of `shards` shards each."""
    if shards is None:
        return list(PREPARED_FILES)
    return [f"{table}/{shard_name(i)}" for table in PREPARED_FILES for i in range(shards)]


def install_prepared(folder: str | Path, staged: str | Path | None = None) -> None:
    """Remove the prepared tables in `folder` (files, or shard folders) that a layout about to be
    written would leave behind or collide with, then move `staged`'s tables in (a rename on the
    same filesystem) and remove `staged`. Call it right after claiming `folder`: the claim
    proved every file there negseq's, and only plain files in a table's folder are removed."""
    folder = Path(folder)
    for table in PREPARED_FILES:
        target = folder / table
        replaced = staged is not None and (Path(staged) / table).exists()
        if target.is_dir() and not target.is_symlink() and (staged is None or replaced):
            for entry in target.iterdir():
                if entry.is_file() and not entry.is_symlink():
                    entry.unlink()
            target.rmdir()  # anything else in it (a folder) stays, and this fails: nothing is lost
        elif target.is_file() and replaced:
            target.unlink()
        if replaced:
            os.replace(Path(staged) / table, target)  # type: ignore[arg-type]
    if staged is not None:
        for entry in Path(staged).iterdir():
            raise NegseqError(f"{staged}: holds {entry.name} after the prepared tables moved out")
        Path(staged).rmdir()


def _read_record(folder: Path) -> dict[str, Any] | None:
    path = folder / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        files, sinks = record["files"], record.get("sinks", [])
        if not all(isinstance(f, str) for f in [*files, *sinks]):
            raise TypeError("names must be strings")
    except (ValueError, KeyError, TypeError) as exc:
        raise NegseqError(
            f"{path}: not a negseq run record ({exc}); remove it or choose a new folder"
        ) from None
    return record


def _is_sink(folder: Path) -> bool:
    """Whether `folder` is a sampled-output folder (`negseq sample`'s, say, inside a prepared
    folder): its manifest or staging folder proves what in it is negseq's."""
    return any(p.name.startswith((f"{MANIFEST_STEM}.", STAGING_PREFIX)) for p in folder.iterdir())


def _foreign(folder: Path) -> list[str]:
    """Paths under `folder` (relative) that no negseq record there accounts for."""
    ours: set[str] = set()  # files, relative to `folder`
    sinks: set[str] = set()
    for record_path in sorted(folder.rglob(RECORD)):
        base = record_path.parent.relative_to(folder)
        record = _read_record(record_path.parent)
        assert record is not None
        ours.add(str(base / RECORD))
        ours.update(str(base / name) for name in record["files"])
        sinks.update(str(base / name) for name in record.get("sinks", []))
    found: list[str] = []

    def walk(directory: Path) -> None:
        for entry in sorted(directory.iterdir()):
            relative = str(entry.relative_to(folder))
            if entry.is_symlink():
                found.append(relative)  # writing through a link could reach anything
            elif entry.name.startswith(TEMPORARY_PREFIXES):
                continue  # negseq's own temporary folder or record; never removed here
            elif entry.is_dir() and (relative in sinks or _is_sink(entry)):
                found.extend(f"{relative}/{name}" for name in foreign_entries(str(entry)))
            elif entry.is_dir():
                if any(name.startswith(relative + "/") for name in ours | sinks):
                    walk(entry)
                else:
                    found.append(relative + "/")
            elif relative not in ours:
                found.append(relative)

    walk(folder)
    return found


def claim_folder(folder: str | Path, files: Sequence[str], sinks: Sequence[str] = (), *, what: str) -> Path:
    """Check that negseq may write `files` and `sinks` (paths relative to `folder`) there, then
    record them in `folder/_negseq_run.json` (with what earlier records listed). `what` names the
    folder in errors ("[output] dir")."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise NegseqError(f"{what} {path}: is a file; the output must be a folder")
    if path.is_dir():
        foreign = _foreign(path)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise NegseqError(
                f"{what} {path}: the folder holds what negseq did not write ({shown}); negseq only "
                "replaces its own outputs: choose a new or empty folder"
            )
    previous = _read_record(path) if path.is_dir() else None
    record = {
        "negseq_version": negseq.__version__,
        "files": sorted(set(previous["files"] if previous else ()) | set(files)),
        "sinks": sorted(set(previous.get("sinks", []) if previous else ()) | set(sinks)),
    }
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{RECORD}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path / RECORD)
    return path


def _under(path: Path, folder: Path) -> str | None:
    """`path` relative to `folder` ("." for the folder itself), or None when it lies outside."""
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return None


def claim_run_folder(
    out: str | Path, prepare_dir: str | Path | None, prepared: Sequence[str] = PREPARED_FILES
) -> None:
    """Claim `negseq run`'s folder `out` (and `prepare_dir`, default `out/prepared`, when it lies
    elsewhere) before the run writes anything: what it holds must be negseq's, `samples/` included
    (see the module docstring). `prepared`: the files the prepare writes (`prepared_files`)."""
    out = Path(out)
    prepared_dir = out / "prepared" if prepare_dir is None else Path(prepare_dir)
    inside = _under(prepared_dir, out)
    files: list[str] = ["metrics.json", *EXPORT_FILES, *EMBEDDING_FILES]
    if inside is None:
        if prepared:
            claim_folder(prepared_dir, prepared, what="[prepare] dir")
    else:
        files += [str(Path(inside) / name) for name in prepared]
    claim_folder(out, files, [SAMPLES], what="[output] dir")
