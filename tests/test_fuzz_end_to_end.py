"""Issue 15 item 4: generated job files (TOML text: random tables, keys and values of every TOML
type, near-miss names) and generated item and input tables (bad ids, weights, nulls, duplicates,
types), run end to end through `negseq sample` and `negseq run` (local executor, tiny data).

Whatever the input: the command succeeds or raises `NegseqError` (exit 2, one line), never
another exception; a failed command leaves every file as it was (a previous complete output and
a sentinel stay byte-identical; no partial output, no temporary file), and a successful one
changes nothing outside its output folder, which then holds a complete output."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from negseq.cli import build_parser
from negseq.errors import NegseqError
from negseq.io.rundir import RECORD
from negseq.io.sinks import verify_outputs

pytestmark = pytest.mark.timeout(600)

# ---- TOML text ------------------------------------------------------------------------------


def toml_value(value) -> str:
    """`value` as a TOML value (inline tables and arrays included)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):  # JSON's escapes are TOML basic-string escapes, but for DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_text(tables: dict[str, dict]) -> str:
    """A job file: the top-level keys (table "") first, then one [table] a body."""
    lines = []
    for table, body in sorted(tables.items(), key=lambda item: item[0] != ""):
        if table:
            lines.append(f"[{'.'.join(toml_value(p) for p in table.split('.'))}]")
        lines += [f"{toml_value(key)} = {toml_value(value)}" for key, value in body.items()]
    return "\n".join(lines) + "\n"


# ---- values: every TOML type, near misses, paths that stay inside the example's folder -------

SAFE_PATHS = [
    "input.parquet",
    "items.parquet",
    "items.csv",
    "items.tsv",
    "missing.parquet",
    "out",
    "new",
    ".",
    "",
]
SCALARS = st.one_of(
    st.booleans(),
    st.integers(-5, 300),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 1e12, -1.5, 32.7]),
    st.text(max_size=8),
    st.sampled_from(["", "10", "interleaved", "suffix", "parquet", "ipc", ";", "\t", ",", "target", "user"]),
    st.datetimes(),
    st.dates(),
    st.times(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=2),
    max_leaves=6,
)
PATH_KEYS = {"path", "dir", "input_path", "item_input_path", "user_input_path"}


def near(names: list[str]):
    """A known name or a near miss of it (plural, cut, case, underscores dropped)."""
    return st.sampled_from(names).flatmap(
        lambda n: st.sampled_from([n, n, n, n + "s", n[:-1], n.upper(), n.replace("_", "")])
    )


def mutated(base: dict[str, dict], keys: dict[str, list[str]]):
    """`base` with a few tables or keys set to random values, dropped, misnamed or added."""

    @st.composite
    def build(draw):
        tables = {t: dict(body) for t, body in base.items()}
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
            op = draw(st.sampled_from(["set", "set", "set", "drop", "table"]))
            table = draw(st.sampled_from(sorted(keys)))
            if op == "table":
                tables[draw(near(sorted(keys)))] = draw(
                    st.dictionaries(near(keys[table]), VALUES, max_size=2)
                )
                continue
            body = tables.setdefault(table, {})
            key = draw(near(keys[table]))
            if op == "drop":
                body.pop(key, None)
            elif key in PATH_KEYS:  # a path never leaves the example's folder
                body[key] = draw(
                    st.sampled_from(SAFE_PATHS) | st.lists(st.sampled_from(SAFE_PATHS), max_size=2)
                )
            else:
                body[key] = draw(VALUES)
        return tables

    return build()


# ---- tables: item tables and inputs with bad ids, weights, nulls, duplicates, types ------------

ID_TYPES = {
    "int64": pa.int64(),
    "int32": pa.int32(),
    "uint64": pa.uint64(),
    "float64": pa.float64(),
    "string": pa.string(),
}


@st.composite
def item_tables(draw) -> tuple[str, pa.Table | str]:
    """(file name, table or graph-learn text) of a mostly valid item table."""
    n = draw(st.integers(1, 12))
    clean = draw(st.integers(0, 2)) > 0  # most tables are valid: the run goes on to sample
    ids = draw(st.lists(st.integers(1, 12) | st.sampled_from([0, -1, 2**63 - 1]), min_size=n, max_size=n))
    if clean or draw(st.booleans()):
        ids = list(range(1, n + 1))  # unique, the common case
    kind = "int64" if clean else draw(st.sampled_from(sorted(ID_TYPES)))
    if kind == "uint64":
        ids = [i if i >= 0 else 2**63 + 5 for i in ids]
    values: list = [str(i) for i in ids] if kind == "string" else ids
    if kind == "string" and draw(st.booleans()):
        values[0] = draw(st.sampled_from(["x", "", " 1", "1.5"]))
    if not clean and draw(st.booleans()):
        values[draw(st.integers(0, n - 1))] = None
    weight = st.floats(0.1, 10.0) if clean else st.floats(allow_nan=True, allow_infinity=True) | st.none()
    weights = draw(st.lists(weight | st.just(1.0), min_size=n, max_size=n))
    cate = draw(st.lists(st.sampled_from(["a", "b", "a:b", "", None]), min_size=n, max_size=n))
    if clean:
        cate = [c or "a" for c in cate]
    fmt = draw(st.sampled_from(["parquet", "csv", "tsv"]))
    if fmt == "tsv":
        rows = [
            f"{'' if i is None else i}\t{'' if w is None else w}\t{c or ''}"
            for i, w, c in zip(values, weights, cate, strict=True)
        ]
        header = draw(
            st.sampled_from(["id:int64\tweight:float\tattrs:string", "id:int64\tweight:double", "id\tweight"])
        )
        return "items.tsv", "\n".join([header, *rows]) + "\n"
    table = pa.table(
        {
            "id": pa.array(values, ID_TYPES[kind])
            if kind in ("string", "uint64")
            else pa.array(values, pa.int64()).cast(ID_TYPES[kind], safe=False),  # int32 may wrap
            "weight": pa.array(weights, pa.float64()),
            "cate": pa.array(cate, pa.string()),
        }
    )
    if draw(st.booleans()):
        table = table.drop_columns(["weight"])
    return ("items.csv", table) if fmt == "csv" else ("items.parquet", table)


@st.composite
def inputs(draw) -> pa.Table:
    """Rows with a user column and a `target` column of ids in one of its forms: valid, valid
    but for one bad row (found only when its batch is sampled), or anything."""
    n = draw(st.integers(0, 9))
    kind = draw(st.sampled_from(["int", "string", "list"]))
    rows = draw(st.lists(st.lists(st.integers(-1, 14), max_size=3), min_size=n, max_size=n))
    mode = draw(st.sampled_from(["valid", "bad row", "any"]))
    users = pa.array(np.arange(n) % 3, pa.int64())
    if mode != "any":
        rows = [[v % 12 + 1 for v in r] or [1] for r in rows]
        target = _as_column(rows, kind)
        if mode == "bad row" and n:
            bad = draw(st.integers(0, n - 1))
            if kind == "int":  # an id int64 cannot hold
                target = pa.array([2**63 + 1 if i == bad else r[0] for i, r in enumerate(rows)], pa.uint64())
            elif kind == "string":
                token = draw(st.sampled_from(["x", "1;;2", "99999999999999999999", "1.5", " 2"]))
                target = pa.array([token if i == bad else ";".join(map(str, r)) for i, r in enumerate(rows)])
            else:
                target = pa.array(
                    [[1, None] if i == bad else r for i, r in enumerate(rows)], pa.list_(pa.int64())
                )
        return pa.table({"user": users, "target": target})
    if kind != "string":
        target = _as_column(rows, kind)
    else:
        tokens = st.sampled_from(["", "x", "1;;2", "99999999999999999999", "3;4", "-2"])
        text = [";".join(map(str, r)) if draw(st.integers(0, 4)) else draw(tokens) for r in rows]
        target = pa.array(text, pa.string())
    columns = {"user": users, "target": target}
    if draw(st.booleans()):
        columns["cand_pos_lengths"] = pa.array(np.zeros(n, np.int32))
    return pa.table(columns)


def _as_column(rows: list[list[int]], kind: str) -> pa.Array:
    if kind == "int":
        return pa.array([r[0] if r else None for r in rows], pa.int64())
    if kind == "string":
        return pa.array([";".join(map(str, r)) for r in rows], pa.string())
    return pa.array(rows, pa.list_(pa.int64()))


def _write_items(folder: Path, name: str, table) -> None:
    if isinstance(table, str):
        (folder / name).write_text(table)
    elif name.endswith(".csv"):  # plain CSV: no quotes (Arrow's writer quotes every header name)
        lines = [",".join(table.column_names)]
        lines += [",".join("" if v is None else str(v) for v in row.values()) for row in table.to_pylist()]
        (folder / name).write_text("\n".join(lines) + "\n")
    else:
        pq.write_table(table, folder / name)


# ---- running one example ----------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `folder`, by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))
    }


def run_command(argv: list[str]) -> NegseqError | None:
    """`negseq <argv>` in process, as `main` runs it: exit 0, or the NegseqError `main` would print
    as one line and exit 2 on. Any other exception propagates and fails the test."""
    args = build_parser().parse_args(argv)
    try:
        assert args.handler(args) == 0
    except NegseqError as exc:
        assert str(exc).strip(), "an error names what was wrong"
        return exc
    return None


def _output_dir(job: Path, command: str) -> Path | None:
    from negseq.config import load_config

    try:
        config = load_config(job, command=command)
    except NegseqError:
        return None
    return Path(config.output.dir) if config.output.dir else None


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before.keys() | after.keys() if (k in before) != (k in after) or before[k] != after[k]}


def check_example(base: Path, job: Path, command: str, argv: list[str], sentinel_inside: bool) -> None:
    """Run, then hold the invariants of the module docstring."""
    before = snapshot(base)
    out = _output_dir(job, command)
    error = run_command(argv)
    changed = _changed(before, snapshot(base))
    inside = {k for k in changed if out is not None and (base / k).resolve().is_relative_to(out.resolve())}
    if error is not None or sentinel_inside:
        assert error is not None, "a folder holding a file negseq did not write was written into"
        if command == "sample":
            assert not changed, f"a failed run changed {sorted(changed)}: {error}"
        else:  # a run claims its folder first (its record); what follows there is recorded
            assert changed == inside, f"a failed run changed {sorted(changed - inside)}: {error}"
            recorded = json.loads((out / RECORD).read_text())["files"] if inside else []
            for name in inside:
                relative = str((base / name).resolve().relative_to(out.resolve()))
                assert (base / name).is_dir() or relative in (RECORD, *recorded), relative
        return
    assert out is not None and changed == inside, sorted(changed - inside)
    samples = out if command == "sample" else out / "samples"
    if command == "run" and not samples.exists():  # [output] write_samples = false
        return
    assert verify_outputs(str(samples)) == []  # a complete output: every part its manifest lists


@pytest.fixture(scope="module")
def previous_sample(tmp_path_factory) -> Path:
    """A complete `negseq sample` output, copied into each example's `out/`."""
    folder = tmp_path_factory.mktemp("previous")
    pq.write_table(pa.table({"id": np.arange(1, 13, dtype=np.int64)}), folder / "items.parquet")
    pq.write_table(
        pa.table({"user": [1, 2], "target": pa.array([3, 4], pa.int64())}), folder / "input.parquet"
    )
    (folder / "job.toml").write_text(toml_text(SAMPLE_BASE))
    assert run_command(["sample", str(folder / "job.toml"), "--quiet"]) is None
    return folder / "out"


SAMPLE_BASE = {
    "input": {"path": "input.parquet"},
    "sampler.negative_sampler": {"input_path": "items.parquet", "num_sample": 3, "item_id_field": "target"},
    "candidates": {"batch_size": 3},
    "output": {"dir": "out"},
}
SAMPLE_KEYS = {
    "input": ["path", "format", "delimiter", "column_names"],
    "sampler.negative_sampler": [
        "input_path", "num_sample", "attr_fields", "item_id_field", "user_id_field", "attr_delimiter",
        "num_eval_sample", "field_delimiter", "item_id_delim", "seed", "max_retries", "exclude",
    ],
    "candidates": ["layout", "neg_per_pos", "seq_delim", "batch_size"],
    "output": ["dir", "format"],
    "run": ["epoch", "workers", "max_in_flight"],
}  # fmt: skip


def _example_folder(tmp_path_factory) -> Path:
    return Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tables=mutated(SAMPLE_BASE, SAMPLE_KEYS),
    items=item_tables(),
    rows=inputs(),
    sentinel_inside=st.integers(0, 4).map(lambda i: i == 0),
)
def test_negseq_sample_succeeds_or_fails_cleanly(
    tmp_path_factory, previous_sample, tables, items, rows, sentinel_inside
):
    base = _example_folder(tmp_path_factory)
    shutil.copytree(previous_sample, base / "out")
    (base / "sentinel.txt").write_text("keep")
    if sentinel_inside:
        (base / "out" / "notes.txt").write_text("not negseq's")
    name, table = items
    _write_items(base, name, table)
    sampler = tables.get("sampler.negative_sampler")
    if isinstance(sampler, dict) and sampler.get("input_path") == "items.parquet":
        sampler["input_path"] = name  # the generated table, whichever format it was written in
    pq.write_table(rows, base / "input.parquet")
    job = base / "job.toml"
    job.write_text(toml_text(tables))
    check_example(base, job, "sample", ["sample", str(job), "--quiet"], sentinel_inside)
    shutil.rmtree(base)


RUN_BASE = {
    "": {"name": "fuzz"},
    "data.synthetic": {"num_users": 40, "num_items": 25, "min_len": 4, "max_len": 7},
    "data": {"max_seq_len": 5},
    "sampler.negative_sampler": {"num_sample": 2},
    "candidates": {"batch_size": 20},
    "model": {"embedding_dim": 8, "num_layers": 1},
    "train": {"max_steps": 1, "eval_ks": [10]},
    "ray": {"executor": "local"},
    "output": {"dir": "new", "write_samples": True},
}
RUN_KEYS = {
    "": ["name"],
    "data.synthetic": ["num_users", "num_items", "cluster_size", "min_len", "max_len", "p_next", "seed"],
    "data": ["max_seq_len", "min_len", "item_weight_power"],
    "sampler.negative_sampler": ["num_sample", "attr_fields", "seed", "max_retries", "num_eval_sample"],
    "candidates": ["layout", "neg_per_pos", "seq_delim", "batch_size"],
    "model": ["embedding_dim", "num_layers", "num_heads", "dropout", "objective", "similarity"],
    "train": ["max_steps", "lr", "eval_ks", "seed"],
    "output": ["dir", "write_samples", "format"],
}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tables=mutated(RUN_BASE, RUN_KEYS), sentinel_inside=st.integers(0, 3).map(lambda i: i == 0))
def test_negseq_run_succeeds_or_fails_cleanly(tmp_path_factory, previous_sample, tables, sentinel_inside):
    base = _example_folder(tmp_path_factory)
    shutil.copytree(previous_sample, base / "out")  # another command's output: never touched
    (base / "sentinel.txt").write_text("keep")
    tables["ray"] = {"executor": "local"}  # never an embedded Ray here
    job = base / "job.toml"
    job.write_text(toml_text(tables))
    out = _output_dir(job, "run")
    if sentinel_inside and out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "notes.txt").write_text("not negseq's")
    check_example(base, job, "run", ["run", str(job), "--quiet"], sentinel_inside and out is not None)
    shutil.rmtree(base)
