"""Ray Train: workers iterate their shard of sampled batches, collate to `JaggedBatch`, train.

The loop is the model's `train` function; this module adds what a distributed run needs:
the worker's device (GPU when the run asked for one), resuming from the last checkpoint
after a worker failure, checkpoints every `checkpoint_every` steps, and the trainer's
time blocked on its data iterator as a reported metric.

A checkpoint records the keys of the batches trained so far, one file a worker (Ray Train
merges the workers' files into one folder). A resumed run skips exactly those batches:
Ray Data does not keep the batches' order across two or more sampler actors, so skipping
the first N to arrive would retrain some batches and never train others.

Several workers split the sampled stream a block at a time (`WholeBatches`), so a batch is
never cut between two of them; their shares may then differ by a few batches, so before
each step they agree that every worker still has one, and stop together.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from negseq.model.hstu_match import HSTUMatch
from negseq.model.train import make_optimizer, train
from negseq.pipeline.jagged import to_jagged_batch
from negseq.pipeline.jagged_batch import JaggedBatch
from negseq.pipeline.plans import TrainSettings, build_model
from negseq.pipeline.ray_executor import split_sampled_batches

STATE_FILE = "state.pt"
TRAINED_FILE = "trained_batches_rank{rank}.npy"  # int64 keys of the batches trained so far


def save_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    trained: list[int],
) -> None:
    """Model, optimizer and step, and this worker's trained batch keys beside them."""
    state = {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "step": step}
    torch.save(state, path / STATE_FILE)
    rank = ray.train.get_context().get_world_rank()
    np.save(path / TRAINED_FILE.format(rank=rank), np.asarray(trained, np.int64))


def load_model_state(checkpoint: ray.train.Checkpoint, model: torch.nn.Module) -> dict[str, Any]:
    """Loads the model's weights; returns the state with "trained": every worker's batch keys."""
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        files = sorted(Path(folder).glob(TRAINED_FILE.format(rank="*")))
        # Each worker's file repeats the keys of the run it resumed: keep each key once.
        state["trained"] = list(dict.fromkeys(int(key) for path in files for key in np.load(path)))
    _unwrap(model).load_state_dict(state["model"])
    return state


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


class WholeBatches(ray.train.DataConfig):
    """Splits the training dataset between workers a block at a time (`equal=False`).

    Ray Train's default split evens the workers' row counts by cutting blocks (and dropping
    rows), which would cut a sampled batch between two workers.
    """

    def configure(
        self,
        datasets: dict[str, ray.data.Dataset],
        world_size: int,
        worker_handles: Any,
        worker_node_ids: list[str] | None,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = [{} for _ in range(world_size)]
        for name, dataset in datasets.items():
            dataset = dataset.copy(dataset)
            dataset.context.execution_options = self.default_ingest_options()
            splits = dataset.streaming_split(world_size, equal=False, locality_hints=worker_node_ids)
            for shard, split in zip(shards, splits, strict=True):
                shard[name] = split
        return shards


def _while_every_worker_has_one(items: Iterator[Any], device: torch.device) -> Iterator[Any]:
    """The items while every worker still has one: a worker that stopped alone would leave the
    others waiting in DDP's gradient all-reduce. One small all-reduce a step."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        yield from items
        return
    for item in itertools.chain(items, [None]):
        has_one = torch.tensor([0 if item is None else 1], device=device)
        dist.all_reduce(has_one, op=dist.ReduceOp.MIN)
        if not has_one.item():
            return
        yield item


def _jagged_batches(
    settings: TrainSettings, items: Any, skip: set[int], trained: list[int], device: torch.device
) -> Iterator[JaggedBatch]:
    """The shard's batches whose key is not in `skip`, collated; appends each key to `trained`
    as its batch is handed over (the loop trains a batch before it asks for the next)."""
    shard = ray.train.get_dataset_shard("train")
    blocks = shard.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)
    keyed = (
        (key, table) for block in blocks for key, table in split_sampled_batches(block) if key not in skip
    )
    for key, table in _while_every_worker_has_one(keyed, device):
        trained.append(key)
        yield to_jagged_batch(
            table,
            items=items,
            uih_field=settings.uih_field,
            candidate_field=settings.candidate_field,
            timestamp_field=settings.timestamp_field,
            max_seq_len=settings.max_seq_len,
            layout=settings.layout,  # type: ignore[arg-type]
        )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    settings: TrainSettings = config["settings"]
    items = ray.get(config["items_ref"])
    device = ray.train.torch.get_device()
    model = build_model(settings)
    optimizer = make_optimizer(model, settings.lr, settings.weight_decay)
    start_step = 0
    trained: list[int] = []  # batch keys: every worker's before a restart, then this worker's
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = load_model_state(checkpoint, model)
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        trained = state["trained"]
    model = ray.train.torch.prepare_model(model)
    batches = _jagged_batches(settings, items, skip=set(trained), trained=trained, device=device)
    max_steps = None if settings.max_steps is None else max(0, settings.max_steps - start_step)

    def on_step(step: int, loss: float) -> None:
        done = start_step + step
        if done % settings.checkpoint_every == 0:
            with tempfile.TemporaryDirectory() as folder:
                save_state(Path(folder), model, optimizer, done, trained)
                ray.train.report(
                    {"step": done, "loss": loss},
                    checkpoint=ray.train.Checkpoint.from_directory(folder),
                )

    report = train(
        model,  # through the DDP wrapper with several workers: it averages the gradients
        batches,
        optimizer=optimizer,
        max_steps=max_steps,
        device=device,
        on_step=on_step,
        quiet=True,
    )
    metrics = {
        **report.metrics(first_step=start_step),
        "resumed_from_step": start_step,
        "distinct_batches_trained": len(set(trained)),  # rank 0's, restarts included
    }
    with tempfile.TemporaryDirectory() as folder:
        save_state(Path(folder), model, optimizer, metrics["step"], trained)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def fit(
    settings: TrainSettings,
    dataset: ray.data.Dataset,
    items: Any,
    *,
    storage_path: str | Path,
    name: str,
    num_workers: int = 1,
    use_gpu: bool | None = None,
    max_failures: int = 1,
    resume: bool = False,
) -> tuple[HSTUMatch, dict[str, Any]]:
    """Train on Ray Train; returns the trained model (on CPU) and the last reported metrics.

    Within a run, a failed worker group restarts (up to `max_failures`) from the last checkpoint.
    Ray Train also restores a run from an earlier one of the same name and storage; that happens
    only with `resume=True`, otherwise the earlier run's folder is cleared first."""
    storage = Path(storage_path).resolve()
    if not resume and (storage / name).exists():
        shutil.rmtree(storage / name)
    if use_gpu is None:
        use_gpu = bool(ray.cluster_resources().get("GPU", 0))
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"settings": settings, "items_ref": ray.put(items)},
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
        ),
        datasets={"train": dataset},
        dataset_config=WholeBatches(),
    )
    result = trainer.fit()
    model = build_model(settings)
    load_model_state(result.checkpoint, model)
    return model, dict(result.metrics or {})
