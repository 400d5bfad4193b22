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
tls_cert = "server.crt"      # TLS (grpc+tls); paths resolve against the job file's folder
tls_key = "server.key"       # owner-only (mode 0600)
tls_client_ca = "ca.crt"     # mutual TLS: clients need a certificate this CA signed
insecure = false             # true: allow a token on a non-loopback host without TLS
max_concurrent = 64          # open calls at once; default 8 a CPU, at least 16
metrics_port = 9815          # Prometheus metrics on host:metrics_port; default off
```

Every key is typed: a value of another type (a bool or float or string where an int belongs) or
out of range is an error naming the file, table, key, what was expected and what was given.
Other tables (`[input]`, `[output]`, `[run]`, ...) belong to other commands and are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from negseq.errors import NegseqError
from negseq.jobfile import checked_table, load_toml
from negseq.sampler.config import DEFAULT_SEQ_DELIM, sequence_delimiter
from negseq.service.limits import Limits
from negseq.service.protocol import LAYOUTS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8815
_PORT_MAX = 65535
_ID_LIMIT = (1 << 32) - 1  # as the request metadata's neg_per_pos
_KEYS = {
    "candidates": {"layout", "neg_per_pos", "seq_delim"},
    "service": {
        "host",
        "port",
        "max_rows",
        "max_bytes",
        "max_negatives",
        "tls_cert",
        "tls_key",
        "tls_client_ca",
        "insecure",
        "max_concurrent",
        "metrics_port",
    },
}
_TYPE_NAMES = {int: "an integer", bool: "true or false", str: "a string"}


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
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    max_concurrent: int | None = None  # None: sized to the machine (admission.default_max_concurrent)
    metrics_port: int | None = None  # None: no metrics endpoint

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
        cand = _Table(job, "candidates", source)
        service = _Table(job, "service", source)
        layout = cand.get("layout", str)
        if layout is not None and layout not in LAYOUTS:
            raise NegseqError(f"{source}: [candidates] layout: expected one of {LAYOUTS}, got {layout!r}")
        cand.get("seq_delim", str)  # its type; sequence_delimiter checks it against item_id_delim
        seq_delim = sequence_delimiter(sampler, job.get("candidates", {}), source)
        defaults = Limits()
        return cls(
            source=source,
            sampler_config=sampler,
            candidates=CandidateDefaults(
                layout=layout,
                neg_per_pos=cand.get("neg_per_pos", int, low=0, high=_ID_LIMIT),
                seq_delim=seq_delim,
            ),
            host=service.get("host", str, DEFAULT_HOST),
            port=service.get("port", int, DEFAULT_PORT, low=0, high=_PORT_MAX),
            limits=Limits(
                max_rows=service.get("max_rows", int, defaults.max_rows, low=1),
                max_bytes=service.get("max_bytes", int, defaults.max_bytes, low=1),
                max_negatives=service.get("max_negatives", int, defaults.max_negatives, low=1),
            ),
            tls_cert=service.path("tls_cert"),
            tls_key=service.path("tls_key"),
            tls_client_ca=service.path("tls_client_ca"),
            insecure=service.get("insecure", bool, False),
            max_concurrent=service.get("max_concurrent", int, low=1),
            metrics_port=service.get("metrics_port", int, low=0, high=_PORT_MAX),
        )


class _Table:
    """One table of the job file, whose keys are read with their types checked (no coercion)."""

    def __init__(self, job: dict[str, Any], name: str, source: Path) -> None:
        self.values = checked_table(job, name, _KEYS[name], source)
        self.name = name
        self.source = source

    def _where(self, key: str) -> str:
        return f"{self.source}: [{self.name}] {key}"

    def get(
        self, key: str, kind: type, default: Any = None, *, low: int | None = None, high: int | None = None
    ) -> Any:
        """The key's value (`default` when absent), refused when it is not of type `kind` (a bool is
        not an int here) or outside [low, high]."""
        if key not in self.values:
            return default
        value = self.values[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise NegseqError(
                f"{self._where(key)}: expected {_TYPE_NAMES[kind]}, got {type(value).__name__} {value!r}"
            )
        number = cast(int, value) if kind is int else None
        if number is not None and (
            (low is not None and number < low) or (high is not None and number > high)
        ):
            bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise NegseqError(f"{self._where(key)}: expected an integer {bounds}, got {value}")
        return value

    def path(self, key: str) -> Path | None:
        """A file path, relative to the job file's folder unless absolute."""
        value = self.get(key, str)
        if value is None:
            return None
        if not value:
            raise NegseqError(f"{self._where(key)}: expected a file path, got ''")
        return self.source.parent / value
