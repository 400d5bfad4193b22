"""The Ray path on a real local Ray (num_cpus=2): outputs written on the actor pool and from the
training stream, byte-identical on 1 or 2 actors; an actor killed mid-run; deterministic training
on 1 or 2 actors; whole batches through Ray Train's standard split to 2 workers; a trainer killed
mid-run resuming from its checkpoint."""

from __future__ import annotations

import filecmp
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from negseq.candidates import CandidateSpec  # noqa: E402
from negseq.executors.plan import BatchWork, Collation, SamplingPlan  # noqa: E402
from negseq.executors.ray_data import ActorPool, sampled_dataset, write_outputs  # noqa: E402
from negseq.io.sinks import SampledSink, verify_outputs  # noqa: E402
from negseq.io.sources import Source  # noqa: E402
from negseq.sampler import ItemTable, NegativeSampler  # noqa: E402
from negseq.train.ray_train import TRAINED_FILE, fit  # noqa: E402
from negseq.train.settings import TrainSettings  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400), pytest.mark.usefixtures("local_ray")]
NUM_ITEMS = 300


def _source(folder: Path, rows: int, seed: int = 0) -> Source:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 8, rows)
    uih = [rng.integers(1, NUM_ITEMS + 1, n).tolist() for n in lengths]
    table = pa.table(
        {
            "user_id": np.arange(rows, dtype=np.int64),
            "uih": uih,
            "next_items": [h[1:] + [int(rng.integers(1, NUM_ITEMS + 1))] for h in uih],
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "train.parquet", row_group_size=37)
    return Source.open(str(folder / "train.parquet"))


def _sampler() -> NegativeSampler:
    items = ItemTable.from_arrow(pa.table({"id": np.arange(1, NUM_ITEMS + 1, dtype=np.int64)}))
    return NegativeSampler(items, num_sample=4, item_id_field="next_items", seed=3)


def _work(source: Source, batch_size: int, *, sink=None, collate=False, epochs=(0,)) -> BatchWork:
    sampler = _sampler()
    plan = SamplingPlan(source, batch_size, CandidateSpec(), epochs=epochs)
    collation = Collation(sampler.items, max_seq_len=8) if collate else None
    return BatchWork(sampler, plan, sink=sink, collate=collation)


def _write(out: Path, source: Source, actors: int, batch_size: int = 16) -> dict:
    sink = SampledSink.create(str(out), inputs=source.roots)
    work = _work(source, batch_size, sink=sink)
    assert write_outputs(work, ActorPool(actors, actors, 0.5)) == work.plan.num_batches
    return sink.finish(
        expected_batches=range(work.plan.num_batches), describe=work.describe({"negative_sampler": {}})
    )


def _same_files(left: Path, right: Path) -> bool:
    names = sorted(p.name for p in left.iterdir() if p.name.startswith("part-"))
    assert names == sorted(p.name for p in right.iterdir() if p.name.startswith("part-"))
    _, mismatch, errors = filecmp.cmpfiles(left, right, names, shallow=False)
    return not mismatch and not errors


def test_one_and_two_actors_write_byte_identical_outputs(tmp_path):
    source = _source(tmp_path / "in", 200)
    one = _write(tmp_path / "one", source, actors=1)
    two = _write(tmp_path / "two", source, actors=2)
    assert one["rows_in"] == one["rows_out"] == 200 == two["rows_out"]
    assert one["num_files"] == 13  # ceil(200 / 16), named by batch index
    assert verify_outputs(str(tmp_path / "one")) == [] and verify_outputs(str(tmp_path / "two")) == []
    assert _same_files(tmp_path / "one", tmp_path / "two")
    assert one["sampler_stats"]["draws"] > 0 and one["seed"] == 3


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


def _kill_when(marker: str, ready, killed: list[int], done: threading.Event) -> threading.Thread:
    """A thread that SIGKILLs the first process titled `marker` once `ready()` (what ray.kill,
    an OOM kill or a lost node does to it); it watches until `done` is set (the run returned),
    so a slow host only makes it wait longer."""

    def run() -> None:
        while not killed and not done.is_set():
            pids = _descendant_pids(marker)
            if pids and ready():
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_killed_actor_loses_and_duplicates_nothing(tmp_path):
    source = _source(tmp_path / "in", 3000, seed=1)
    clean = _write(tmp_path / "clean", source, actors=2, batch_size=8)
    killed: list[int] = []

    def enough_written() -> bool:
        staging = list((tmp_path / "faulty").glob(".negseq-staging-*"))
        return bool(staging) and len(list(staging[0].glob("part-*"))) >= 20

    done = threading.Event()
    killer = _kill_when("MapWorker", enough_written, killed, done)
    faulty = _write(tmp_path / "faulty", source, actors=2, batch_size=8)
    done.set()
    killer.join()
    assert killed, "no pool actor was found to kill while the run was in progress"
    assert (
        faulty["rows_in"] == faulty["rows_out"] == 3000 and faulty["num_files"] == clean["num_files"] == 375
    )
    assert verify_outputs(str(tmp_path / "faulty")) == []
    assert not list((tmp_path / "faulty").glob(".*")), "a temporary file or folder was left behind"
    assert _same_files(tmp_path / "clean", tmp_path / "faulty")


def _settings(checkpoint_every: int = 100, max_steps: int | None = None) -> TrainSettings:
    return TrainSettings(
        model={
            "num_items": NUM_ITEMS,
            "embedding_dim": 16,
            "num_layers": 1,
            "max_seq_len": 8,
            "layout": "interleaved",
            "objective": "autoregressive",
        },
        checkpoint_every=checkpoint_every,
        max_steps=max_steps,
    )


def _trained_keys(storage: Path) -> list[list[int]]:
    """Every worker's trained batch keys, in training order, from the run's last checkpoint."""
    checkpoints = [p for p in storage.glob("*/checkpoint_*") if p.is_dir()]
    latest = max(checkpoints, key=lambda p: p.stat().st_mtime)
    files = sorted(latest.glob(TRAINED_FILE.format(rank="*")))
    return [np.load(f).tolist() for f in files]


def test_training_is_deterministic_on_one_or_two_actors_and_writes_from_its_stream(tmp_path):
    source = _source(tmp_path / "in", 256, seed=2)
    runs = {}
    for actors in (1, 2):
        sink = SampledSink.create(str(tmp_path / f"samples{actors}"), inputs=source.roots)
        work = _work(source, 32, sink=sink, collate=True, epochs=(0, 1))
        dataset = sampled_dataset(work, ActorPool(actors, actors, 0.5), work.plan.keys())
        storage = tmp_path / f"train{actors}"
        model, metrics = fit(_settings(), dataset, storage_path=storage, name="d", use_gpu=False)
        sink.finish(expected_batches=range(work.plan.num_batches), describe={})
        runs[actors] = (model, metrics, _trained_keys(storage))
    (model1, metrics1, keys1), (model2, metrics2, keys2) = runs[1], runs[2]
    assert keys1 == keys2 == [[(epoch << 32) | b for epoch in (0, 1) for b in range(8)]]  # in batch order
    assert metrics1["step"] == metrics2["step"] == 16 and np.isfinite(metrics1["loss"])
    assert metrics1["loss"] == metrics2["loss"] and metrics1["mean_loss"] == metrics2["mean_loss"]
    for (name, a), b in zip(model1.state_dict().items(), model2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=name)
    # the training stream wrote epoch 0's outputs, the same bytes as the write path
    written = _write(tmp_path / "written", source, actors=1, batch_size=32)
    assert written["num_files"] == 8
    assert _same_files(tmp_path / "samples1", tmp_path / "written")
    assert _same_files(tmp_path / "samples2", tmp_path / "written")


def test_two_workers_get_whole_batches_from_the_standard_split(tmp_path):
    source = _source(tmp_path / "in", 112, seed=5)  # 7 batches of 16
    work = _work(source, 16, collate=True)
    dataset = sampled_dataset(work, ActorPool(1, 1, 0.5), work.plan.keys())
    _, metrics = fit(
        _settings(),
        dataset,
        storage_path=tmp_path / "train",
        name="two",
        num_workers=2,
        cpus_per_worker=0.5,  # two workers and the sampler actor share the 2 CPUs
        use_gpu=False,
    )
    ranks = _trained_keys(tmp_path / "train")
    assert len(ranks) == 2 and len(ranks[0]) == len(ranks[1]) == metrics["step"] == 3  # equal shares
    assert not set(ranks[0]) & set(ranks[1]), f"a batch trained by both workers: {ranks}"
    assert set(ranks[0]) | set(ranks[1]) <= set(range(7))


def test_a_killed_trainer_resumes_from_its_checkpoint_and_trains_every_batch_once(tmp_path):
    source = _source(tmp_path / "in", 320, seed=4)  # 20 batches of 16
    work = _work(source, 16, collate=True)
    dataset = sampled_dataset(work, ActorPool(1, 1, 0.5), work.plan.keys())
    storage = tmp_path / "train"
    killed: list[int] = []
    first_seen: list[float] = []

    def checkpoint_registered() -> bool:
        """A checkpoint the controller has had time to register (it polls workers every 2 s)."""
        if not list(storage.glob("*/checkpoint_*")):
            return False
        first_seen.append(time.monotonic())
        return time.monotonic() - first_seen[0] > 5

    done = threading.Event()
    killer = _kill_when("RayTrainWorker", checkpoint_registered, killed, done)
    _, metrics = fit(
        _settings(checkpoint_every=3), dataset, storage_path=storage, name="k", max_failures=1, use_gpu=False
    )
    done.set()
    killer.join()
    assert killed, "no trainer worker was found to kill while the run was in progress"
    assert metrics["resumed_from_step"] >= 3  # restored from a checkpoint, not from scratch
    assert metrics["step"] == 20 and metrics["distinct_batches_trained"] == 20
    trained = _trained_keys(storage)[0]
    assert sorted(set(trained)) == list(range(20)) and len(trained) == len(set(trained))


def test_a_run_stopped_early_still_writes_every_batch(tmp_path):
    source = _source(tmp_path / "in", 200, seed=6)
    sink = SampledSink.create(str(tmp_path / "out"), inputs=source.roots)
    work = _work(source, 16, sink=sink, collate=True)
    dataset = sampled_dataset(work, ActorPool(1, 1, 0.5), work.plan.keys())
    _, metrics = fit(
        _settings(max_steps=2), dataset, storage_path=tmp_path / "train", name="s", use_gpu=False
    )
    assert metrics["step"] == 2
    missing = work.unwritten()
    write_outputs(replace(work, collate=None), ActorPool(1, 1, 0.5), missing)
    manifest = sink.finish(expected_batches=range(work.plan.num_batches), describe={})
    assert manifest["num_files"] == 13 and manifest["rows_in"] == 200
    assert verify_outputs(str(tmp_path / "out")) == []
