"""`negseq import-config`: TorchEasyRec pipeline configs (written as its examples/*.config are)
become `negseq sample` jobs that run on TorchEasyRec's own tables; what cannot be carried over is
named; a config TorchEasyRec's protos would refuse is an error naming file, line and field."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negseq.cli import main
from negseq.config import load_config
from negseq.errors import NegseqError
from negseq.textproto import EnumName, parse

# An HSTU match config as TorchEasyRec's tzrec/tests/configs/hstu_kuairand_1k.config and
# docs/source/models/hstu_match.md write it (features and towers trimmed, structure kept).
HSTU_CONFIG = r"""
train_input_path: "data/kuairand-train.parquet"
eval_input_path: "data/kuairand-eval.parquet"
model_dir: "experiments/kuairand/hstu_match"
train_config {
    sparse_optimizer {
        rowwise_adagrad_optimizer {
            lr: 0.001
        }
        constant_learning_rate {
        }
    }
    num_epochs: 1
}
eval_config {
}
data_config {
    batch_size: 4
    dataset_type: ParquetDataset
    fg_mode: FG_DAG
    label_fields: ["cand_seq__action_weight", "cand_seq__watch_time"]
    num_workers: 2
    force_base_data_group: true
    negative_sampler {
        input_path: "data/kuairand-item-gl.txt"
        num_sample: 6
        attr_fields: "video_id"
        item_id_field: "cand_seq__video_id"
        attr_delimiter: "\t"
    }
}
feature_configs {
    id_feature {
        feature_name: "user_id"
        expression: "user:user_id"
        embedding_dim: 32
        num_buckets: 10000000
    }
}
feature_configs {
    sequence_feature {
        sequence_name: "uih_seq"
        sequence_length: 4096
        sequence_delim: "|"
        features {
            id_feature {
                feature_name: "video_id"
                expression: "item:video_id"
                embedding_name: "video_id_emb"
                embedding_dim: 32
                num_buckets: 10000000
            }
        }
        features {
            raw_feature {
                feature_name: "action_timestamp"
                expression: "user:action_timestamp"
            }
        }
    }
}
feature_configs {
    sequence_feature {
        sequence_name: "cand_seq"
        sequence_length: 100
        sequence_delim: "|"
        features {
            id_feature {
                feature_name: "video_id"
                expression: "item:video_id"
                embedding_name: "video_id_emb"
                embedding_dim: 32
                num_buckets: 10000000
            }
        }
    }
}
model_config {
    feature_groups {
        group_name: "uih"
        feature_names: "uih_seq__video_id"
        group_type: JAGGED_SEQUENCE
    }
    feature_groups {
        group_name: "candidate"
        feature_names: "cand_seq__video_id"
        group_type: JAGGED_SEQUENCE
    }
    hstu_match {
        user_tower {
            input: "uih"
            hstu {
                stu {
                    embedding_dim: 32
                    num_heads: 4
                }
                attn_num_layers: 2
            }
            max_seq_len: 4096
        }
        item_tower {
            input: "candidate"
            mlp {
                hidden_units: 32
                activation: ""
            }
        }
        similarity: COSINE
        temperature: 0.05
    }
    metrics {
        recall_at_k {
            top_k: 5
        }
    }
    losses {
        softmax_cross_entropy {}
    }
    kernel: TRITON
}
"""

# A DSSM with hard negatives as examples/dssm_taobao.config and
# tzrec/tests/configs/dssm_fg_hard_negative_mock.config write it (features trimmed).
DSSM_HARD_CONFIG = r"""
train_input_path: "data/taobao_train.parquet"
eval_input_path: "data/taobao_eval.parquet"
model_dir: "experiments/dssm_taobao"
train_config {
    sparse_optimizer {
        adagrad_optimizer {
            lr: 0.001
        }
        constant_learning_rate {
        }
    }
    num_epochs: 8
}
eval_config {
}
data_config {
    batch_size: 3
    dataset_type: ParquetDataset
    fg_mode: FG_DAG
    label_fields: "clk"
    num_workers: 8
    hard_negative_sampler {
        user_input_path: "data/taobao_user_gl"
        item_input_path: "data/taobao_ad_feature_gl"
        hard_neg_edge_input_path: "data/taobao_noclk_edge_gl"
        num_sample: 4
        num_hard_sample: 2
        attr_fields: "adgroup_id"
        attr_fields: "cate_id"
        attr_fields: "brand"
        item_id_field: "adgroup_id"
        user_id_field: "user_id"
        attr_delimiter: "\x02"
        num_eval_sample: 2
    }
}
feature_configs {
    id_feature {
        feature_name: "user_id"
        expression: "user:user_id"
        num_buckets: 1141730
        embedding_dim: 16
    }
}
feature_configs {
    id_feature {
        feature_name: "adgroup_id"
        expression: "item:adgroup_id"
        num_buckets: 846812
        embedding_dim: 16
    }
}
feature_configs {
    sequence_feature {
        sequence_name: "click_50_seq"
        sequence_length: 100
        sequence_delim: "|"
        features {
            id_feature {
                feature_name: "adgroup_id"
                expression: "item:adgroup_id"
                num_buckets: 846812
                embedding_dim: 16
            }
        }
    }
}
model_config {
    feature_groups {
        group_name: "user"
        feature_names: "user_id"
        group_type: DEEP
    }
    feature_groups {
        group_name: "item"
        feature_names: "adgroup_id"
        group_type: DEEP
    }
    dssm {
        user_tower {
            input: 'user'
            mlp {
                hidden_units: [512, 256, 128]
            }
        }
        item_tower {
            input: 'item'
            mlp {
                hidden_units: [512, 256, 128]
            }
        }
        output_dim: 64
    }
    losses {
        softmax_cross_entropy {}
    }
}
"""


def _write_gl(path: Path, header: str, rows: list[str]) -> None:
    """As TorchEasyRec's tests write graph-learn tables: a typed header, tab-separated rows."""
    with path.open("w") as f:
        f.write(header + "\n")
        for row in rows:
            f.write(row + "\n")


def _import(tmp_path: Path, config: str, capsys) -> tuple[dict, str]:
    (tmp_path / "pipeline.config").write_text(config)
    job = tmp_path / "job.toml"
    rc = main(
        ["import-config", str(tmp_path / "pipeline.config"), "--out", str(job), "--base-dir", str(tmp_path)]
    )
    assert rc == 0
    report = capsys.readouterr().err
    return tomllib.loads(job.read_text()), report


def test_hstu_match_config_becomes_a_sample_job_that_runs(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    # the item table TorchEasyRec's HSTU config points at: one attr (video_id), attr_delimiter "\t"
    _write_gl(
        data / "kuairand-item-gl.txt",
        "id:int64\tweight:float\tattrs:string",
        [f"{i}\t1\t{i}" for i in range(1, 41)],
    )
    pq.write_table(
        pa.table(
            {
                "user_id": [1, 2, 3, 4, 5],
                "uih_seq__video_id": ["1|2|3", "4", "5|6", "7|8|9|10", "11"],
                "cand_seq__video_id": ["12|13", "14", "15|16|17", "18", "19|20"],
            }
        ),
        data / "kuairand-train.parquet",
    )
    job, report = _import(tmp_path, HSTU_CONFIG, capsys)
    assert job["input"] == {"path": str(data / "kuairand-train.parquet"), "format": "parquet"}
    assert job["sampler"] == {
        "negative_sampler": {
            "input_path": str(data / "kuairand-item-gl.txt"),
            "num_sample": 6,
            "attr_fields": ["video_id"],
            "item_id_field": "cand_seq__video_id",
            "attr_delimiter": "\t",
            "exclude": "batch",  # graph-learn's, not negseq's default
        }
    }
    assert job["candidates"] == {"layout": "suffix", "batch_size": 4, "seq_delim": "|"}
    assert "data" not in job  # uih_seq's sequence_length is negseq run's [data] max_seq_len: reported
    for name in (
        "eval_input_path",
        "model_dir",
        "train_config",
        "eval_config",
        "model_config",
        "data_config.fg_mode",
        "data_config.label_fields",
        "data_config.num_workers",
        "data_config.force_base_data_group",
        "cand_seq.sequence_length",
        "uih_seq.sequence_length",
        "feature_configs (3 features)",
    ):
        assert f"  {name}: " in report, name
    assert "import-config: 12 field(s) not carried over" in report
    text = (tmp_path / "job.toml").read_text()
    assert f"--input {data / 'kuairand-eval.parquet'}" in text  # the eval input's command

    assert main(["sample", str(tmp_path / "job.toml"), "--quiet"]) == 0
    out = pq.read_table(tmp_path / "sampled")
    candidates = out.column("cand_seq__video_id").to_pylist()
    # TorchEasyRec's layout: a batch's last row holds its positives, then the num_sample negatives
    assert candidates[:3] == ["12|13", "14", "15|16|17"]
    last = candidates[3].split("|")
    assert last[0] == "18" and len(last) == 1 + 6 and all(1 <= int(i) <= 40 for i in last)
    assert out.column("cand_pos_lengths").to_pylist() == [2, 1, 3, 1, 2]


def test_dssm_hard_negative_config_becomes_a_sample_job_that_runs(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    # docs/source/models/dssm.md: id:int64 | weight:float | attrs:string, attrs joined by "\x02"
    _write_gl(
        data / "taobao_ad_feature_gl",
        "id:int64\tweight:float\tattrs:string",
        [f"{i}\t{1}\t{i}\x02{i % 5}\x02b{i}" for i in range(100, 130)],
    )
    _write_gl(data / "taobao_user_gl", "userid:int64\tweight:float", [f"{u}\t{1}" for u in range(1, 5)])
    _write_gl(
        data / "taobao_noclk_edge_gl",
        "userid:int64\titemid:int64\tweight:float",
        [f"{u}\t{100 + u}\t{1}" for u in range(1, 5)],
    )
    pq.write_table(
        pa.table({"user_id": [1, 2, 3, 4], "adgroup_id": [110, 111, 112, 113], "clk": [1, 1, 1, 1]}),
        data / "taobao_train.parquet",
    )
    job, report = _import(tmp_path, DSSM_HARD_CONFIG, capsys)
    assert job["candidates"]["batch_size"] == 3
    fields = job["sampler"]["hard_negative_sampler"]
    assert fields == {
        "user_input_path": str(data / "taobao_user_gl"),
        "item_input_path": str(data / "taobao_ad_feature_gl"),
        "hard_neg_edge_input_path": str(data / "taobao_noclk_edge_gl"),
        "num_sample": 4,
        "num_hard_sample": 2,
        "attr_fields": ["adgroup_id", "cate_id", "brand"],
        "item_id_field": "adgroup_id",
        "user_id_field": "user_id",
        "attr_delimiter": "\x02",
        "num_eval_sample": 2,
        "exclude": "batch",
    }
    assert job["candidates"] == {
        "layout": "suffix",
        "batch_size": 3,
    }  # a scalar item id: no sequence delimiter
    assert "data" not in job  # click_50_seq is a history the sampler never reads
    assert "  data_config.label_fields: " in report and "  model_config: " in report

    assert main(["sample", str(tmp_path / "job.toml"), "--quiet"]) == 0
    out = pq.read_table(tmp_path / "sampled").to_pylist()
    assert [row["adgroup_id"][0] for row in out] == [110, 111, 112, 113]
    # batch 0 (users 1..3): the last row holds its positive, 4 negatives, then users' hard items
    assert out[2]["adgroup_id"][-3:] == [101, 102, 103]
    assert out[2]["hard_neg_indices"] == [0, 0, 1, 0, 2, 0]


def test_config_printed_without_out(tmp_path, capsys):
    (tmp_path / "pipeline.config").write_text(HSTU_CONFIG)
    assert main(["import-config", str(tmp_path / "pipeline.config"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert tomllib.loads(captured.out)["candidates"]["seq_delim"] == "|"
    assert captured.err == ""


def test_existing_out_is_kept_without_force(tmp_path, capsys):
    (tmp_path / "pipeline.config").write_text(HSTU_CONFIG)
    (tmp_path / "job.toml").write_text("mine\n")
    args = ["import-config", str(tmp_path / "pipeline.config"), "--out", str(tmp_path / "job.toml")]
    assert main(args) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "job.toml").read_text() == "mine\n"
    assert main([*args, "--force", "--quiet"]) == 0
    assert "[sampler.negative_sampler]" in (tmp_path / "job.toml").read_text()


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            "num_sample: 6",
            "bogus: 1",
            r"pipeline.config:{line}: data_config.negative_sampler.bogus is not a field of "
            r"TorchEasyRec's negative_sampler",
        ),
        (
            "num_sample: 6",
            'num_sample: "6"',
            r"pipeline.config:{line}: data_config.negative_sampler.num_sample must be a uint32, got '6'",
        ),
        ("num_sample: 6", "num_sample: -6", r"pipeline.config:{line}: .*num_sample must be a uint32, got -6"),
        ("negative_sampler {", "tdm_sampler {", r"pipeline.config:{line}: .*TDMSampler .* is not one of"),
        (
            'item_id_field: "cand_seq__video_id"',
            "item_id_field: cand_seq__video_id",
            r"pipeline.config:{line}: .*item_id_field must be a string, got cand_seq__video_id",
        ),
        ('attr_delimiter: "\\t"', 'attr_delimiter: "\\t', r"pipeline.config:{line}:25: unterminated string"),
        ("num_workers: 2", "num_workers 2", r"pipeline.config:{line}:17: expected ':' or '\{{' after"),
        ("eval_config {\n}", "eval_config {", r"pipeline.config:\d+:1: missing '}}': the file ends inside"),
    ],
)
def test_configs_torcheasyrec_would_refuse_are_errors(tmp_path, capsys, old, new, message):
    assert old in HSTU_CONFIG
    config = HSTU_CONFIG.replace(old, new)
    line = HSTU_CONFIG[: HSTU_CONFIG.index(old)].count("\n") + 1
    (tmp_path / "pipeline.config").write_text(config)
    assert (
        main(["import-config", str(tmp_path / "pipeline.config"), "--out", str(tmp_path / "job.toml")]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("negseq import-config: error:") and err.count("\n") == 1
    assert re.search(message.format(line=line), err), err
    assert not (tmp_path / "job.toml").exists()


def test_item_id_delim_is_the_sequence_delimiter(tmp_path, capsys):
    """TorchEasyRec's NegativeSampler.item_id_delim splits the item column, as seq_delim does."""
    pq.write_table(pa.table({"id": list(range(1, 21))}), tmp_path / "items.parquet")
    pq.write_table(pa.table({"items": ["1|2", "3"]}), tmp_path / "train.parquet")
    sampler = "[sampler.negative_sampler]\ninput_path='items.parquet'\nnum_sample=2\nitem_id_field='items'\n"
    (tmp_path / "job.toml").write_text(
        "[input]\npath='train.parquet'\n[output]\ndir='out'\n"
        + sampler
        + "item_id_delim='|'\n[candidates]\nlayout='suffix'\n"
    )
    assert main(["sample", str(tmp_path / "job.toml"), "--quiet"]) == 0
    rows = pq.read_table(tmp_path / "out").column("items").to_pylist()
    assert rows[0] == "1|2" and rows[1].startswith("3|") and len(rows[1].split("|")) == 3

    (tmp_path / "both.toml").write_text(
        "[input]\npath='train.parquet'\n[output]\ndir='out2'\n"
        + sampler
        + "item_id_delim='|'\n[candidates]\nlayout='suffix'\nseq_delim=';'\n"
    )
    with pytest.raises(NegseqError, match=r'item_id_delim "\|" and \[candidates\] seq_delim ";" disagree'):
        load_config(tmp_path / "both.toml", command="sample")
    assert main(["sample", str(tmp_path / "both.toml"), "--quiet"]) == 2
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("loader", ["sample", "serve", "run"])
def test_item_id_delim_is_read_by_every_job_file(tmp_path, loader):
    from negseq.service.job import ServiceJob

    def seq_delim(path: Path) -> str:
        if loader == "serve":
            return ServiceJob.from_toml(path).candidates.seq_delim
        return load_config(path, command=loader).candidates.seq_delim

    base = "[input]\npath='t.parquet'\n[output]\ndir='o'\n" if loader == "sample" else ""
    base += "[data]\ninteractions='log.csv'\n" if loader == "run" else ""
    base += "[sampler.negative_sampler]\ninput_path='i.parquet'\nnum_sample=2\nitem_id_field='next_items'\n"
    (tmp_path / "a.toml").write_text(base + "item_id_delim='|'\n")
    assert seq_delim(tmp_path / "a.toml") == "|"
    (tmp_path / "b.toml").write_text(base + "item_id_delim='|'\n[candidates]\nseq_delim='|'\n")
    assert seq_delim(tmp_path / "b.toml") == "|"
    (tmp_path / "c.toml").write_text(base + "item_id_delim='|'\n[candidates]\nseq_delim=','\n")
    with pytest.raises(NegseqError, match=r'c.toml: \[sampler.negative_sampler\] item_id_delim "\|" and '):
        seq_delim(tmp_path / "c.toml")
    (tmp_path / "d.toml").write_text(base + "item_id_delim=''\n")
    with pytest.raises(NegseqError, match=r'\[sampler.negative_sampler\] item_id_delim: expected .*, got ""'):
        seq_delim(tmp_path / "d.toml")


def test_text_format_values():
    """The forms TorchEasyRec's configs use: lists, nested messages, enums, C escapes, comments."""
    message = parse(
        'a: "x\\x02y"  # comment\n'
        "b: [1, 2.5, -3]\n"
        "c { d: 'it''s' e: ENUM_VALUE f: true }\n"
        'g < h: "\\344\\270\\255\\t" >\n'
        'i: "\\u6211\\n";\n'
        'j: ["p", "q"]\n'
        "k: {}\n"
    )
    assert [f.value for f in message.all("a")] == ["x\x02y"]
    assert [f.value for f in message.all("b")] == [1, 2.5, -3]
    (c,) = message.all("c")
    assert [(f.name, f.value) for f in c.value.fields] == [("d", "its"), ("e", "ENUM_VALUE"), ("f", True)]
    assert isinstance(c.value.all("e")[0].value, EnumName)
    assert message.all("g")[0].value.all("h")[0].value == "中\t"
    assert message.all("i")[0].value == "我\n"
    assert [f.value for f in message.all("j")] == ["p", "q"]
    assert message.all("k")[0].value.fields == [] and message.all("k")[0].line == 7


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: 1\nb {\n  c: 2\n", r"<text>:4:1: missing '}'"),
        ("a: 1\n}\n", r"<text>:2:1: expected a field name, got '}'"),
        ('a: "\\q"', r"<text>:1:4: unknown escape \\q"),
        ("a: @", r"<text>:1:4: unexpected '@'"),
        ("[ext.field]: 1", r"<text>:1:1: extension and Any fields"),
        ("a: [1, 2", r"<text>:1:9: expected ','"),
    ],
)
def test_text_format_syntax_errors_name_line_and_column(text, message):
    with pytest.raises(NegseqError, match=message):
        parse(text)


def test_csv_dataset_odps_paths_and_globs(tmp_path):
    from negseq.import_config import import_pipeline_config

    config = _minimal_config(
        'train_input_path: "data/train/*.csv"\n',
        "dataset_type: CsvDataset\n"
        '    delimiter: "\\t"\n'
        '    input_fields { input_name: "user_id" }\n'
        '    input_fields { input_name: "item_ids" input_type: STRING }\n',
        'input_path: "odps://proj/tables/items_gl"',
    )
    (tmp_path / "pipeline.config").write_text(config)
    imported = import_pipeline_config(tmp_path / "pipeline.config", base_dir=tmp_path)
    assert imported.tables["candidates"]["batch_size"] == 1024  # TorchEasyRec's default
    assert imported.tables["input"] == {
        "path": str(tmp_path / "data" / "train" / "*.csv"),  # globs read as they are
        "format": "csv",
        "delimiter": "\t",
        "column_names": ["user_id", "item_ids"],
    }
    assert imported.tables["sampler.negative_sampler"]["input_path"] == "odps://proj/tables/items_gl"
    assert dict(imported.not_carried)["data_config.negative_sampler.input_path"].startswith("odps:// tables")

    (tmp_path / "header.config").write_text(
        _minimal_config(
            'train_input_path: "t.csv"\n', "dataset_type: CsvDataset\n    with_header: true\n", ""
        )
    )
    table = import_pipeline_config(tmp_path / "header.config", base_dir=tmp_path).tables["input"]
    assert table == {"path": str(tmp_path / "t.csv"), "format": "csv", "delimiter": ","}


def test_absent_required_sampler_fields_are_reported(tmp_path):
    from negseq.import_config import import_pipeline_config

    (tmp_path / "pipeline.config").write_text(
        "data_config {\n  hard_negative_sampler {\n    num_sample: 4\n    item_id_field: 'i'\n  }\n}\n"
    )
    imported = import_pipeline_config(tmp_path / "pipeline.config", base_dir=tmp_path)
    absent = [name for name, why in imported.not_carried if why.startswith("required by TorchEasyRec")]
    assert absent == [
        f"data_config.hard_negative_sampler.{name}"
        for name in (
            "hard_neg_edge_input_path",
            "item_input_path",
            "num_hard_sample",
            "user_id_field",
            "user_input_path",
        )
    ]
    assert "train_input_path" in dict(imported.not_carried)


def _minimal_config(top: str, data: str, sampler_path: str) -> str:
    return (
        top
        + "data_config {\n    "
        + data
        + "    negative_sampler {\n        "
        + (sampler_path or 'input_path: "items_gl"')
        + '\n        num_sample: 2\n        item_id_field: "item_ids"\n    }\n}\n'
    )
