"""Sources: file, folder, glob and list inputs planned from metadata; every batch's rows read back
equal the same rows of the concatenated files, whatever the files' row groups."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from negseq.errors import NegseqError
from negseq.io.sources import CsvOptions, Source, SourceReader

SCHEMA = pa.schema([("user_id", pa.int64()), ("uih", pa.list_(pa.int64())), ("name", pa.string())])


def _table(start: int, rows: int) -> pa.Table:
    ids = np.arange(start, start + rows, dtype=np.int64)
    columns = {"user_id": ids, "uih": [[int(i), int(i) + 1] for i in ids], "name": [f"u{i}" for i in ids]}
    return pa.table(columns, schema=SCHEMA)


def _write(path, table: pa.Table, fmt: str, group: int) -> None:
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=group)
    elif fmt == "ipc":
        feather.write_feather(table, path, chunksize=group, compression="uncompressed")
    else:
        pacsv.write_csv(table.drop_columns(["uih"]), path)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 23), min_size=1, max_size=4),
    group=st.integers(1, 9),
    batch_size=st.integers(1, 17),
    fmt=st.sampled_from(["parquet", "ipc", "csv"]),
    order=st.randoms(use_true_random=False),
)
def test_batches_are_row_ranges_of_the_concatenated_files(
    tmp_path_factory, sizes, group, batch_size, fmt, order
):
    folder = tmp_path_factory.mktemp("src")
    suffix = {"parquet": "parquet", "ipc": "arrow", "csv": "csv"}[fmt]
    tables, start = [], 0
    for i, size in enumerate(sizes):
        table = _table(start, size)
        start += size
        _write(folder / f"part-{i:03d}.{suffix}", table, fmt, group)
        tables.append(table if fmt != "csv" else table.drop_columns(["uih"]))
    whole = pa.concat_tables(tables)
    names = [str(folder / f"part-{i:03d}.{suffix}") for i in range(len(sizes))]
    order.shuffle(names)  # a list in any order plans the same batches
    for spec in (str(folder), str(folder / f"*.{suffix}"), names):
        source = Source.open(spec)
        assert source.num_rows == whole.num_rows and source.format == fmt
        plan = source.plan(batch_size)
        assert [d.batch_index for d in plan] == list(range(len(plan)))
        assert len(plan) == -(-whole.num_rows // batch_size)
        reader = SourceReader(source)
        for descriptor in order.sample(plan, len(plan)):  # readers may take batches in any order
            rows = reader.read(descriptor)
            expected = whole.slice(descriptor.batch_index * batch_size, batch_size)
            assert rows.num_rows == expected.num_rows == descriptor.num_rows
            assert rows.column("user_id").to_pylist() == expected.column("user_id").to_pylist()


def test_csv_options_and_a_tsv_without_header(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t10\t5\t100\n1\t11\t3\t101\n2\t10\t4\t102\n")
    source = Source.open(str(path), csv=CsvOptions(delimiter="\t", column_names=["u", "i", "r", "t"]))
    assert source.schema.names == ["u", "i", "r", "t"] and source.num_rows == 3
    assert source.read_all().column("i").to_pylist() == [10, 11, 10]


def test_relative_paths_resolve_against_the_base_dir(tmp_path):
    pq.write_table(_table(0, 3), tmp_path / "x.parquet")
    assert Source.open("x.parquet", base_dir=tmp_path).num_rows == 3


def test_files_named_by_a_uri_open(tmp_path):
    pq.write_table(_table(0, 5), tmp_path / "x.parquet")
    source = Source.open(f"file://{tmp_path}/x.parquet")
    assert source.num_rows == 5 and source.read_all().num_rows == 5


def test_hidden_and_underscore_files_are_skipped_in_folders(tmp_path):
    pq.write_table(_table(0, 4), tmp_path / "a.parquet")
    pq.write_table(_table(0, 0), tmp_path / "_manifest.parquet")
    (tmp_path / ".a.parquet.tmp-1").write_text("half")
    assert Source.open(str(tmp_path)).num_rows == 4


@pytest.mark.parametrize(
    "layout, message",
    [
        ({}, "no such file or folder"),
        ({"notes.txt": "x\n1\n"}, None),
        ({"a.parquet": 1, "b.csv": "user_id\n1\n"}, "several formats (csv ("),
        ({"a.parquet": 1, "b.parquet": "other"}, "its columns"),
    ],
)
def test_bad_inputs_are_named(tmp_path, layout, message):
    for name, content in layout.items():
        if content == 1:
            pq.write_table(_table(0, 2), tmp_path / name)
        elif content == "other":
            pq.write_table(pa.table({"x": [1.0]}), tmp_path / name)
        else:
            (tmp_path / name).write_text(content)
    spec = str(tmp_path / "missing") if not layout else str(tmp_path)
    if message is None:  # a .txt file is a CSV: it opens
        assert Source.open(spec).read_all().to_pylist() == [{"x": 1}]
        return
    with pytest.raises(NegseqError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Source.open(spec)


def test_a_glob_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(NegseqError, match=r"\*\.parquet: the glob matches no file"):
        Source.open(str(tmp_path / "*.parquet"))


def test_a_missing_column_is_named_before_anything_is_read(tmp_path):
    pq.write_table(_table(0, 2), tmp_path / "a.parquet")
    with pytest.raises(NegseqError, match="missing column\\(s\\) 'target'; found 'user_id', 'uih', 'name'"):
        Source.open(str(tmp_path)).require(["user_id", "target"])


def test_a_file_rewritten_after_planning_is_an_error(tmp_path):
    pq.write_table(_table(0, 6), tmp_path / "a.parquet")
    source = Source.open(str(tmp_path))
    pq.write_table(_table(0, 4), tmp_path / "a.parquet")
    with pytest.raises(NegseqError, match="changed after it was planned"):
        SourceReader(source).read(source.plan(5)[1])


def test_roots_name_what_the_spec_named(tmp_path):
    (tmp_path / "d").mkdir()
    pq.write_table(_table(0, 2), tmp_path / "d" / "a.parquet")
    assert Source.open(str(tmp_path / "d" / "*.parquet")).roots == (str(tmp_path / "d"),)
    assert Source.open([str(tmp_path / "d")]).roots == (str(tmp_path / "d"),)
