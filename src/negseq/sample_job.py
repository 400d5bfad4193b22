"""The TOML job file of `negseq sample` (and, later, `negseq run`): parsed and checked once.

```toml
[input]                      # Parquet, Arrow IPC or CSV file or folder
path = "prepared/train.parquet"
format = "parquet"           # optional: from the suffix
batch_size = 4096
delimiter = ","              # CSV only
column_names = ["user_id", "item_id", "ts"]   # CSV without a header

[sampler.negative_sampler]   # the same keys as negseq.sampler.build_sampler
input_path = "prepared/items.parquet"
num_sample = 32
item_id_field = "target"

[candidates]
layout = "interleaved"       # or "suffix"
neg_per_pos = 32             # interleaved; default: the sampler's num_sample
seq_delim = ";"              # or the sampler's item_id_delim (TorchEasyRec's name)

[output]
path = "sampled"
format = "parquet"           # or "ipc"

[run]
epoch = 0
workers = 2
```

Relative paths resolve against the job file's folder. Tables this command does not know are left
to other commands; unknown keys inside the tables it reads are errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from negseq.candidates import LAYOUTS, CandidateSpec
from negseq.errors import NegseqError
from negseq.executors.local import LocalExecutor
from negseq.executors.plan import BatchWork, SamplingPlan
from negseq.io.sinks import OUTPUT_FORMATS, SampledSink
from negseq.io.sources import CsvOptions, Source
from negseq.jobfile import checked_table, load_toml
from negseq.sampler import build_sampler
from negseq.sampler.config import sequence_delimiter

_KEYS = {
    "input": {"path", "format", "batch_size", "delimiter", "column_names"},
    "candidates": {"layout", "neg_per_pos", "seq_delim"},
    "output": {"path", "format"},
    "run": {"epoch", "workers", "max_in_flight"},
}


def _table(job: dict[str, Any], name: str, source: Path) -> dict[str, Any]:
    return checked_table(job, name, _KEYS[name], source)


@dataclass
class SampleJob:
    """Everything `negseq sample` needs, checked before anything is read or written."""

    source: Path
    input_path: Path
    output_path: Path
    sampler_config: dict[str, Any]
    input_format: str | None = None
    batch_size: int = 4096
    csv: CsvOptions | None = None
    layout: str = "interleaved"
    neg_per_pos: int | None = None
    seq_delim: str = ";"
    output_format: str = "parquet"
    epoch: int = 0
    workers: int = 2
    max_in_flight: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.source.parent

    @classmethod
    def from_toml(
        cls,
        path: str | Path,
        *,
        input_path: str | None = None,
        output_path: str | None = None,
        workers: int | None = None,
    ) -> SampleJob:
        """Read a job file; the arguments given override its values."""
        source = Path(path)
        job = load_toml(source)
        inp = _table(job, "input", source)
        cand = _table(job, "candidates", source)
        out = _table(job, "output", source)
        run = _table(job, "run", source)
        sampler = job.get("sampler")
        if not isinstance(sampler, dict) or not sampler:
            raise NegseqError(f"{source}: missing [sampler.<type>] table (e.g. [sampler.negative_sampler])")
        base = source.parent

        def resolve(value: str | None, what: str) -> Path:
            if not value:
                raise NegseqError(f"{source}: {what} is not set (in the job file or as a flag)")
            p = Path(value)
            return p if p.is_absolute() else base / p

        csv = None
        if "delimiter" in inp or "column_names" in inp:
            csv = CsvOptions(delimiter=inp.get("delimiter", ","), column_names=inp.get("column_names"))
        layout = cand.get("layout", "interleaved")
        if layout not in LAYOUTS:
            raise NegseqError(
                f"{source}: [candidates] layout must be 'interleaved' or 'suffix', got {layout!r}"
            )
        result = cls(
            source=source,
            input_path=Path(input_path) if input_path else resolve(inp.get("path"), "[input] path"),
            output_path=Path(output_path) if output_path else resolve(out.get("path"), "[output] path"),
            sampler_config=sampler,
            input_format=inp.get("format"),
            batch_size=int(inp.get("batch_size", 4096)),
            csv=csv,
            layout=layout,
            neg_per_pos=None if cand.get("neg_per_pos") is None else int(cand["neg_per_pos"]),
            seq_delim=sequence_delimiter(sampler, cand, source),
            output_format=str(out.get("format", "parquet")),
            epoch=int(run.get("epoch", 0)),
            workers=int(workers if workers is not None else run.get("workers", 2)),
            max_in_flight=run.get("max_in_flight"),
            raw=job,
        )
        if result.batch_size < 1:
            raise NegseqError(f"{source}: [input] batch_size must be >= 1, got {result.batch_size}")
        if result.output_format not in OUTPUT_FORMATS:
            raise NegseqError(
                f"{source}: [output] format must be 'parquet' or 'ipc', got {result.output_format!r}"
            )
        return result


def run_sample_job(job: SampleJob, *, progress: bool = False) -> dict[str, Any]:
    """Run a sample job on the local executor; returns the manifest it wrote. Every check (input
    columns, output folder, layout) runs before anything is written."""
    sampler = build_sampler(job.sampler_config, base_dir=job.base_dir)
    spec = CandidateSpec(layout=job.layout, neg_per_pos=job.neg_per_pos, seq_delim=job.seq_delim)  # type: ignore[arg-type]
    spec.check_sampler(sampler)
    source = Source.open(job.input_path, format=job.input_format, csv=job.csv)
    source.require([f for f in (sampler.item_id_field, sampler.user_id_field) if f is not None])
    clash = sorted(set(spec.output_columns(sampler)) & set(source.schema.names))
    if clash:
        raise NegseqError(
            f"{source.spec}: input column(s) {clash} are negseq output columns (is this a sampled "
            "output?); sample the original input instead"
        )
    plan = SamplingPlan(source, job.batch_size, spec, epochs=(job.epoch,))
    sink = SampledSink.create(str(job.output_path), format=job.output_format, inputs=source.roots)
    work = BatchWork(sampler, plan, sink=sink, write_epoch=job.epoch)
    executor = LocalExecutor(work, num_workers=job.workers, max_in_flight=job.max_in_flight)
    try:
        with tqdm(
            total=source.num_rows, unit="rows", unit_scale=True, desc="sample", disable=not progress
        ) as bar:
            for summary in executor.run(job.epoch):
                bar.update(summary["rows_in"])
        return sink.finish(
            expected_batches=range(plan.num_batches), describe=work.describe(job.sampler_config)
        )
    except BaseException:
        sink.abort()
        raise
