"""The Ray a job runs on: the cluster it was told to join, the one `ray job submit` runs it in, or
an embedded one this process starts (and so shuts down)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

from negseq.config import JobConfig
from negseq.executors.ray_logs import quiet_ray

# Ray Train settings for an embedded Ray, which starts with the job and ends with it:
EMBEDDED_TRAIN_ENV = {
    # Ray Train's controller polls its workers every 2 s by default, and two polls stand between
    # a fit and its first step (resources granted -> workers started) and after its last step.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    # One machine that the job itself started is not preempted: no watcher actor to start.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def start_ray(config: JobConfig, verbose: bool) -> bool:
    """Join the configured cluster, the one `ray job submit` runs us in, or start an embedded one.
    Returns whether this call started Ray (its caller shuts it down). Ray's own logs, warnings and
    Ray Data's progress bars show with `verbose` only."""
    if not verbose:
        quiet_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,
    }
    if config.ray.cluster_address():
        ray.init(address=config.ray.address, **kwargs)
    else:
        for key, value in EMBEDDED_TRAIN_ENV.items():  # inherited by the processes Ray starts
            os.environ.setdefault(key, value)
        ray.init(
            address="local",
            num_cpus=config.ray.num_cpus or os.cpu_count() or 2,
            include_dashboard=False,
            **kwargs,
        )
    ray.data.DataContext.get_current().enable_progress_bars = verbose
    return True


@contextmanager
def ray_started(config: JobConfig, verbose: bool) -> Iterator[None]:
    """`start_ray` for the block's length: an embedded Ray it started is shut down on the way out."""
    started = start_ray(config, verbose)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
