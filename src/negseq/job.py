"""`negseq run job.toml`: prepare -> sample -> train -> evaluate -> export, on Ray or in-process.

```toml
name = "synthetic"
[data]          # an interaction log (Parquet, Arrow IPC, CSV) or [data.synthetic]
interactions = "../../shared/data/ml-100k/u.data"
delimiter = "\t"
column_names = ["user_id", "item_id", "rating", "timestamp"]
max_seq_len = 200
[sampler.negative_sampler]     # build_sampler's keys; the item table defaults to the prepared one
num_sample = 32
[candidates]    # layout, neg_per_pos, seq_delim, batch_size
[model]         # HSTUMatch settings (objective "autoregressive" or "last")
[train]         # epochs, lr, max_steps, num_workers, use_gpu, checkpoint_every, eval_ks, seed
[ray]           # executor "ray" (default) or "local"; address; num_cpus; actor pool size
[output]        # dir, write_samples, format
```

With no `[ray] address` and no `RAY_ADDRESS` (set by `ray job submit`), a local Ray starts
inside the process (the embedded default). Relative paths resolve against the job file.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from negseq.candidates import CandidateSpec
from negseq.errors import NegseqError
from negseq.executors.plan import BatchWork, Collation, SamplingPlan
from negseq.io.prepare import prepare
from negseq.io.sinks import SampledSink, config_hash
from negseq.io.sources import CsvOptions, Source
from negseq.jobfile import checked_table, load_toml
from negseq.sampler import ItemTable, build_sampler
from negseq.train.settings import TrainSettings

_SECTIONS: dict[str, set[str]] = {
    "data": {
        "interactions",
        "synthetic",
        "format",
        "delimiter",
        "column_names",
        "user_field",
        "item_field",
        "time_field",
        "max_seq_len",
        "min_len",
        "item_weight_power",
    },
    "candidates": {"layout", "neg_per_pos", "seq_delim", "batch_size"},
    "model": {
        "embedding_dim",
        "num_layers",
        "num_heads",
        "attention_dim",
        "hidden_dim",
        "dropout",
        "input_dropout",
        "temperature",
        "similarity",
        "objective",
        "num_time_buckets",
        "max_attn_len",
        "kernel",
    },
    "train": {
        "epochs",
        "lr",
        "weight_decay",
        "max_steps",
        "checkpoint_every",
        "num_workers",
        "use_gpu",
        "eval_ks",
        "max_failures",
        "seed",
    },
    "ray": {
        "executor",
        "address",
        "num_cpus",
        "min_actors",
        "max_actors",
        "actor_cpus",
        "local_workers",
        "deterministic",
    },
    "output": {"dir", "write_samples", "format"},
}
_TOP_LEVEL = {"name", "sampler", *_SECTIONS}


@dataclass
class RunJob:
    """A parsed, checked `negseq run` job file."""

    source: Path
    name: str
    sections: dict[str, dict[str, Any]]
    sampler: dict[str, Any]

    @property
    def base_dir(self) -> Path:
        return self.source.parent

    def get(self, section: str, key: str, default: Any = None) -> Any:
        return self.sections[section].get(key, default)

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.base_dir / p

    @property
    def output_dir(self) -> Path:
        return self.path(self.get("output", "dir", f"runs/{self.name}")).resolve()

    @property
    def objective(self) -> str:
        return self.get("model", "objective", "autoregressive")

    @property
    def seq_delim(self) -> str:
        """[candidates] seq_delim, or the sampler's item_id_delim (TorchEasyRec's name for it)."""
        from negseq.sampler.config import sequence_delimiter

        return sequence_delimiter(self.sampler, self.sections["candidates"], self.source)

    @property
    def candidate_field(self) -> str:
        return "next_items" if self.objective == "autoregressive" else "target"


def load_run_job(path: str | Path) -> RunJob:
    """Read and check a job file: unknown tables or keys are errors that name them."""
    source = Path(path)
    raw = load_toml(source)
    unknown = sorted(set(raw) - _TOP_LEVEL)
    if unknown:
        raise NegseqError(f"{source}: unknown table(s) or key(s) {', '.join(unknown)}")
    sections = {name: checked_table(raw, name, keys, source) for name, keys in _SECTIONS.items()}
    sampler = raw.get("sampler")
    if not isinstance(sampler, dict) or len(sampler) != 1:
        raise NegseqError(
            f"{source}: needs exactly one [sampler.<type>] table, e.g. [sampler.negative_sampler]"
        )
    job = RunJob(source, str(raw.get("name", source.stem)), sections, sampler)
    job.seq_delim  # noqa: B018  (checked now, before anything is written)
    if ("interactions" in sections["data"]) == ("synthetic" in sections["data"]):
        raise NegseqError(f"{source}: [data] needs exactly one of 'interactions' or 'synthetic'")
    if job.objective not in ("autoregressive", "last"):
        raise NegseqError(
            f"{source}: [model] objective must be 'autoregressive' or 'last', got {job.objective!r}"
        )
    executor = job.get("ray", "executor", "ray")
    if executor not in ("ray", "local"):
        raise NegseqError(f"{source}: [ray] executor must be 'ray' or 'local', got {executor!r}")
    return job


def _prepare(job: RunJob, say: Callable[[str], None]) -> tuple[Any, pa.Table, ItemTable]:
    """Interactions -> the prepared folder under <output>/prepared; returns it, the eval table and
    the item vocabulary."""
    from negseq.synthetic import generate_interactions

    data = job.sections["data"]
    if "synthetic" in data:
        interactions = generate_interactions(**data["synthetic"])
        say(f"generated {interactions.num_rows} synthetic interactions")
    else:
        csv = None
        if "delimiter" in data or "column_names" in data:
            csv = CsvOptions(delimiter=data.get("delimiter", ","), column_names=data.get("column_names"))
        source = Source.open(data["interactions"], format=data.get("format"), csv=csv, base_dir=job.base_dir)
        interactions = source.read_all()
        say(f"read {interactions.num_rows} interactions from {source.spec}")
    prepared, counts = prepare(
        interactions,
        job.output_dir / "prepared",
        user_field=data.get("user_field", "user_id"),
        item_field=data.get("item_field", "item_id"),
        time_field=data.get("time_field", "timestamp"),
        max_seq_len=int(data.get("max_seq_len", 200)),
        min_len=int(data.get("min_len", 2)),
        item_weight_power=float(data.get("item_weight_power", 0.75)),
    )
    say(f"prepared {counts['train']} training and {counts['eval']} eval rows, {counts['items']} items")
    items = ItemTable.read(prepared.items)
    return prepared, pq.read_table(prepared.eval), items


def _sampler_config(job: RunJob, items_path: Path) -> dict[str, Any]:
    """The job's sampler table, with the prepared catalogue and the objective's positive column."""
    config = copy.deepcopy(job.sampler)
    ((kind, fields),) = config.items()
    item_key = "input_path" if kind == "negative_sampler" else "item_input_path"
    fields.setdefault(item_key, str(items_path.resolve()))
    fields.setdefault("item_id_field", job.candidate_field)
    if fields["item_id_field"] != job.candidate_field:
        raise NegseqError(
            f"{job.source}: [sampler.{kind}] item_id_field is {fields['item_id_field']!r}, but the "
            f"{job.objective!r} objective takes its positives from {job.candidate_field!r}"
        )
    if "user_id_field" in fields or kind != "negative_sampler":
        fields.setdefault("user_id_field", "user_id")
    return config


def _train_settings(job: RunJob, num_items: int) -> TrainSettings:
    model = job.sections["model"]
    return TrainSettings(
        model={
            "num_items": num_items,
            "embedding_dim": int(model.get("embedding_dim", 64)),
            "num_layers": int(model.get("num_layers", 2)),
            "max_seq_len": int(job.get("data", "max_seq_len", 200)),
            "temperature": float(model.get("temperature", 0.05)),
            "similarity": model.get("similarity", "cosine"),
            "layout": job.get("candidates", "layout", "interleaved"),
            "objective": job.objective,
            "input_dropout_ratio": float(model.get("input_dropout", 0.2)),
            "num_time_buckets": int(model.get("num_time_buckets", 0)),
        },
        stu={
            "num_heads": int(model.get("num_heads", 1)),
            "hidden_dim": model.get("hidden_dim"),
            "attention_dim": model.get("attention_dim"),
            "output_dropout_ratio": float(model.get("dropout", 0.2)),
            "max_attn_len": int(model.get("max_attn_len", 0)),
            "kernel": model.get("kernel", "auto"),
        },
        lr=float(job.get("train", "lr", 1e-3)),
        weight_decay=float(job.get("train", "weight_decay", 0.0)),
        checkpoint_every=int(job.get("train", "checkpoint_every", 50)),
        max_steps=job.get("train", "max_steps"),
        seed=int(job.get("train", "seed", 0)),
    )


def _init_ray(job: RunJob, verbose: bool) -> bool:
    """Join the configured cluster, the one `ray job submit` runs us in, or start an embedded one.
    Returns whether this process started Ray (and so shuts it down). Ray's own logs, warnings
    and Ray Data's progress bars show with `verbose` only."""
    import logging

    import ray

    from negseq.executors.ray_logs import quiet_ray

    if not verbose:
        quiet_ray()
    if ray.is_initialized():
        return False
    address = job.get("ray", "address")
    kwargs: dict[str, Any] = {
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,
    }
    if address:
        ray.init(address=address, **kwargs)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
    else:
        ray.init(
            address="local",
            num_cpus=int(job.get("ray", "num_cpus", os.cpu_count() or 2)),
            include_dashboard=False,
            **kwargs,
        )
    ray.data.DataContext.get_current().enable_progress_bars = verbose
    return True


@dataclass
class _Stage:
    """What both executors need once the data is prepared."""

    job: RunJob
    work: BatchWork
    settings: TrainSettings
    quiet: bool
    verbose: bool
    say: Callable[[str], None]


def run_job(job: RunJob, *, quiet: bool = False, verbose: bool = False) -> dict[str, Any]:
    """Run the whole job; returns {"model": ..., "most_popular": ..., "train": ..., "outputs": ...}."""
    from negseq.model.export import export, predict
    from negseq.model.metrics import evaluate

    started = time.perf_counter()

    def say(message: str) -> None:
        if not quiet:
            print(f"[negseq run {time.perf_counter() - started:6.1f}s] {message}", flush=True)

    out = job.output_dir
    prepared, eval_table, items = _prepare(job, say)
    settings = _train_settings(job, len(items))
    sampler = build_sampler(_sampler_config(job, prepared.items), base_dir=job.base_dir)
    spec = CandidateSpec(
        layout=settings.model["layout"],
        neg_per_pos=job.get("candidates", "neg_per_pos"),
        seq_delim=job.seq_delim,
    )
    spec.check_sampler(sampler)
    source = Source.open(prepared.train)
    plan = SamplingPlan(
        source,
        batch_size=int(job.get("candidates", "batch_size", 128)),
        spec=spec,
        epochs=tuple(range(int(job.get("train", "epochs", 1)))),
    )
    write_samples = bool(job.get("output", "write_samples", True))
    samples_dir = out / "samples"
    sink = (
        SampledSink.create(
            str(samples_dir), format=job.get("output", "format", "parquet"), inputs=[str(prepared.folder)]
        )
        if write_samples
        else None
    )
    time_field = "uih_ts" if settings.model["num_time_buckets"] else None
    work = BatchWork(
        sampler,
        plan,
        sink=sink,
        collate=Collation(items, settings.model["max_seq_len"], "uih", time_field),
    )
    stage = _Stage(job, work, settings, quiet, verbose, say)
    train_on = _train_on_ray if job.get("ray", "executor", "ray") == "ray" else _train_locally
    try:
        model, train_metrics = train_on(stage)
        if sink is not None:
            manifest = sink.finish(
                expected_batches=range(plan.num_batches),
                describe={
                    "seed": sampler.seed,
                    "epoch": 0,
                    "config_hash": config_hash(
                        {
                            "sampler": job.sampler,
                            "candidates": job.sections["candidates"],
                            "data": job.sections["data"],
                        }
                    ),
                    "layout": spec.layout,
                },
            )
            say(
                f"wrote {manifest['num_files']} sampled batches ({manifest['rows_out']} rows), {samples_dir}"
            )
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    say(f"trained {train_metrics.get('step')} steps, last loss {train_metrics.get('loss', float('nan')):.4f}")

    metrics = evaluate(model, eval_table, items, ks=tuple(job.get("train", "eval_ks", [10, 50, 200])))
    export_paths = export(model, out / "export", item_ids=items.ids)
    predict(model, eval_table, items, out / "embeddings", item_ids=items.ids)
    result = {
        "model": metrics["model"],
        "most_popular": metrics["most_popular"],
        "num_eval_users": metrics["num_users"],
        "train": train_metrics,
        "outputs": {
            "dir": str(out),
            "metrics": str(out / "metrics.json"),
            "samples": str(samples_dir) if write_samples else None,
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
    say(f"outputs under {out} (metrics.json, export/, embeddings/{', samples/' if write_samples else ''})")
    return result


def _total_steps(stage: _Stage) -> int:
    plan = stage.work.plan
    total = plan.num_batches * len(plan.epochs)
    return total if stage.settings.max_steps is None else min(total, stage.settings.max_steps)


def _train_on_ray(stage: _Stage) -> tuple[Any, dict[str, Any]]:
    import shutil
    import tempfile

    import ray

    from negseq.executors.ray_data import ActorPool, sampled_dataset, write_outputs
    from negseq.train.progress import StepProgress
    from negseq.train.ray_train import fit

    job, work = stage.job, stage.work
    started_ray = _init_ray(job, stage.verbose)
    storage = Path(tempfile.mkdtemp(prefix=".negseq-ray-train-", dir=job.output_dir))
    try:
        pool = ActorPool(
            min_size=int(job.get("ray", "min_actors", 1)),
            max_size=int(job.get("ray", "max_actors", 2)),
            num_cpus=float(job.get("ray", "actor_cpus", 0.5)),
        )
        deterministic = bool(job.get("ray", "deterministic", True))
        dataset = sampled_dataset(work, pool, work.plan.keys(), deterministic=deterministic)
        stage.say(
            f"training on Ray Train: {len(work.plan.epochs)} epoch(s) of {work.plan.num_batches} batches, "
            f"sampled by {pool.min_size}-{pool.max_size} actor(s)"
        )
        bar = StepProgress(_total_steps(stage), quiet=stage.quiet)
        try:
            use_gpu = job.get("train", "use_gpu")
            model, metrics = fit(
                stage.settings,
                dataset,
                storage_path=storage,
                name=job.name,
                num_workers=int(job.get("train", "num_workers", 1)),
                use_gpu=None if use_gpu in (None, "auto") else bool(use_gpu),
                max_failures=int(job.get("train", "max_failures", 1)),
                deterministic=deterministic,
                on_progress=lambda p: bar.update(p["step"], p["loss"], p["rows"]),
            )
        finally:
            bar.close()
        if work.sink is not None:
            write_outputs(work, pool, work.unwritten())
        return model, metrics
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if started_ray:
            ray.shutdown()


def _train_locally(stage: _Stage) -> tuple[Any, dict[str, Any]]:
    import torch

    from negseq.batch import JaggedBatch
    from negseq.executors.local import LocalExecutor
    from negseq.train.loop import make_optimizer, train
    from negseq.train.progress import StepProgress
    from negseq.train.settings import build_model

    job, settings, work = stage.job, stage.settings, stage.work
    model = build_model(settings)
    optimizer = make_optimizer(model, settings.lr, settings.weight_decay)
    device = "cuda" if torch.cuda.is_available() and job.get("train", "use_gpu") is not False else "cpu"
    model.to(device)
    executor = LocalExecutor(work, num_workers=int(job.get("ray", "local_workers", 2)))

    def batches() -> Iterator[JaggedBatch]:
        for epoch in work.plan.epochs:
            for arrays in executor.run(epoch):
                yield JaggedBatch.from_arrays(arrays)

    stream = batches()
    bar = StepProgress(_total_steps(stage), quiet=stage.quiet)
    try:
        report = train(
            model,
            stream,
            optimizer=optimizer,
            max_steps=settings.max_steps,
            device=device,
            on_step=bar.add_step,
        )
    finally:
        stream.close()  # lets the worker threads finish before the unwritten batches are counted
        bar.close()
    if work.sink is not None:  # batches of the written epoch that training stopped before
        writer = LocalExecutor(replace(work, collate=None), num_workers=executor.num_workers)
        for _ in writer.run(work.write_epoch, batches=work.unwritten()):
            pass
    model.to("cpu")
    return model, report.metrics()
