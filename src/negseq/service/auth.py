"""Bearer-token authentication for the sampler service (a Flight server middleware), and the
reading of the service's secret files.

With a token configured, every call (exchanges and actions alike) must carry exactly one header
`authorization: Bearer <token>`; anything else is refused with `FlightUnauthenticatedError`
before the handler runs. The token is compared in constant time and never logged. Secret files
(the token, the TLS private key) must be readable by their owner only, as ssh demands of its keys:
a secret that others on the machine can read is no secret.
"""

from __future__ import annotations

import hmac
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pyarrow.flight as flight

from negseq.errors import NegseqError

AUTH_HEADER = "authorization"


def read_secret_file(path: str | Path, what: str) -> bytes:
    """The bytes of a secret file, refused (naming the file and its mode) when its group or others
    have any access to it: mode 0600 or stricter, like an ssh key."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            if mode & 0o077:
                raise NegseqError(
                    f"{path}: {what} has mode {mode:04o}, which lets others on this machine read it; "
                    f"it must be readable by its owner only (chmod 600 {path})"
                )
            return handle.read()
    except OSError as exc:
        raise NegseqError(f"{path}: cannot read {what} ({exc.strerror})") from exc


def read_token_file(path: str | Path) -> str:
    """The token in an owner-only file (surrounding whitespace stripped); an empty, missing or
    group/other-accessible file is an error."""
    try:
        token = read_secret_file(path, "token file").decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise NegseqError(f"{path}: token file is not UTF-8 text") from exc
    if not token:
        raise NegseqError(f"{path}: token file is empty")
    return token


def bearer_headers(token: str | None) -> list[tuple[bytes, bytes]]:
    """The call headers a client sends for `token` (none without one)."""
    return [] if token is None else [(AUTH_HEADER.encode(), f"Bearer {token}".encode())]


class _Authenticated(flight.ServerMiddleware):
    """Marks a call that passed the token check; it has nothing to do afterwards."""


class BearerTokenMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Refuses every call that does not carry exactly one `authorization: Bearer <token>` header.
    `on_refused` (if given) is told of each refusal, for the error counters."""

    def __init__(self, token: str, on_refused: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self._expected = f"Bearer {token}".encode()
        self._on_refused = on_refused

    def start_call(self, info: flight.CallInfo, headers: dict) -> flight.ServerMiddleware:
        values = headers.get(AUTH_HEADER, [])
        if len(values) == 1:
            given = values[0] if isinstance(values[0], bytes) else str(values[0]).encode()
            if hmac.compare_digest(given, self._expected):
                return _Authenticated()
            reason = "wrong bearer token"
        elif values:
            reason = f"{len(values)} authorization headers; a call carries exactly one"
        else:
            reason = "missing bearer token"
        if self._on_refused is not None:
            self._on_refused("unauthenticated")
        raise flight.FlightUnauthenticatedError(f"negseq service: {reason}")
