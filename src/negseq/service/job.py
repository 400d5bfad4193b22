"""The job file of `negseq serve`: the same TOML format as `negseq sample`'s, plus `[service]`.

```toml
[sampler.negative_sampler]   # the same keys as negseq.sampler.build_sampler
input_path = "items.parquet" # relative paths resolve against the job file's folder
num_sample = 1024
item_id_field = "item_id"

[candidates]                 # optional: defaults of the "candidates" mode
layout = "suffix"            # or "interleaved"
neg_per_pos = 4
seq_delim = ";"

[service]                    # optional; command-line flags override these
host = "127.0.0.1"
port = 8815
max_rows = 1048576
max_bytes = 268435456
max_negatives = 16777216
```

Other tables (`[input]`, `[output]`, `[run]`, ...) belong to other commands and are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negseq.errors import NegseqError
from negseq.jobfile import checked_table, load_toml
from negseq.sampler.config import DEFAULT_SEQ_DELIM, sequence_delimiter
from negseq.service.limits import Limits
from negseq.service.protocol import LAYOUTS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8815
_KEYS = {
    "candidates": {"layout", "neg_per_pos", "seq_delim"},
    "service": {"host", "port", "max_rows", "max_bytes", "max_negatives"},
}


@dataclass(frozen=True)
class CandidateDefaults:
    """What a candidates-mode request gets when it does not say."""

    layout: str | None = None
    neg_per_pos: int | None = None
    seq_delim: str = DEFAULT_SEQ_DELIM


@dataclass
class ServiceJob:
    source: Path
    sampler_config: dict[str, Any]
    candidates: CandidateDefaults = field(default_factory=CandidateDefaults)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    limits: Limits = field(default_factory=Limits)

    @property
    def base_dir(self) -> Path:
        return self.source.parent

    @classmethod
    def from_toml(cls, path: str | Path) -> ServiceJob:
        """Read and check a job file; unknown keys in the tables this command reads are errors."""
        source = Path(path)
        job = load_toml(source)
        sampler = job.get("sampler")
        if not isinstance(sampler, dict) or not sampler:
            raise NegseqError(f"{source}: missing [sampler.<type>] table (e.g. [sampler.negative_sampler])")
        cand = _table(job, "candidates", source)
        service = _table(job, "service", source)
        layout = cand.get("layout")
        if layout is not None and layout not in LAYOUTS:
            raise NegseqError(f"{source}: [candidates] layout must be one of {LAYOUTS}, got {layout!r}")
        defaults = Limits()
        try:
            limits = Limits(
                max_rows=int(service.get("max_rows", defaults.max_rows)),
                max_bytes=int(service.get("max_bytes", defaults.max_bytes)),
                max_negatives=int(service.get("max_negatives", defaults.max_negatives)),
            )
            neg_per_pos = cand.get("neg_per_pos")
            return cls(
                source=source,
                sampler_config=sampler,
                candidates=CandidateDefaults(
                    layout=layout,
                    neg_per_pos=None if neg_per_pos is None else int(neg_per_pos),
                    seq_delim=sequence_delimiter(sampler, cand, source),
                ),
                host=str(service.get("host", DEFAULT_HOST)),
                port=int(service.get("port", DEFAULT_PORT)),
                limits=limits,
            )
        except (TypeError, ValueError) as exc:
            raise NegseqError(f"{source}: {exc}") from exc


def _table(job: dict[str, Any], name: str, source: Path) -> dict[str, Any]:
    return checked_table(job, name, _KEYS[name], source)
