"""Container health probe for the sampler service: exit 0 when the Flight server answers `health`
with 'ok' or refuses the call as busy (alive, every call slot taken), 1 otherwise (down, refusing
the token or the TLS handshake, or draining after SIGTERM).

Docker runs it as the image's HEALTHCHECK (Kubernetes as an exec probe). Environment:
  NEGSEQ_HEALTH_ADDRESS  Flight location (default grpc://127.0.0.1:8815; grpc+tls://localhost:8815
                         for a TLS server, whose certificate must name localhost)
  NEGSEQ_TOKEN_FILE      bearer token file, when the service was started with --token-file
                         (default /run/secrets/sampler_token if it exists)
  NEGSEQ_TLS_ROOT_CERTS  PEM file of the CA that signed the server's certificate (TLS)
  NEGSEQ_TLS_CLIENT_CERT, NEGSEQ_TLS_CLIENT_KEY
                         this probe's certificate and key, when the server wants mutual TLS
"""

import os
import sys
from pathlib import Path

import pyarrow.flight as flight

from negseq.service import SamplerClient
from negseq.service.auth import read_token_file

DEFAULT_ADDRESS = "grpc://127.0.0.1:8815"
DEFAULT_TOKEN_FILE = "/run/secrets/sampler_token"


def main() -> int:
    address = os.environ.get("NEGSEQ_HEALTH_ADDRESS", DEFAULT_ADDRESS)
    token_file = os.environ.get("NEGSEQ_TOKEN_FILE") or (
        DEFAULT_TOKEN_FILE if Path(DEFAULT_TOKEN_FILE).is_file() else None
    )
    tls = {
        key: os.environ[name]
        for key, name in (
            ("tls_root_certs", "NEGSEQ_TLS_ROOT_CERTS"),
            ("cert_chain", "NEGSEQ_TLS_CLIENT_CERT"),
            ("private_key", "NEGSEQ_TLS_CLIENT_KEY"),
        )
        if os.environ.get(name)
    }
    try:
        token = read_token_file(token_file) if token_file else None
        with SamplerClient(address, token=token, timeout=4.0, retries=0, **tls) as client:
            status = client.health()
    except Exception as exc:  # any failure to get an answer means unhealthy (say which), but busy
        if isinstance(exc, flight.FlightUnavailableError) and exc.extra_info == b"busy":
            print(f"{address}: busy")  # at its cap on concurrent calls: alive and working
            return 0
        print(f"unhealthy: {address}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"{address}: {status}")
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
