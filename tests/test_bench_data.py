"""The benchmark's data generator and graph-learn runner: same data for both sides, honest JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))
import bench_data  # noqa: E402

TINY = bench_data.BenchDataSpec(num_items=2_000, num_users=40, pos_per_user=20, hard_per_user=5)
FILES = ("items", "users", "pos_edges", "hard_edges")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> bench_data.BenchData:
    return bench_data.ensure(TINY, tmp_path_factory.mktemp("bench"), log=lambda _: None)


def read_tsv(path: Path):
    options = pacsv.ParseOptions(delimiter="\t", quote_char=False)
    return pacsv.read_csv(path, parse_options=options)


def test_same_seed_writes_identical_files(tiny, tmp_path):
    again = bench_data.generate(TINY, tmp_path / "again", log=lambda _: None)
    for name in FILES:
        assert again.tsv(name).read_bytes() == tiny.tsv(name).read_bytes(), name
        assert pq.read_table(again.parquet(name)).equals(pq.read_table(tiny.parquet(name))), name
    first, second = np.load(tiny.queries), np.load(again.queries)
    assert np.array_equal(first["itemid"], second["itemid"])


def test_tsv_is_graphlearn_typed_format_with_feature_string(tiny):
    headers = {name: tiny.tsv(name).read_text().splitlines()[0] for name in FILES}
    assert headers["items"] == "id:int64\tweight:float\tfeature:string"
    assert headers["users"] == "id:int64\tweight:float"
    edge_header = "userid:int64\titemid:int64\tweight:float"
    assert headers["pos_edges"] == headers["hard_edges"] == edge_header

    items = pq.read_table(tiny.parquet("items"))
    tsv = read_tsv(tiny.tsv("items"))
    assert tsv.num_rows == items.num_rows == TINY.num_items
    assert tsv.column("id:int64").to_pylist() == items.column("id").to_pylist()
    # The feature string holds item_id, title, category joined by ':', the item id included.
    first = tsv.column("feature:string")[0].as_py().split(":")
    assert first == [
        str(items.column("item_id")[0].as_py()),
        items.column("title")[0].as_py(),
        str(items.column("category")[0].as_py()),
    ]
    np.testing.assert_allclose(
        tsv.column("weight:float").to_numpy(), items.column("weight").to_numpy(), rtol=1e-12
    )


def test_edges_are_distinct_known_items_and_hard_edges_avoid_positives(tiny):
    item_ids = set(pq.read_table(tiny.parquet("items")).column("id").to_pylist())
    pos = pq.read_table(tiny.parquet("pos_edges"))
    hard = pq.read_table(tiny.parquet("hard_edges"))
    pos_pairs = list(zip(pos.column("userid").to_pylist(), pos.column("itemid").to_pylist(), strict=True))
    hard_pairs = set(zip(hard.column("userid").to_pylist(), hard.column("itemid").to_pylist(), strict=True))
    assert len(set(pos_pairs)) == len(pos_pairs)
    assert not hard_pairs & set(pos_pairs)
    assert {item for _, item in pos_pairs} <= item_ids
    degrees = np.bincount(pos.column("userid").to_numpy())[1:]
    assert degrees.min() >= 16 and degrees.max() <= 24  # 20 +- 20 %
    assert tiny.manifest["rows"] == {name: pq.read_metadata(tiny.parquet(name)).num_rows for name in FILES}
    queries = np.load(tiny.queries)
    assert set(zip(queries["userid"].tolist(), queries["itemid"].tolist(), strict=True)) == set(pos_pairs)


def test_ensure_reuses_a_matching_data_set_and_regenerates_a_changed_one(tiny):
    stamp = tiny.tsv("items").stat().st_mtime_ns
    assert bench_data.ensure(TINY, tiny.root.parent, log=lambda _: None).root == tiny.root
    assert tiny.tsv("items").stat().st_mtime_ns == stamp
    other = bench_data.BenchDataSpec(num_items=2_000, num_users=40, pos_per_user=20, seed=7)
    data = bench_data.ensure(other, tiny.root.parent, log=lambda _: None)
    assert data.root != tiny.root and data.manifest["spec"]["seed"] == 7


@pytest.mark.timeout(60)
def test_graphlearn_runner_reports_why_when_graphlearn_is_missing():
    # The project's Python 3.11 has no graph-learn: the runner must say so in JSON, not crash.
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / "graphlearn_runner.py"), "--alias"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["status"] == "unavailable"
    assert "graphlearn" in report["reason"]
