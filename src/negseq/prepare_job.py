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
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from negseq.config import JobConfig
from negseq.io.prepare import Prepared, prepare
from negseq.io.rundir import PREPARE_STAGING_PREFIX, install_prepared, prepared_files
from negseq.io.sources import CsvOptions, Source


def init_ray(address: str | None, num_cpus: int | None, *, verbose: bool = False) -> bool:
    """Join `address` (or `RAY_ADDRESS`), else start Ray in this process; quiet unless `verbose`.
    Returns whether this call started or joined Ray (False: it was already initialized)."""
    import ray

    from negseq.executors.ray_logs import quiet_ray

    if not verbose:
        quiet_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,
    }
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 2, include_dashboard=False, **kwargs)
    ray.data.DataContext.get_current().enable_progress_bars = verbose
    return True


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
        from negseq.io.prepare_ray import default_shards

        assert source is not None  # config: prepare = "ray" needs interactions
        return cls(config, source, data.shards or default_shards(source.num_rows))

    @property
    def files(self) -> list[str]:
        """Paths (relative to `[prepare] dir`) the prepare writes; none when already prepared."""
        assert self.config.data is not None
        return [] if self.config.data.prepared is not None else prepared_files(self.shards)

    def run(
        self, say: Callable[[str], None] = lambda _: None, *, verbose: bool = False, keep_ray: bool = False
    ) -> tuple[Prepared, dict[str, int] | None]:
        """Prepare (or check the prepared folder); returns it and its row counts (None when it was
        already prepared). The caller has claimed `[prepare] dir` for `files`. `keep_ray`: leave
        a Ray this call started running (the job trains on it next)."""
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
        return self._on_ray(Path(folder), say, verbose=verbose, keep_ray=keep_ray)

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
        return prepare(
            interactions,
            folder,
            user_field=data.user_field,
            item_field=data.item_field,
            time_field=data.time_field,
            max_seq_len=data.max_seq_len,
            min_len=data.min_len,
            item_weight_power=data.item_weight_power,
        )

    def _on_ray(
        self, folder: Path, say: Callable[[str], None], *, verbose: bool, keep_ray: bool
    ) -> tuple[Prepared, dict[str, int]]:
        import ray

        from negseq.io.prepare_ray import prepare_on_ray

        data, source = self.config.data, self.source
        assert data is not None and source is not None and self.shards is not None
        started = init_ray(self.config.ray.address, self.config.ray.num_cpus, verbose=verbose)
        folder.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=PREPARE_STAGING_PREFIX, dir=folder)
        try:
            say(f"preparing {source.num_rows} interactions from {source.spec} on Ray, {self.shards} shard(s)")
            counts = prepare_on_ray(
                source,
                pafs.LocalFileSystem(),
                staging,
                user_field=data.user_field,
                item_field=data.item_field,
                time_field=data.time_field,
                max_seq_len=data.max_seq_len,
                min_len=data.min_len,
                item_weight_power=data.item_weight_power,
                shards=self.shards,
            )
            install_prepared(folder, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # this call's own staging folder
            if started and not keep_ray:
                ray.shutdown()
        return Prepared(folder), counts
