"""Where data lies: a path spec -> (pyarrow filesystem, sorted file list), for every reader and writer.

A spec is a file, a folder (its data files, at any depth), a glob (`*`, `?`, `[...]`, `**` for any
depth), a list of these, or any of them as a URI on a pyarrow filesystem (`s3://`, `gs://`,
`hdfs://`, `file://`; opened with `pyarrow.fs.FileSystem.from_uri`, so an S3 URI may carry
`?endpoint_override=...&scheme=http&region=...` and credentials come from the usual AWS
variables). Sources (`negseq.io.sources`), the samplers' tables (`negseq.sampler.tables`) and the
sampled-output sinks (`negseq.io.sinks`) all resolve through here, so a spec means the same
everywhere. The file list is sorted: what a reader plans from it does not depend on the order the
filesystem lists files in. This module needs only pyarrow: every layer may import it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from negseq.errors import NegseqError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
GLOB_CHARS = frozenset("*?[")
# Suffixes of the files a folder contributes (a file named on its own, or by a glob, may have any).
DATA_SUFFIXES = frozenset({".parquet", ".pq", ".arrow", ".ipc", ".feather", ".csv", ".tsv", ".data", ".txt"})

Spec = str | Path | Sequence[str | Path]


def is_uri(spec: str | Path) -> bool:
    return bool(_URI.match(str(spec)))


def resolve_location(spec: str | Path, base_dir: str | Path | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) of a local path (relative ones against `base_dir`) or a URI."""
    text = str(spec)
    if is_uri(text):
        try:
            return pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
            raise NegseqError(f"{text}: cannot open this URI's filesystem: {exc}") from exc
    path = Path(text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return pafs.LocalFileSystem(), str(path.absolute())


def child(location: str | Path, name: str) -> str:
    """`name` inside the folder `location`: a local path joined as a path, a URI's path extended
    (its query, such as an S3 endpoint, kept)."""
    text = str(location)
    if not is_uri(text):
        return os.path.join(text, name)
    parts = urlsplit(text)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}"))


def display(filesystem: pafs.FileSystem, path: str) -> str:
    """A path as a user wrote it: local paths as they are, others as `<scheme>://<path>`."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        return path
    return f"{filesystem.type_name}://{path}"


def is_local(filesystem: pafs.FileSystem) -> bool:
    return isinstance(filesystem, pafs.LocalFileSystem)


def has_glob(path: str) -> bool:
    return any(c in GLOB_CHARS for c in path)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob (`*`, `?`, `[...]`, and `**` for any depth) as a regex over '/'-separated paths."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise NegseqError(f"{pattern}: unclosed '[' in the glob")
            out.append("[" + pattern[i + 1 : end].replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def glob_root(path: str) -> str:
    """The folder a glob searches (the path itself when it is no glob)."""
    parts = PurePosixPath(path).parts
    fixed = [i for i, part in enumerate(parts) if has_glob(part)]
    if not fixed:
        return path
    return str(PurePosixPath(*parts[: fixed[0]])) if fixed[0] else "/"


def _hidden(path: str) -> bool:
    """Names starting with '.' or '_' are bookkeeping (`_SUCCESS`, `.crc`, negseq's staging), not data."""
    return PurePosixPath(path).name.startswith((".", "_"))


def is_data_file(path: str) -> bool:
    """Whether a folder's file is data: not hidden, and a suffix of `DATA_SUFFIXES`."""
    return not _hidden(path) and PurePosixPath(path).suffix.lower() in DATA_SUFFIXES


def _expand(fs: pafs.FileSystem, path: str, spec: str, data_file: Callable[[str], bool]) -> list[str]:
    """The files one spec entry names: itself, a folder's data files, or a glob's matches."""
    try:
        if has_glob(path):
            root = glob_root(path)
            if root == "/" and not is_local(fs):
                raise NegseqError(f"{spec}: a glob in the bucket or host name is not supported")
            regex = glob_regex(path)
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
            files = [i.path for i in infos if i.type == pafs.FileType.File and regex.match(i.path)]
            files = [f for f in files if not _hidden(f)]
            if not files:
                raise NegseqError(f"{spec}: the glob matches no file")
            return files
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise NegseqError(f"{spec}: no such file or folder")
        if info.type == pafs.FileType.File:
            return [path]
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as exc:
        raise NegseqError(f"{spec}: cannot list: {exc}") from exc
    files = [i.path for i in infos if i.type == pafs.FileType.File and data_file(i.path)]
    if not files:
        raise NegseqError(f"{spec}: folder holds no .parquet, .arrow or .csv files")
    return files


@dataclass(frozen=True)
class FileList:
    """The files a spec names, on one filesystem, sorted; `roots` are what the spec names (files,
    folders, a glob's fixed prefix: what an output must not overlap)."""

    spec: str
    filesystem: pafs.FileSystem
    paths: tuple[str, ...]
    roots: tuple[str, ...]

    def display(self, path: str) -> str:
        return display(self.filesystem, path)

    @property
    def single_local_file(self) -> str | None:
        """The path, when the spec names exactly one local file (readers keep their fast path)."""
        return self.paths[0] if len(self.paths) == 1 and is_local(self.filesystem) else None


def spec_label(spec: Spec) -> str:
    """How errors name a spec: itself, or its entries joined by ', '."""
    return str(spec) if isinstance(spec, str | Path) else ", ".join(map(str, spec))


def list_files(
    spec: Spec, *, base_dir: str | Path | None = None, data_file: Callable[[str], bool] = is_data_file
) -> FileList:
    """Resolve `spec` (see the module docstring) to its files; `data_file` says which files of a
    folder count. Nothing matching, a missing path or entries on different filesystems are
    errors naming the spec."""
    entries = [spec] if isinstance(spec, str | Path) else list(spec)
    label = spec_label(spec)
    if not entries:
        raise NegseqError("the input names no file")
    filesystem: pafs.FileSystem | None = None
    paths: set[str] = set()
    roots: list[str] = []
    for entry in entries:
        fs, path = resolve_location(entry, base_dir)
        if filesystem is not None and not fs.equals(filesystem):
            raise NegseqError(f"{label}: the inputs lie on different filesystems ({entry} differs)")
        filesystem = filesystem or fs
        paths.update(_expand(filesystem, path, str(entry), data_file))
        roots.append(glob_root(path))
    assert filesystem is not None
    return FileList(label, filesystem, tuple(sorted(paths)), tuple(roots))


def one_format(files: FileList, format_of: Callable[[str], str]) -> str:
    """The one format of every file (`format_of` a path); several are an error naming them."""
    formats: dict[str, str] = {}
    for path in files.paths:
        formats.setdefault(format_of(path), path)
    if len(formats) > 1:
        shown = ", ".join(f"{fmt} ({files.display(path)})" for fmt, path in sorted(formats.items()))
        raise NegseqError(
            f"{files.spec}: the input holds files of several formats ({shown}); name one with a "
            "glob such as '*.parquet' or set the format"
        )
    return next(iter(formats))


def read_first_line(filesystem: pafs.FileSystem, path: str, limit: int = 1 << 20) -> str:
    """The first line of a text file (without its line end), reading at most `limit` bytes."""
    with filesystem.open_input_stream(path) as stream:
        data = b""
        while b"\n" not in data and len(data) < limit:
            chunk = stream.read(1 << 16)
            if not chunk:
                break
            data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8").rstrip("\r")


def exists(spec: str | Path, base_dir: str | Path | None = None) -> bool:
    """Whether a path or URI names a file or a folder."""
    fs, path = resolve_location(spec, base_dir)
    return fs.get_file_info(path).type != pafs.FileType.NotFound
