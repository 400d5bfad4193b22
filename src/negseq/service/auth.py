"""Bearer-token authentication for the sampler service (a Flight server middleware).

With a token configured, every call (exchanges and actions alike) must carry the header
`authorization: Bearer <token>`; anything else is refused with `FlightUnauthenticatedError`
before the handler runs. The token is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import pyarrow.flight as flight

from negseq.errors import NegseqError

AUTH_HEADER = "authorization"


def read_token_file(path: str | Path) -> str:
    """The token in a file (surrounding whitespace stripped); an empty or missing file is an error."""
    path = Path(path)
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise NegseqError(f"{path}: cannot read token file ({exc.strerror})") from exc
    if not token:
        raise NegseqError(f"{path}: token file is empty")
    return token


def bearer_headers(token: str | None) -> list[tuple[bytes, bytes]]:
    """The call headers a client sends for `token` (none without one)."""
    return [] if token is None else [(AUTH_HEADER.encode(), f"Bearer {token}".encode())]


class _Authenticated(flight.ServerMiddleware):
    """Marks a call that passed the token check; it has nothing to do afterwards."""


class BearerTokenMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Refuses every call whose `authorization` header is not `Bearer <token>`."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._expected = f"Bearer {token}".encode()

    def start_call(self, info: flight.CallInfo, headers: dict) -> flight.ServerMiddleware:
        values = headers.get(AUTH_HEADER, [])
        for value in values:
            given = value if isinstance(value, bytes) else str(value).encode()
            if hmac.compare_digest(given, self._expected):
                return _Authenticated()
        reason = "missing bearer token" if not values else "wrong bearer token"
        raise flight.FlightUnauthenticatedError(f"negseq service: {reason}")
