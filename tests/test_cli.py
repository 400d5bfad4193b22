"""`negseq prepare`, `sample`, `inspect`: the ml-100k round trip and error reporting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negseq.candidates import CandidateSpec, sample_batch
from negseq.cli import main
from negseq.io.sinks import SampledSink
from negseq.sampler import ItemTable, NegativeSampler

REPO = Path(__file__).parents[1]
# CI keeps the data at ../shared next to the repo; NEGSEQ_SHARED_DIR points elsewhere (worktrees).
ML100K = Path(os.environ.get("NEGSEQ_SHARED_DIR", REPO.parent / "shared")) / "data" / "ml-100k"

JOB = """
[input]
path = "prep/train.parquet"

[sampler.negative_sampler]
input_path = "prep/items.parquet"
num_sample = 8
item_id_field = "target"
seed = 11

[candidates]
layout = "{layout}"
batch_size = 200

[output]
dir = "sampled"
format = "{fmt}"

[run]
workers = 2
"""


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.skipif(not (ML100K / "u.data").exists(), reason=f"MovieLens 100K not found at {ML100K}")
@pytest.mark.parametrize("layout, fmt", [("interleaved", "parquet"), ("suffix", "ipc")])
def test_ml100k_prepare_sample_inspect(tmp_path, capsys, layout, fmt):
    rc = main(
        [
            "prepare",
            str(ML100K / "u.data"),
            "--out",
            str(tmp_path / "prep"),
            "--delimiter",
            "\\t",
            "--column-names",
            "user_id,item_id,rating,timestamp",
            "--quiet",
        ]
    )
    assert rc == 0
    train = pq.read_table(tmp_path / "prep" / "train.parquet")
    assert train.num_rows == 943  # every ml-100k user has >= 20 ratings
    (tmp_path / "job.toml").write_text(JOB.format(layout=layout, fmt=fmt))
    assert main(["sample", str(tmp_path / "job.toml"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "sampled"), "--json", "--rows", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["manifest_ok"] and report["problems"] == []
    assert report["manifest"]["rows_in"] == report["manifest"]["rows_out"] == train.num_rows
    assert report["rows"] == train.num_rows
    assert report["manifest"]["seed"] == 11 and report["manifest"]["num_files"] == 5
    head = report["head"][0]
    if layout == "interleaved":
        assert len(head["target"]) == 1 + 8 and head["target"][0] == train.column("target")[0].as_py()
    else:
        assert head["target"] == [train.column("target")[0].as_py()]
    # a second run writes the same names again: exactly once
    assert main(["sample", str(tmp_path / "job.toml"), "--quiet"]) == 0
    ext = "parquet" if fmt == "parquet" else "arrow"
    assert sorted(p.name for p in (tmp_path / "sampled").iterdir()) == [f"_manifest.{ext}"] + [
        f"part-00000{i}.{ext}" for i in range(5)
    ]


def test_inspect_reports_mismatch(tmp_path, capsys):
    out = tmp_path / "out"
    sink = SampledSink.create(str(out))
    items = ItemTable.from_arrow(pa.table({"id": [1, 2, 3]}))
    sampler = NegativeSampler(items, num_sample=1, item_id_field="x")
    sink.write(sample_batch(pa.record_batch({"x": [1, 2]}), sampler, CandidateSpec()))
    sink.finish(expected_batches=[0], describe={})
    pq.write_table(pa.table({"x": [1]}), out / "part-000000.parquet")
    assert main(["inspect", str(out)]) == 1
    assert "manifest matches files: NO" in capsys.readouterr().out


def test_sample_missing_input_column_fails_before_writing(tmp_path, capsys):
    pq.write_table(pa.table({"id": [1, 2], "weight": [1.0, 1.0]}), tmp_path / "items.parquet")
    pq.write_table(pa.table({"other": [1]}), tmp_path / "x.parquet")
    (tmp_path / "job.toml").write_text(
        "[input]\npath='x.parquet'\n[output]\ndir='o'\n[sampler.negative_sampler]\n"
        "input_path='items.parquet'\nnum_sample=2\nitem_id_field='item'\n"
    )
    assert main(["sample", str(tmp_path / "job.toml"), "--quiet"]) == 2
    assert "missing column(s) 'item'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "job, message",
    [
        ("[input]\npath='x.parquet'\n[output]\ndir='o'\n", "negseq sample needs one [sampler.<type>] table"),
        ("[input]\npath='x.parquet'\nbogus=1\n", '[input] unknown key "bogus"'),
        ("[input\n", "not valid TOML"),
        (
            "[input]\npath='x.parquet'\n[output]\ndir='o'\n[sampler.negative_sampler]\n"
            "input_path='i.parquet'\nnum_sample=2\nitem_id_field='item'\n",
            "i.parquet",
        ),
    ],
)
def test_sample_errors_are_one_line(tmp_path, capsys, job, message):
    (tmp_path / "job.toml").write_text(job)
    assert main(["sample", str(tmp_path / "job.toml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("negseq sample: error:")
    assert not (tmp_path / "o").exists()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_console_error_has_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "negseq.cli", "inspect", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env=env,
        timeout=100,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "no such file or folder" in proc.stderr


def test_prepare_and_sample_from_job_files_with_csv(tmp_path, capsys):
    log = "u|i|t\n" + "".join(f"{u}|{i}|{t}\n" for u in (1, 2) for t, i in enumerate((10, 11, 12, 13)))
    (tmp_path / "log.psv").write_text(log)
    (tmp_path / "prepare.toml").write_text(
        "[data]\ninteractions='log.psv'\nformat='csv'\ndelimiter='|'\n"
        "user_field='u'\nitem_field='i'\ntime_field='t'\nmax_seq_len=2\n[prepare]\ndir='prep'\n"
    )
    assert main(["prepare", "--job", str(tmp_path / "prepare.toml"), "--quiet"]) == 0
    evals = pq.read_table(tmp_path / "prep" / "eval.parquet").to_pylist()
    assert evals[0]["uih"] == [11, 12] and evals[0]["target"] == 13
    items = pq.read_table(tmp_path / "prep" / "items.parquet").to_pylist()
    # counts leave out the held-out valid and eval targets (12, 13 for both users); weight = count ** 0.75
    counts = {10: 2, 11: 2, 12: 0, 13: 0}
    assert items == [{"id": i, "weight": pytest.approx(c**0.75), "count": c} for i, c in counts.items()]

    # sample a CSV source without a header, positives as ';' strings
    (tmp_path / "pos.csv").write_text("1,10;11\n2,\n3,12\n")
    (tmp_path / "sample.toml").write_text(
        "[input]\npath='pos.csv'\ncolumn_names=['user_id','item_id']\n"
        "[sampler.negative_sampler]\ninput_path='prep/items.parquet'\nnum_sample=2\n"
        "item_id_field='item_id'\n[candidates]\nlayout='interleaved'\nbatch_size=2\n[output]\ndir='out'\n"
    )
    assert main(["sample", str(tmp_path / "sample.toml")]) == 0
    assert "sample: 3 rows in, 3 rows out, 2 files" in capsys.readouterr().out
    out = pq.read_table(tmp_path / "out").to_pylist()
    assert [r["cand_pos_lengths"] for r in out] == [2, 0, 1]
    assert [len(r["item_id"].split(";")) if r["item_id"] else 0 for r in out] == [6, 0, 3]


@pytest.mark.parametrize(
    "table, message",
    [
        ("[prepare]\ndir='o'\nbogus=1\n", '[prepare] unknown key "bogus"'),
        ("[prepare]\ninput='x.csv'\n", "[prepare] input: renamed; write it as [data] interactions"),
        ("prepare = 3\n", "[prepare]: expected a table, got 3"),
    ],
)
def test_prepare_job_file_errors_are_one_line(tmp_path, capsys, table, message):
    (tmp_path / "prepare.toml").write_text(table)
    assert main(["prepare", "--job", str(tmp_path / "prepare.toml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# ---- --version, --help, inspect (issue 16 item 6, issue 15 item 7) --------------------------


def test_version(capsys):
    from negseq import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"negseq {__version__}\n"


def test_help_lists_each_command_on_one_line(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "add_<name>" not in out and "subcommand" not in out  # no developer notes
    commands = ["prepare", "sample", "inspect", "run", "serve", "import-config"]
    for name in commands:
        assert any(
            line.startswith(f"    {name} ") and line.split(maxsplit=1)[1:] for line in out.splitlines()
        ), name
    for name in commands:  # each command's own help has a description or an example for users
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        assert text.startswith(f"usage: negseq {name}") and (
            "example:" in text or name in ("serve", "prepare")
        )


def _sampled_folder(out: Path, *, manifest: bool, sampler: dict | None = None) -> None:
    """A folder as `negseq sample` writes it: part files, then the manifest."""
    out.mkdir()
    table = pa.table(
        {
            "user_id": [7],
            "uih": [list(range(300))],  # a long history: it must not hide the candidates
            "target": [[5, 1001, 1002]],
            "title": ["我们" * 3],
            "cand_pos_lengths": pa.array([1], pa.int32()),
        }
    )
    pq.write_table(table, out / "part-000000.parquet")
    if manifest:
        files = [{"name": "part-000000.parquet", "batch_index": 0, "rows_in": 1, "rows_out": 1}]
        body = {"rows_in": 1, "rows_out": 1, "num_files": 1, "seed": 0, "config_hash": "c", "files": files}
        body["format"] = "parquet"
        if sampler is not None:
            body["sampler"] = sampler
        metadata = {b"negseq.manifest": json.dumps(body)}
        pq.write_table(
            table.schema.empty_table().replace_schema_metadata(metadata), out / "_manifest.parquet"
        )


def test_inspect_candidate_columns_first_unicode_and_per_column_cuts(tmp_path, capsys):
    sampler = {"negative_sampler": {"item_id_field": "target", "attr_fields": ["target", "title"]}}
    _sampled_folder(tmp_path / "out", manifest=True, sampler=sampler)
    assert main(["inspect", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    row = out[out.index("row 0:") :].splitlines()[1:]
    assert [line.split(":")[0].strip() for line in row] == [
        "target",
        "title",
        "cand_pos_lengths",
        "user_id",
        "uih",
    ]
    assert row[0] == "  target: [5, 1001, 1002]"
    assert row[1] == '  title: "我们我们我们"'  # readable, not \u6211
    assert row[4].startswith("  uih: [0, 1, 2") and row[4].endswith("… (300 items)")
    assert len(row[4]) < 160
    assert main(["inspect", str(tmp_path / "out"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["columns"][:3] == ["target", "title", "cand_pos_lengths"]
    assert list(report["head"][0]) == report["columns"] and report["head"][0]["uih"] == list(range(300))


def test_inspect_json_keeps_unicode(tmp_path, capsys):
    _sampled_folder(tmp_path / "out", manifest=True)
    assert main(["inspect", str(tmp_path / "out"), "--json"]) == 0
    out = capsys.readouterr().out
    assert "我们我们我们" in out and "\\u6211" not in out
    assert json.loads(out)["columns"][0] == "cand_pos_lengths"


def test_inspect_reads_a_graphlearn_table_as_the_sampler_does(tmp_path, capsys):
    # TorchEasyRec's item table (tzrec/datasets/sampler_test.py), under a name with a .txt suffix
    path = tmp_path / "item-gl.txt"
    with path.open("w") as f:
        f.write("id:int64\tweight:float\tattrs:string\n")
        for i in range(3):
            f.write(f"{i}\t{1}\t{i}:{i + 1000}:我们{i}\n")
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["columns"] == ["id", "weight", "attrs"]
    assert report["rows"] == 3
    assert report["head"][2] == {"id": 2, "weight": 1.0, "attrs": "2:1002:我们2"}


@pytest.mark.parametrize(
    "manifest, staged, message",
    [
        (
            False,
            False,
            "no _manifest.parquet or _manifest.arrow: the run that wrote this folder did not finish",
        ),
        (False, True, "(1 part file(s); staging folder .negseq-staging-0123456789ab;"),
        (True, True, ".negseq-staging-0123456789ab: left over from an unfinished run"),
    ],
)
def test_inspect_unfinished_folder_exits_nonzero(tmp_path, capsys, manifest, staged, message):
    _sampled_folder(tmp_path / "out", manifest=manifest)
    if staged:
        (tmp_path / "out" / ".negseq-staging-0123456789ab").mkdir()
    assert main(["inspect", str(tmp_path / "out")]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem: ")]
    assert any(message in line for line in problems), problems


def test_inspect_a_staging_folder_alone_exits_nonzero(tmp_path, capsys):
    (tmp_path / "out" / ".negseq-staging-0123456789ab").mkdir(parents=True)
    assert main(["inspect", str(tmp_path / "out")]) == 1
    assert "(0 part file(s); staging folder .negseq-staging-0123456789ab;" in capsys.readouterr().out


def test_inspect_plain_data_folder_is_not_unfinished(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "data" / "train.parquet")
    assert main(["inspect", str(tmp_path / "data")]) == 0
    assert "rows: 2" in capsys.readouterr().out
