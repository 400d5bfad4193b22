"""Throwaway X.509 material for the TLS tests, made with `cryptography`: a CA, a server
certificate for 127.0.0.1 / localhost, a client certificate, and a second CA nobody trusts
(with a server and a client certificate of its own)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_ONE_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Pem:
    """A certificate and its key, as PEM bytes and as files (the key file mode 0600)."""

    cert: bytes
    key: bytes
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    other_ca: Pem  # trusted by no one
    other_server: Pem  # signed by other_ca
    other_client: Pem  # signed by other_ca


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    folder: Path,
    stem: str,
    common_name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    usage: str,
) -> tuple[Pem, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_cert.subject if issuer_cert else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _ONE_DAY)
        .not_valid_after(now + _ONE_DAY)
    )
    if usage == "ca":
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        oid = ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([oid]), critical=False)
        if usage == "server":
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_file, key_file = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(key_pem)
    os.chmod(key_file, 0o600)
    return Pem(cert_pem, key_pem, cert_file, key_file), cert, key


def make_pki(folder: Path) -> Pki:
    ca, ca_cert, ca_key = _issue(folder, "ca", "negseq test CA", None, "ca")
    server, _, _ = _issue(folder, "server", "localhost", (ca_cert, ca_key), "server")
    client, _, _ = _issue(folder, "client", "negseq test client", (ca_cert, ca_key), "client")
    other, other_cert, other_key = _issue(folder, "other_ca", "untrusted CA", None, "ca")
    other_server, _, _ = _issue(folder, "other_server", "localhost", (other_cert, other_key), "server")
    other_client, _, _ = _issue(folder, "other_client", "intruder", (other_cert, other_key), "client")
    return Pki(ca, server, client, other, other_server, other_client)
