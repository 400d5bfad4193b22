"""Issue 15's data-safety cases 1-8, each reproduced through the command a user runs (DESIGN §9):
negseq deletes or overwrites only what it can prove it wrote, refuses an output that overlaps its
input, leaves the previous output as it was when a run fails, says when a folder is unfinished,
refuses ids it cannot hold, and serves only with an owner-only token and one authorization header."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

import negseq
from negseq.cli import main
from negseq.io.sinks import STAGING_PREFIX, read_manifest, verify_outputs
from negseq.sampler import ItemTable, NegativeSampler

pytestmark = pytest.mark.timeout(120)
SRC = Path(negseq.__file__).resolve().parents[1]  # subprocesses import the negseq under test


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# ---- negseq sample: a small input, an item table, a job ------------------------------------

SAMPLE_JOB = """
[input]
path = "{input}"

[sampler.negative_sampler]
input_path = "items.parquet"
num_sample = 2
item_id_field = "target"

[candidates]
batch_size = 4

[output]
dir = "{out}"
"""


def _sample_setup(
    folder: Path, *, rows: int = 10, input: str = "input.parquet", out: str = "sampled"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": np.arange(1, 51, dtype=np.int64)}), folder / "items.parquet")
    if not (folder / input).exists():
        (folder / input).parent.mkdir(parents=True, exist_ok=True)
        targets = pa.array([f"{i % 50 + 1};{(i + 7) % 50 + 1}" for i in range(rows)])
        pq.write_table(pa.table({"user": np.arange(rows), "target": targets}), folder / input)
    job = folder / "job.toml"
    job.write_text(SAMPLE_JOB.format(input=input, out=out))
    return job


def _sample(job: Path, *flags: str) -> int:
    return main(["sample", str(job), "--quiet", *flags])


# ---- 1. negseq run: a name never becomes a path; the run folder holds only negseq's --------

RUN_JOB = """
name = {name}

[data.synthetic]
num_users = 60
num_items = 40
min_len = 4
max_len = 8

[data]
max_seq_len = 6

[sampler.negative_sampler]
num_sample = 2

[candidates]
batch_size = 30

[model]
embedding_dim = 8
num_layers = 1

[train]
max_steps = 1
eval_ks = [10]

[ray]
executor = "local"

[output]
dir = "{out}"
{extra}
"""


def _run_job(folder: Path, *, name: str = '"safety"', out: str = "run", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / "job.toml"
    job.write_text(RUN_JOB.format(name=name, out=out, extra=extra))
    return job


def test_case1_an_absolute_name_never_becomes_a_path(tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    job = _run_job(tmp_path / "job", name=json.dumps(str(victim)))
    assert main(["run", str(job), "--quiet"]) == 2
    _one_line_error(capsys, "name: expected a name of letters, digits")
    assert snapshot(victim) == {"precious.txt": b"keep me"}
    assert not (tmp_path / "job" / "run").exists()


def test_case1_a_run_folder_holding_anything_else_is_refused_untouched(tmp_path, capsys):
    job = _run_job(tmp_path)
    assert main(["run", str(job), "--quiet"]) == 0
    run = tmp_path / "run"
    before = snapshot(run)
    assert {"metrics.json", "_negseq_run.json", "export/towers.json", "samples/_manifest.parquet"} <= set(
        before
    )
    recorded = json.loads((run / "_negseq_run.json").read_text())
    # every file the run left is one the record lists, or the sampled folder's (its manifest's)
    samples = read_manifest(str(run / "samples"))
    listed = {*recorded["files"], "_negseq_run.json", "samples/_manifest.parquet"}
    listed |= {f"samples/{f['name']}" for f in samples["files"]}
    assert set(before) == listed

    shown = {
        "notes.txt": "notes.txt",
        "export/notes.txt": "export/notes.txt",
        "samples/part-123456.parquet": "samples/part-123456.parquet",
        "prepared/mine/x.csv": "prepared/mine/",
    }
    for foreign, named in shown.items():
        path = run / foreign
        made = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not negseq's")
        with_foreign = snapshot(run)
        assert main(["run", str(job), "--quiet"]) == 2
        _one_line_error(capsys, "[output] dir", f"holds what negseq did not write ({named})")
        assert snapshot(run) == with_foreign
        path.unlink()
        if made:
            path.parent.rmdir()
    # a link named like an output would write through to anywhere
    (run / "metrics.json").unlink()
    (run / "metrics.json").symlink_to(tmp_path / "elsewhere.json")
    assert main(["run", str(job), "--quiet"]) == 2
    _one_line_error(capsys, "metrics.json")
    (run / "metrics.json").unlink()
    # negseq's own folder, even cut short (metrics.json gone), runs again
    assert main(["run", str(job), "--quiet"]) == 0
    assert set(snapshot(run)) == set(before)


def test_case1_a_prepare_folder_of_the_users_own_files_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"mine": [1, 2, 3]}), data / "train.parquet")
    before = snapshot(data)
    job = _run_job(tmp_path, extra=f'\n[prepare]\ndir = "{data}"\n')
    assert main(["run", str(job), "--quiet"]) == 2
    _one_line_error(capsys, "[prepare] dir", "train.parquet")
    assert snapshot(data) == before and not (tmp_path / "run").exists()
    # negseq prepare, the same
    assert main(["prepare", "--job", str(job), "--quiet"]) == 2
    _one_line_error(capsys, "[prepare] dir", "train.parquet")
    assert snapshot(data) == before


# ---- 2. an output folder holding a file negseq did not write -------------------------------


def test_case2_a_foreign_part_file_in_the_output_is_refused_and_kept(tmp_path, capsys):
    job = _sample_setup(tmp_path)
    (tmp_path / "sampled").mkdir()
    (tmp_path / "sampled" / "part-123456.parquet").write_bytes(b"someone else's")
    assert _sample(job) == 2
    _one_line_error(capsys, "holds files negseq did not write (part-123456.parquet)")
    assert snapshot(tmp_path / "sampled") == {"part-123456.parquet": b"someone else's"}


# ---- 3. re-sampling a sampled output; an output equal to the input -------------------------


def test_case3_a_sampled_input_and_an_output_equal_to_the_input_are_refused(tmp_path, capsys):
    job = _sample_setup(tmp_path)
    assert _sample(job) == 0
    again = _sample_setup(tmp_path, input="sampled", out="resampled")
    before = snapshot(tmp_path / "sampled")
    assert _sample(again) == 2
    _one_line_error(capsys, "input column(s) ['cand_pos_lengths'] are negseq output columns")
    assert not (tmp_path / "resampled").exists()
    # written over its own input
    job = _sample_setup(tmp_path / "inplace", input="data/input.parquet", out="data")
    data = snapshot(tmp_path / "inplace" / "data")
    assert _sample(job) == 2
    _one_line_error(capsys, "the output folder overlaps the input")
    assert snapshot(tmp_path / "inplace" / "data") == data
    assert snapshot(tmp_path / "sampled") == before


@pytest.mark.integration
def test_case3_the_service_refuses_an_already_sampled_batch(tmp_path):
    from negseq.service import SamplerClient, SamplerServer

    items = ItemTable.from_arrow(pa.table({"id": np.arange(1, 51, dtype=np.int64)}))
    server = SamplerServer(NegativeSampler(items, num_sample=2, item_id_field="target"))
    try:
        batch = pa.record_batch({"target": pa.array([[1, 2]]), "cand_pos_lengths": pa.array([2], pa.int32())})
        with pytest.raises(flight.FlightServerError, match=r"input column\(s\) \['cand_pos_lengths'\]"):
            SamplerClient(server.location).candidates(batch, epoch=0, batch_index=0, layout="suffix")
    finally:
        server.shutdown()


# ---- 4. uint64 ids at or above 2^63 ---------------------------------------------------------


def test_case4_uint64_ids_above_int64_are_refused_in_files(tmp_path, capsys):
    job = _sample_setup(tmp_path)
    targets = pa.array([1, 2, 2**63, 4], pa.uint64())
    pq.write_table(pa.table({"user": np.arange(4), "target": targets}), tmp_path / "input.parquet")
    assert _sample(job) == 2
    _one_line_error(capsys, "column 'target', row 2: id 9223372036854775808 is above int64's range")
    assert not (tmp_path / "sampled").exists()
    # in the item table
    pq.write_table(pa.table({"user": np.arange(2), "target": pa.array([1, 2])}), tmp_path / "input.parquet")
    pq.write_table(pa.table({"id": pa.array([1, 2, 2**64 - 1], pa.uint64())}), tmp_path / "items.parquet")
    assert _sample(job) == 2
    _one_line_error(capsys, "items.parquet", "id 18446744073709551615 is above int64's range")


@pytest.mark.integration
def test_case4_uint64_ids_above_int64_are_refused_by_the_service():
    from negseq.service import SamplerClient, SamplerServer

    items = ItemTable.from_arrow(pa.table({"id": np.arange(1, 51, dtype=np.int64)}))
    server = SamplerServer(NegativeSampler(items, num_sample=2, item_id_field="target"))
    try:
        client = SamplerClient(server.location)
        batch = pa.record_batch({"target": pa.array([3, 2**63 + 5], pa.uint64())})
        with pytest.raises(flight.FlightServerError, match="row 1: id 9223372036854775813 is above int64"):
            client.sample(batch, epoch=0, batch_index=0)
        with pytest.raises(flight.FlightServerError, match="row 1: id 9223372036854775813 is above int64"):
            client.candidates(batch, epoch=0, batch_index=0, layout="suffix")
    finally:
        server.shutdown()


# ---- 5. a failed re-run leaves the previous complete output ---------------------------------


def test_case5_a_failed_rerun_leaves_the_previous_output_as_it_was(tmp_path, capsys):
    job = _sample_setup(tmp_path, rows=12)
    assert _sample(job) == 0
    before = snapshot(tmp_path / "sampled")
    # a check that can be made first fails first
    bad_epoch = tmp_path / "bad_epoch.toml"
    bad_epoch.write_text(job.read_text() + "\n[run]\nepoch = -1\n")
    assert _sample(bad_epoch) == 2
    _one_line_error(capsys, "[run] epoch: expected an integer")
    assert snapshot(tmp_path / "sampled") == before
    # a bad row in the last batch fails after the first batches were staged
    table = pq.read_table(tmp_path / "input.parquet")
    targets = table["target"].to_pylist()
    targets[-1] = "3;x"
    pq.write_table(table.set_column(1, "target", pa.array(targets)), tmp_path / "input.parquet")
    assert _sample(job) == 2
    _one_line_error(capsys, "column 'target'", "'x'")
    assert snapshot(tmp_path / "sampled") == before
    assert verify_outputs(str(tmp_path / "sampled")) == []


# ---- 6. an output folder inside the input folder -------------------------------------------


def test_case6_an_output_inside_the_input_folder_is_refused(tmp_path, capsys):
    job = _sample_setup(tmp_path, input="data/input.parquet", out="data/sampled")
    (tmp_path / "job.toml").write_text(
        (tmp_path / "job.toml").read_text().replace('"data/input.parquet"', '"data"')
    )
    data = snapshot(tmp_path / "data")
    assert _sample(job) == 2
    _one_line_error(capsys, "the output folder overlaps the input")
    assert snapshot(tmp_path / "data") == data and not (tmp_path / "data" / "sampled").exists()


# ---- 7. unfinished folders: inspect says so; a killed run's leftovers go on the next run ------

KILLED_SAMPLE = """
import sys, time
from negseq.io import sinks
from negseq.cli import main

write = sinks.SampledSink.write
def slow_write(self, sampled):
    summary = write(self, sampled)
    print("wrote", sampled.key.batch_index, flush=True)
    time.sleep(60)  # killed here
    return summary
sinks.SampledSink.write = slow_write
sys.exit(main(["sample", sys.argv[1], "--quiet", "--workers", "1"]))
"""


def test_case7_a_killed_run_is_unfinished_for_inspect_and_the_next_run_cleans_up(tmp_path, capsys):
    job = _sample_setup(tmp_path, rows=12)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAMPLE, str(job)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().startswith("wrote ")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    out = tmp_path / "sampled"
    staged = [p for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)]
    assert len(staged) == 1 and any(p.name.startswith("part-") for p in staged[0].iterdir())
    assert main(["inspect", str(out)]) == 1
    assert f"staging folder {staged[0].name}" in capsys.readouterr().out
    assert _sample(job) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "_manifest.parquet",
        "part-000000.parquet",
        "part-000001.parquet",
        "part-000002.parquet",
    ]
    assert main(["inspect", str(out)]) == 0


def test_case7_a_failed_run_leaves_no_temporary_files(tmp_path, capsys):
    job = _sample_setup(tmp_path, rows=12)
    table = pq.read_table(tmp_path / "input.parquet")
    targets = table["target"].to_pylist()
    targets[-1] = "bad"
    pq.write_table(table.set_column(1, "target", pa.array(targets)), tmp_path / "input.parquet")
    assert _sample(job) == 2
    capsys.readouterr()
    assert not (tmp_path / "sampled").exists()  # no part, no .part-*.tmp-*, no staging folder
    (tmp_path / "sampled").mkdir()  # a folder that was there stays, empty
    assert _sample(job) == 2
    capsys.readouterr()
    assert list((tmp_path / "sampled").iterdir()) == []


# ---- 8. the service's token: owner-only file, exactly one authorization header --------------

SERVE_JOB = """
[sampler.negative_sampler]
input_path = "items.parquet"
num_sample = 2
item_id_field = "target"

[service]
port = 0
token_file = "token"
"""


def test_case8_a_token_file_others_can_read_is_refused(tmp_path):
    pq.write_table(pa.table({"id": np.arange(1, 51, dtype=np.int64)}), tmp_path / "items.parquet")
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "token").chmod(0o666)
    (tmp_path / "job.toml").write_text(SERVE_JOB)
    # a process of its own: a build that accepted the file would serve until the timeout
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    serve = [sys.executable, "-m", "negseq.cli", "serve", "--config", str(tmp_path / "job.toml")]
    proc = subprocess.run(serve, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert (
        proc.stderr.count("\n") == 1
        and "mode 0666" in proc.stderr
        and "others on this machine" in proc.stderr
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer wrong"), (b"authorization", b"Bearer s3cret")],
        [(b"authorization", b"Bearer s3cret"), (b"authorization", b"Bearer s3cret")],
    ],
)
def test_case8_a_call_with_several_authorization_headers_is_refused(headers):
    from negseq.service import SamplerServer

    items = ItemTable.from_arrow(pa.table({"id": np.arange(1, 51, dtype=np.int64)}))
    server = SamplerServer(NegativeSampler(items, num_sample=2, item_id_field="target"), token="s3cret")
    client = flight.connect(server.location)
    try:
        ok = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer s3cret")])
        assert list(client.do_action(flight.Action("health", b""), ok))[0].body.to_pybytes() == b"ok"
        with pytest.raises(flight.FlightUnauthenticatedError, match="2 authorization headers"):
            list(client.do_action(flight.Action("health", b""), flight.FlightCallOptions(headers=headers)))
    finally:
        client.close()
        server.shutdown()
