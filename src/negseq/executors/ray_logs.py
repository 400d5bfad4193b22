"""Ray quiet by default: negseq prints its own stage lines and one training bar; Ray's internal
logs, warnings and Ray Data's progress bars show with `--verbose` only."""

from __future__ import annotations

import logging
import os
import warnings

# Set before Ray starts its processes, which inherit it: no usage-stats notice. (Ray's C++ logs
# go to its session folder; workers' output reaches the driver only with log_to_driver.)
_QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


def quiet_ray() -> None:
    """Silence Ray's own output in this process and in the Ray processes it starts."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"ray(\..*)?")
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
