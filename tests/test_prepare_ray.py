"""Prepare on Ray Data: the same tables as the in-process prepare (ML-100K), sharded by user-id
range; a job prepared on Ray, re-prepared in-process into the same folder, and started from a
prepared folder; errors from Ray tasks arrive as one NegseqError."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_jobs import TWO_STEP_RUN

from negseq.cli import main
from negseq.io.prepare import TABLES
from negseq.io.sources import Source

REPO = Path(__file__).parents[1]
ML100K = Path(os.environ.get("NEGSEQ_SHARED_DIR", REPO.parent / "shared")) / "data" / "ml-100k"
ML100K_FLAGS = ["--delimiter", "\\t", "--column-names", "user_id,item_id,rating,timestamp", "--quiet"]

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("local_ray"), pytest.mark.timeout(600)]


def _table(folder: Path, name: str) -> pa.Table:
    return Source.open(str(folder / f"{name}.parquet")).read_all()


@pytest.mark.skipif(not (ML100K / "u.data").exists(), reason=f"MovieLens 100K not found at {ML100K}")
def test_ray_prepare_gives_the_in_process_tables_on_ml100k(tmp_path):
    log = str(ML100K / "u.data")
    assert main(["prepare", log, "--out", str(tmp_path / "local"), *ML100K_FLAGS]) == 0
    assert (
        main(["prepare", log, "--out", str(tmp_path / "ray"), "--ray", "--shards", "4", *ML100K_FLAGS]) == 0
    )
    for name in TABLES:
        shards = sorted(p.name for p in (tmp_path / "ray" / f"{name}.parquet").iterdir())
        assert shards == [f"part-{i:05d}.parquet" for i in range(4)], name
        local = pq.read_table(tmp_path / "local" / f"{name}.parquet")
        assert _table(tmp_path / "ray", name).equals(local), name  # same rows, same order
    train = _table(tmp_path / "ray", "train")
    assert train.num_rows == 943
    first = pq.read_table(tmp_path / "ray" / "train.parquet" / "part-00000.parquet")["user_id"].to_numpy()
    last = pq.read_table(tmp_path / "ray" / "train.parquet" / "part-00003.parquet")["user_id"].to_numpy()
    assert first.max() < last.min()  # shards are user-id ranges


def _log(folder: Path, shards: int = 3) -> None:
    from negseq.synthetic import generate_interactions

    log = generate_interactions(num_users=150, num_items=80, min_len=4, max_len=12, seed=7)
    folder.mkdir()
    step = -(-log.num_rows // shards)
    for i in range(shards):
        pq.write_table(log.slice(i * step, step), folder / f"log-{i}.parquet", row_group_size=100)


def _run(tmp_path: Path, name: str, data: str, out: Path | None = None) -> dict:
    from negseq.config import load_config
    from negseq.job import run_job

    job = tmp_path / f"{name}.toml"
    job.write_text(TWO_STEP_RUN.format(name="rayprep", data=data, out=out or tmp_path / name))
    result = run_job(load_config(job, command="run"), quiet=True)
    keys = ("step", "loss", "mean_loss", "rows")
    return {"train": [result["train"][k] for k in keys], "model": result["model"]}


def test_a_job_prepared_on_ray_trains_as_one_prepared_in_process(tmp_path):
    _log(tmp_path / "log")
    logs = json.dumps([str(tmp_path / "log" / f"log-{i}.parquet") for i in (2, 0, 1)])
    out = tmp_path / "run"
    on_ray = _run(tmp_path, "ray", f'interactions = {logs}\nprepare = "ray"\nshards = 3', out)
    assert (out / "prepared" / "train.parquet").is_dir()
    assert len(list((out / "prepared" / "items.parquet").iterdir())) == 3
    # the same folder prepared in-process: the shard folders become files, the run the same
    local = _run(tmp_path, "local", f'interactions = "{tmp_path / "log"}/*.parquet"', out)
    assert (out / "prepared" / "train.parquet").is_file()
    assert local == on_ray
    # and back: Ray again replaces the files with shards, nothing foreign refused
    assert _run(tmp_path, "ray", f'interactions = {logs}\nprepare = "ray"\nshards = 2', out) == on_ray
    assert sorted(p.name for p in (out / "prepared" / "eval.parquet").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    # a job that starts from the prepared (sharded) folder
    started = _run(tmp_path, "prepared", f'prepared = "{out / "prepared"}"')
    assert started == on_ray


def test_a_bad_row_fails_the_ray_prepare_with_one_error_naming_it(tmp_path, capsys):
    log = pa.table(
        {"u": pa.array([1, 1, 1, None, 2], pa.int64()), "i": [1, 2, 3, 4, 5], "t": [1, 2, 3, 4, 5]}
    )
    pq.write_table(log, tmp_path / "log.parquet")
    flags = ["--user-field", "u", "--item-field", "i", "--time-field", "t", "--ray"]
    assert main(["prepare", str(tmp_path / "log.parquet"), "--out", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert "column 'u', row 3: null value" in err and "Traceback" not in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["_negseq_run.json"]  # staging removed
    assert main(["prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "o2"), "--ray"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    ok = pa.table({"u": np.array([1, 1, 1], np.int64), "i": [1, 2, 3], "t": [1, 2, 3]})
    pq.write_table(ok, tmp_path / "ok.parquet")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep")
    assert main(["prepare", str(tmp_path / "ok.parquet"), "--out", str(tmp_path / "theirs"), *flags]) == 2
    assert "did not write (notes.txt)" in capsys.readouterr().err
