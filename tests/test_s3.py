"""`s3://` inputs, item tables and outputs against a real S3 protocol server on 127.0.0.1 (moto's
`ThreadedMotoServer`), through pyarrow's `S3FileSystem`: the same plans, tables and sampled files
as from a local disk, and the same data-safety rules for an output folder in a bucket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from tiny_jobs import TWO_STEP_RUN

from negseq.cli import main
from negseq.errors import NegseqError
from negseq.filesystems import child
from negseq.io.sinks import read_manifest, verify_outputs
from negseq.io.sources import Source, SourceReader
from negseq.sampler import EdgeTable, ItemTable

moto_server = pytest.importorskip("moto.server", reason="moto[server] (a dev dependency) is not installed")

BUCKET = "negseq-test"
KEYS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def s3():
    """(pyarrow S3FileSystem, uri(key)) on a moto server; `uri` carries the endpoint in the URI."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {key: os.environ.get(key) for key in KEYS}
    os.environ.update(KEYS)
    fs = pafs.S3FileSystem(
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        scheme="http",
        endpoint_override=f"{host}:{port}",
        allow_bucket_creation=True,
    )
    fs.create_dir(BUCKET)

    def uri(key: str) -> str:
        return f"s3://{BUCKET}/{key}?endpoint_override={host}:{port}&scheme=http&region=us-east-1"

    yield fs, uri
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _rows(start: int, count: int) -> pa.Table:
    ids = np.arange(start, start + count, dtype=np.int64)
    schema = pa.schema([("user_id", pa.int64()), ("item", pa.int64()), ("hist", pa.list_(pa.int64()))])
    return pa.table(
        {"user_id": ids, "item": ids % 7 + 1, "hist": [[int(i % 5) + 1] for i in ids]}, schema=schema
    )


def _put(fs: pafs.S3FileSystem, key: str, table: pa.Table, row_group_size: int | None = None) -> None:
    pq.write_table(table, f"{BUCKET}/{key}", filesystem=fs, row_group_size=row_group_size)


def _put_text(fs: pafs.S3FileSystem, key: str, text: str) -> None:
    with fs.open_output_stream(f"{BUCKET}/{key}") as stream:
        stream.write(text.encode())


def _batches(source: Source, batch_size: int) -> list[list[int]]:
    reader = SourceReader(source)
    return [reader.read(d).column("user_id").to_pylist() for d in source.plan(batch_size)]


def test_folders_globs_and_lists_in_a_bucket_plan_and_read_as_on_disk(s3, tmp_path):
    fs, uri = s3
    sizes = [5, 0, 9, 4]
    start = 0
    for i, size in enumerate(sizes):
        table = _rows(start, size)
        start += size
        _put(fs, f"shards/part-{i}.parquet", table, row_group_size=3)
        pq.write_table(table, tmp_path / f"part-{i}.parquet", row_group_size=3)
    _put_text(fs, "shards/_SUCCESS", "")  # bookkeeping, not data
    local = _batches(Source.open(str(tmp_path)), 4)
    assert sum(local, []) == list(range(sum(sizes)))
    listed = [uri(f"shards/part-{i}.parquet") for i in (3, 1, 0, 2)]  # a list in any order
    for spec in (uri("shards"), uri("shards/"), uri("shards/*.parquet"), listed):
        source = Source.open(spec)
        assert isinstance(source.filesystem, pafs.S3FileSystem)
        assert source.num_rows == sum(sizes) and len(source.files) == 4
        assert _batches(source, 4) == local


def test_bucket_specs_that_name_nothing_or_mix_formats_are_errors(s3):
    fs, uri = s3
    _put(fs, "mixed/a.parquet", _rows(0, 3))
    _put_text(fs, "mixed/b.csv", "user_id,item\n1,2\n")
    with pytest.raises(NegseqError, match=r"several formats \(csv .*, parquet"):
        Source.open(uri("mixed"))
    with pytest.raises(NegseqError, match="the glob matches no file"):
        Source.open(uri("mixed/*.arrow"))
    with pytest.raises(NegseqError, match="no such file or folder"):
        Source.open(uri("absent/x.parquet"))
    with pytest.raises(NegseqError, match="different filesystems"):
        Source.open([uri("mixed/a.parquet"), "/tmp/x.parquet"])


def test_item_and_edge_tables_from_a_bucket(s3, tmp_path):
    fs, uri = s3
    items = pa.table({"id": np.arange(1, 21, dtype=np.int64), "weight": np.linspace(1, 2, 20)})
    _put(fs, "items/one.parquet", items)
    _put(fs, "items/shards/part-0.parquet", items.slice(0, 8))
    _put(fs, "items/shards/part-1.parquet", items.slice(8))
    lines = ["id:int64\tweight:float\tfeature:string"]
    rows = zip(items["id"].to_pylist(), items["weight"].to_pylist(), strict=True)
    lines += [f"{i}\t{w}\t{i}:c{i % 3}" for i, w in rows]
    _put_text(fs, "items/gl_items", "\n".join(lines) + "\n")
    for spec in (uri("items/one.parquet"), uri("items/shards"), uri("items/shards/part-*.parquet")):
        table = ItemTable.read(spec)
        assert table.ids.tolist() == list(range(1, 21))
        assert table.weights.tolist() == pytest.approx(items["weight"].to_pylist())
    gl = ItemTable.read(uri("items/gl_items"), attr_fields=["item", "cat"], item_id_field="item")
    assert gl.ids.tolist() == list(range(1, 21))
    assert gl.table["cat"].to_pylist()[:3] == ["c1", "c2", "c0"]
    edges = pa.table({"userid": [1, 1, 2], "itemid": [3, 4, 5], "weight": [1.0, 2.0, 3.0]})
    _put(fs, "edges/e.parquet", edges)
    read = EdgeTable.read(uri("edges/e.parquet"))
    assert read.user_ids.tolist() == [1, 1, 2] and read.item_ids.tolist() == [3, 4, 5]
    with pytest.raises(NegseqError, match="no such file or folder"):
        ItemTable.read(uri("items/none.parquet"))


SAMPLE_JOB = """
[input]
path = {inputs}

[sampler.negative_sampler]
input_path = "{items}"
num_sample = 3
item_id_field = "item"
seed = 5

[candidates]
layout = "interleaved"
batch_size = 4

[output]
dir = "{out}"
"""


def _parts(folder_spec: str) -> list[pa.Table]:
    source = Source.open(child(folder_spec, "part-*"))
    reader = SourceReader(source)
    return [pa.Table.from_batches([reader.read(d)]) for d in source.plan(1 << 20)]


def test_negseq_sample_reads_and_writes_a_bucket_as_a_local_disk(s3, tmp_path, capsys):
    fs, uri = s3
    items = pa.table({"id": np.arange(1, 30, dtype=np.int64)})
    _put(fs, "job/items.parquet", items)
    pq.write_table(items, tmp_path / "items.parquet")
    for i, size in enumerate([6, 5]):
        _put(fs, f"job/in/part-{i}.parquet", _rows(6 * i, size))
        pq.write_table(_rows(6 * i, size), tmp_path / f"in-{i}.parquet")

    local_job = tmp_path / "local.toml"
    local_job.write_text(
        SAMPLE_JOB.format(
            inputs=json.dumps([str(tmp_path / "in-0.parquet"), str(tmp_path / "in-1.parquet")]),
            items=tmp_path / "items.parquet",
            out=tmp_path / "local-out",
        )
    )
    assert main(["sample", str(local_job), "--quiet"]) == 0
    out = uri("job/out")
    remote_job = tmp_path / "remote.toml"
    remote_job.write_text(
        SAMPLE_JOB.format(inputs=json.dumps(uri("job/in/*.parquet")), items=uri("job/items.parquet"), out=out)
    )
    for _ in range(2):  # a second run replaces the first's files in the bucket
        assert main(["sample", str(remote_job), "--quiet"]) == 0, capsys.readouterr().err
        manifest = read_manifest(out)
        assert verify_outputs(out) == []
        assert manifest["rows_in"] == 11 and manifest["num_files"] == 3
        names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/job/out")))
        assert names == [
            "_manifest.parquet",
            "part-000000.parquet",
            "part-000001.parquet",
            "part-000002.parquet",
        ]
    local_parts, remote_parts = _parts(str(tmp_path / "local-out")), _parts(out)
    assert len(local_parts) == len(remote_parts) == 1
    assert local_parts[0].equals(remote_parts[0])  # same rows, negatives and columns

    # an output folder in the bucket holding what negseq did not write is refused, untouched
    _put_text(fs, "job/theirs/notes.txt", "keep me")
    refused = tmp_path / "refused.toml"
    refused.write_text(remote_job.read_text().replace(out, uri("job/theirs")))
    assert main(["sample", str(refused), "--quiet"]) == 2
    assert "did not write (notes.txt)" in capsys.readouterr().err
    assert [i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/job/theirs"))] == ["notes.txt"]


RUN = """
import json, sys
sys.modules["ray"] = None  # the local executor needs no Ray
from negseq.config import load_config
from negseq.job import run_job
result = run_job(load_config(sys.argv[1], command="run"), quiet=True)
print(json.dumps({"train": result["train"], "model": result["model"]}))
"""


def _run(job: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", RUN, str(job)], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_negseq_run_from_a_log_and_from_prepared_tables_in_a_bucket(s3, tmp_path):
    from negseq.synthetic import generate_interactions

    fs, uri = s3
    log = generate_interactions(num_users=120, num_items=60, min_len=4, max_len=10, seed=3)
    half = log.num_rows // 2
    _put(fs, "runlog/a.parquet", log.slice(0, half))
    _put(fs, "runlog/b.parquet", log.slice(half))
    pq.write_table(log, tmp_path / "log.parquet")

    def job(name: str, data: str) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(TWO_STEP_RUN.format(name="s3run", data=data, out=tmp_path / name))
        return path

    local = _run(job("local", f'interactions = "{tmp_path / "log.parquet"}"'))
    remote = _run(job("remote", f"interactions = {json.dumps(uri('runlog/*.parquet'))}"))
    keys = ("step", "loss", "mean_loss", "rows")
    assert [remote["train"][k] for k in keys] == [local["train"][k] for k in keys]
    assert remote["model"] == local["model"]
    for name in ("train", "valid", "eval", "items"):  # the run's prepared folder, copied to the bucket
        table = pq.read_table(tmp_path / "local" / "prepared" / f"{name}.parquet")
        _put(fs, f"prepared/{name}.parquet", table)
    again = _run(job("from-prepared", f"prepared = {json.dumps(uri('prepared'))}"))
    assert [again["train"][k] for k in keys] == [local["train"][k] for k in keys]
    assert again["model"] == local["model"]
    assert not (tmp_path / "from-prepared" / "prepared").exists()  # nothing was prepared
    assert verify_outputs(str(tmp_path / "from-prepared" / "samples")) == []
