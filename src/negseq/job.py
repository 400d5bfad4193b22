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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negseq.errors import NegseqError
from negseq.jobfile import checked_table, load_toml

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
    "ray": {"executor", "address", "num_cpus", "min_actors", "max_actors", "actor_cpus", "local_workers"},
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


def _prepare(job: RunJob, say: Callable[[str], None]) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Interactions -> (train, eval, item catalogue); written under <output>/prepared."""
    from negseq.pipeline.io import CsvOptions, read_table
    from negseq.pipeline.sequences import prepare_sequences
    from negseq.synthetic import generate_interactions

    data = job.sections["data"]
    user_field = data.get("user_field", "user_id")
    item_field = data.get("item_field", "item_id")
    time_field = data.get("time_field", "timestamp")
    if "synthetic" in data:
        interactions = generate_interactions(**data["synthetic"])
        say(f"generated {interactions.num_rows} synthetic interactions")
    else:
        csv = None
        if "delimiter" in data or "column_names" in data:
            csv = CsvOptions(delimiter=data.get("delimiter", ","), column_names=data.get("column_names"))
        interactions = read_table(job.path(data["interactions"]), format=data.get("format"), csv=csv)
        say(f"read {interactions.num_rows} interactions from {job.path(data['interactions'])}")
    train, evaluation = prepare_sequences(
        interactions,
        user_field=user_field,
        item_field=item_field,
        time_field=time_field,
        max_seq_len=int(data.get("max_seq_len", 200)),
        min_len=int(data.get("min_len", 2)),
    )
    item_ids, counts = np.unique(
        interactions.column(item_field).to_numpy().astype(np.int64), return_counts=True
    )
    power = float(data.get("item_weight_power", 0.0))
    items = pa.table({"id": item_ids, "weight": counts.astype(np.float64) ** power})
    folder = job.output_dir / "prepared"
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in (("train", train), ("eval", evaluation), ("items", items)):
        pq.write_table(table, folder / f"{name}.parquet")
    say(f"prepared {train.num_rows} training and {evaluation.num_rows} eval rows, {len(item_ids)} items")
    return train, evaluation, items


def _sampler_config(job: RunJob) -> dict[str, Any]:
    """The job's sampler table, with the prepared catalogue and the objective's positive column."""
    config = copy.deepcopy(job.sampler)
    ((kind, fields),) = config.items()
    item_key = "input_path" if kind == "negative_sampler" else "item_input_path"
    fields.setdefault(item_key, str((job.output_dir / "prepared" / "items.parquet").resolve()))
    fields.setdefault("item_id_field", job.candidate_field)
    if fields["item_id_field"] != job.candidate_field:
        raise NegseqError(
            f"{job.source}: [sampler.{kind}] item_id_field is {fields['item_id_field']!r}, but the "
            f"{job.objective!r} objective takes its positives from {job.candidate_field!r}"
        )
    if "user_id_field" in fields or kind != "negative_sampler":
        fields.setdefault("user_id_field", "user_id")
    return config


def _train_settings(job: RunJob, num_items: int):
    from negseq.pipeline.plans import TrainSettings

    model = job.sections["model"]
    time_buckets = int(model.get("num_time_buckets", 0))
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
            "num_time_buckets": time_buckets,
        },
        stu={
            "num_heads": int(model.get("num_heads", 1)),
            "hidden_dim": model.get("hidden_dim"),
            "attention_dim": model.get("attention_dim"),
            "output_dropout_ratio": float(model.get("dropout", 0.2)),
            "max_attn_len": int(model.get("max_attn_len", 0)),
            "kernel": model.get("kernel", "auto"),
        },
        candidate_field=job.candidate_field,
        timestamp_field="uih_ts" if time_buckets else None,
        lr=float(job.get("train", "lr", 1e-3)),
        weight_decay=float(job.get("train", "weight_decay", 0.0)),
        checkpoint_every=int(job.get("train", "checkpoint_every", 50)),
        max_steps=job.get("train", "max_steps"),
        seed=int(job.get("train", "seed", 0)),
    )


def _init_ray(job: RunJob, quiet: bool) -> bool:
    """Join the configured cluster, the one `ray job submit` runs us in, or start an embedded one.
    Returns whether this process started Ray (and so shuts it down)."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    address = job.get("ray", "address")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": not quiet}
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
    ray.data.DataContext.get_current().enable_progress_bars = not quiet
    return True


@dataclass
class _Stage:
    """What both executors need once the data is prepared."""

    job: RunJob
    sampler: Any
    train_table: pa.Table
    items: Any
    settings: Any
    plan: Any
    epochs: list[int]
    config_hash: str
    write_samples: bool
    quiet: bool
    say: Callable[[str], None]

    @property
    def samples_dir(self) -> Path:
        return self.job.output_dir / "samples"

    @property
    def samples_format(self) -> str:
        return self.job.get("output", "format", "parquet")


def run_job(job: RunJob, *, quiet: bool = False) -> dict[str, Any]:
    """Run the whole job; returns {"model": ..., "most_popular": ..., "train": ..., "outputs": ...}."""
    from negseq.model.export import export, predict
    from negseq.model.metrics import evaluate
    from negseq.pipeline.io import config_hash
    from negseq.pipeline.plans import SamplingPlan
    from negseq.sampler import ItemTable, build_sampler

    started = time.perf_counter()

    def say(message: str) -> None:
        if not quiet:
            print(f"[negseq run {time.perf_counter() - started:6.1f}s] {message}", flush=True)

    out = job.output_dir
    train_table, eval_table, item_table = _prepare(job, say)
    items = ItemTable.from_arrow(item_table)
    settings = _train_settings(job, len(items))
    stage = _Stage(
        job=job,
        sampler=build_sampler(_sampler_config(job), base_dir=job.base_dir),
        train_table=train_table,
        items=items,
        settings=settings,
        plan=SamplingPlan(
            batch_size=int(job.get("candidates", "batch_size", 128)),
            layout=settings.layout,  # type: ignore[arg-type]
            neg_per_pos=job.get("candidates", "neg_per_pos"),
            seq_delim=job.seq_delim,
        ),
        epochs=list(range(int(job.get("train", "epochs", 1)))),
        config_hash=config_hash(
            {"sampler": job.sampler, "candidates": job.sections["candidates"], "data": job.sections["data"]}
        ),
        write_samples=bool(job.get("output", "write_samples", True)),
        quiet=quiet,
        say=say,
    )
    train_on = _train_on_ray if job.get("ray", "executor", "ray") == "ray" else _train_locally
    model, train_metrics = train_on(stage)
    say(f"trained {train_metrics.get('step')} steps, last loss {train_metrics.get('loss', float('nan')):.4f}")

    metrics = evaluate(model, eval_table, items, ks=tuple(job.get("train", "eval_ks", [10, 50, 200])))
    export_paths = export(model, out / "export")
    predict(model, eval_table, items, out / "embeddings", item_ids=items.ids)
    result = {
        "model": metrics["model"],
        "most_popular": metrics["most_popular"],
        "num_eval_users": metrics["num_users"],
        "train": train_metrics,
        "outputs": {
            "dir": str(out),
            "metrics": str(out / "metrics.json"),
            "samples": str(stage.samples_dir) if stage.write_samples else None,
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
    samples = ", samples/" if stage.write_samples else ""
    say(f"outputs under {out} (metrics.json, export/, embeddings/{samples})")
    return result


def _train_on_ray(stage: _Stage) -> tuple[Any, dict[str, Any]]:
    import ray

    from negseq.pipeline.ray_executor import ActorPool, sampled_dataset, write_sampled_outputs
    from negseq.pipeline.ray_trainer import fit

    job = stage.job
    started_ray = _init_ray(job, stage.quiet)
    try:
        pool = ActorPool(
            min_size=int(job.get("ray", "min_actors", 1)),
            max_size=int(job.get("ray", "max_actors", 2)),
            num_cpus=float(job.get("ray", "actor_cpus", 0.5)),
        )
        sampler_ref, source_ref = ray.put(stage.sampler), ray.put(stage.train_table)
        if stage.write_samples:
            manifest = write_sampled_outputs(
                sampler_ref,
                source_ref,
                stage.samples_dir,
                stage.plan,
                pool,
                seed=stage.sampler.seed,
                epoch=0,
                out_format=stage.samples_format,
                config_hash=stage.config_hash,
            )
            stage.say(f"wrote {len(manifest['files'])} sampled batches ({manifest['rows_out']} rows) on Ray")
        num_rows = stage.train_table.num_rows
        dataset = sampled_dataset(sampler_ref, source_ref, num_rows, stage.plan, pool, epochs=stage.epochs)
        stage.say(f"Ray Train: {len(stage.epochs)} epoch(s) of {stage.plan.num_batches(num_rows)} batches")
        use_gpu = job.get("train", "use_gpu")
        return fit(
            stage.settings,
            dataset,
            stage.items,
            storage_path=job.output_dir / "ray_train",
            name=job.name,
            num_workers=int(job.get("train", "num_workers", 1)),
            use_gpu=None if use_gpu in (None, "auto") else bool(use_gpu),
            max_failures=int(job.get("train", "max_failures", 1)),
        )
    finally:
        if started_ray:
            ray.shutdown()


def _train_locally(stage: _Stage) -> tuple[Any, dict[str, Any]]:
    import torch

    from negseq.model.train import TrainReport, make_optimizer, train
    from negseq.pipeline.local_executor import LocalExecutor
    from negseq.pipeline.plans import build_model

    job, settings, plan = stage.job, stage.settings, stage.plan
    model = build_model(settings)
    optimizer = make_optimizer(model, settings.lr, settings.weight_decay)
    device = "cuda" if torch.cuda.is_available() and job.get("train", "use_gpu") is not False else "cpu"
    model.to(device)
    table = stage.train_table
    batches = [plan.batch(table, i) for i in range(plan.num_batches(table.num_rows))]
    total = TrainReport(optimizer)  # the epochs' reports, summed
    for epoch in stage.epochs:
        executor = LocalExecutor(
            stage.sampler,
            layout=plan.layout,
            neg_per_pos=plan.neg_per_pos,
            seq_delim=plan.seq_delim,
            epoch=epoch,
            num_workers=int(job.get("ray", "local_workers", 2)),
        )
        if stage.write_samples and epoch == 0:
            executor.write(
                batches, stage.samples_dir, format=stage.samples_format, config_hash=stage.config_hash
            )
        remaining = None if settings.max_steps is None else settings.max_steps - total.steps
        if remaining is not None and remaining <= 0:
            break
        jagged = executor.iter_jagged(
            batches,
            items=stage.items,
            uih_field=settings.uih_field,
            max_seq_len=settings.max_seq_len,
            timestamp_field=settings.timestamp_field,
        )
        report = train(
            model, jagged, optimizer=optimizer, max_steps=remaining, device=device, quiet=stage.quiet
        )
        total.losses += report.losses
        total.rows += report.rows
        total.seconds += report.seconds
        total.data_wait_seconds += report.data_wait_seconds
    model.to("cpu")
    return model, total.metrics()
