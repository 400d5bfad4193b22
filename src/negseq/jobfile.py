"""TOML job files, shared by `negseq sample`, `negseq serve` and `negseq run`: read once, and
every table checked for unknown keys, which are errors that name them."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any

from negseq.errors import NegseqError


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise NegseqError(f"{path}: job file not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise NegseqError(f"{path}: not valid TOML: {exc}") from exc


def checked_table(job: Mapping[str, Any], name: str, keys: Set[str], source: Path) -> dict[str, Any]:
    """The `[name]` table of a job file (empty when absent); a key outside `keys` is an error."""
    value = job.get(name, {})
    if not isinstance(value, dict):
        raise NegseqError(f"{source}: [{name}] must be a table")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise NegseqError(
            f"{source}: [{name}] unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(keys))}"
        )
    return value
