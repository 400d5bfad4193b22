"""`negseq.torch.SampledDataset`: the README example as written, sharding by DataLoader worker
(disjoint, complete, deterministic), and a folder `negseq sample` wrote reading back as the batches
sampled on the fly."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

import negseq.torch as negseq_torch
from negseq.batch import JaggedBatch
from negseq.candidates import CandidateSpec
from negseq.cli import main
from negseq.errors import NegseqError
from negseq.io.prepare import prepare
from negseq.sampler import ItemTable, NegativeSampler
from negseq.synthetic import generate_interactions
from negseq.torch import SampledDataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


def readme_example() -> str:
    """The Python block under README's `SampledDataset` heading, as written."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Training from PyTorch") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = readme_example()
    assert "SampledDataset.from_source" in code and "num_workers=2" in code
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "prepared" / "train.parquet").is_file()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared")
    result, _ = prepare(generate_interactions(num_users=150, num_items=60, seed=3), folder, max_seq_len=20)
    return result


def _sampler(prepared) -> tuple[ItemTable, NegativeSampler]:
    items = ItemTable.read(prepared.items)
    return items, NegativeSampler(items, num_sample=3, item_id_field="target", seed=9)


def _same(a: JaggedBatch, b: JaggedBatch, probabilities: bool = True) -> None:
    for group in ("uih", "candidate"):
        for name in ("values", "offsets"):
            assert torch.equal(getattr(getattr(a, group), name), getattr(getattr(b, group), name)), group
    assert torch.equal(a.cand_pos_lengths, b.cand_pos_lengths)
    assert (a.layout, a.neg_per_pos, a.num_shared_negatives, a.num_hard_negatives) == (
        b.layout,
        b.neg_per_pos,
        b.num_shared_negatives,
        b.num_hard_negatives,
    )
    if probabilities:
        assert torch.equal(a.neg_probability, b.neg_probability)


def test_workers_split_the_batches_disjointly_and_completely(prepared, monkeypatch):
    items, sampler = _sampler(prepared)
    dataset = SampledDataset.from_source(prepared.train, sampler, items, batch_size=16, max_seq_len=20)
    assert dataset.num_batches == len(dataset) == 10  # 150 rows
    shards = []
    for worker in range(3):
        info = SimpleNamespace(id=worker, num_workers=3)
        monkeypatch.setattr(negseq_torch, "get_worker_info", lambda info=info: info)
        shards.append(dataset.worker_batches())
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_a_dataloader_with_workers_yields_the_batches_of_one_process(prepared):
    items, sampler = _sampler(prepared)
    dataset = SampledDataset.from_source(
        str(prepared.train), sampler, items, batch_size=16, max_seq_len=20, epoch=2
    )
    alone = list(dataset)
    assert len(alone) == 10 and all(isinstance(b, JaggedBatch) for b in alone)
    with_workers = list(DataLoader(dataset, batch_size=None, num_workers=3))
    assert len(with_workers) == len(alone)
    for a, b in zip(alone, with_workers, strict=True):  # the DataLoader takes workers in turn
        _same(a, b)
    # another epoch draws other negatives for the same rows
    other = list(SampledDataset.from_source(prepared.train, sampler, items, batch_size=16, max_seq_len=20))
    assert not torch.equal(other[0].candidate.values, alone[0].candidate.values)


JOB = """
[input]
path = "{train}"

[sampler.negative_sampler]
input_path = "{items}"
num_sample = 3
item_id_field = "target"
seed = 9
exclude = "batch"  # as _sampler's NegativeSampler (the classes' default; job files' is "user")

[candidates]
layout = "{layout}"
batch_size = 16

[output]
dir = "sampled"
format = "{fmt}"

[run]
epoch = 2
"""


@pytest.mark.parametrize(("layout", "fmt"), [("interleaved", "parquet"), ("suffix", "ipc")])
def test_a_sampled_folder_reads_back_as_the_batches_sampled_on_the_fly(prepared, tmp_path, layout, fmt):
    job = tmp_path / "job.toml"
    job.write_text(JOB.format(train=prepared.train, items=prepared.items, layout=layout, fmt=fmt))
    assert main(["sample", str(job), "--quiet"]) == 0
    items, sampler = _sampler(prepared)
    from_folder = SampledDataset.from_folder(tmp_path / "sampled", items, max_seq_len=20)
    on_the_fly = SampledDataset.from_source(
        prepared.train,
        sampler,
        items,
        spec=CandidateSpec(layout=layout),
        batch_size=16,
        max_seq_len=20,
        epoch=2,
    )
    read, drawn = list(DataLoader(from_folder, batch_size=None, num_workers=2)), list(on_the_fly)
    assert len(read) == len(drawn) == 10
    for a, b in zip(read, drawn, strict=True):
        _same(a, b, probabilities=False)
        assert a.neg_probability is None  # files do not hold the draw probabilities


def test_an_unfinished_folder_is_refused(prepared, tmp_path):
    items, _ = _sampler(prepared)
    (tmp_path / "sampled").mkdir()
    pq.write_table(pq.read_table(prepared.train), tmp_path / "sampled" / "part-000000.parquet")
    with pytest.raises(NegseqError, match="no _manifest.parquet or _manifest.arrow"):
        SampledDataset.from_folder(tmp_path / "sampled", items)
