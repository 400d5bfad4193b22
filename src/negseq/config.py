"""The one typed config of every negseq command (DESIGN §8): each section's keys, types, ranges,
defaults and meanings live here, once, so a key means the same with the same default in
`negseq run`, `sample`, `prepare` and `serve`.

A command calls `load_config(job, command=..., flags=...)` with its job file (a path, or the dict
TOML gave) and its command-line flags, and gets back a frozen `JobConfig`. Every value is checked
before anything runs, strictly: a bool, a float or a string where an integer belongs is an error,
never a cast (`true`, `1.5`, `"10"`, `1e12` are all refused); an integer where a float belongs is
fine; enums, ranges and list items are checked; an unknown table or key is an error that names
it, lists the known ones and suggests a close one. Flags go through the same checks. Every error
is a `NegseqError` naming the file (or flag), the table, the key, what was expected and what was
got, e.g. `job.toml: [candidates] batch_size: expected an integer >= 1, got true (a bool)`.
Relative paths in a job file resolve against the job file's folder, relative paths in flags
against the working directory; URIs (`s3://...`) are kept as written.

A job file may hold the tables of several commands; each command reads its own, and every table
present is checked whichever command reads the file. `negseq serve` reads `[candidates]` as the
defaults of candidates-mode requests, which may name another layout.

Renames and default changes against the commands before this module (one name, one default):

- `negseq sample`: `[input] batch_size` -> `[candidates] batch_size` (as `negseq run`), and its
  default 4096 -> 128 (`negseq run`'s: a batch is a sampling key and a training step);
  `[output] path` -> `[output] dir` (as `negseq run`).
- `[ray] local_workers` (`negseq run`, local executor) -> `[run] workers` (as `negseq sample`: the
  in-process executor's threads, default 2).
- `negseq prepare --job`: its `[prepare]` keys `input`, `format`, `delimiter`, `column_names`,
  `user_field`, `item_field`, `time_field`, `max_seq_len`, `min_len` -> the `[data]` keys that
  `negseq run` reads (`input` -> `[data] interactions`); `[prepare] out` -> `[prepare] dir`, whose
  default is `<[output] dir>/prepared`, the folder `negseq run` prepares into.
- Item weights: one key, `[data] item_weight_power`, default 0.75 (word2vec's unigram^0.75), for
  `negseq prepare` (which weighted by count, power 1) and `negseq run` (which weighted uniformly,
  power 0) alike.
- `[model] dropout` (the STU output dropout): 0.2 everywhere (`STUConfig` said 0.3).
- `[candidates] layout`: default "interleaved", or "suffix" with a hard sampler (hard negatives
  exist only in the suffix layout), for `negseq serve` too (which had no default layout).
- `[sampler.<type>] attr_fields`: a list of names (a comma-separated string is refused);
  `[output] format`: "parquet" or "ipc" (the alias "arrow" is refused).
- New keys: `[sampler.negative_sampler] item_id_delim` (TorchEasyRec's field 8, the same thing as
  `[candidates] seq_delim`: set one, or both equal); `exclude` on the two samplers that draw from
  the item table ("batch", TorchEasyRec's behaviour, "user" or "none"; default "user": a large
  batch's positives cover most popular items, so excluding them all leaves rare items to be
  negatives); `[ray] deterministic`;
  `[service] token_file`, `drain_timeout`, `log_level` (were flags only), `tls_cert`, `tls_key`,
  `tls_client_ca`, `insecure`, `max_concurrent`, `metrics_port`.
- `[train]` validates (`eval_every`, default every epoch), stops after `patience` (default 3)
  validations without a better `monitor` (default "NDCG@10") and keeps the best validation's
  weights; the LR warms up over `warmup_fraction` (0.05) of the steps, then decays
  (`lr_schedule`, default "cosine"; "constant" is the behaviour before these keys).
  `[data] action_field` and `[model] num_action_types` add actions to the history.
- New checks: `name` must match `[A-Za-z0-9._-]+` and not be dots only (it becomes a folder name);
  `num_sample`, `num_eval_sample`, `num_hard_sample`, `neg_per_pos` at most 2^24; `seq_delim` holds
  no digit or sign; a plaintext token off the loopback needs `insecure = true`; every table a job
  file holds is checked (`negseq sample` and `serve` ignored the tables they did not read).
- Relative paths given as flags resolve against the working directory (`negseq prepare --job`
  resolved them against the job file's folder).

`python -m negseq.config --markdown` prints the reference table that README.md carries.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from negseq.errors import NegseqError

Command = Literal["run", "sample", "serve", "prepare"]
COMMANDS: tuple[Command, ...] = ("run", "sample", "serve", "prepare")
Layout = Literal["interleaved", "suffix"]
SamplerKind = Literal[
    "negative_sampler", "negative_sampler_v2", "hard_negative_sampler", "hard_negative_sampler_v2"
]
SAMPLER_KINDS: tuple[SamplerKind, ...] = (
    "negative_sampler",
    "negative_sampler_v2",
    "hard_negative_sampler",
    "hard_negative_sampler_v2",
)
HARD_SAMPLERS = frozenset({"hard_negative_sampler", "hard_negative_sampler_v2"})
MAX_SAMPLES = 1 << 24  # num_sample & co.: a typo such as 1e12 can never reach an allocation
_KEY_LIMIT = (1 << 32) - 1  # epoch and batch_index share the generator's second key word
_SEED_LIMIT = (1 << 64) - 1


# ---- value checks -----------------------------------------------------------------------------


class _Bad(Exception):
    """A value a check refused: what was expected, the value, and whether its type was wrong."""

    def __init__(self, expected: str, value: object, *, wrong_type: bool = False, where: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.value = value
        self.wrong_type = wrong_type
        self.where = where  # "[2]" for a list item
        self.hint = ""


_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "a bool"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "a list"),
    (tuple, "a list"),
    (dict, "a table"),
)


def _kind(value: object) -> str:
    for typ, name in _KINDS:
        if isinstance(value, typ):
            return name
    name = type(value).__name__
    return {"datetime": "a date-time", "date": "a date", "time": "a time"}.get(name, f"a {name}")


def _show(value: object) -> str:
    """A value as TOML writes it (strings quoted), cut to a readable length."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, Mapping):
        return "a table"
    elif value is None:
        return "nothing"
    elif isinstance(value, list | tuple):
        text = json.dumps(list(value), ensure_ascii=False, default=str)
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _got(bad: _Bad) -> str:
    shown = _show(bad.value)
    if bad.wrong_type and bad.value is not None and not isinstance(bad.value, Mapping):
        shown += f" ({_kind(bad.value)})"
    return shown + bad.hint


def _num(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


class _Check:
    """What one key accepts. `check` takes a TOML value, `from_text` a flag's text."""

    type_name = ""

    def expected(self) -> str:
        raise NotImplementedError

    def allowed(self) -> str:
        """The range or the values, for the reference table ("" when the type says it all)."""
        return ""

    def check(self, value: object) -> Any:
        raise NotImplementedError

    def from_text(self, text: str) -> Any:
        return self.check(text)


@dataclass(frozen=True)
class _Int(_Check):
    low: int | None = None
    high: int | None = None  # inclusive

    type_name = "integer"

    def allowed(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{self.low} .. {self.high}"
        if self.low is not None:
            return f">= {self.low}"
        return ""

    def expected(self) -> str:
        if self.low is not None and self.high is not None:
            return f"an integer in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"an integer >= {self.low}"
        return "an integer"

    def check(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(self.expected(), value, wrong_type=True)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise _Bad(self.expected(), value)
        return value

    def from_text(self, text: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]{1,40}", text.strip()):
            raise _Bad(self.expected(), text)
        return self.check(int(text))


@dataclass(frozen=True)
class _Float(_Check):
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    type_name = "number"

    def allowed(self) -> str:
        if self.low is not None and self.high is not None:
            low, high = _num(self.low), _num(self.high)
            return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        return ""

    def expected(self) -> str:
        if self.low is not None and self.high is not None:
            return f"a number in {self.allowed()}"
        if self.low is not None:
            return f"a number {self.allowed()}"
        return "a number"

    def check(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Bad(self.expected(), value, wrong_type=True)
        try:
            number = float(value)
        except OverflowError:
            raise _Bad(self.expected(), value) from None
        if not math.isfinite(number):
            raise _Bad(self.expected(), value)
        low_ok = self.low is None or (number > self.low if self.low_open else number >= self.low)
        high_ok = self.high is None or (number < self.high if self.high_open else number <= self.high)
        if not (low_ok and high_ok):
            raise _Bad(self.expected(), value)
        return number

    def from_text(self, text: str) -> float:
        if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", text.strip()):
            raise _Bad(self.expected(), text)
        return self.check(float(text))


@dataclass(frozen=True)
class _Bool(_Check):
    type_name = "bool"

    def expected(self) -> str:
        return "true or false"

    def check(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise _Bad(self.expected(), value, wrong_type=True)
        return value

    def from_text(self, text: str) -> bool:
        if text not in ("true", "false"):
            raise _Bad(self.expected(), text)
        return text == "true"


@dataclass(frozen=True)
class _Text(_Check):
    """A string: non-empty, one character (delimiters), or matching a pattern."""

    what: str = "a non-empty string"
    allowed_text: str = "non-empty"
    one_char: bool = False
    pattern: str | None = None  # fullmatch
    escapes: bool = False  # flags: 'tab', '\t'

    type_name = "string"

    def expected(self) -> str:
        return self.what

    def allowed(self) -> str:
        return "one character" if self.one_char else self.allowed_text

    def check(self, value: object) -> str:
        if not isinstance(value, str):
            raise _Bad(self.expected(), value, wrong_type=True)
        if not value or "\x00" in value or (self.one_char and len(value) != 1):
            raise _Bad(self.expected(), value)
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise _Bad(self.expected(), value)
        return value

    def from_text(self, text: str) -> str:
        if self.escapes and text.lower() == "tab":
            text = "\t"
        elif self.escapes and "\\" in text:  # '\t' typed in a shell; other characters as they are
            try:
                text = text.encode("latin-1", "backslashreplace").decode("unicode_escape")
            except UnicodeError:
                raise _Bad(self.expected(), text) from None
        return self.check(text)


def delimiter_from_text(text: str, flag: str) -> str:
    """A one-character delimiter as a command line gives it (`tab`, `\\t` or the character)."""
    try:
        return _Text(what="a single character", one_char=True, escapes=True).from_text(text)
    except _Bad as bad:
        raise NegseqError(f"command line: {flag}: expected {bad.expected}, got {_got(bad)}") from None


def _encodable(text: str) -> bool:
    try:
        os.fsencode(text)
    except UnicodeError:
        return False
    return True


@dataclass(frozen=True)
class _Location(_Check):
    """A local path (relative ones resolve against the job file's folder) or a URI."""

    type_name = "path"

    def expected(self) -> str:
        return "a path (a non-empty string)"

    def check(self, value: object) -> str:
        if not isinstance(value, str):
            raise _Bad(self.expected(), value, wrong_type=True)
        if not value.strip() or "\x00" in value or not _encodable(value):
            raise _Bad(self.expected(), value)
        return value


@dataclass(frozen=True)
class _Locations(_Check):
    """One location or a non-empty list of them (file, folder, glob or URI each)."""

    type_name = "path or list of paths"

    def expected(self) -> str:
        return "a path or a non-empty list of paths"

    def check(self, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            return (_Location().check(value),)
        if not isinstance(value, list | tuple) or not value:
            raise _Bad(self.expected(), value, wrong_type=not isinstance(value, list | tuple))
        return tuple(_item(_Location(), item, index) for index, item in enumerate(value))


@dataclass(frozen=True)
class _Choice(_Check):
    values: tuple[str, ...]

    type_name = "string"

    def expected(self) -> str:
        return "one of " + ", ".join(json.dumps(v) for v in self.values)

    def allowed(self) -> str:
        return ", ".join(f"`{json.dumps(v)}`" for v in self.values)

    def check(self, value: object) -> str:
        if not isinstance(value, str):
            raise _Bad(self.expected(), value, wrong_type=True)
        if value not in self.values:
            bad = _Bad(self.expected(), value)
            bad.hint = _did_you_mean(value, self.values, quote=json.dumps)
            raise bad
        return value


def _item(check: _Check, value: object, index: int) -> Any:
    try:
        return check.check(value)
    except _Bad as bad:
        bad.where = f"[{index}]"
        raise


@dataclass(frozen=True)
class _List(_Check):
    item: _Check

    @property
    def type_name(self) -> str:  # type: ignore[override]
        return f"list of {self.item.type_name}s"

    def expected(self) -> str:
        return f"a non-empty list, each item {self.item.expected()}"

    def allowed(self) -> str:
        return "non-empty" + (f"; items {self.item.allowed()}" if self.item.allowed() else "")

    def check(self, value: object) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise _Bad(self.expected(), value, wrong_type=True)
        if not value:
            raise _Bad(self.expected(), value)
        return tuple(_item(self.item, v, i) for i, v in enumerate(value))

    def from_text(self, text: str) -> tuple[Any, ...]:
        parts = [part.strip() for part in text.split(",")]
        return self.check([self.item.from_text(part) for part in parts])


@dataclass(frozen=True)
class _BoolOrAuto(_Check):
    type_name = 'bool or "auto"'

    def expected(self) -> str:
        return 'true, false or "auto"'

    def check(self, value: object) -> bool | str:
        if isinstance(value, bool) or value == "auto":
            return cast(bool | str, value)
        raise _Bad(self.expected(), value, wrong_type=not isinstance(value, str))

    def from_text(self, text: str) -> bool | str:
        return text if text == "auto" else _Bool().from_text(text)


@dataclass(frozen=True)
class _Table(_Check):
    """A nested table (`[data.synthetic]`), parsed as the section class `cls`."""

    cls: type

    type_name = "table"

    def expected(self) -> str:
        return "a table"

    def check(self, value: object) -> Any:
        raise AssertionError("nested tables are parsed by _parse_table")


def _did_you_mean(name: str, known: Sequence[str], *, quote: Any = str) -> str:
    """A hint naming the known name closest to `name` (case aside), if one is close."""
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {quote(by_lower[close[0]])}?)" if close else ""


# ---- keys ---------------------------------------------------------------------------------------


def _key(check: _Check, doc: str, default: Any = None, *, default_text: str | None = None) -> Any:
    """A config key: its check, its one-line meaning, its default (None: absent, see default_text)."""
    metadata = {"check": check, "doc": doc, "default_text": default_text}
    return field(default=default, metadata=metadata)


def _keys_of(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if "check" in f.metadata}


_NAME_PATTERN = r"(?!\.+$)[A-Za-z0-9._-]+"
_SEQ_DELIM = _Text(
    what="a non-empty string without digits, '+' or '-' (they would read as part of an id)",
    allowed_text="non-empty; no digits, `+`, `-`",
    pattern=r"[^0-9+\-]+",
    escapes=True,
)


def _format_key() -> Any:
    return _key(
        _Choice(values=("parquet", "ipc", "csv")),
        "file format; absent: from the file suffix",
        default_text="from the suffix",
    )


def _delimiter_key() -> Any:
    return _key(
        _Text(what="a single character", one_char=True, escapes=True),
        "CSV field delimiter (flags also take `tab` and `\\t`)",
        ",",
    )


def _column_names_key() -> Any:
    return _key(
        _List(item=_Text()),
        "column names of a CSV without a header row",
        default_text="the first row is the header",
    )


@dataclass(frozen=True)
class SyntheticConfig:
    """`[data.synthetic]`: `negseq.synthetic.generate_interactions`' arguments."""

    num_users: int = _key(_Int(1, (1 << 31) - 1), "users generated", 2000)
    num_items: int = _key(_Int(1, (1 << 31) - 1), "items in the catalogue (ids 1..num_items)", 1000)
    cluster_size: int = _key(_Int(1, (1 << 31) - 1), "consecutive item ids in one cluster (genre)", 20)
    min_len: int = _key(_Int(1, 1 << 20), "fewest interactions generated for a user", 10)
    max_len: int = _key(_Int(1, 1 << 20), "most interactions generated for a user", 60)
    p_next: float = _key(_Float(0.0, 1.0), "chance the next item is the one after the current one", 0.7)
    p_jump: float = _key(_Float(0.0, 1.0), "chance the next item is in another cluster", 0.05)
    zipf_a: float = _key(_Float(0.0), "Zipf exponent of cluster and item popularity", 1.1)
    seed: int = _key(_Int(0, _SEED_LIMIT), "seed of the generator", 0)


@dataclass(frozen=True)
class DataConfig:
    """`[data]`: the interaction log and how it becomes leave-last-out sequences."""

    interactions: tuple[str, ...] | None = _key(
        _Locations(),
        "interaction log (Parquet, Arrow IPC, CSV/TSV): a file, folder, glob or URI, or a list",
        default_text="required: this, [data.synthetic] or prepared",
    )
    synthetic: SyntheticConfig | None = _key(
        _Table(cls=SyntheticConfig),
        "a generated interaction log instead (see [data.synthetic])",
        default_text="required: this or interactions",
    )
    format: Literal["parquet", "ipc", "csv"] | None = _format_key()
    delimiter: str = _delimiter_key()
    column_names: tuple[str, ...] | None = _column_names_key()
    user_field: str = _key(_Text(), "user column of the interaction log", "user_id")
    item_field: str = _key(_Text(), "item column of the interaction log", "item_id")
    time_field: str = _key(_Text(), "timestamp column of the interaction log", "timestamp")
    action_field: str | None = _key(
        _Text(),
        "integer action column (e.g. a rating, 0..62): each history item's action, the bit 1 << value",
        default_text="no actions",
    )
    max_seq_len: int = _key(_Int(1, 1 << 16), "history items kept per user (the most recent)", 200)
    min_len: int = _key(
        _Int(3), "fewest interactions a user needs (a training, a validation and an eval target)", 3
    )
    item_weight_power: float = _key(
        _Float(0.0, 4.0),
        "item table weight = interaction count ^ power (0 uniform, 1 by count; word2vec's 0.75)",
        0.75,
    )
    prepare: Literal["local", "ray"] = _key(
        _Choice(values=("local", "ray")),
        "prepare in this process, or on Ray Data (joins RAY_ADDRESS when set; sharded Parquet out)",
        "local",
    )
    shards: int | None = _key(
        _Int(1, 1 << 20),
        'prepare = "ray": Parquet shards a prepared table is written in (user-id ranges)',
        default_text="one per 4M interactions",
    )
    prepared: str | None = _key(
        _Location(),
        "start from a prepared folder or URI (train/valid/eval/items.parquet: files or folders of shards)",
        default_text="absent: prepare [data] interactions",
    )


# The four sampler messages of TorchEasyRec's tzrec/protos/sampler.proto, in field order, then
# negseq's own keys. "required" is TorchEasyRec's; see _SAMPLER_REQUIRED for negseq's.
_SAMPLER_KEYS: dict[str, tuple[str, ...]] = {
    "negative_sampler": (
        "input_path", "num_sample", "attr_fields", "item_id_field", "attr_delimiter",
        "num_eval_sample", "field_delimiter", "item_id_delim",
        "user_id_field", "seed", "max_retries", "exclude",
    ),
    "negative_sampler_v2": (
        "user_input_path", "item_input_path", "pos_edge_input_path", "num_sample", "attr_fields",
        "item_id_field", "user_id_field", "attr_delimiter", "num_eval_sample", "field_delimiter",
        "seed", "max_retries", "weighted",
    ),
    "hard_negative_sampler": (
        "user_input_path", "item_input_path", "hard_neg_edge_input_path", "num_sample",
        "num_hard_sample", "attr_fields", "item_id_field", "user_id_field", "attr_delimiter",
        "num_eval_sample", "field_delimiter",
        "seed", "max_retries", "exclude",
    ),
    "hard_negative_sampler_v2": (
        "user_input_path", "item_input_path", "pos_edge_input_path", "hard_neg_edge_input_path",
        "num_sample", "num_hard_sample", "attr_fields", "item_id_field", "user_id_field",
        "attr_delimiter", "num_eval_sample", "field_delimiter",
        "seed", "max_retries", "weighted",
    ),
}  # fmt: skip
_NEGSEQ_SAMPLER_KEYS = frozenset({"seed", "max_retries", "weighted", "exclude"})
# What negseq needs set (TorchEasyRec also requires user_input_path, which negseq only validates).
_SAMPLER_REQUIRED: dict[str, tuple[str, ...]] = {
    "negative_sampler": ("input_path", "num_sample", "item_id_field"),
    "negative_sampler_v2": (
        "item_input_path", "pos_edge_input_path", "num_sample", "item_id_field", "user_id_field",
    ),
    "hard_negative_sampler": (
        "item_input_path", "hard_neg_edge_input_path", "num_sample", "num_hard_sample",
        "item_id_field", "user_id_field",
    ),
    "hard_negative_sampler_v2": (
        "item_input_path", "pos_edge_input_path", "hard_neg_edge_input_path", "num_sample",
        "num_hard_sample", "item_id_field", "user_id_field",
    ),
}  # fmt: skip
_SAMPLES = _Int(0, MAX_SAMPLES)


@dataclass(frozen=True)
class SamplerConfig:
    """`[sampler.<kind>]`: one of TorchEasyRec's four sampler messages, every field, plus negseq's
    `seed`, `max_retries`, `weighted` and `exclude`. Keys a kind does not have stay None."""

    kind: SamplerKind = "negative_sampler"
    input_path: str | None = _key(
        _Location(),
        "item table: graph-learn TSV (id:int64, weight:float, attrs:string), Parquet, IPC or CSV",
        default_text="required",
    )
    user_input_path: str | None = _key(
        _Location(),
        "user table (id, weight); checked when given, not used to sample (TorchEasyRec requires it)",
        default_text="absent",
    )
    item_input_path: str | None = _key(_Location(), "item table, as input_path", default_text="required")
    pos_edge_input_path: str | None = _key(
        _Location(),
        "positive edges (userid, itemid, weight): what each user must not get",
        default_text="required",
    )
    hard_neg_edge_input_path: str | None = _key(
        _Location(),
        "hard-negative edges (userid, itemid, weight), top weights first",
        default_text="required",
    )
    num_sample: int | None = _key(_SAMPLES, "negatives drawn in a training call", default_text="required")
    num_hard_sample: int | None = _key(_SAMPLES, "most hard negatives per user", default_text="required")
    attr_fields: tuple[str, ...] | None = _key(
        _List(item=_Text()),
        "item attributes gathered for each negative (training-data field names)",
        default_text="item_id_field only",
    )
    item_id_field: str | None = _key(
        _Text(), "training-data field holding the positive item ids", default_text="required"
    )
    user_id_field: str | None = _key(
        _Text(), "training-data field holding the user id", default_text="required (N: absent)"
    )
    attr_delimiter: str = _key(_Text(), "delimiter between the values of a graph-learn attrs string", ":")
    num_eval_sample: int | None = _key(
        _SAMPLES, "negatives drawn when not training", default_text="num_sample"
    )
    field_delimiter: str = _key(
        _Text(what="a single character", one_char=True, escapes=True),
        "column delimiter of graph-learn TSV tables",
        "\t",
    )
    item_id_delim: str | None = _key(
        _SEQ_DELIM,
        "delimiter between item ids in a sequence field: [candidates] seq_delim by another name",
        default_text="[candidates] seq_delim",
    )
    seed: int = _key(
        _Int(0, _SEED_LIMIT), "sampler seed: negatives are keyed by (seed, epoch, batch_index)", 0
    )
    max_retries: int = _key(
        _Int(0, 1000), "redraw rounds for a negative that hits an excluded item; the rest are kept", 5
    )
    weighted: bool = _key(_Bool(), "draw candidates by item weight rather than uniformly", False)
    exclude: Literal["batch", "user", "none"] = _key(
        _Choice(values=("batch", "user", "none")),
        "positives a negative must not be: the batch's (TorchEasyRec), its own row's (the user's "
        "history; negseq run also masks them per query), or none (the model masks accidental hits); "
        "README: Negatives",
        "user",
    )

    @property
    def item_table(self) -> str | None:
        """The item table, whichever key this kind names it with."""
        return self.input_path if self.kind == "negative_sampler" else self.item_input_path

    @property
    def is_hard(self) -> bool:
        return self.kind in HARD_SAMPLERS

    def table(self) -> dict[str, dict[str, Any]]:
        """`{kind: {key: value}}` with every key this kind has that is set (manifests, hashes)."""
        fields = {k: getattr(self, k) for k in _SAMPLER_KEYS[self.kind] if getattr(self, k) is not None}
        return {self.kind: {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}


@dataclass(frozen=True)
class CandidatesConfig:
    """`[candidates]`: how a batch's positives and negatives become candidate sequences."""

    layout: Layout = _key(
        _Choice(values=("interleaved", "suffix")),
        "interleaved: each positive then its own negatives; suffix: shared negatives on the last row",
        "interleaved",
        default_text='`"interleaved"` (`"suffix"` with a hard sampler)',
    )
    neg_per_pos: int | None = _key(
        _SAMPLES,
        "negatives after each positive (interleaved layout only)",
        default_text="the sampler's num_sample",
    )
    seq_delim: str = _key(_SEQ_DELIM, "delimiter between item ids in a string sequence column", ";")
    batch_size: int = _key(
        _Int(1), "source rows a batch: one sampling key (seed, epoch, batch_index); one training step", 128
    )


@dataclass(frozen=True)
class ModelConfig:
    """`[model]`: the HSTU retrieval model."""

    embedding_dim: int = _key(_Int(1, 1 << 16), "item and user embedding width", 64)
    num_layers: int = _key(_Int(1, 1024), "STU layers", 2)
    num_heads: int = _key(_Int(1, 1024), "attention heads per STU layer", 1)
    attention_dim: int | None = _key(
        _Int(1, 1 << 16), "query/key width per head", default_text="embedding_dim / num_heads"
    )
    hidden_dim: int | None = _key(
        _Int(1, 1 << 16), "value width per head", default_text="embedding_dim / num_heads"
    )
    dropout: float = _key(_Float(0.0, 1.0, high_open=True), "STU output dropout", 0.2)
    input_dropout: float = _key(_Float(0.0, 1.0, high_open=True), "dropout after the input embedding", 0.2)
    temperature: float = _key(_Float(0.0, low_open=True), "logits are divided by it", 0.05)
    similarity: Literal["cosine", "inner_product"] = _key(
        _Choice(values=("cosine", "inner_product")), "user-item score", "cosine"
    )
    objective: Literal["autoregressive", "last"] = _key(
        _Choice(values=("autoregressive", "last")),
        "every history position predicts the next item, or the last one predicts the target",
        "autoregressive",
    )
    num_time_buckets: int = _key(
        _Int(0, 1 << 20), "buckets of the time since each history item (sqrt of minutes; 0: off)", 0
    )
    num_action_types: int = _key(
        _Int(0, 63),
        "action types embedded with each history item (0: off); > every [data] action_field value",
        0,
    )
    max_attn_len: int = _key(_Int(0), "keys a query attends to, most recent first (0: all)", 0)
    kernel: Literal["auto", "pytorch", "triton"] = _key(
        _Choice(values=("auto", "pytorch", "triton")),
        "attention kernel; auto: Triton on CUDA, the PyTorch reference elsewhere",
        "auto",
    )


@dataclass(frozen=True)
class TrainConfig:
    """`[train]`: the training loop."""

    epochs: int = _key(_Int(1, _KEY_LIMIT + 1), "passes over the training rows", 1)
    lr: float = _key(_Float(0.0, low_open=True), "learning rate", 1e-3)
    weight_decay: float = _key(_Float(0.0), "AdamW weight decay", 0.0)
    max_steps: int | None = _key(_Int(1), "stop after this many steps", default_text="no limit")
    checkpoint_every: int = _key(_Int(1), "steps between checkpoints", 50)
    num_workers: int = _key(_Int(1, 1024), "Ray Train workers", 1)
    use_gpu: bool | Literal["auto"] = _key(_BoolOrAuto(), "train on GPUs; auto: when there are some", "auto")
    eval_ks: tuple[int, ...] = _key(_List(item=_Int(1)), "K of HR@K and NDCG@K", (10, 50, 200))
    lr_schedule: Literal["constant", "cosine", "linear"] = _key(
        _Choice(values=("constant", "cosine", "linear")),
        "after the warmup the LR stays (constant) or decays to 0 at the last planned step",
        "cosine",
    )
    warmup_fraction: float = _key(
        _Float(0.0, 1.0, high_open=True), "share of the planned steps the LR rises linearly from 0", 0.05
    )
    eval_every: int = _key(
        _Int(0), "epochs between validations of the valid split (0: only after the last step)", 1
    )
    patience: int = _key(
        _Int(0), "validations without a better monitor value before training stops (0: never)", 3
    )
    monitor: str = _key(
        _Text(what='"MRR", or "HR@K" or "NDCG@K" with K in eval_ks', pattern=r"MRR|(HR|NDCG)@[0-9]+"),
        "validation metric that picks the best epoch (whose weights are evaluated and exported)",
        "NDCG@10",
    )
    max_failures: int = _key(_Int(-1), "worker-group restarts from the last checkpoint (-1: no limit)", 1)
    seed: int = _key(_Int(0, _SEED_LIMIT), "seed of the initial weights and dropout", 0)


@dataclass(frozen=True)
class RayConfig:
    """`[ray]`: where `negseq run` samples and trains."""

    executor: Literal["ray", "local"] = _key(
        _Choice(values=("ray", "local")), "Ray Data actors + Ray Train, or the in-process executor", "ray"
    )
    address: str | None = _key(
        _Text(), "cluster to join", default_text="RAY_ADDRESS, else a Ray started in the process"
    )
    num_cpus: int | None = _key(_Int(1), "CPUs of an embedded Ray", default_text="all")
    min_actors: int = _key(_Int(1, 1024), "fewest sampler actors", 1)
    max_actors: int = _key(_Int(1, 1024), "most sampler actors", 2)
    actor_cpus: float = _key(_Float(0.0, low_open=True), "CPUs reserved per sampler actor", 0.5)
    deterministic: bool = _key(
        _Bool(), "the trainer sees an epoch's batches in batch_index order: one seed, one result", True
    )

    def cluster_address(self) -> str | None:
        """The cluster to join: `address`, else `RAY_ADDRESS` (set by `ray job submit`); None means
        an embedded Ray started by the job."""
        return self.address or os.environ.get("RAY_ADDRESS")


@dataclass(frozen=True)
class OutputConfig:
    """`[output]`: where a command writes."""

    dir: str | None = _key(
        _Location(),
        "output folder (negseq sample: the sampled files; negseq run: everything)",
        default_text="run: `runs/<name>`; sample: required",
    )
    format: Literal["parquet", "ipc"] = _key(
        _Choice(values=("parquet", "ipc")), "format of the sampled files", "parquet"
    )
    write_samples: bool = _key(_Bool(), "negseq run: also write epoch 0's sampled batches", True)


@dataclass(frozen=True)
class InputConfig:
    """`[input]`: the rows `negseq sample` samples for."""

    path: tuple[str, ...] | None = _key(
        _Locations(),
        "Parquet, Arrow IPC or CSV files: a file, folder, glob or URI, or a list",
        default_text="required",
    )
    format: Literal["parquet", "ipc", "csv"] | None = _format_key()
    delimiter: str = _delimiter_key()
    column_names: tuple[str, ...] | None = _column_names_key()


@dataclass(frozen=True)
class RunConfig:
    """`[run]`: the in-process executor."""

    epoch: int = _key(_Int(0, _KEY_LIMIT), "negseq sample: the epoch of the sampling key", 0)
    workers: int = _key(
        _Int(1, 1024), 'sampling threads (negseq sample; negseq run with executor = "local")', 2
    )
    max_in_flight: int | None = _key(_Int(1), "most batches sampled ahead", default_text="2 x workers")


@dataclass(frozen=True)
class ServiceConfig:
    """`[service]`: the Arrow Flight sampler service."""

    host: str = _key(_Text(), "address to bind", "127.0.0.1")
    port: int = _key(_Int(0, 65535), "port to bind (0: a free one)", 8815)
    max_rows: int = _key(_Int(1), "most rows a request batch may hold", 1 << 20)
    max_bytes: int = _key(_Int(1), "most bytes a request batch may hold", 256 << 20)
    max_negatives: int = _key(_Int(1), "most negatives a request may ask for", 1 << 24)
    token_file: str | None = _key(
        _Location(), "file holding the bearer token every call must carry", default_text="no token"
    )
    drain_timeout: float = _key(_Float(0.0, low_open=True), "seconds SIGTERM waits for in-flight calls", 60.0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _key(
        _Choice(values=("DEBUG", "INFO", "WARNING", "ERROR")), "negseq's log level", "INFO"
    )
    tls_cert: str | None = _key(_Location(), "TLS certificate chain (PEM)", default_text="plaintext")
    tls_key: str | None = _key(_Location(), "TLS private key (PEM), with tls_cert", default_text="plaintext")
    tls_client_ca: str | None = _key(
        _Location(), "CA (PEM) client certificates must chain to: mutual TLS", default_text="no client check"
    )
    insecure: bool = _key(_Bool(), "allow a token in plaintext off the loopback", False)
    max_concurrent: int | None = _key(
        _Int(1), "concurrent calls served; more are refused as busy", default_text="sized to the machine"
    )
    metrics_port: int | None = _key(
        _Int(0, 65535), "Prometheus metrics port (0: a free one)", default_text="no metrics"
    )


@dataclass(frozen=True)
class PrepareConfig:
    """`[prepare]`: where prepared tables go."""

    dir: str | None = _key(
        _Location(),
        "folder of the prepared train/eval/items.parquet (negseq prepare writes, negseq run too)",
        default_text="`<[output] dir>/prepared`",
    )


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "candidates": CandidatesConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "ray": RayConfig,
    "output": OutputConfig,
    "input": InputConfig,
    "run": RunConfig,
    "service": ServiceConfig,
    "prepare": PrepareConfig,
}
_TOP_LEVEL = ("name", "data", "sampler", *(s for s in _SECTIONS if s != "data"))
_NAME = _Text(
    what="a name of letters, digits, '.', '_' or '-', not only dots (it names a folder)",
    allowed_text="letters, digits, `.`, `_`, `-`; not only dots",
    pattern=_NAME_PATTERN,
)
_USED_BY: dict[str, str] = {
    "name": "run",
    "data": "run, prepare",
    "data.synthetic": "run, prepare",
    "sampler": "run, sample, serve",
    "candidates": "run, sample, serve",
    "model": "run",
    "train": "run",
    "ray": "run",
    "output": "run, sample",
    "input": "sample",
    "run": "sample, run",
    "service": "serve",
    "prepare": "prepare, run",
}


def positives_field(objective: str) -> str:
    """The column of the prepared training table that holds an objective's positives."""
    return "next_items" if objective == "autoregressive" else "target"


@dataclass(frozen=True)
class JobConfig:
    """A checked job: every section, defaults filled in, paths absolute (or URIs).

    `data` is set for `run` and `prepare`, `sampler` for `run`, `sample` and `serve` (None
    elsewhere unless the file has them)."""

    command: Command
    source: str | None  # the job file, None for flags alone
    base_dir: str  # what relative paths in the job file resolved against
    name: str
    data: DataConfig | None
    sampler: SamplerConfig | None
    candidates: CandidatesConfig
    model: ModelConfig
    train: TrainConfig
    ray: RayConfig
    output: OutputConfig
    input: InputConfig
    run: RunConfig
    service: ServiceConfig
    prepare: PrepareConfig

    @property
    def candidate_field(self) -> str:
        """The training column holding the positives `negseq run` samples for."""
        return positives_field(self.model.objective)

    def to_dict(self) -> dict[str, Any]:
        """Every value as plain data (tuples as lists), as a job file would hold it."""

        def plain(obj: Any) -> Any:
            if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
                return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
            return list(obj) if isinstance(obj, tuple) else obj

        out: dict[str, Any] = {"name": self.name}
        if self.data is not None:
            out["data"] = plain(self.data)
        if self.sampler is not None:
            out["sampler"] = self.sampler.table()
        for section in _SECTIONS:
            if section != "data":
                out[section] = plain(getattr(self, section))
        return out


# ---- flags --------------------------------------------------------------------------------------

# Each command's flags and the key each one sets; "input" is `negseq prepare`'s positional argument.
FLAGS: dict[Command, dict[str, tuple[str, str]]] = {
    "run": {},
    "sample": {
        "--input": ("input", "path"),
        "--out": ("output", "dir"),
        "--workers": ("run", "workers"),
    },
    "prepare": {
        "input": ("data", "interactions"),
        "--out": ("prepare", "dir"),
        "--format": ("data", "format"),
        "--delimiter": ("data", "delimiter"),
        "--column-names": ("data", "column_names"),
        "--user-field": ("data", "user_field"),
        "--item-field": ("data", "item_field"),
        "--time-field": ("data", "time_field"),
        "--action-field": ("data", "action_field"),
        "--max-seq-len": ("data", "max_seq_len"),
        "--min-len": ("data", "min_len"),
        "--item-weight-power": ("data", "item_weight_power"),
        "--prepare": ("data", "prepare"),
        "--shards": ("data", "shards"),
    },
    "serve": {f"--{key.replace('_', '-')}": ("service", key) for key in _keys_of(ServiceConfig)},
}


def _flag_dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_config_flags(parser: argparse.ArgumentParser, command: Command) -> None:
    """Register `command`'s flags on `parser`, with each key's meaning and default as help. The
    values stay text (or None when not given) so that `load_config` checks them like the file's."""
    for flag, (table, key) in FLAGS[command].items():
        spec = _keys_of(_SECTIONS[table])[key]
        check: _Check = spec.metadata["check"]
        help_text = f"{spec.metadata['doc']} ([{table}] {key}; default {_default_text(spec)})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if flag == "input":
            parser.add_argument(flag, nargs="?", default=None, help=help_text)
        elif isinstance(check, _Bool):
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, metavar=key.upper(), help=help_text)


def flag_values(args: argparse.Namespace, command: Command) -> dict[str, Any]:
    """The flags `add_config_flags` registered, as `load_config` takes them."""
    return {flag: getattr(args, _flag_dest(flag), None) for flag in FLAGS[command]}


# ---- parsing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Origin:
    """Where values come from: names errors and resolves relative paths."""

    label: str
    base: str

    def error(self, table: str | None, key: str, bad: _Bad) -> NegseqError:
        where = f"[{table}] {key}" if table else key
        return NegseqError(f"{self.label}: {where}{bad.where}: expected {bad.expected}, got {_got(bad)}")

    def fail(self, message: str) -> NegseqError:
        return NegseqError(f"{self.label}: {message}")


def _is_uri(location: str) -> bool:
    return bool(re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", location))


def _resolve(location: str, base: str) -> str:
    """A URI as written; a local path made absolute against `base` (lexically: globs stay globs)."""
    if _is_uri(location):
        return location
    return os.path.normpath(os.path.join(base, os.path.expanduser(location)))


def _resolved(check: _Check, value: Any, base: str) -> Any:
    if isinstance(check, _Location):
        return _resolve(value, base)
    if isinstance(check, _Locations):
        return tuple(_resolve(v, base) for v in value)
    return value


# Keys that older job files spell differently: the error says where each one went.
_MOVED: dict[tuple[str, str], str] = {
    ("input", "batch_size"): "[candidates] batch_size",
    ("output", "path"): "[output] dir",
    ("ray", "local_workers"): "[run] workers",
    ("prepare", "input"): "[data] interactions",
    ("prepare", "out"): "[prepare] dir",
    **{
        ("prepare", key): f"[data] {key}"
        for key in ("format", "delimiter", "column_names", "user_field", "item_field", "time_field")
    },
    ("prepare", "max_seq_len"): "[data] max_seq_len",
    ("prepare", "min_len"): "[data] min_len",
}


def _unknown(origin: _Origin, table: str | None, name: object, known: Sequence[str]) -> NegseqError:
    text = str(name)
    if table is not None and (table, text) in _MOVED:
        return origin.fail(f"[{table}] {text}: renamed; write it as {_MOVED[table, text]}")
    hint = _did_you_mean(text, known, quote=lambda k: f"[{k}]" if table is None and k != "name" else k)
    listed = ", ".join(f"[{k}]" if table is None and k != "name" else k for k in known)
    shown = text if text.isprintable() and text.strip() == text and text else json.dumps(text)
    what = f"unknown table [{shown}]" if table is None else f"[{table}] unknown key {json.dumps(text)}"
    return origin.fail(f"{what}{hint}; known: {listed}")


def _parse_table(
    cls: type, raw: object, table: str, origin: _Origin, keys: Sequence[str] | None = None
) -> dict[str, Any]:
    """The checked values of the keys a table sets (paths resolved); unknown keys are errors."""
    if not isinstance(raw, Mapping):
        raise origin.error(None, f"[{table}]", _Bad("a table", raw, wrong_type=True))
    specs = _keys_of(cls)
    known = list(keys if keys is not None else specs)
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known:
            raise _unknown(origin, table, name, known)
        check: _Check = specs[name].metadata["check"]
        if isinstance(check, _Table):
            values[name] = check.cls(**_parse_table(check.cls, value, f"{table}.{name}", origin))
            continue
        try:
            values[name] = _resolved(check, check.check(value), origin.base)
        except _Bad as bad:
            raise origin.error(table, name, bad) from None
    return values


def _read_job(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise NegseqError(f"{path}: job file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise NegseqError(f"{path}: not valid TOML: {exc}") from exc


def _parse_sampler(raw: object, origin: _Origin) -> tuple[SamplerKind, dict[str, Any]]:
    if not isinstance(raw, Mapping) or len(raw) != 1:
        shown = ", ".join(f"[sampler.{k}]" for k in raw) if isinstance(raw, Mapping) and raw else "none"
        raise origin.fail(
            f"[sampler]: expected exactly one [sampler.<type>] table, one of "
            f"{', '.join(SAMPLER_KINDS)}; got {shown if isinstance(raw, Mapping) else _show(raw)}"
        )
    ((kind, fields),) = raw.items()
    if kind not in _SAMPLER_KEYS:
        hint = _did_you_mean(str(kind), SAMPLER_KINDS, quote=lambda k: f"[sampler.{k}]")
        raise origin.fail(
            f"unknown sampler [sampler.{kind}]{hint}; known: "
            + ", ".join(f"[sampler.{k}]" for k in SAMPLER_KINDS)
        )
    return kind, _parse_table(SamplerConfig, fields, f"sampler.{kind}", origin, _SAMPLER_KEYS[kind])


def _apply_flags(command: Command, flags: Mapping[str, Any], tables: dict[str, dict[str, Any]]) -> None:
    """Check each given flag like a file value, naming the flag, and set it in `tables`; its paths
    resolve against the working directory."""
    known = FLAGS[command]
    unknown = sorted(set(flags) - set(known))
    if unknown:
        raise ValueError(f"negseq {command} has no flag(s) {', '.join(unknown)}")  # a caller's bug
    origin = _Origin("command line", os.getcwd())
    for flag, value in flags.items():
        if value is None:
            continue
        table, key = known[flag]
        check: _Check = _keys_of(_SECTIONS[table])[key].metadata["check"]
        try:
            typed = check.from_text(value) if isinstance(value, str) else check.check(value)
        except _Bad as bad:
            raise NegseqError(
                f"{origin.label}: {flag} ([{table}] {key}){bad.where}: "
                f"expected {bad.expected}, got {_got(bad)}"
            ) from None
        tables.setdefault(table, {})[key] = _resolved(check, typed, origin.base)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config(
    job: str | os.PathLike[str] | Mapping[str, Any] | None,
    *,
    command: Command,
    flags: Mapping[str, Any] | None = None,
    source: str | os.PathLike[str] | None = None,
) -> JobConfig:
    """Check a job and its flags for `command`; every problem is a `NegseqError`, raised before
    anything is read or written.

    `job`: the job file's path, the dict TOML read from it (then `source` names the file, for
    errors and relative paths), or None (flags alone: `negseq prepare` without `--job`).
    `flags`: `{flag: value}` for `FLAGS[command]`; None means not given; text is parsed by the
    key's type (`"8"` for an integer), other values are checked as a file's would be.
    """
    if command not in FLAGS:
        raise ValueError(f"unknown command {command!r}; known: {', '.join(COMMANDS)}")
    if isinstance(job, Mapping):
        raw: Mapping[str, Any] = job
        path = Path(source) if source is not None else None
    elif job is not None:
        path = Path(job)
        raw = _read_job(path)
    else:
        raw, path = {}, None
    label = str(path) if path is not None else ("job" if job is not None else "command line")
    base = os.path.abspath(path.parent if path is not None else os.getcwd())
    origin = _Origin(label, base)

    tables: dict[str, dict[str, Any]] = {}
    name: str | None = None
    sampler_kind: SamplerKind | None = None
    sampler_values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "name":
            try:
                name = _NAME.check(value)
            except _Bad as bad:
                raise origin.error(None, "name", bad) from None
        elif key == "sampler":
            sampler_kind, sampler_values = _parse_sampler(value, origin)
        elif key in _SECTIONS:
            tables[key] = _parse_table(_SECTIONS[key], value, key, origin)
        else:
            raise _unknown(origin, None, key, _TOP_LEVEL)
    _apply_flags(command, flags or {}, tables)
    present = {table: frozenset(values) for table, values in tables.items()}  # set by file or flag
    if name is None:
        name = path.stem if path is not None else "job"
        if not re.fullmatch(_NAME_PATTERN, name):
            raise origin.fail(
                f"name: expected {_NAME.what}, got {json.dumps(name)} "
                '(the job file\'s name; set name = "...")'
            )

    sections: dict[str, Any] = {
        section: cls(**tables.get(section, {})) for section, cls in _SECTIONS.items() if section != "data"
    }
    data = DataConfig(**tables["data"]) if "data" in tables else None
    sampler = SamplerConfig(kind=sampler_kind, **sampler_values) if sampler_kind is not None else None
    resolved = _Resolver(
        command,
        origin,
        str(path) if path is not None else None,
        job is not None,
        name,
        data,
        sampler,
        sections,
        present,
    )
    return resolved.config()


def sampler_config(
    table: Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None, source: str | None = None
) -> SamplerConfig:
    """A `{kind: {key: value}}` sampler table (TorchEasyRec's message and keys, as a job file or a
    library caller writes it) checked as `[sampler.<kind>]` of a job file: the same types, ranges
    and required keys; relative paths resolve against `base_dir` (default: the working directory)."""
    origin = _Origin(source or "sampler config", os.path.abspath(base_dir or os.getcwd()))
    kind, values = _parse_sampler(table, origin)
    config = SamplerConfig(kind=kind, **values)
    for key in _SAMPLER_REQUIRED[kind]:
        if getattr(config, key) is None:
            raise origin.fail(f"[sampler.{kind}] {key}: required, got nothing")
    return config


@dataclass
class _Resolver:
    """Fills derived defaults, makes the cross-key checks and each command's requirements."""

    command: Command
    origin: _Origin
    source: str | None
    has_job: bool  # a job file or dict, not flags alone
    name: str
    data: DataConfig | None
    sampler: SamplerConfig | None
    sections: dict[str, Any]
    present: dict[str, frozenset[str]]  # the keys each table sets, in the file or by a flag

    def fail(self, message: str) -> NegseqError:
        return self.origin.fail(message)

    def config(self) -> JobConfig:
        self._require_tables()
        self._check_data()
        self._check_sampler_and_candidates()
        self._check_model_and_ray()
        self._check_service()
        self._fill_folders()
        self._fill_run_sampler()
        self._require_keys()
        s = self.sections
        return JobConfig(
            command=self.command,
            source=self.source,
            base_dir=self.origin.base,
            name=self.name,
            data=self.data,
            sampler=self.sampler,
            candidates=s["candidates"],
            model=s["model"],
            train=s["train"],
            ray=s["ray"],
            output=s["output"],
            input=s["input"],
            run=s["run"],
            service=s["service"],
            prepare=s["prepare"],
        )

    # -- cross-key checks, from the config alone

    def _check_data(self) -> None:
        inp: InputConfig = self.sections["input"]
        input_csv = [k for k in ("delimiter", "column_names") if k in self.present.get("input", ())]
        if inp.format in ("parquet", "ipc") and input_csv:
            raise self.fail(f'[input] {input_csv[0]}: applies to CSV only, got format "{inp.format}"')
        data = self.data
        if data is None:
            return
        if data.prepared is not None:
            reading: tuple[str, ...] = (
                "interactions",
                "synthetic",
                "prepare",
                "shards",
                "format",
                "delimiter",
            )
            reading += (
                "column_names",
                "user_field",
                "item_field",
                "time_field",
                "min_len",
                "item_weight_power",
            )
            beside = [k for k in reading if k in self.present.get("data", ())]
            if beside:
                raise self.fail(
                    f"[data] {beside[0]}: applies to a log negseq prepares; [data] prepared names tables "
                    "already prepared"
                )
            if self.command == "prepare":
                raise self.fail("[data] prepared: negseq prepare writes prepared tables; this names some")
            return
        if data.prepare == "ray" and data.synthetic is not None:
            raise self.fail(
                '[data] prepare: "ray" reads an interactions log; [data.synthetic] is generated in this '
                "process (prepare it locally, or write it to files first)"
            )
        if "shards" in self.present.get("data", ()) and data.prepare != "ray":
            raise self.fail('[data] shards: applies to prepare = "ray", got prepare = "local"')
        if (data.interactions is None) == (data.synthetic is None):
            got = "both" if data.interactions is not None else "neither"
            raise self.fail(f"[data]: expected exactly one of interactions or [data.synthetic], got {got}")
        csv_keys = [k for k in ("delimiter", "column_names") if k in self.present.get("data", ())]
        if data.synthetic is not None:
            log_keys = [
                k
                for k in (
                    "format",
                    "delimiter",
                    "column_names",
                    "user_field",
                    "item_field",
                    "time_field",
                    "action_field",
                )
                if k in self.present.get("data", ())
            ]
            if log_keys:
                raise self.fail(
                    f"[data] {log_keys[0]}: applies to an interactions file; [data.synthetic] generates "
                    f"the columns user_id, item_id, timestamp"
                )
            syn = data.synthetic
            if syn.min_len > syn.max_len:
                raise self.fail(
                    f"[data.synthetic] min_len: expected at most max_len ({syn.max_len}), got {syn.min_len}"
                )
            if syn.p_next + syn.p_jump > 1:
                raise self.fail(
                    f"[data.synthetic] p_next + p_jump: expected at most 1, got {syn.p_next + syn.p_jump}"
                )
            if syn.cluster_size > syn.num_items:
                raise self.fail(
                    f"[data.synthetic] cluster_size: expected at most num_items ({syn.num_items}), "
                    f"got {syn.cluster_size}"
                )
            if syn.num_users * syn.max_len > 1 << 31:
                raise self.fail(
                    f"[data.synthetic] num_users * max_len: expected at most 2^31 interactions, "
                    f"got {syn.num_users * syn.max_len}"
                )
        elif data.format in ("parquet", "ipc") and csv_keys:
            raise self.fail(f'[data] {csv_keys[0]}: applies to CSV only, got format "{data.format}"')

    def _check_sampler_and_candidates(self) -> None:
        cand: CandidatesConfig = self.sections["candidates"]
        sampler = self.sampler
        set_in_candidates = self.present.get("candidates", frozenset())
        kind = sampler.kind if sampler is not None else None
        if (
            sampler is not None
            and sampler.is_hard
            and "layout" in set_in_candidates
            and cand.layout != "suffix"
        ):
            raise self.fail(
                f'[candidates] layout: expected "suffix" with [sampler.{kind}] (hard negatives are '
                f'shared by a batch), got "{cand.layout}"'
            )
        layout: Layout = cand.layout
        if "layout" not in set_in_candidates and sampler is not None and sampler.is_hard:
            layout = "suffix"
        # negseq serve's [candidates] are defaults a request may override, layout included: its
        # neg_per_pos serves the requests that ask for "interleaved", which a hard sampler refuses.
        interleaved_possible = sampler is None or not sampler.is_hard
        usable = interleaved_possible if self.command == "serve" else layout == "interleaved"
        if cand.neg_per_pos is not None and not usable and self.command == "serve":
            raise self.fail(
                f'[candidates] neg_per_pos: applies to the "interleaved" layout, which [sampler.{kind}] '
                'cannot serve (hard negatives need "suffix")'
            )
        if cand.neg_per_pos is not None and not usable:
            raise self.fail(
                f'[candidates] neg_per_pos: applies to the "interleaved" layout only, got layout '
                f'"{layout}" (the suffix layout appends the sampler\'s num_sample shared negatives)'
            )
        seq_delim = cand.seq_delim
        if sampler is not None and sampler.item_id_delim is not None:
            if "seq_delim" in set_in_candidates and sampler.item_id_delim != cand.seq_delim:
                raise self.fail(
                    f"[sampler.{kind}] item_id_delim {json.dumps(sampler.item_id_delim)} and "
                    f"[candidates] seq_delim {json.dumps(cand.seq_delim)} disagree: both are the "
                    f"delimiter between item ids in a sequence; set one, or both equal"
                )
            seq_delim = sampler.item_id_delim
        self.sections["candidates"] = dataclasses.replace(cand, layout=layout, seq_delim=seq_delim)
        if sampler is not None and sampler.kind == "negative_sampler":
            self.sampler = dataclasses.replace(sampler, item_id_delim=seq_delim)

    def _check_model_and_ray(self) -> None:
        model: ModelConfig = self.sections["model"]
        if (
            model.attention_dim is None or model.hidden_dim is None
        ) and model.embedding_dim < model.num_heads:
            raise self.fail(
                f"[model] num_heads: expected at most embedding_dim ({model.embedding_dim}) while "
                f"attention_dim or hidden_dim defaults to embedding_dim / num_heads, got {model.num_heads}"
            )
        data = self.data
        if model.num_action_types and self.command == "run" and (data is None or data.action_field is None):
            raise self.fail(
                f"[model] num_action_types: {model.num_action_types} action types need [data] "
                "action_field (the column holding each interaction's action), got nothing"
            )
        train: TrainConfig = self.sections["train"]
        if train.monitor != "MRR" and int(train.monitor.split("@")[1]) not in train.eval_ks:
            raise self.fail(
                f"[train] monitor: expected MRR or a K of eval_ks {list(train.eval_ks)}, "
                f"got {json.dumps(train.monitor)}"
            )
        ray: RayConfig = self.sections["ray"]
        if ray.max_actors < ray.min_actors:
            raise self.fail(
                f"[ray] max_actors: expected at least min_actors ({ray.min_actors}), got {ray.max_actors}"
            )
        if ray.num_cpus is not None and ray.actor_cpus > ray.num_cpus:
            raise self.fail(
                f"[ray] actor_cpus: expected at most num_cpus ({ray.num_cpus}) or no actor could start, "
                f"got {ray.actor_cpus}"
            )

    def _check_service(self) -> None:
        svc: ServiceConfig = self.sections["service"]
        if (svc.tls_cert is None) != (svc.tls_key is None):
            missing = "tls_key" if svc.tls_key is None else "tls_cert"
            raise self.fail(f"[service] {missing}: expected with tls_cert and tls_key together, got nothing")
        if svc.tls_client_ca is not None and svc.tls_cert is None:
            raise self.fail(
                "[service] tls_client_ca: mutual TLS needs the server's own tls_cert and tls_key, got neither"
            )
        if svc.metrics_port and svc.metrics_port == svc.port:
            raise self.fail(
                f"[service] metrics_port: expected a port other than port ({svc.port}), "
                f"got {svc.metrics_port}"
            )
        if (
            svc.token_file is not None
            and svc.tls_cert is None
            and not svc.insecure
            and not _is_loopback(svc.host)
        ):
            raise self.fail(
                f"[service] host: a token would cross the network in plaintext to {json.dumps(svc.host)}; "
                f"expected tls_cert and tls_key, or insecure = true (--insecure), or a loopback host"
            )

    # -- derived defaults

    def _fill_folders(self) -> None:
        out: OutputConfig = self.sections["output"]
        if out.dir is None and self.command in ("run", "prepare") and self.has_job:
            out = dataclasses.replace(out, dir=_resolve(os.path.join("runs", self.name), self.origin.base))
            self.sections["output"] = out
        if out.dir is not None and self.command == "run" and _is_uri(out.dir):
            raise self.fail(
                f"[output] dir: negseq run writes a local folder (a path every node sees on a cluster), "
                f"got the URI {json.dumps(out.dir)}; negseq sample writes to URIs"
            )
        prep: PrepareConfig = self.sections["prepare"]
        if prep.dir is not None and self.command in ("run", "prepare") and _is_uri(prep.dir):
            raise self.fail(
                f"[prepare] dir: the prepared tables are written to a local folder (a path every node "
                f"sees on a cluster), got the URI {json.dumps(prep.dir)}; [data] prepared reads URIs"
            )
        if prep.dir is None and out.dir is not None and self.command in ("run", "prepare"):
            self.sections["prepare"] = dataclasses.replace(prep, dir=os.path.join(out.dir, "prepared"))

    def _fill_run_sampler(self) -> None:
        """`negseq run` samples from the tables it prepares: the item table, the objective's
        positive column and `user_id` are known, and a different item_id_field is an error."""
        sampler = self.sampler
        if self.command != "run" or sampler is None:
            return
        wanted = positives_field(self.sections["model"].objective)
        if sampler.item_id_field is not None and sampler.item_id_field != wanted:
            raise self.fail(
                f"[sampler.{sampler.kind}] item_id_field: expected {json.dumps(wanted)} (the "
                f"{json.dumps(self.sections['model'].objective)} objective's positives), "
                f"got {json.dumps(sampler.item_id_field)}"
            )
        assert self.data is not None
        folder = self.data.prepared or self.sections["prepare"].dir
        from negseq.filesystems import child  # imports pyarrow: only for a run

        items = child(folder, "items.parquet")
        table_key = "input_path" if sampler.kind == "negative_sampler" else "item_input_path"
        fill: dict[str, Any] = {"item_id_field": wanted}
        if getattr(sampler, table_key) is None:
            fill[table_key] = items
        if sampler.user_id_field is None and sampler.kind != "negative_sampler":
            fill["user_id_field"] = "user_id"
        self.sampler = dataclasses.replace(sampler, **fill)

    # -- what each command needs

    def _require_tables(self) -> None:
        command = self.command
        if command in ("run", "prepare") and self.data is None:
            raise self.fail(
                f"[data]: negseq {command} needs it (interactions, or [data.synthetic]), got nothing"
            )
        if command in ("run", "sample", "serve") and self.sampler is None:
            raise self.fail(
                f"[sampler]: negseq {command} needs one [sampler.<type>] table, one of "
                f"{', '.join(SAMPLER_KINDS)}; got none"
            )

    def _require_keys(self) -> None:
        command = self.command
        if command in ("run", "sample", "serve") and self.sampler is not None:
            for key in _SAMPLER_REQUIRED[self.sampler.kind]:
                if getattr(self.sampler, key) is None:
                    raise self.fail(
                        f"[sampler.{self.sampler.kind}] {key}: negseq {command} needs it, got nothing"
                    )
        if command == "sample":
            if self.sections["input"].path is None:
                raise self.fail("[input] path: negseq sample needs it (or --input), got nothing")
            if self.sections["output"].dir is None:
                raise self.fail("[output] dir: negseq sample needs it (or --out), got nothing")
        if command == "prepare" and self.sections["prepare"].dir is None:
            raise self.fail("[prepare] dir: negseq prepare needs it (or --out, or a job file), got nothing")


# ---- the reference ------------------------------------------------------------------------------


def _default_text(spec: dataclasses.Field[Any]) -> str:
    """A key's default: as TOML writes it, in backticks, or the words of `default_text`."""
    if spec.metadata["default_text"] is not None:
        return str(spec.metadata["default_text"])
    default = spec.default
    if isinstance(default, bool):
        return f"`{'true' if default else 'false'}`"
    if isinstance(default, str | tuple):
        return f"`{json.dumps(list(default) if isinstance(default, tuple) else default)}`"
    return f"`{default}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(key: str, spec: dataclasses.Field[Any], extra: Sequence[str] = ()) -> str:
    check: _Check = spec.metadata["check"]
    cells = [
        f"`{key}`",
        check.type_name,
        _cell(_default_text(spec)),
        _cell(check.allowed()),
        *extra,
        _cell(spec.metadata["doc"]),
    ]
    return "| " + " | ".join(cells) + " |"


_SAMPLER_SHORT = {
    "negative_sampler": "N",
    "negative_sampler_v2": "N2",
    "hard_negative_sampler": "H",
    "hard_negative_sampler_v2": "H2",
}


def reference_markdown() -> str:
    """Markdown tables of every section's keys: type, default, range, meaning (README's reference)."""
    lines = [
        "Tables a command does not read may sit in the same file; every table present is checked.",
        "Relative paths resolve against the job file's folder (flags: the working directory).",
        "",
        f"### `name` ({_USED_BY['name']})",
        "",
        "| Key | Type | Default | Range | Meaning |",
        "|---|---|---|---|---|",
        f"| `name` | string | the job file's name | {_NAME.allowed()} | names the run's folders |",
    ]

    def section(title: str, cls: type) -> None:
        summary = (cls.__doc__ or ": ").split(": ", 1)[1]
        lines.extend(["", f"### `[{title}]` ({_USED_BY[title]})", "", summary[0].upper() + summary[1:], ""])
        lines.extend(["| Key | Type | Default | Range | Meaning |", "|---|---|---|---|---|"])
        lines.extend(_row(key, spec) for key, spec in _keys_of(cls).items())

    section("data", DataConfig)
    section("data.synthetic", SyntheticConfig)
    lines.extend(
        [
            "",
            f"### `[sampler.<type>]` ({_USED_BY['sampler']})",
            "",
            "Exactly one of `[sampler.negative_sampler]` (N), `[sampler.negative_sampler_v2]` (N2), "
            "`[sampler.hard_negative_sampler]` (H), `[sampler.hard_negative_sampler_v2]` (H2): "
            "TorchEasyRec's sampler messages (tzrec/protos/sampler.proto), every field, plus negseq's "
            "own `seed`, `max_retries`, `weighted`, `exclude` (and `user_id_field` on N). "
            "negseq run fills in the item table, `item_id_field` and `user_id_field` from what it prepares.",
            "",
            "| Key | Type | Default | Range | Samplers | Meaning |",
            "|---|---|---|---|---|---|",
        ]
    )
    specs = _keys_of(SamplerConfig)
    first_seen = list(dict.fromkeys(k for kind in SAMPLER_KINDS for k in _SAMPLER_KEYS[kind]))
    for key in sorted(first_seen, key=lambda k: (k in _NEGSEQ_SAMPLER_KEYS, first_seen.index(k))):
        kinds = [_SAMPLER_SHORT[kind] for kind in SAMPLER_KINDS if key in _SAMPLER_KEYS[kind]]
        lines.append(_row(key, specs[key], [", ".join(kinds)]))
    for title, cls in _SECTIONS.items():
        if title != "data":
            section(title, cls)
    return "\n".join(lines) + "\n"


README_START = "<!-- config-reference:start (python -m negseq.config --markdown) -->"
README_END = "<!-- config-reference:end -->"


def readme_reference(readme_text: str) -> str:
    """The reference README.md carries between its markers ("" when it has none)."""
    start, end = readme_text.find(README_START), readme_text.find(README_END)
    if start < 0 or end < start:
        return ""
    return readme_text[start + len(README_START) : end].strip("\n") + "\n"


def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m negseq.config", description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the configuration reference")
    parser.add_argument("--update", metavar="README", help="rewrite the reference between README's markers")
    args = parser.parse_args(argv)
    if args.update:
        readme = Path(args.update)
        text = readme.read_text(encoding="utf-8")
        if not readme_reference(text):
            print(f"{readme}: no {README_START} ... {README_END} markers", file=sys.stderr)
            return 2
        head, rest = text.split(README_START, 1)
        tail = rest.split(README_END, 1)[1]
        readme.write_text(f"{head}{README_START}\n{reference_markdown()}{README_END}{tail}", encoding="utf-8")
        return 0
    if args.markdown:
        sys.stdout.write(reference_markdown())
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
