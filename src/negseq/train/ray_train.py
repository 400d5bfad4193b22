"""Ray Train: workers take whole sampled batches from Ray Train's standard dataset split and train.

Each row of the training dataset is one sampled batch already collated to arrays (see
`negseq.executors.ray_data`), so the standard split (`streaming_split(equal=True)`) never cuts a
batch, gives every worker the same number of batches (so they stop together), and needs no
custom split or per-step handshake. With `deterministic=True` the stream keeps batch order.

What a distributed run adds to the training loop: the worker's device (GPU when the run asked
for one), checkpoints every `checkpoint_every` steps, resuming from the last one after a
worker failure, the step progress the driver shows, and the trainer's time blocked on data.

A checkpoint records the keys of the batches trained so far, one file a worker (Ray Train
merges the workers' files into one folder); a resumed run skips exactly those batches, so
none is trained twice or missed whatever order the batches arrive in.
"""

from __future__ import annotations

import queue
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

from negseq.batch import JaggedBatch
from negseq.candidates import arrays_from_table
from negseq.model.hstu_match import HSTUMatch
from negseq.train.fit import fit_stream
from negseq.train.loop import make_optimizer
from negseq.train.settings import TrainSettings, build_model
from negseq.train.validation import Validator

STATE_FILE = "state.pt"
TRAINED_FILE = "trained_batches_rank{rank}.npy"  # int64 keys (epoch << 32 | batch) trained so far
PREFETCH_BATCHES = 4  # sampled batches (rows) the worker's iterator keeps ready


def save_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    trained: list[int],
    validator: Validator | None = None,
) -> None:
    """Model, optimizer, step and validation state, and this worker's trained batch keys beside them."""
    state = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "validation": None if validator is None else validator.state_dict(),
    }
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
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class _ShardBlocks:
    """The worker's shard of sampled batches (Arrow blocks), pulled by a thread from the moment
    the worker starts: the sampler pipeline starts on the first pull, so it starts while the
    worker builds its model, reads its validation split and restores its checkpoint."""

    def __init__(self) -> None:
        shard = ray.train.get_dataset_shard("train")
        self._blocks = shard.iter_batches(
            batch_size=None, batch_format="pyarrow", prefetch_batches=PREFETCH_BATCHES
        )
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
        threading.Thread(target=self._pull, name="negseq-shard", daemon=True).start()

    def _pull(self) -> None:
        try:
            for block in self._blocks:
                self._queue.put(("block", block))
            self._queue.put(("end", None))
        except BaseException as exc:  # re-raised on the training thread
            self._queue.put(("error", exc))

    def __iter__(self) -> Iterator[Any]:
        while True:
            kind, value = self._queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value


def _batches(blocks: Iterable[Any], skip: set[int], trained: list[int]) -> Iterator[JaggedBatch]:
    """The sampled batches of `blocks` whose key is not in `skip`; appends each key to
    `trained` as its batch is handed over (the loop trains a batch before it asks for the next)."""
    for block in blocks:
        for arrays in arrays_from_table(block):
            if arrays.key.packed in skip:
                continue
            trained.append(arrays.key.packed)
            yield JaggedBatch.from_arrays(arrays)


@ray.remote(num_cpus=0)
class TrainProgress:
    """Where rank 0 reports each step and validation, for the driver's progress."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {"step": 0, "loss": float("nan"), "rows": 0, "validations": []}

    def update(self, step: int, loss: float, rows: int) -> None:
        self.state = {**self.state, "step": step, "loss": loss, "rows": rows}

    def validated(self, entry: dict[str, Any]) -> None:
        self.state = {**self.state, "validations": [*self.state["validations"], entry]}

    def get(self) -> dict[str, Any]:
        return self.state


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    blocks = _ShardBlocks()  # first: the sampler pipeline starts while the rest is set up
    settings: TrainSettings = config["settings"]
    progress = config["progress"]
    device = ray.train.torch.get_device()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    model = build_model(settings)
    optimizer = make_optimizer(model, settings.lr, settings.weight_decay)
    # every worker validates (the same weights at the same step): they all stop together
    validator = None if settings.validation is None else Validator(settings.validation)
    start_step = 0
    trained: list[int] = []  # batch keys: every worker's before a restart, then this worker's
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = load_model_state(checkpoint, model)
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        trained = state["trained"]
        if validator is not None and state.get("validation") is not None:
            validator.load_state_dict(state["validation"])
    trainable = ray.train.torch.prepare_model(model)  # a DDP wrapper with several workers
    batches = _batches(blocks, skip=set(trained), trained=trained)
    plan = settings.step_plan(context.get_world_size())
    rows = 0

    def on_step(step: int, loss: float, batch_rows: int) -> None:
        nonlocal rows
        rows += batch_rows
        done = start_step + step
        if rank == 0 and progress is not None:
            progress.update.remote(done, loss, rows)
        if done % settings.checkpoint_every == 0:
            with tempfile.TemporaryDirectory() as folder:
                save_state(Path(folder), trainable, optimizer, done, trained, validator)
                ray.train.report(
                    {"step": done, "loss": loss}, checkpoint=ray.train.Checkpoint.from_directory(folder)
                )

    def on_validate(entry: dict[str, Any]) -> None:
        if rank == 0 and progress is not None:
            progress.validated.remote(entry)

    report = fit_stream(
        trainable,  # through the DDP wrapper with several workers: it averages the gradients
        batches,
        optimizer=optimizer,
        plan=plan,
        schedule=settings.schedule(plan),
        validator=validator,
        first_step=start_step,
        device=device,
        on_step=on_step,
        on_validate=on_validate,
    )
    metrics: dict[str, Any] = {
        **report.metrics(first_step=start_step),
        "resumed_from_step": start_step,
        "distinct_batches_trained": len(set(trained)),  # rank 0's, restarts included
    }
    if validator is not None:
        metrics["validation"] = validator.summary()
        validator.restore_best(model)  # the final checkpoint holds the weights the job keeps
    with tempfile.TemporaryDirectory() as folder:
        save_state(Path(folder), trainable, optimizer, int(metrics["step"]), trained, validator)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


class _Trainer(ray.train.torch.TorchTrainer):
    """TorchTrainer without Ray Train's PlacementGroupCleaner: on stop it waits out a state-API
    poll (12 s of every fit, measured on the embedded Ray) to guard a placement group that this
    job owns and Ray releases with the job anyway."""

    def _create_default_callbacks(self) -> list[Any]:
        callbacks = super()._create_default_callbacks()  # type: ignore[misc]  # v2 defines it
        return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]


class _SplitAtStart(ray.train.DataConfig):
    """Ray Train's standard split (`streaming_split(n, equal=True)`), made as the run starts.

    Ray Train makes the split when the first worker asks for its shard, so the split's
    coordinator (a process of its own) starts on the way to the first batch; made here, it
    starts while Ray Train starts its controller and workers. A restarted worker group gets the
    same iterators: a new pass over them is a new epoch of the split, from its first batch."""

    def __init__(self, dataset: ray.data.Dataset, num_workers: int, deterministic: bool) -> None:
        options = ray.train.DataConfig.default_ingest_options()
        options.preserve_order = deterministic
        super().__init__(execution_options=options)
        dataset = dataset.copy(dataset)
        dataset.context.execution_options = self._resolve_execution_options("train")
        self._splits = dataset.streaming_split(num_workers, equal=True)

    def configure(
        self,
        datasets: dict[str, ray.data.Dataset],
        world_size: int,
        worker_handles: Any,
        worker_node_ids: Any,
        **kwargs: Any,
    ) -> list[dict[str, ray.data.DataIterator]]:
        if set(datasets) != {"train"} or world_size != len(self._splits):
            raise ValueError(
                f"the split was made for {len(self._splits)} worker(s) and the 'train' dataset, "
                f"Ray Train asks for {world_size} and {sorted(datasets)}"
            )
        return [{"train": split} for split in self._splits]


def fit(
    settings: TrainSettings,
    dataset: ray.data.Dataset,
    *,
    storage_path: str | Path,
    name: str,
    num_workers: int = 1,
    cpus_per_worker: float = 1.0,
    use_gpu: bool | None = None,
    max_failures: int = 1,
    deterministic: bool = True,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[HSTUMatch, dict[str, Any]]:
    """Train on Ray Train; returns the trained model (on CPU) and the last reported metrics.

    The workers' CPUs (`num_workers * cpus_per_worker`) and the sampler actors' must fit the
    cluster together: the workers wait on batches that actors without a CPU never sample.

    A failed worker group restarts (up to `max_failures`) from the last checkpoint. Checkpoints
    go under a folder of this run's own inside `storage_path` (a fresh name each call, so no
    earlier run is ever restored or removed). `on_progress` gets rank 0's step, loss and rows
    about twice a second while training runs."""
    if use_gpu is None:
        use_gpu = bool(ray.cluster_resources().get("GPU", 0))
    progress = TrainProgress.remote() if on_progress is not None else None  # type: ignore[attr-defined]
    trainer = _Trainer(
        train_loop_per_worker,
        train_loop_config={"settings": settings, "progress": progress},
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=f"{name}-{uuid.uuid4().hex[:8]}",
            storage_path=str(Path(storage_path).resolve()),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
        ),
        datasets={"train": dataset},
        dataset_config=_SplitAtStart(dataset, num_workers, deterministic),
    )
    result = _fit_reporting(trainer, progress, on_progress)
    model = build_model(settings)
    load_model_state(result.checkpoint, model)
    return model, dict(result.metrics or {})


def _fit_reporting(trainer: Any, progress: Any, on_progress: Callable[[dict[str, Any]], None] | None) -> Any:
    """`trainer.fit()`, polling the progress actor from this thread while it runs."""
    if progress is None or on_progress is None:
        return trainer.fit()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # re-raised on the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="negseq-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
        on_progress(ray.get(progress.get.remote()))
    ray.kill(progress)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
