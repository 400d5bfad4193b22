"""negseq.config: strict typed checks with exact error texts (issue 15 item 9), cross-key checks,
flags, path resolution, one default per concept, the README reference, and a fuzz test that
any job either parses or raises NegseqError."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import json
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from negseq import config as cfg
from negseq.config import FLAGS, JobConfig, load_config
from negseq.errors import NegseqError

REPO = Path(__file__).parents[1]

# A minimal `negseq sample` job: table -> key -> TOML literal.
BASE: dict[str, dict[str, str]] = {
    "input": {"path": '"rows.parquet"'},
    "sampler.negative_sampler": {
        "input_path": '"items.parquet"',
        "num_sample": "8",
        "item_id_field": '"item_id"',
    },
    "output": {"dir": '"out"'},
}


def write_job(folder: Path, overrides: dict[tuple[str, str], str] | None = None, *, drop=()) -> Path:
    """BASE with `overrides` ({(table, key): literal}) and without the (table, key)s in `drop`."""
    tables = {table: dict(keys) for table, keys in BASE.items()}
    if any(t.startswith("sampler.") and t != "sampler.negative_sampler" for t, _ in overrides or {}):
        del tables["sampler.negative_sampler"]  # one [sampler.<type>] a job
    for (table, key), literal in (overrides or {}).items():
        tables.setdefault(table, {})[key] = literal
    for table, key in drop:
        del tables[table][key]
    text = "\n".join(
        f"[{table}]\n" + "".join(f"{key} = {literal}\n" for key, literal in keys.items())
        for table, keys in tables.items()
    )
    path = folder / "job.toml"
    path.write_text(text)
    return path


def error_of(path: Path, command: cfg.Command = "sample", **kwargs) -> str:
    with pytest.raises(NegseqError) as info:
        load_config(path, command=command, **kwargs)
    return str(info.value)


# ---- issue 15 item 9: every case, exact texts -----------------------------------------------

STRING_WHERE_INT = [
    ("candidates", "batch_size", "an integer >= 1"),
    ("sampler.negative_sampler", "num_sample", "an integer in [0, 16777216]"),
    ("sampler.negative_sampler", "seed", "an integer in [0, 18446744073709551615]"),
    ("run", "workers", "an integer in [1, 1024]"),
    ("run", "epoch", "an integer in [0, 4294967295]"),
    ("candidates", "neg_per_pos", "an integer in [0, 16777216]"),
    ("sampler.negative_sampler", "num_eval_sample", "an integer in [0, 16777216]"),
    ("run", "max_in_flight", "an integer >= 1"),
    ("train", "epochs", "an integer in [1, 4294967296]"),
]


@pytest.mark.parametrize("table, key, expected", STRING_WHERE_INT)
def test_a_string_where_an_int_belongs_is_an_error_naming_file_table_key(tmp_path, table, key, expected):
    path = write_job(tmp_path, {(table, key): '"10"'})
    assert error_of(path) == f'{path}: [{table}] {key}: expected {expected}, got "10" (a string)'


def test_unknown_synthetic_key_is_named_with_the_known_ones(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text("[data.synthetic]\nnum_users = 5\nnum_user = 3\n")
    assert error_of(path, "run") == (
        f'{path}: [data.synthetic] unknown key "num_user" (did you mean num_users?); known: num_users, '
        "num_items, cluster_size, min_len, max_len, p_next, p_jump, zipf_a, seed"
    )


@pytest.mark.parametrize(
    "literal, got",
    [("1e12", "1000000000000.0 (a float)"), ("1000000000000", "1000000000000"), ("32.7", "32.7 (a float)")],
)
def test_num_sample_huge_or_fractional_is_refused_never_cast(tmp_path, literal, got):
    path = write_job(tmp_path, {("sampler.negative_sampler", "num_sample"): literal})
    assert error_of(path) == (
        f"{path}: [sampler.negative_sampler] num_sample: expected an integer in [0, 16777216], got {got}"
    )


@pytest.mark.parametrize(
    "literal, got", [("true", "true (a bool)"), ("1.5", "1.5 (a float)"), ('"10"', '"10" (a string)')]
)
def test_batch_size_bool_float_string_are_refused_never_cast(tmp_path, literal, got):
    path = write_job(tmp_path, {("candidates", "batch_size"): literal})
    assert error_of(path) == f"{path}: [candidates] batch_size: expected an integer >= 1, got {got}"


@pytest.mark.parametrize(
    "table, key, literal, expected, got",
    [
        ("run", "workers", "-1", "an integer in [1, 1024]", "-1"),
        ("run", "epoch", "-1", "an integer in [0, 4294967295]", "-1"),
        ("candidates", "neg_per_pos", "-3", "an integer in [0, 16777216]", "-3"),
        (
            "candidates",
            "seq_delim",
            '""',
            "a non-empty string without digits, '+' or '-' (they would read as part of an id)",
            '""',
        ),
    ],
)
def test_out_of_range_values_fail_before_anything_runs(tmp_path, table, key, literal, expected, got):
    path = write_job(tmp_path, {(table, key): literal})
    assert error_of(path) == f"{path}: [{table}] {key}: expected {expected}, got {got}"


def test_unknown_table_is_an_error_with_a_suggestion(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[inptu]\npath = "rows.parquet"\n')
    assert error_of(path) == (
        f"{path}: unknown table [inptu] (did you mean [input]?); known: name, [data], [sampler], "
        "[candidates], [model], [train], [ray], [output], [input], [run], [service], [prepare]"
    )


def test_every_int_key_refuses_bool_float_and_string(tmp_path):
    """Not only the keys the issue lists: every integer key of every table."""
    checked = 0
    for table, key, check in _all_keys():
        if not isinstance(check, cfg._Int):
            continue
        for literal, kind in (("true", "a bool"), ("2.0", "a float"), ('"2"', "a string")):
            path = write_job(tmp_path, _placed(table, key, literal))
            message = error_of(path)
            assert message.startswith(f"{path}: [{table}] {key}: expected an integer"), message
            assert message.endswith(f"({kind})"), message
            checked += 1
    assert checked >= 3 * 40


def test_every_float_key_takes_an_int(tmp_path):
    for table, key, check in _all_keys():
        if not isinstance(check, cfg._Float):
            continue
        low = 0 if check.low is None else math.floor(check.low) + (1 if check.low_open else 0)
        job = load_config(write_job(tmp_path, _placed(table, key, str(low))), command="sample")
        value = _value_of(job, table, key)
        assert value == low and isinstance(value, float), (table, key, value)


# ---- cross-key checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {("sampler.negative_sampler", "item_id_delim"): '"|"', ("candidates", "seq_delim"): '";"'},
            '[sampler.negative_sampler] item_id_delim "|" and [candidates] seq_delim ";" disagree',
        ),
        (
            {("candidates", "layout"): '"suffix"', ("candidates", "neg_per_pos"): "4"},
            '[candidates] neg_per_pos: applies to the "interleaved" layout only, got layout "suffix"',
        ),
        (
            {("ray", "min_actors"): "3", ("ray", "max_actors"): "2"},
            "[ray] max_actors: expected at least min_actors (3), got 2",
        ),
        (
            {("ray", "num_cpus"): "1", ("ray", "actor_cpus"): "1.5"},
            "[ray] actor_cpus: expected at most num_cpus (1) or no actor could start, got 1.5",
        ),
        (
            {("model", "embedding_dim"): "4", ("model", "num_heads"): "8"},
            "[model] num_heads: expected at most embedding_dim (4)",
        ),
        ({("service", "tls_cert"): '"c.pem"'}, "[service] tls_key: expected with tls_cert and tls_key"),
        ({("service", "tls_client_ca"): '"ca.pem"'}, "[service] tls_client_ca: mutual TLS needs"),
        ({("service", "metrics_port"): "8815"}, "[service] metrics_port: expected a port other than port"),
        (
            {("service", "host"): '"0.0.0.0"', ("service", "token_file"): '"token"'},
            '[service] host: a token would cross the network in plaintext to "0.0.0.0"',
        ),
        (
            {("input", "format"): '"parquet"', ("input", "delimiter"): '"\\t"'},
            '[input] delimiter: applies to CSV only, got format "parquet"',
        ),
    ],
)
def test_cross_key_checks_name_both_sides(tmp_path, overrides, message):
    path = write_job(tmp_path, overrides)
    assert error_of(path).startswith(f"{path}: {message}")


def test_hard_samplers_need_the_suffix_layout_and_default_to_it(tmp_path):
    hard = {
        "item_input_path": '"items.parquet"',
        "hard_neg_edge_input_path": '"hard.parquet"',
        "num_sample": "8",
        "num_hard_sample": "2",
        "item_id_field": '"item_id"',
        "user_id_field": '"user_id"',
    }
    path = tmp_path / "job.toml"
    body = "".join(f"{k} = {v}\n" for k, v in hard.items())
    path.write_text(f"[sampler.hard_negative_sampler]\n{body}")
    assert load_config(path, command="serve").candidates.layout == "suffix"
    path.write_text(f'[sampler.hard_negative_sampler]\n{body}[candidates]\nlayout = "interleaved"\n')
    assert error_of(path, "serve") == (
        f'{path}: [candidates] layout: expected "suffix" with [sampler.hard_negative_sampler] (hard '
        'negatives are shared by a batch), got "interleaved"'
    )


def test_serve_takes_neg_per_pos_beside_a_suffix_default(tmp_path):
    """negseq serve's [candidates] are request defaults: a request may ask for "interleaved"."""
    path = write_job(tmp_path, {("candidates", "layout"): '"suffix"', ("candidates", "neg_per_pos"): "4"})
    job = load_config(path, command="serve")
    assert (job.candidates.layout, job.candidates.neg_per_pos) == ("suffix", 4)
    assert error_of(path, "sample").startswith(f"{path}: [candidates] neg_per_pos: applies to the")
    path.write_text(
        '[sampler.hard_negative_sampler]\nitem_input_path = "i"\nhard_neg_edge_input_path = "h"\n'
        'num_sample = 4\nnum_hard_sample = 1\nitem_id_field = "i"\nuser_id_field = "u"\n'
        "[candidates]\nneg_per_pos = 4\n"
    )
    assert error_of(path, "serve") == (
        f'{path}: [candidates] neg_per_pos: applies to the "interleaved" layout, which '
        '[sampler.hard_negative_sampler] cannot serve (hard negatives need "suffix")'
    )


def test_the_service_docs_job_example_parses():
    import re

    (block,) = re.findall(r"```toml\n(.*?)```", (REPO / "docs/service.md").read_text(), re.S)
    job = load_config(tomllib.loads(block), command="serve", source="docs/service.md")
    assert job.sampler is not None and job.sampler.kind == "hard_negative_sampler"


def test_item_id_delim_and_seq_delim_are_one_value(tmp_path):
    job = load_config(
        write_job(tmp_path, {("sampler.negative_sampler", "item_id_delim"): '"|"'}), command="sample"
    )
    assert job.candidates.seq_delim == "|" and job.sampler is not None and job.sampler.item_id_delim == "|"
    job = load_config(write_job(tmp_path, {("candidates", "seq_delim"): '","'}), command="sample")
    assert job.sampler is not None and job.sampler.item_id_delim == ","


def test_data_needs_exactly_one_source_and_synthetic_takes_no_reading_keys(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[data]\ninteractions = "log.csv"\n[data.synthetic]\nnum_users = 5\n')
    assert error_of(path, "prepare") == (
        f"{path}: [data]: expected exactly one of interactions or [data.synthetic], got both"
    )
    path.write_text('[data]\nitem_field = "movie"\n[data.synthetic]\nnum_users = 5\n')
    assert error_of(path, "prepare").startswith(f"{path}: [data] item_field: applies to an interactions file")
    path.write_text("[data.synthetic]\nnum_items = 5\ncluster_size = 20\n")
    assert error_of(path, "prepare") == (
        f"{path}: [data.synthetic] cluster_size: expected at most num_items (5), got 20"
    )


def test_run_fills_the_prepared_tables_and_refuses_a_foreign_item_field(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(
        '[data.synthetic]\n[sampler.negative_sampler_v2]\nnum_sample = 4\npos_edge_input_path = "e.csv"\n'
    )
    job = load_config(path, command="run")
    assert job.sampler is not None
    assert job.output.dir == str(tmp_path / "runs" / "job")
    assert job.prepare.dir == str(tmp_path / "runs" / "job" / "prepared")
    assert job.sampler.item_input_path == str(tmp_path / "runs" / "job" / "prepared" / "items.parquet")
    assert (job.sampler.item_id_field, job.sampler.user_id_field) == ("next_items", "user_id")
    path.write_text(
        '[data.synthetic]\n[model]\nobjective = "last"\n'
        '[sampler.negative_sampler]\nnum_sample = 4\nitem_id_field = "next_items"\n'
    )
    assert error_of(path, "run") == (
        f'{path}: [sampler.negative_sampler] item_id_field: expected "target" (the "last" objective\'s '
        'positives), got "next_items"'
    )


@pytest.mark.parametrize(
    "command, drop, message",
    [
        ("sample", [("input", "path")], "[input] path: negseq sample needs it (or --input), got nothing"),
        ("sample", [("output", "dir")], "[output] dir: negseq sample needs it (or --out), got nothing"),
        (
            "serve",
            [("sampler.negative_sampler", "item_id_field")],
            "[sampler.negative_sampler] item_id_field: negseq serve needs it, got nothing",
        ),
        ("run", [], "[data]: negseq run needs it (interactions, or [data.synthetic]), got nothing"),
    ],
)
def test_each_command_names_what_it_misses(tmp_path, command, drop, message):
    path = write_job(tmp_path, drop=drop)
    assert error_of(path, command) == f"{path}: {message}"


@pytest.mark.parametrize(
    "table, key, literal, message",
    [
        ("input", "batch_size", "64", "[input] batch_size: renamed; write it as [candidates] batch_size"),
        ("output", "path", '"o"', "[output] path: renamed; write it as [output] dir"),
        ("ray", "local_workers", "2", "[ray] local_workers: renamed; write it as [run] workers"),
        ("prepare", "input", '"u.data"', "[prepare] input: renamed; write it as [data] interactions"),
        ("prepare", "out", '"prep"', "[prepare] out: renamed; write it as [prepare] dir"),
    ],
)
def test_renamed_keys_say_where_they_went(tmp_path, table, key, literal, message):
    path = write_job(tmp_path, {(table, key): literal})
    assert error_of(path) == f"{path}: {message}"


@pytest.mark.parametrize("name", ["..", ".", "/some/abs/folder", "a b", ""])
def test_a_name_is_never_a_path(tmp_path, name):
    path = tmp_path / "job.toml"
    path.write_text(f"name = {json.dumps(name)}\n")
    assert error_of(path, "serve").startswith(f"{path}: name: expected a name of letters, digits")


# ---- flags ---------------------------------------------------------------------------------


def test_flags_go_through_the_same_checks_and_name_the_flag(tmp_path):
    path = write_job(tmp_path)
    assert error_of(path, flags={"--workers": "1.5"}) == (
        'command line: --workers ([run] workers): expected an integer in [1, 1024], got "1.5"'
    )
    assert error_of(path, flags={"--workers": "-1"}) == (
        "command line: --workers ([run] workers): expected an integer in [1, 1024], got -1"
    )
    assert error_of(path, "serve", flags={"--port": "70000"}) == (
        "command line: --port ([service] port): expected an integer in [0, 65535], got 70000"
    )
    assert error_of(path, "serve", flags={"--log-level": "info"}).endswith(
        'got "info" (did you mean "INFO"?)'
    )
    job = load_config(path, command="sample", flags={"--workers": "3", "--input": None})
    assert job.run.workers == 3 and job.input.path == (str(tmp_path / "rows.parquet"),)


def test_paths_resolve_against_the_job_folder_and_flags_against_the_working_dir(tmp_path, monkeypatch):
    folder = tmp_path / "jobs"
    folder.mkdir()
    path = write_job(folder, {("input", "path"): '["a/*.parquet", "s3://bucket/rows", "/abs/x.csv"]'})
    monkeypatch.chdir(tmp_path)
    job = load_config(path, command="sample", flags={"--out": "elsewhere"})
    assert job.input.path == (str(folder / "a" / "*.parquet"), "s3://bucket/rows", "/abs/x.csv")
    assert job.sampler is not None and job.sampler.input_path == str(folder / "items.parquet")
    assert job.output.dir == str(tmp_path / "elsewhere")
    assert job.base_dir == str(folder) and job.source == str(path)


def test_prepare_flags_alone_and_text_parsing():
    job = load_config(
        None,
        command="prepare",
        flags={
            "input": "u.data",
            "--out": "prep",
            "--delimiter": "\\t",
            "--column-names": "user_id, item_id,rating,timestamp",
            "--max-seq-len": "50",
            "--item-weight-power": "1",
        },
    )
    assert job.data is not None and job.data.delimiter == "\t"
    assert job.data.column_names == ("user_id", "item_id", "rating", "timestamp")
    assert (job.data.max_seq_len, job.data.item_weight_power) == (50, 1.0)
    assert job.prepare.dir == os.path.join(os.getcwd(), "prep")
    with pytest.raises(NegseqError, match=r"^command line: \[prepare\] dir: negseq prepare needs it"):
        load_config(None, command="prepare", flags={"input": "u.data"})


def test_argparse_flags_keep_file_values_they_do_not_set(tmp_path):
    parser = argparse.ArgumentParser()
    cfg.add_config_flags(parser, "serve")
    path = write_job(tmp_path, {("service", "insecure"): "true", ("service", "port"): "9000"})
    args = parser.parse_args(["--max-rows", "10"])
    job = load_config(path, command="serve", flags=cfg.flag_values(args, "serve"))
    assert (job.service.insecure, job.service.port, job.service.max_rows) == (True, 9000, 10)
    args = parser.parse_args(["--insecure", "--port", "0"])
    job = load_config(path, command="serve", flags=cfg.flag_values(args, "serve"))
    assert (job.service.insecure, job.service.port) == (True, 0)
    assert set(FLAGS["serve"]) >= {"--tls-cert", "--tls-key", "--tls-client-ca", "--metrics-port"}
    for command in cfg.COMMANDS:  # every command's flags register, with their help
        command_parser = argparse.ArgumentParser()
        cfg.add_config_flags(command_parser, command)
        assert all(flag in command_parser.format_help() for flag in FLAGS[command])


# ---- files, defaults, the reference, the import ---------------------------------------------


@pytest.mark.parametrize(
    "relative, command",
    [
        ("examples/ml100k.toml", "run"),
        ("examples/synthetic.toml", "run"),
        ("examples/ml100k_sample.toml", "sample"),
        ("docker/sampler.toml", "serve"),
        ("tests/data/tiny_job.toml", "run"),
    ],
)
def test_every_shipped_job_file_parses(relative, command):
    job = load_config(REPO / relative, command=command)
    assert isinstance(job, JobConfig) and job.sampler is not None
    json.dumps(job.to_dict())  # plain data: manifests and config hashes take it as is
    raw = tomllib.loads((REPO / relative).read_text())
    ((kind, fields),) = raw["sampler"].items()
    assert job.sampler.kind == kind and job.sampler.num_sample == fields["num_sample"]


def test_shipped_values_are_read_not_defaulted():
    job = load_config(REPO / "examples/ml100k_sample.toml", command="sample")
    assert (job.candidates.batch_size, job.run.workers) == (256, 2)
    assert job.output.dir == str(REPO / "runs" / "ml100k" / "sampled")
    job = load_config(REPO / "examples/synthetic.toml", command="run")
    assert job.data is not None and job.data.synthetic is not None and job.data.synthetic.max_len == 40
    assert (job.name, job.train.epochs, job.ray.max_actors) == ("synthetic", 10, 2)


def test_one_default_per_concept():
    """The config's defaults are the library's, where the library has one."""
    from negseq.sampler.samplers import NegativeSampler
    from negseq.service.limits import Limits
    from negseq.synthetic import generate_interactions

    generator = inspect.signature(generate_interactions).parameters
    synthetic = cfg.SyntheticConfig()
    assert {k: p.default for k, p in generator.items()} == dataclasses.asdict(synthetic)
    limits = Limits()
    service = cfg.ServiceConfig()
    assert (limits.max_rows, limits.max_bytes, limits.max_negatives) == (
        service.max_rows,
        service.max_bytes,
        service.max_negatives,
    )
    sampler = inspect.signature(NegativeSampler.__init__).parameters
    assert (sampler["seed"].default, sampler["max_retries"].default) == (
        cfg.SamplerConfig().seed,
        cfg.SamplerConfig().max_retries,
    )
    assert cfg.DataConfig().item_weight_power == 0.75 and cfg.ModelConfig().dropout == 0.2


def test_build_sampler_takes_the_checked_sampler_config(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from negseq.sampler import build_sampler

    pq.write_table(pa.table({"id": [1, 2, 3], "weight": [1.0, 1.0, 2.0]}), tmp_path / "items.parquet")
    path = write_job(tmp_path, {("sampler.negative_sampler", "max_retries"): "3"})
    job = load_config(path, command="sample")
    assert job.sampler is not None
    sampler = build_sampler(job.sampler)
    assert (sampler.num_sample, sampler.max_retries, sampler.item_id_field) == (8, 3, "item_id")
    # a dict is checked as a job file's table would be, its paths against base_dir
    table = {"negative_sampler": {"input_path": "items.parquet", "num_sample": 2, "item_id_field": "i"}}
    assert build_sampler(table, base_dir=tmp_path).num_sample == 2
    with pytest.raises(NegseqError, match=r"\[sampler.negative_sampler\] num_sample: expected an integer"):
        build_sampler(
            {"negative_sampler": {**table["negative_sampler"], "num_sample": "2"}}, base_dir=tmp_path
        )
    assert sampler.exclude == "user"  # the job files' default
    path = write_job(tmp_path, {("sampler.negative_sampler", "exclude"): '"none"'})
    job = load_config(path, command="sample")
    assert job.sampler is not None
    assert build_sampler(job.sampler).exclude == "none"


def test_readme_carries_the_generated_reference():
    readme = (REPO / "README.md").read_text()
    assert cfg.readme_reference(readme) == cfg.reference_markdown()


def test_every_key_is_in_the_reference():
    reference = cfg.reference_markdown()
    for table, key, _ in _all_keys():
        assert f"| `{key}` |" in reference, (table, key)


def test_import_loads_neither_torch_nor_ray_nor_pyarrow():
    code = (
        "import sys, negseq.config\n"
        "heavy = [m for m in ('torch', 'ray', 'pyarrow', 'numpy', 'pydantic') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == ""


# ---- fuzz ----------------------------------------------------------------------------------


def _all_keys():
    """(table as written in a job file, key, check) for every key."""
    for table, cls in cfg._SECTIONS.items():
        for key, spec in cfg._keys_of(cls).items():
            if not isinstance(spec.metadata["check"], cfg._Table):
                yield table, key, spec.metadata["check"]
    for key, spec in cfg._keys_of(cfg.SyntheticConfig).items():
        yield "data.synthetic", key, spec.metadata["check"]
    for key, spec in cfg._keys_of(cfg.SamplerConfig).items():
        kind = next(k for k in cfg.SAMPLER_KINDS if key in cfg._SAMPLER_KEYS[k])
        yield f"sampler.{kind}", key, spec.metadata["check"]


def _placed(table: str, key: str, literal: str) -> dict[tuple[str, str], str]:
    """Overrides that set one key on a job that is otherwise valid for `negseq sample`."""
    overrides = {(table, key): literal}
    kind = table.removeprefix("sampler.")
    if kind in cfg._SAMPLER_KEYS and kind != "negative_sampler":
        required = dict.fromkeys(cfg._SAMPLER_REQUIRED[kind], '"x"')
        required.update({"num_sample": "8", "num_hard_sample": "2"})
        overrides = {(table, k): v for k, v in required.items() if k in cfg._SAMPLER_KEYS[kind]}
        overrides[(table, key)] = literal
    if table == "data":
        overrides[("data", "interactions")] = overrides.get(("data", "interactions"), '"log.csv"')
    return overrides


def _value_of(job: JobConfig, table: str, key: str):
    if table == "data.synthetic":
        return getattr(job.data.synthetic, key)
    if table.startswith("sampler."):
        return getattr(job.sampler, key)
    return getattr(getattr(job, table), key)


def near(names):
    """A known name, or a near miss of one (typo, plural, case, missing letter)."""
    names = list(names)
    variants = st.sampled_from(names).flatmap(
        lambda n: st.sampled_from([n, n, n, n + "s", n[:-1], n.upper(), n.replace("_", ""), n[::-1]])
    )
    return st.one_of(variants, variants, variants, st.text(max_size=6))


SCALARS = st.one_of(
    st.booleans(),
    st.integers(-5, 70_000),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 1.0, 1e12, -1.5, 32.7]),
    st.text(max_size=10),
    st.sampled_from(
        [
            "",
            "10",
            "auto",
            "interleaved",
            "suffix",
            "batch",
            "user",
            "parquet",
            "ipc",
            "csv",
            ";",
            "\t",
            "s3://b/k",
            "../x",
            "~/y",
            "0.0.0.0",
            "localhost",
            "..",
            "INFO",
            "next_items",
            "target",
        ]
    ),  # fmt: skip
    st.datetimes(),
    st.dates(),
    st.times(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
TABLE_CHECKS: dict[str, dict[str, object]] = {}
for _table, _key, _check in _all_keys():
    TABLE_CHECKS.setdefault("sampler.negative_sampler" if _table.startswith("sampler.") else _table, {})[
        _key
    ] = _check
PATHS = st.sampled_from(
    ["items.parquet", "../up/x.csv", "s3://bucket/k", "~/h", "/abs/p", "a/*.parquet", "", " "]
)
TEXTS = st.sampled_from(
    [";", ",", "\t", "|", "::", "user_id", "next_items", "target", "", "1", "-", "0.0.0.0", "127.0.0.1"]
) | st.text(max_size=4)


def plausible(check):
    """Values near what `check` accepts: in range, at and past its bounds, close misspellings,
    the wrong type now and then."""
    if isinstance(check, cfg._Int):
        low = -3 if check.low is None else check.low
        high = low + 1000 if check.high is None else check.high
        edges = [low - 1, low, low + 1, high, high + 1, 2**63 - 1]
        near_values = st.sampled_from(edges) | st.integers(low, min(high, low + 1000))
        return st.one_of(near_values, near_values, st.sampled_from([float(low), str(low), True]))
    if isinstance(check, cfg._Float):
        low = -1.0 if check.low is None else check.low
        high = low + 100 if check.high is None else check.high
        return st.one_of(
            st.floats(low - 1, high + 1),
            st.integers(int(low) - 1, int(high) + 1),
            st.sampled_from([math.nan, math.inf, str(low)]),
        )
    if isinstance(check, cfg._Bool):
        return st.booleans() | st.sampled_from(["true", 1])
    if isinstance(check, cfg._BoolOrAuto):
        return st.sampled_from([True, False, "auto", "Auto", 1])
    if isinstance(check, cfg._Choice):
        return near(check.values)
    if isinstance(check, cfg._List):
        return st.lists(plausible(check.item), max_size=3) | plausible(check.item)
    if isinstance(check, cfg._Locations):
        return PATHS | st.lists(PATHS, max_size=3)
    if isinstance(check, cfg._Location):
        return PATHS
    return TEXTS


def any_value(check):
    return st.one_of(plausible(check), plausible(check), plausible(check), VALUES)


def table_bodies(table):
    checks = TABLE_CHECKS[table]
    return st.dictionaries(near(checks), VALUES, max_size=5) | st.fixed_dictionaries(
        {}, optional={key: any_value(check) for key, check in checks.items()}
    )


@st.composite
def jobs(draw):
    """Random job dicts: random tables, keys and values, with near-miss names."""
    job = {}
    for _ in range(draw(st.integers(0, 6))):
        name = draw(near(cfg._TOP_LEVEL))
        if name == "sampler":
            job[name] = draw(
                st.dictionaries(near(cfg.SAMPLER_KINDS), table_bodies("sampler.negative_sampler"), max_size=2)
            )
        elif name == "data" and draw(st.booleans()):
            body = draw(table_bodies("data"))
            body["synthetic"] = draw(table_bodies("data.synthetic") | VALUES)
            job[name] = body
        elif name in cfg._SECTIONS:
            job[name] = draw(table_bodies(name) | VALUES)
        else:
            job[name] = draw(VALUES)
    return job


VALID = {
    "name": "fuzz",
    "data": {"synthetic": {"num_users": 10, "num_items": 40, "min_len": 3, "max_len": 5}},
    "sampler": {
        "negative_sampler": {"input_path": "items.parquet", "num_sample": 4, "item_id_field": "next_items"}
    },
    "input": {"path": "rows.parquet"},
    "output": {"dir": "out"},
    "candidates": {"neg_per_pos": 4, "batch_size": 16},
    "service": {"port": 0},
}


def _body(job, table):
    """The dict of `table` ("data.synthetic", "sampler.negative_sampler", ...) in `job`, made when
    absent; None where a mutation left something else in its place."""
    node = job
    for part in table.split("."):
        if not isinstance(node, dict):
            return None
        node = node.setdefault(part, {})
    return node if isinstance(node, dict) else None


@st.composite
def mutated_jobs(draw):
    """A valid job with a few keys set near their bounds, removed or misspelt, tables dropped, the
    sampler kind changed, or garbage put in place of a table."""
    job = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["set", "set", "set", "drop", "typo", "kind", "garbage"]))
        table = draw(st.sampled_from(sorted(TABLE_CHECKS)))
        if action == "kind" and isinstance(job.get("sampler"), dict) and job["sampler"]:
            (body,) = job["sampler"].values() if len(job["sampler"]) == 1 else ({},)
            job["sampler"] = {draw(st.sampled_from(cfg.SAMPLER_KINDS)): body}
            continue
        if action == "garbage":
            job[draw(st.sampled_from(cfg._TOP_LEVEL))] = draw(VALUES)
            continue
        body = _body(job, table)
        if body is None:
            continue
        if action == "set":
            key = draw(st.sampled_from(sorted(TABLE_CHECKS[table])) | near(TABLE_CHECKS[table]))
            body[key] = draw(any_value(TABLE_CHECKS[table].get(key)))
        elif action == "drop" and body:
            del body[draw(st.sampled_from(sorted(body)))]
        elif action == "typo" and body:
            key = draw(st.sampled_from(sorted(body)))
            body[draw(near([key]))] = body.pop(key)
    if isinstance(job.get("sampler"), dict) and len(job["sampler"]) == 1:
        ((kind, body),) = job["sampler"].items()
        if kind != "negative_sampler" and isinstance(body, dict):  # the keys a kind has, mostly
            allowed = cfg._SAMPLER_KEYS[kind] if kind in cfg._SAMPLER_KEYS else ()
            if draw(st.booleans()):
                job["sampler"][kind] = {k: v for k, v in body.items() if k in allowed}
    return job


def _parse_or_negseq_error(tmp_path, job, command, flags):
    try:
        result = load_config(job, command=command, source=tmp_path / "fuzz.toml", flags=flags)
    except NegseqError as exc:
        assert str(exc).startswith((f"{tmp_path / 'fuzz.toml'}: ", "command line: ")), str(exc)
        return
    assert isinstance(result, JobConfig)
    json.dumps(result.to_dict())
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.name = "x"  # type: ignore[misc]


FLAG_TEXTS = (
    st.none() | st.text(max_size=8) | st.sampled_from(["1", "-1", "1.5", "1e12", "true", "tab", "\\t"])
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(job=jobs(), command=st.sampled_from(cfg.COMMANDS), data=st.data())
def test_fuzz_random_jobs_parse_or_raise_negseq_error(tmp_path, job, command, data):
    flags = data.draw(st.dictionaries(st.sampled_from(list(FLAGS[command]) or ["--none"]), FLAG_TEXTS))
    flags = {k: v for k, v in flags.items() if k in FLAGS[command]}
    _parse_or_negseq_error(tmp_path, job, command, flags)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(job=mutated_jobs(), command=st.sampled_from(cfg.COMMANDS))
def test_fuzz_mutated_valid_jobs_parse_or_raise_negseq_error(tmp_path, job, command):
    _parse_or_negseq_error(tmp_path, job, command, None)


def test_the_fuzz_base_job_is_valid_for_every_command(tmp_path):
    for command in cfg.COMMANDS:
        assert isinstance(load_config(VALID, command=command, source=tmp_path / "fuzz.toml"), JobConfig)


def test_toml_dates_and_nested_garbage_are_named(tmp_path):
    job = {"run": {"epoch": datetime.date(2024, 1, 2)}}
    with pytest.raises(NegseqError) as info:
        load_config(job, command="serve", source=tmp_path / "j.toml")
    assert str(info.value) == (
        f"{tmp_path / 'j.toml'}: [run] epoch: expected an integer in [0, 4294967295], got 2024-01-02 (a date)"
    )
