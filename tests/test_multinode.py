"""Several Ray nodes for real: a `ray.cluster_utils.Cluster` of raylets on 127.0.0.1 (a head and
one worker node, 1 CPU each). Sampler actors run on both nodes and their reports name the node;
the outputs are the bytes of a one-node run and of `negseq sample`; a node removed mid-run loses
and duplicates nothing (checked against the manifest); evaluation spread over both nodes gives
the in-process metrics.

The cluster is this module's own: its fixture shuts down the session's embedded Ray (the next
module that asks for `local_ray` starts it again) and connects this process as the cluster's
driver. Each test sets the number of worker nodes it needs.
"""

from __future__ import annotations

import filecmp
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from ray.cluster_utils import Cluster  # noqa: E402

from negseq.candidates import CandidateSpec  # noqa: E402
from negseq.cli import main  # noqa: E402
from negseq.config import load_config  # noqa: E402
from negseq.executors.plan import BatchWork, SamplingPlan  # noqa: E402
from negseq.executors.ray_data import ActorPool, by_node, write_outputs  # noqa: E402
from negseq.executors.ray_eval import evaluate_on_ray  # noqa: E402
from negseq.io.sinks import SampledSink, read_manifest, verify_outputs  # noqa: E402
from negseq.io.sources import Source  # noqa: E402
from negseq.model.hstu_match import HSTUMatch, STUConfig  # noqa: E402
from negseq.model.metrics import evaluate  # noqa: E402
from negseq.sampler import ItemTable, build_sampler  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]
NUM_ITEMS = 300
# a removed node is declared dead after ~1 s of missed health checks, not Ray's default ~15 s
FAST_HEALTH_CHECKS = {"health_check_period_ms": 250, "health_check_failure_threshold": 4}
JOB = """
[input]
path = "in/train.parquet"

[sampler.negative_sampler]
input_path = "in/items.parquet"
num_sample = 4
item_id_field = "next_items"
seed = 3

[candidates]
batch_size = {batch_size}

[output]
dir = "{out}"
"""


@pytest.fixture(scope="module")
def cluster(_ray_session):
    ray.shutdown()  # the session's embedded Ray, if an earlier module started it: one Ray at a time
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECKS},
    )
    data = ray.data.DataContext.get_current()
    wait_before = data.wait_for_min_actors_s
    # every pool actor is up before the first batch is handed out: an actor still starting on a
    # fresh node would otherwise leave the whole (small) run to the other node's actor
    data.wait_for_min_actors_s = 120
    try:
        ray.init(address=nodes.address, log_to_driver=False, logging_level=logging.ERROR)
        yield nodes
    finally:
        data.wait_for_min_actors_s = wait_before
        ray.shutdown()
        nodes.shutdown()


def _with_workers(cluster: Cluster, count: int) -> None:
    """Add or remove worker nodes (1 CPU each) until `count` are alive."""
    while len(cluster.worker_nodes) > count:
        cluster.remove_node(next(iter(cluster.worker_nodes)))
    while len(cluster.worker_nodes) < count:
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    deadline = time.monotonic() + 30
    while sum(n["Alive"] for n in ray.nodes()) != count + 1:
        assert time.monotonic() < deadline, f"the cluster did not settle on {count + 1} nodes: {ray.nodes()}"
        time.sleep(0.2)


def _job(folder: Path, rows: int, batch_size: int, seed: int = 0) -> Path:
    """A `negseq sample` job over `rows` training rows in `folder`; outputs go to `folder/sample`."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 8, rows)
    uih = [rng.integers(1, NUM_ITEMS + 1, n).tolist() for n in lengths]
    (folder / "in").mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "user_id": np.arange(rows, dtype=np.int64),
                "uih": uih,
                "next_items": [h[1:] + [int(rng.integers(1, NUM_ITEMS + 1))] for h in uih],
            }
        ),
        folder / "in" / "train.parquet",
        row_group_size=37,
    )
    pq.write_table(
        pa.table({"id": np.arange(1, NUM_ITEMS + 1, dtype=np.int64)}), folder / "in" / "items.parquet"
    )
    job = folder / "job.toml"
    job.write_text(JOB.format(batch_size=batch_size, out="sample"))
    return job


def _sample_on_ray(job: Path, out: Path, pool: ActorPool, reports: list[dict]) -> dict:
    """What `negseq sample` does, on the Ray actor pool of the connected cluster."""
    config = load_config(job, command="sample")
    sampler, cand = build_sampler(config.sampler), config.candidates
    spec = CandidateSpec(layout=cand.layout, neg_per_pos=cand.neg_per_pos, seq_delim=cand.seq_delim)
    source = Source.open(list(config.input.path))
    plan = SamplingPlan(source, cand.batch_size, spec, epochs=(config.run.epoch,))
    sink = SampledSink.create(str(out), inputs=source.roots)
    work = BatchWork(sampler, plan, sink=sink, write_epoch=config.run.epoch)
    assert write_outputs(work, pool, reports=reports) == plan.num_batches
    manifest = sink.finish(
        expected_batches=range(plan.num_batches), describe=work.describe(config.sampler.table())
    )
    return json.loads(json.dumps(manifest))  # as `read_manifest` gives it back


def _same_files(left: Path, right: Path) -> None:
    names = sorted(p.name for p in left.iterdir() if p.name.startswith("part-"))
    assert names == sorted(p.name for p in right.iterdir() if p.name.startswith("part-"))
    _, mismatch, errors = filecmp.cmpfiles(left, right, names, shallow=False)
    assert not mismatch and not errors, f"parts differ: {mismatch[:5]} {errors[:5]}"


def _node_ids() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


@pytest.mark.timeout(180)
def test_actors_on_two_nodes_write_the_bytes_of_one_node_and_of_negseq_sample(cluster, tmp_path):
    job = _job(tmp_path, rows=400, batch_size=16)  # 25 batches
    assert main(["sample", str(job), "--quiet"]) == 0
    local = read_manifest(str(tmp_path / "sample"))
    _with_workers(cluster, 0)
    one_reports: list[dict] = []
    one = _sample_on_ray(job, tmp_path / "one", ActorPool(2, 2, 0.5), one_reports)
    assert {r["node_id"] for r in one_reports} == _node_ids() and len(_node_ids()) == 1
    _with_workers(cluster, 1)
    reports: list[dict] = []
    # a whole CPU an actor on nodes of one CPU: one actor a node (two half-CPU actors may both
    # be packed onto the head, which is Ray's placement to make, not what this test is about)
    two = _sample_on_ray(job, tmp_path / "two", ActorPool(2, 2, 1.0), reports)
    nodes = by_node(reports)
    assert set(nodes) == _node_ids() and len(nodes) == 2, f"the actors did not run on both nodes: {nodes}"
    assert sorted(r["batch_index"] for r in reports) == list(range(25))
    assert (
        sum(n["batches"] for n in nodes.values()) == 25 and sum(n["rows_in"] for n in nodes.values()) == 400
    )
    assert sum(n["draws"] for n in nodes.values()) == two["sampler_stats"]["draws"] > 0
    for manifest in (one, two):
        assert manifest == local
    _same_files(tmp_path / "sample", tmp_path / "one")
    _same_files(tmp_path / "sample", tmp_path / "two")
    assert verify_outputs(str(tmp_path / "two")) == []


@pytest.mark.timeout(240)
def test_a_node_removed_mid_run_loses_and_duplicates_nothing(cluster, tmp_path):
    job = _job(tmp_path, rows=3000, batch_size=8, seed=1)  # 375 batches
    assert main(["sample", str(job), "--quiet"]) == 0
    _with_workers(cluster, 1)
    worker = next(iter(cluster.worker_nodes))
    removed: list[int] = []
    reports: list[dict] = []

    def remove_when_started() -> None:
        """Kill the worker node (all its processes, no grace) once 20 parts are staged and a
        batch sampled there has reached the driver (on a slow host the worker's actor may start
        late, and a node that sampled nothing yet would test nothing)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            staging = list((tmp_path / "faulty").glob(".negseq-staging-*"))
            staged = len(list(staging[0].glob("part-*"))) if staging else 0
            sampled_there = any(r["node_id"] == worker.node_id for r in list(reports))
            if staged >= 20 and sampled_there:
                cluster.remove_node(worker, allow_graceful=False)
                removed.append(staged)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=remove_when_started, daemon=True)
    killer.start()
    faulty = _sample_on_ray(job, tmp_path / "faulty", ActorPool(2, 2, 1.0), reports)  # one a node
    killer.join()
    assert removed, "the worker node was not removed while the run was in progress"
    assert len(_node_ids()) == 1
    assert len(by_node(reports)) == 2, "the removed node had sampled nothing before it went"
    clean = read_manifest(str(tmp_path / "sample"))
    assert faulty["rows_in"] == faulty["rows_out"] == 3000 and faulty["num_files"] == 375
    assert faulty["files"] == clean["files"] and faulty == clean
    assert verify_outputs(str(tmp_path / "faulty")) == []
    assert not list((tmp_path / "faulty").glob(".*")), "a temporary file or folder was left behind"
    _same_files(tmp_path / "sample", tmp_path / "faulty")


def _eval_split(folder: Path, items: ItemTable, rows: int) -> Source:
    rng = np.random.default_rng(7)
    ids = items.ids
    uih = [rng.choice(ids, int(n), replace=False).tolist() for n in rng.integers(0, 6, rows)]
    table = pa.table(
        {
            "user_id": np.arange(rows, dtype=np.int64),
            "uih": pa.array(uih, pa.list_(pa.int64())),
            "target": rng.choice(ids, rows),
        }
    )
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "eval.parquet", row_group_size=50)
    return Source.open(str(folder / "eval.parquet"))


@pytest.mark.timeout(180)
def test_evaluation_on_two_nodes_gives_the_in_process_metrics(cluster, tmp_path):
    _with_workers(cluster, 1)
    items = ItemTable.from_arrow(pa.table({"id": np.arange(10, 10 + NUM_ITEMS, dtype=np.int64)}))
    torch.manual_seed(0)
    model = HSTUMatch(NUM_ITEMS, 16, stu=STUConfig(num_heads=2), max_seq_len=8).eval()
    split = _eval_split(tmp_path / "eval", items, rows=400)
    counts = np.arange(NUM_ITEMS + 1)  # given: the count pass is test_ray_eval's (one task worker less)
    here = evaluate(model, split, items, ks=(1, 10, 50), counts=counts, batch_size=32)
    spread = evaluate_on_ray(
        model, split, items, ks=(1, 10, 50), counts=counts, batch_size=32, pool=ActorPool(2, 2, 0.5)
    )
    nodes = spread.pop("nodes")
    assert nodes.keys() == _node_ids() and len(nodes) == 2, f"evaluated on {nodes}"
    assert sum(nodes.values()) == 400
    assert spread == here and here["num_users"] == 400
