"""TLS material of the sampler service: the server's certificate and key (and, for mutual TLS, the
CA its clients' certificates must chain to), and the PEM a client passes to trust a server.

Flight does the TLS (gRPC's `tls_certificates`, `verify_client`, `root_certificates`); this module
only reads the files and refuses what cannot work before the server binds: a certificate without
its key, a client CA without a server certificate, a file that holds no PEM block, a private key
that others can read.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from negseq.errors import NegseqError
from negseq.service.auth import read_secret_file

PemSource = bytes | str | os.PathLike
_CERT_MARKER = b"-----BEGIN CERTIFICATE-----"
_KEY_MARKER = b"PRIVATE KEY-----"  # PKCS#8, or the EC / RSA forms


def is_loopback(host: str) -> bool:
    """Whether `host` names the loopback interface (a hostname other than localhost does not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_pem(data: bytes, path: Path, what: str, marker: bytes) -> bytes:
    """`data`, refused (naming the file) when it holds no PEM block with `marker` in its header."""
    if marker not in data:
        raise NegseqError(f"{path}: {what} holds no PEM block ({marker.decode()!r} not found)")
    return data


def _read_pem(path: Path, what: str, marker: bytes) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NegseqError(f"{path}: cannot read {what} ({exc.strerror})") from exc
    return _check_pem(data, path, what, marker)


def pem_bytes(source: PemSource, what: str) -> bytes:
    """PEM given as bytes (used as they are) or as a path to a file holding it (read)."""
    if isinstance(source, bytes):
        return source
    path = Path(source)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise NegseqError(f"{path}: cannot read {what} ({exc.strerror})") from exc


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate chain and private key (PEM), and for mutual TLS the CA (PEM) that
    must have signed every client's certificate; without it clients need no certificate."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(
        cls, cert: str | Path | None, key: str | Path | None, client_ca: str | Path | None = None
    ) -> ServerTls | None:
        """The TLS settings the three files make (None: no TLS). The key file must be owner-only."""
        if cert is None and key is None:
            if client_ca is not None:
                raise NegseqError(
                    f"tls_client_ca {client_ca} (--tls-client-ca) needs tls_cert and tls_key "
                    "(--tls-cert, --tls-key): mutual TLS is TLS with client certificates"
                )
            return None
        if cert is None or key is None:
            given, missing = ("tls_cert", "tls_key") if key is None else ("tls_key", "tls_cert")
            raise NegseqError(
                f"{given} is set but {missing} is not (--{given.replace('_', '-')} and "
                f"--{missing.replace('_', '-')} go together)"
            )
        cert_path, key_path = Path(cert), Path(key)
        private_key = _check_pem(
            read_secret_file(key_path, "TLS private key"), key_path, "TLS private key", _KEY_MARKER
        )
        return cls(
            cert_chain=_read_pem(cert_path, "TLS certificate", _CERT_MARKER),
            private_key=private_key,
            client_ca=None
            if client_ca is None
            else _read_pem(Path(client_ca), "TLS client CA", _CERT_MARKER),
        )
