"""Container health probe for the sampler service: exit 0 when the Flight server answers `health`
with 'ok', 1 otherwise (down, refusing the token, or draining after SIGTERM).

Docker runs it as the image's HEALTHCHECK. Environment:
  NEGSEQ_HEALTH_ADDRESS  Flight location (default grpc://127.0.0.1:8815)
  NEGSEQ_TOKEN_FILE      bearer token file, when the service was started with --token-file
                         (default /run/secrets/sampler_token if it exists)
"""

import os
import sys
from pathlib import Path

from negseq.service import SamplerClient
from negseq.service.auth import read_token_file

DEFAULT_ADDRESS = "grpc://127.0.0.1:8815"
DEFAULT_TOKEN_FILE = "/run/secrets/sampler_token"


def main() -> int:
    address = os.environ.get("NEGSEQ_HEALTH_ADDRESS", DEFAULT_ADDRESS)
    token_file = os.environ.get("NEGSEQ_TOKEN_FILE") or (
        DEFAULT_TOKEN_FILE if Path(DEFAULT_TOKEN_FILE).is_file() else None
    )
    try:
        token = read_token_file(token_file) if token_file else None
        with SamplerClient(address, token=token, timeout=4.0) as client:
            status = client.health()
    except Exception as exc:  # any failure to get an answer means unhealthy; say which
        print(f"unhealthy: {address}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"{address}: {status}")
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
