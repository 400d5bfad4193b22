"""The Ray executor on a real local Ray (num_cpus=2): writes, determinism, an actor killed
mid-run, the streaming trainer, and `ray job submit` against a `ray start --head` cluster."""

from __future__ import annotations

import filecmp
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from negseq.pipeline.io import read_manifest, verify_outputs  # noqa: E402
from negseq.pipeline.plans import SamplingPlan, TrainSettings  # noqa: E402
from negseq.pipeline.ray_executor import (  # noqa: E402
    BATCH_KEY,
    ActorPool,
    sampled_dataset,
    split_sampled_batches,
    write_sampled_outputs,
)
from negseq.pipeline.ray_trainer import fit  # noqa: E402
from negseq.sampler import ItemTable, NegativeSampler  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[1]
NUM_ITEMS = 300


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _source(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 8, rows)
    uih = [rng.integers(1, NUM_ITEMS + 1, n).tolist() for n in lengths]
    return pa.table(
        {
            "user_id": np.arange(rows, dtype=np.int64),
            "uih": uih,
            "next_items": [h[1:] + [int(rng.integers(1, NUM_ITEMS + 1))] for h in uih],
        }
    )


def _sampler() -> NegativeSampler:
    items = ItemTable.from_arrow(pa.table({"id": np.arange(1, NUM_ITEMS + 1, dtype=np.int64)}))
    return NegativeSampler(items, num_sample=4, item_id_field="next_items", seed=3)


def _write(out: Path, source: pa.Table, actors: int, batch_size: int = 16) -> dict:
    sampler = _sampler()
    return write_sampled_outputs(
        ray.put(sampler),
        ray.put(source),
        out,
        SamplingPlan(batch_size=batch_size, layout="interleaved"),
        ActorPool(min_size=actors, max_size=actors, num_cpus=0.5),
        seed=sampler.seed,
    )


def _same_files(left: Path, right: Path) -> bool:
    names = sorted(p.name for p in left.iterdir() if p.name.startswith("part-"))
    assert names == sorted(p.name for p in right.iterdir() if p.name.startswith("part-"))
    _, mismatch, errors = filecmp.cmpfiles(left, right, names, shallow=False)
    return not mismatch and not errors


def test_one_and_two_actors_write_byte_identical_outputs(local_ray, tmp_path):
    source = _source(200)
    one = _write(tmp_path / "one", source, actors=1)
    two = _write(tmp_path / "two", source, actors=2)
    assert one["rows_in"] == one["rows_out"] == 200 == two["rows_out"]
    assert len(one["files"]) == 13  # ceil(200 / 16), named by batch index
    assert verify_outputs(tmp_path / "one") == [] and verify_outputs(tmp_path / "two") == []
    assert _same_files(tmp_path / "one", tmp_path / "two")
    manifest = read_manifest(tmp_path / "one")
    assert manifest["rows_in"] == 200 and manifest["sampler_stats"]["draws"] > 0
    assert manifest["seed"] == 3


def _descendant_pids(marker: str) -> list[int]:
    """Processes under this one (the embedded Ray's workers) whose command line names `marker`.

    Ray titles an actor's worker process `ray::<ActorClass>...`; walking /proc from our own pid
    finds our actors without the dashboard and never touches another cluster's processes."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = [], [os.getpid()]
    while stack:
        for pid in children.get(stack.pop(), []):
            stack.append(pid)
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    found.append(pid)
            except OSError:
                continue
    return found


def test_a_killed_actor_loses_and_duplicates_nothing(local_ray, tmp_path):
    source = _source(3000, seed=1)
    clean = _write(tmp_path / "clean", source, actors=2, batch_size=8)
    killed: list[int] = []

    def kill_one_actor() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            written = list((tmp_path / "faulty").glob("part-*"))
            pids = _descendant_pids("MapWorker")
            if pids and len(written) >= 20:
                os.kill(pids[0], signal.SIGKILL)  # what ray.kill does to the actor's worker process
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor)
    killer.start()
    faulty = _write(tmp_path / "faulty", source, actors=2, batch_size=8)
    killer.join()
    assert killed, "no pool actor was found to kill while the run was in progress"
    assert faulty["rows_in"] == faulty["rows_out"] == 3000
    assert verify_outputs(tmp_path / "faulty") == []
    assert len(list((tmp_path / "faulty").glob("part-*"))) == len(clean["files"]) == 375
    assert not list((tmp_path / "faulty").glob(".*tmp*")), "a half-written file was left behind"
    assert _same_files(tmp_path / "clean", tmp_path / "faulty")


def _settings(checkpoint_every: int, max_steps: int) -> TrainSettings:
    return TrainSettings(
        model={
            "num_items": NUM_ITEMS,
            "embedding_dim": 16,
            "num_layers": 1,
            "max_seq_len": 8,
            "layout": "interleaved",
            "objective": "autoregressive",
        },
        candidate_field="next_items",
        checkpoint_every=checkpoint_every,
        max_steps=max_steps,
    )


def _dataset(rows: int, batch_size: int, seed: int):
    source = _source(rows, seed=seed)
    plan = SamplingPlan(batch_size=batch_size, layout="interleaved")
    return sampled_dataset(
        ray.put(_sampler()), ray.put(source), source.num_rows, plan, ActorPool(1, 1, 0.5), epochs=[0]
    )


def test_streaming_path_trains_and_reports_a_finite_loss(local_ray, tmp_path):
    settings = _settings(checkpoint_every=4, max_steps=6)
    dataset = _dataset(256, 32, seed=2)
    items = _sampler().items
    model, metrics = fit(settings, dataset, items, storage_path=tmp_path / "train", name="t", use_gpu=False)
    assert metrics["step"] == 6
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
    assert 0.0 <= metrics["data_wait_fraction"] <= 1.0
    assert model.item_embedding.weight.shape == (NUM_ITEMS + 1, 16)
    assert metrics["resumed_from_step"] == 0


def _one_block_a_batch(dataset, *, reverse: bool = False) -> ray.data.Dataset:
    """The same sampled batches materialized, one block each, by key (reversed: as another actor
    schedule may deliver them)."""
    blocks = ray.get(dataset.to_arrow_refs())
    batches = [(key, table) for block in blocks for key, table in split_sampled_batches(block)]
    return ray.data.from_arrow(
        [
            table.append_column(BATCH_KEY, pa.array(np.full(table.num_rows, key, np.int64)))
            for key, table in sorted(batches, key=lambda pair: pair[0], reverse=reverse)
        ]
    )


def test_a_restarted_run_resumes_from_its_last_checkpoint(local_ray, tmp_path):
    # What a retried trainer does after a failure: the same run (name, storage) picks up its latest
    # checkpoint, restores model and optimizer, and skips the batches it already trained on, by
    # key: the restarted run's batches arrive in another order (two or more sampler actors).
    storage, items = tmp_path / "train", _sampler().items
    _, first = fit(
        _settings(2, 6), _dataset(320, 16, 4), items, storage_path=storage, name="r", use_gpu=False
    )
    assert first["step"] == 6 and first["resumed_from_step"] == 0
    assert first["distinct_batches_trained"] == 6
    _, second = fit(
        _settings(2, 100),  # to the end of the data: 20 batches
        _one_block_a_batch(_dataset(320, 16, 4), reverse=True),
        items,
        storage_path=storage,
        name="r",
        use_gpu=False,
        resume=True,
    )
    assert second["resumed_from_step"] == 6
    # every batch trained once: skipping the first 6 to arrive would train 6 twice and 6 never
    assert second["step"] == 20 and second["distinct_batches_trained"] == 20
    _, fresh = fit(
        _settings(2, 4), _dataset(320, 16, 4), items, storage_path=storage, name="r", use_gpu=False
    )
    assert fresh["resumed_from_step"] == 0 and fresh["step"] == 4  # a new run starts over


def test_two_workers_train_whole_batches_and_stop_together(local_ray, tmp_path):
    # 7 batches for 2 workers: the shares differ, so both must stop at the shorter one's end
    # (or one would wait for the other in DDP's all-reduce), and no batch may be cut between
    # them (Ray Train's default split evens rows by cutting blocks: a key in both workers' files).
    storage, items = tmp_path / "train", _sampler().items
    dataset = _one_block_a_batch(_dataset(112, 16, 5))
    _, metrics = fit(
        _settings(100, 100), dataset, items, storage_path=storage, name="two", num_workers=2, use_gpu=False
    )
    checkpoints = [path for path in (storage / "two").glob("checkpoint_*") if path.is_dir()]
    latest = max(checkpoints, key=lambda path: path.stat().st_mtime)
    ranks = [np.load(latest / f"trained_batches_rank{rank}.npy").tolist() for rank in (0, 1)]
    assert 1 <= metrics["step"] <= 3  # 7 batches: the shorter share has at most 3
    assert len(ranks[0]) == len(ranks[1]) == metrics["step"]
    assert not set(ranks[0]) & set(ranks[1]), f"a batch trained by both workers: {ranks}"
    assert set(ranks[0]) | set(ranks[1]) <= set(range(7))  # epoch 0: key = batch index
