"""`train` through DistributedDataParallel, as Ray Train's prepare_model wraps the model for more
than one worker: two gloo processes on different batches end every step with equal weights."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from negseq.batch import JaggedBatch, JaggedFeature
from negseq.model.hstu_match import HSTUMatch, STUConfig
from negseq.train.loop import train

NUM_ITEMS = 20


def _feature(rows: list[list[int]], timestamps: bool = False) -> JaggedFeature:
    values = torch.tensor([v for r in rows for v in r], dtype=torch.int64)
    offsets = torch.tensor([0] + torch.tensor([len(r) for r in rows]).cumsum(0).tolist(), dtype=torch.int64)
    ts = torch.arange(values.numel(), dtype=torch.int64) * 100 if timestamps else None
    return JaggedFeature(values, offsets, ts)


def _batches(rank: int) -> list[JaggedBatch]:
    generator = torch.Generator().manual_seed(rank)
    batches = []
    for _ in range(3):
        uih = [torch.randint(1, NUM_ITEMS, (n,), generator=generator).tolist() for n in (3, 1, 4)]
        cand = [torch.randint(1, NUM_ITEMS, (4,), generator=generator).tolist() for _ in range(3)]
        lengths = torch.tensor([2, 2, 2])  # two positives a row, one negative each
        batch = JaggedBatch(_feature(uih, True), _feature(cand), lengths, "interleaved", neg_per_pos=1)
        batches.append(batch)
    return batches


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)  # the same initial weights on both ranks, as DDP also broadcasts them
    model = HSTUMatch(NUM_ITEMS, 16, num_layers=1, max_seq_len=8, stu=STUConfig(num_heads=2))
    initial = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    train(DistributedDataParallel(model), _batches(rank))
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save({"initial": initial, "weights": weights}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_ddp_wrapped_training_keeps_the_ranks_in_step(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert not torch.equal(rank0["weights"], rank0["initial"]), "training did not move the weights"
    torch.testing.assert_close(rank0["weights"], rank1["weights"])
