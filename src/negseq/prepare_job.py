"""The one prepare of `negseq prepare` and `negseq run`: a job's `[data]` -> a prepared folder.

`[data]` names an interaction log (`interactions`: a file, folder, glob, URI or a list),
a generated one (`[data.synthetic]`), or tables already prepared (`prepared`: a folder or URI
holding train/valid/eval/items.parquet, each a file or a folder of shards), which are checked and
used as they are. A log is prepared in this process (`prepare = "local"`, `negseq.io.prepare`)
or on Ray Data (`prepare = "ray"`, `negseq.io.prepare_ray`), joining the cluster in
`[ray] address` or `RAY_ADDRESS` when set, else a Ray started in this process. The Ray prepare
writes into a staging folder inside `[prepare] dir` and moves the tables in once every task has
finished, so a failed prepare leaves the previous tables as they were.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from negseq.config import JobConfig
from negseq.errors import NegseqError
from negseq.io.prepare import Prepared, prepare
from negseq.io.rundir import PREPARE_STAGING_PREFIX, install_prepared, prepared_files
from negseq.io.sources import CsvOptions, Source


@dataclass(frozen=True)
class PrepareStep:
    """A job's prepare, planned from metadata before anything is written: the log's files, and
    the files the prepare will write (`files`, what the output folder's record must name)."""

    config: JobConfig
    source: Source | None  # the interaction log; None when generated or already prepared
    shards: int | None  # the Ray prepare's shards a table; None in-process

    @classmethod
    def plan(cls, config: JobConfig) -> PrepareStep:
        data = config.data
        assert data is not None
        if data.prepared is not None:
            return cls(config, None, None)
        assert config.prepare.dir is not None
        source = None
        if data.interactions is not None:
            csv = CsvOptions.for_format(data.format, data.delimiter, data.column_names)
            source = Source.open(list(data.interactions), format=data.format, csv=csv)
            source.require([data.user_field, data.item_field, data.time_field])
        if data.prepare != "ray":
            return cls(config, source, None)
        if data.action_field is not None:
            raise NegseqError(
                f'{config.source}: [data] action_field: prepare = "ray" does not carry actions yet; '
                'use prepare = "local"'
            )
        from negseq.io.prepare_ray import default_shards

        assert source is not None  # config: prepare = "ray" needs interactions
        return cls(config, source, data.shards or default_shards(source.num_rows))

    @property
    def files(self) -> list[str]:
        """Paths (relative to `[prepare] dir`) the prepare writes; none when already prepared."""
        assert self.config.data is not None
        return [] if self.config.data.prepared is not None else prepared_files(self.shards)

    def run(
        self, say: Callable[[str], None] = lambda _: None, *, verbose: bool = False
    ) -> tuple[Prepared, dict[str, int] | None]:
        """Prepare (or check the prepared folder); returns it and its row counts (None when it was
        already prepared). The caller has claimed `[prepare] dir` for `files`. On Ray, it uses the
        Ray this process holds (a job's) or starts one for the call."""
        data = self.config.data
        assert data is not None
        if data.prepared is not None:
            prepared = Prepared(data.prepared)
            prepared.check()
            say(f"using the prepared tables in {data.prepared}")
            return prepared, None
        folder = self.config.prepare.dir
        assert folder is not None
        if self.shards is None:
            return self._in_process(Path(folder), say)
        return self._on_ray(Path(folder), say, verbose=verbose)

    def _in_process(self, folder: Path, say: Callable[[str], None]) -> tuple[Prepared, dict[str, int]]:
        data = self.config.data
        assert data is not None
        if self.source is None:
            from negseq.synthetic import generate_interactions

            assert data.synthetic is not None
            interactions = generate_interactions(**dataclasses.asdict(data.synthetic))
            say(f"generated {interactions.num_rows} synthetic interactions")
        else:
            interactions = self.source.read_all()
            say(f"read {interactions.num_rows} interactions from {self.source.spec}")
        install_prepared(folder)  # shard folders of an earlier Ray prepare would shadow the files
        return prepare(interactions, folder, **self._split_options(), action_field=data.action_field)

    def _split_options(self) -> dict[str, Any]:
        """The columns and limits both prepares split the log by (the same tables either way)."""
        data = self.config.data
        assert data is not None
        return {
            "user_field": data.user_field,
            "item_field": data.item_field,
            "time_field": data.time_field,
            "max_seq_len": data.max_seq_len,
            "min_len": data.min_len,
            "item_weight_power": data.item_weight_power,
        }

    def _on_ray(
        self, folder: Path, say: Callable[[str], None], *, verbose: bool
    ) -> tuple[Prepared, dict[str, int]]:
        from negseq.executors.ray_session import ray_started
        from negseq.io.prepare_ray import prepare_on_ray

        data, source = self.config.data, self.source
        assert data is not None and source is not None and self.shards is not None
        with ray_started(self.config, verbose):  # the job's Ray when it holds one
            folder.mkdir(parents=True, exist_ok=True)
            staging = tempfile.mkdtemp(prefix=PREPARE_STAGING_PREFIX, dir=folder)
            try:
                rows = source.num_rows
                say(f"preparing {rows} interactions from {source.spec} on Ray, {self.shards} shards")
                counts = prepare_on_ray(
                    source,
                    pafs.LocalFileSystem(),
                    staging,
                    **self._split_options(),
                    shards=self.shards,
                )
                install_prepared(folder, staging)
            finally:
                shutil.rmtree(staging, ignore_errors=True)  # this call's own staging folder
        return Prepared(folder), counts
