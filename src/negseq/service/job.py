"""What `negseq serve` runs, from its checked config (`negseq.config`, command "serve").

```toml
[sampler.negative_sampler]   # TorchEasyRec's keys; relative paths resolve against this file
input_path = "items.parquet"
num_sample = 1024
item_id_field = "item_id"

[candidates]                 # defaults of candidates-mode requests
layout = "suffix"            # or "interleaved"
seq_delim = ";"

[service]                    # every key is also a flag (--tls-cert, --max-concurrent, ...)
host = "127.0.0.1"
port = 8815
token_file = "token"         # owner-only (mode 0600)
tls_cert = "server.crt"      # TLS (grpc+tls)
tls_key = "server.key"       # owner-only (mode 0600)
tls_client_ca = "ca.crt"     # mutual TLS: clients need a certificate this CA signed
insecure = false             # true: allow a token on a non-loopback host without TLS
max_concurrent = 64          # open calls at once; default 8 a CPU, at least 16
metrics_port = 9815          # Prometheus metrics on host:metrics_port; default off
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from negseq.config import JobConfig, SamplerConfig, load_config
from negseq.layout import Layout
from negseq.service.limits import Limits


@dataclass(frozen=True)
class CandidateDefaults:
    """What a candidates-mode request gets when it does not say."""

    layout: Layout | None = None
    neg_per_pos: int | None = None
    seq_delim: str = ";"


@dataclass(frozen=True)
class ServiceJob:
    """A checked `negseq serve` job: the sampler, the request defaults, limits and transport."""

    config: JobConfig
    sampler_config: SamplerConfig
    candidates: CandidateDefaults
    limits: Limits

    @classmethod
    def from_config(cls, config: JobConfig) -> ServiceJob:
        assert config.sampler is not None  # `load_config(command="serve")` requires it
        cand, svc = config.candidates, config.service
        return cls(
            config=config,
            sampler_config=config.sampler,
            candidates=CandidateDefaults(cand.layout, cand.neg_per_pos, cand.seq_delim),
            limits=Limits(max_rows=svc.max_rows, max_bytes=svc.max_bytes, max_negatives=svc.max_negatives),
        )

    @classmethod
    def from_toml(cls, path: str | Path) -> ServiceJob:
        return cls.from_config(load_config(path, command="serve"))
