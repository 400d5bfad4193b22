"""`negseq sample job.toml`: sample a source's batches on the in-process executor and write them.

The job file's keys are `negseq.config`'s: `[input]` (Parquet, Arrow IPC or CSV: a file, folder,
glob, URI or a list), one `[sampler.<type>]`, `[candidates]` (layout, neg_per_pos, seq_delim,
batch_size), `[output]` (dir, format) and `[run]` (epoch, workers, max_in_flight). Relative paths
resolve against the job file's folder.
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from negseq.candidates import CandidateSpec
from negseq.config import JobConfig
from negseq.executors.local import LocalExecutor
from negseq.executors.plan import BatchWork, SamplingPlan
from negseq.io.sinks import SampledSink
from negseq.io.sources import CsvOptions, Source
from negseq.sampler import build_sampler


def run_sample(config: JobConfig, *, progress: bool = False) -> dict[str, Any]:
    """Run a sample job; returns the manifest it wrote. Every check (input columns, output
    folder, layout) runs before anything is written."""
    assert config.sampler is not None and config.input.path is not None and config.output.dir is not None
    sampler = build_sampler(config.sampler)
    cand, inp = config.candidates, config.input
    spec = CandidateSpec(layout=cand.layout, neg_per_pos=cand.neg_per_pos, seq_delim=cand.seq_delim)
    spec.check_sampler(sampler)
    csv = CsvOptions.for_format(inp.format, inp.delimiter, inp.column_names)
    assert inp.path is not None  # `load_config(command="sample")` requires it
    source = Source.open(list(inp.path), format=inp.format, csv=csv)
    source.require([f for f in (sampler.item_id_field, sampler.user_id_field) if f is not None])
    spec.check_input(sampler, source.schema, source.spec)
    plan = SamplingPlan(source, cand.batch_size, spec, epochs=(config.run.epoch,))
    sink = SampledSink.create(config.output.dir, format=config.output.format, inputs=source.roots)
    work = BatchWork(sampler, plan, sink=sink, write_epoch=config.run.epoch)
    executor = LocalExecutor(work, num_workers=config.run.workers, max_in_flight=config.run.max_in_flight)
    try:
        with tqdm(
            total=source.num_rows, unit="rows", unit_scale=True, desc="sample", disable=not progress
        ) as bar:
            for summary in executor.run(config.run.epoch):
                bar.update(summary["rows_in"])
        return sink.finish(
            expected_batches=range(plan.num_batches), describe=work.describe(config.sampler.table())
        )
    except BaseException:
        sink.abort()
        raise
