"""Arrow Flight sampler service: `negseq serve` loads the tables once; trainers call it over the wire.

Wire format: `negseq.service.protocol`; user guide: docs/service.md.
"""

from negseq.service.client import SamplerClient
from negseq.service.job import CandidateDefaults, ServiceJob
from negseq.service.limits import Limits
from negseq.service.protocol import Request
from negseq.service.server import DrainOutcome, SamplerServer, serve_until_signalled
from negseq.service.tls import ServerTls

__all__ = [
    "CandidateDefaults",
    "DrainOutcome",
    "Limits",
    "Request",
    "SamplerClient",
    "SamplerServer",
    "ServerTls",
    "ServiceJob",
    "serve_until_signalled",
]
