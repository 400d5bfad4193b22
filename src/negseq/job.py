"""`negseq run job.toml`: prepare -> sample -> train -> evaluate -> export, on Ray or in-process.

The job file's keys, types and defaults are `negseq.config`'s (README: configuration reference):
`[data]` (an interaction log or `[data.synthetic]`), one `[sampler.<type>]` (TorchEasyRec's keys;
the item table defaults to the prepared catalogue), `[candidates]`, `[model]`, `[train]`, `[ray]`,
`[run]` and `[output]`. With no `[ray] address` and no `RAY_ADDRESS` (set by `ray job submit`), a
local Ray starts inside the process (the embedded default); `[ray] executor = "local"` runs the
same job on the in-process executor, without Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from tqdm import tqdm

from negseq.batch import JaggedBatch
from negseq.candidates import CandidateSpec
from negseq.config import JobConfig
from negseq.errors import NegseqError
from negseq.executors.exclusion_check import exclusion_warning
from negseq.executors.local import LocalExecutor
from negseq.executors.plan import BatchWork, Collation, SamplingPlan
from negseq.io.prepare import ACTIONS_COLUMN, Prepared
from negseq.io.rundir import claim_run_folder
from negseq.io.sinks import SampledSink
from negseq.io.sources import Source
from negseq.model.export import export, predict
from negseq.model.metrics import evaluate
from negseq.prepare_job import PrepareStep
from negseq.sampler import ItemTable, build_sampler
from negseq.train.fit import fit_stream
from negseq.train.loop import make_optimizer
from negseq.train.progress import StepProgress
from negseq.train.row_exclusion import masks_row_positives, training_sampler_config
from negseq.train.settings import TrainSettings, build_model
from negseq.train.validation import ValidationSettings, Validator

TRAIN_WORKER_CPUS = 1.0  # CPUs a Ray Train worker reserves
# Below this many (user, item) scores an eval split is ranked in this process: a second or two
# of one core, less than starting a Ray actor pool (processes, imports, the model shipped).
RAY_EVAL_MIN_SCORES = 500_000_000


def _prepare(
    config: JobConfig, step: PrepareStep, say: Callable[[str], None], verbose: bool
) -> tuple[Prepared, Source, ItemTable]:
    """The prepared folder (prepared now, or given); returns it, the eval split and the items
    (the valid split is `prepared.valid`)."""
    prepared, counts = step.run(say, verbose=verbose)
    if counts is not None:
        say(f"prepared {counts['train']} training and {counts['eval']} eval rows, {counts['items']} items")
    types, data = config.model.num_action_types, config.data
    if types and counts is not None and counts.get("max_action", 0) >= types:
        assert data is not None
        raise NegseqError(
            f"{config.source}: [model] num_action_types {types}, but [data] action_field "
            f"{data.action_field!r} holds the value {counts['max_action']}: expected values below {types}"
        )
    return prepared, Source.open(prepared.eval), ItemTable.read(prepared.items)


def train_settings(
    config: JobConfig,
    num_items: int,
    *,
    num_batches: int | None = None,
    validation: ValidationSettings | None = None,
) -> TrainSettings:
    """The model and optimizer settings of a job, for every trainer (`num_batches`: an epoch's)."""
    model, data = config.model, config.data
    assert data is not None
    return TrainSettings(
        model={
            "num_items": num_items,
            "embedding_dim": model.embedding_dim,
            "num_layers": model.num_layers,
            "max_seq_len": data.max_seq_len,
            "temperature": model.temperature,
            "similarity": model.similarity,
            "layout": config.candidates.layout,
            "objective": model.objective,
            "input_dropout_ratio": model.input_dropout,
            "num_time_buckets": model.num_time_buckets,
            "num_action_types": model.num_action_types,
            "mask_row_positives": masks_row_positives(config),
        },
        stu={
            "num_heads": model.num_heads,
            "hidden_dim": model.hidden_dim,
            "attention_dim": model.attention_dim,
            "output_dropout_ratio": model.dropout,
            "max_attn_len": model.max_attn_len,
            "kernel": model.kernel,
        },
        lr=config.train.lr,
        weight_decay=config.train.weight_decay,
        checkpoint_every=config.train.checkpoint_every,
        max_steps=config.train.max_steps,
        seed=config.train.seed,
        lr_schedule=config.train.lr_schedule,
        warmup_fraction=config.train.warmup_fraction,
        num_batches=num_batches,
        epochs=config.train.epochs,
        validation=validation,
    )


def validation_settings(config: JobConfig, valid_table: pa.Table, items: ItemTable) -> ValidationSettings:
    """The job's validation: its valid split, metrics, monitor, schedule and patience."""
    train = config.train
    return ValidationSettings(
        valid_table,
        items,
        ks=train.eval_ks,
        monitor=train.monitor,
        every=train.eval_every,
        patience=train.patience,
    )


def check_ray_resources(config: JobConfig, cluster_cpus: float) -> None:
    """The trainers and the fewest sampler actors must fit the cluster's CPUs together: trainers
    holding every CPU wait forever on batches that no actor can start to sample."""
    ray_config, workers = config.ray, config.train.num_workers
    needed = workers * TRAIN_WORKER_CPUS + ray_config.min_actors * ray_config.actor_cpus
    if needed > cluster_cpus:
        raise NegseqError(
            f"{config.source}: [train] num_workers {workers} x {TRAIN_WORKER_CPUS:g} CPU + [ray] "
            f"min_actors {ray_config.min_actors} x actor_cpus {ray_config.actor_cpus:g} = {needed:g} CPUs, "
            f"but Ray has {cluster_cpus:g}: the trainers would wait on batches no actor can sample"
        )


@dataclass
class _Stage:
    """What both executors need once the data is prepared."""

    config: JobConfig
    work: BatchWork
    settings: TrainSettings
    quiet: bool
    verbose: bool
    say: Callable[[str], None]

    @property
    def total_steps(self) -> int:
        return self.settings.step_plan(self.config.train.num_workers).total_steps

    def show_validation(self, entry: dict[str, Any]) -> None:
        """One line a validation: the progress of the curve."""
        monitor = self.config.train.monitor
        self.say(
            f"epoch {entry['epoch']} (step {entry['step']}): train loss {entry['train_loss']:.4f}, "
            f"valid {monitor} {entry[monitor]:.4f}"
        )


@contextmanager
def _ray_session(config: JobConfig, verbose: bool) -> Iterator[None]:
    """Ray for the whole job when it runs on Ray (training, outputs, evaluation), shut down at
    the end when this process started it."""
    if config.ray.executor != "ray":
        yield
        return
    from negseq.executors.ray_session import ray_started

    with ray_started(config, verbose):  # a no-op when the caller (`negseq run`) started Ray
        yield


def _evaluate(config: JobConfig, model: Any, split: Source, items: ItemTable, out: Path) -> dict[str, Any]:
    """Metrics of the eval split, and its user embeddings: on Ray actors when the job runs on
    Ray and the split is large (`RAY_EVAL_MIN_SCORES`), else in this process; both stream the
    split (DESIGN §5) and give the same numbers."""
    ks = config.train.eval_ks
    if config.ray.executor != "ray" or split.num_rows * len(items) < RAY_EVAL_MIN_SCORES:
        metrics = evaluate(model, split, items, ks=ks)
        predict(model, split, items, out / "embeddings", item_ids=items.ids)
        return metrics
    from negseq.executors.ray_data import ActorPool
    from negseq.executors.ray_eval import evaluate_on_ray

    pool = ActorPool(config.ray.min_actors, config.ray.max_actors, config.ray.actor_cpus)
    return evaluate_on_ray(
        model, split, items, ks=ks, pool=pool, embeddings_to=out / "embeddings", item_ids=items.ids
    )


def run_job(config: JobConfig, *, quiet: bool = False, verbose: bool = False) -> dict[str, Any]:
    """Run the whole job; returns {"model": ..., "most_popular": ..., "train": ..., "outputs": ...}."""
    started = time.perf_counter()

    def say(message: str) -> None:
        if not quiet:
            # through tqdm: a line said while the progress bar runs goes above it, not into it
            tqdm.write(f"[negseq run {time.perf_counter() - started:6.1f}s] {message}", file=sys.stdout)

    assert config.output.dir is not None and config.sampler is not None
    if config.ray.executor == "ray" and not config.ray.cluster_address():
        check_ray_resources(config, float(config.ray.num_cpus or os.cpu_count() or 2))
    out = Path(config.output.dir)
    step = PrepareStep.plan(config)
    claim_run_folder(out, config.prepare.dir, step.files)  # DESIGN §9: before anything is written
    with _ray_session(config, verbose):
        return _run_claimed(config, step, out, say, started, quiet=quiet, verbose=verbose)


def _run_claimed(
    config: JobConfig,
    step: PrepareStep,
    out: Path,
    say: Callable[[str], None],
    started: float,
    *,
    quiet: bool,
    verbose: bool,
) -> dict[str, Any]:
    """`run_job` once the output folder is claimed (and Ray is up, when the job runs on it)."""
    assert config.sampler is not None
    prepared, eval_split, items = _prepare(config, step, say, verbose)
    drawn_with = training_sampler_config(config)  # what the written samples' manifest describes
    sampler = build_sampler(drawn_with)
    cand = config.candidates
    spec = CandidateSpec(layout=cand.layout, neg_per_pos=cand.neg_per_pos, seq_delim=cand.seq_delim)
    spec.check_sampler(sampler)
    plan = SamplingPlan(
        Source.open(prepared.train), cand.batch_size, spec, epochs=tuple(range(config.train.epochs))
    )
    validation = validation_settings(config, Source.open(prepared.valid).read_all(), items)
    settings = train_settings(config, len(items), num_batches=plan.num_batches, validation=validation)
    samples_dir = out / "samples"
    sink = None
    if config.output.write_samples:
        sink = SampledSink.create(
            str(samples_dir), format=config.output.format, inputs=[str(prepared.folder)]
        )
    time_field = "uih_ts" if config.model.num_time_buckets else None
    action_field = ACTIONS_COLUMN if config.model.num_action_types else None
    collate = Collation(items, settings.model["max_seq_len"], "uih", time_field, action_field)
    work = BatchWork(sampler, plan, sink=sink, collate=collate)
    warning = exclusion_warning(work)
    if warning is not None:
        print(f"[negseq run] {warning}", file=sys.stderr, flush=True)
    stage = _Stage(config, work, settings, quiet, verbose, say)
    train_on = _train_on_ray if config.ray.executor == "ray" else _train_locally
    try:
        model, train_metrics = train_on(stage)
        if sink is not None:
            manifest = sink.finish(
                expected_batches=range(plan.num_batches), describe=work.describe(drawn_with.table())
            )
            say(f"wrote {manifest['num_files']} sampled batches ({manifest['rows_out']} rows), {samples_dir}")
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    say(f"trained {train_metrics.get('step')} steps, last loss {train_metrics.get('loss', float('nan')):.4f}")
    validated = train_metrics.pop("validation", None)
    if validated is not None and validated["best"] is not None:
        best = validated["best"]
        say(
            f"kept the weights of epoch {best['epoch']} (step {best['step']}): best valid "
            f"{validated['monitor']} {best[validated['monitor']]:.4f}"
            + (", stopped early" if validated["stopped_early"] else "")
        )

    metrics = _evaluate(config, model, eval_split, items, out)
    export_paths = export(model, out / "export", item_ids=items.ids)
    result = {
        "model": metrics["model"],
        "most_popular": metrics["most_popular"],
        "num_eval_users": metrics["num_users"],
        "train": train_metrics,
        "validation": validated,
        "outputs": {
            "dir": str(out),
            "metrics": str(out / "metrics.json"),
            "samples": str(samples_dir) if sink is not None else None,
            "export": {k: str(v) for k, v in export_paths.items()},
            "embeddings": str(out / "embeddings"),
        },
        "seconds": time.perf_counter() - started,
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    model_m, pop_m = metrics["model"], metrics["most_popular"]
    say(
        f"HR@10 {model_m['HR@10']:.4f} (most popular {pop_m['HR@10']:.4f}), "
        f"NDCG@10 {model_m['NDCG@10']:.4f}, MRR {model_m['MRR']:.4f}"
    )
    say(f"outputs under {out} (metrics.json, export/, embeddings/{', samples/' if sink is not None else ''})")
    return result


def _train_on_ray(stage: _Stage) -> tuple[Any, dict[str, Any]]:
    """Ray Train fed by the sampler actors, on the Ray that `run_job` holds for the whole job."""
    assert stage.config.output.dir is not None
    storage = Path(tempfile.mkdtemp(prefix=".negseq-ray-train-", dir=stage.config.output.dir))
    try:
        return _fit_on_ray(stage, storage)
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def _fit_on_ray(stage: _Stage, storage: Path) -> tuple[Any, dict[str, Any]]:
    import ray

    from negseq.executors.ray_data import ActorPool, sampled_dataset, write_outputs
    from negseq.train.ray_train import fit

    config, work = stage.config, stage.work
    check_ray_resources(config, float(ray.cluster_resources().get("CPU", 0)))
    pool = ActorPool(config.ray.min_actors, config.ray.max_actors, config.ray.actor_cpus)
    dataset = sampled_dataset(work, pool, work.plan.keys(), deterministic=config.ray.deterministic)
    stage.say(
        f"training on Ray Train: {len(work.plan.epochs)} epoch(s) of {work.plan.num_batches} batches, "
        f"sampled by {pool.min_size}-{pool.max_size} actor(s)"
    )
    bar = StepProgress(stage.total_steps, quiet=stage.quiet)
    shown = 0

    def show(progress: dict[str, Any]) -> None:
        nonlocal shown
        bar.update(progress["step"], progress["loss"], progress["rows"])
        for entry in progress["validations"][shown:]:
            stage.show_validation(entry)
        shown = len(progress["validations"])

    try:
        use_gpu = config.train.use_gpu
        model, metrics = fit(
            stage.settings,
            dataset,
            storage_path=storage,
            name=config.name,
            num_workers=config.train.num_workers,
            cpus_per_worker=TRAIN_WORKER_CPUS,
            use_gpu=None if use_gpu == "auto" else bool(use_gpu),
            max_failures=config.train.max_failures,
            deterministic=config.ray.deterministic,
            on_progress=show,
        )
    finally:
        bar.close()
    if work.sink is not None:
        write_outputs(work, pool, work.unwritten())
    return model, metrics


def _train_locally(stage: _Stage) -> tuple[Any, dict[str, Any]]:
    config, settings, work = stage.config, stage.settings, stage.work
    model = build_model(settings)
    optimizer = make_optimizer(model, settings.lr, settings.weight_decay)
    device = "cuda" if torch.cuda.is_available() and config.train.use_gpu is not False else "cpu"
    model.to(device)
    executor = LocalExecutor(work, num_workers=config.run.workers, max_in_flight=config.run.max_in_flight)

    def batches() -> Generator[JaggedBatch, None, None]:
        for epoch in work.plan.epochs:
            for arrays in executor.run(epoch):
                yield JaggedBatch.from_arrays(arrays)

    stream = batches()
    bar = StepProgress(stage.total_steps, quiet=stage.quiet)
    validator = None if settings.validation is None else Validator(settings.validation)
    plan = settings.step_plan()
    try:
        report = fit_stream(
            model,
            stream,
            optimizer=optimizer,
            plan=plan,
            schedule=settings.schedule(plan),
            validator=validator,
            device=device,
            on_step=bar.add_step,
            on_validate=stage.show_validation,
        )
    finally:
        stream.close()  # lets the worker threads finish before the unwritten batches are counted
        bar.close()
    if work.sink is not None:  # batches of the written epoch that training stopped before
        writer = LocalExecutor(replace(work, collate=None), num_workers=executor.num_workers)
        for _ in writer.run(work.write_epoch, batches=work.unwritten()):
            pass
    metrics: dict[str, Any] = report.metrics()
    if validator is not None:
        metrics["validation"] = validator.summary()
        validator.restore_best(model)
    model.to("cpu")
    return model, metrics
