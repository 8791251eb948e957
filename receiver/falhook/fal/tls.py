"""Certificates for `falhook emulate --tls`: a private CA and a server certificate it signs,
for the emulator's own host names, so clients that speak only https (the official
`fal-client`) can use the emulator. Point `SSL_CERT_FILE` at the CA file to trust it.

Needs the `cryptography` package (`pip install 'falhook[emulate]'`).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CA_FILE = "ca.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server-key.pem"
_VALID_DAYS = 30


class TLSUnavailable(RuntimeError):
    """The cryptography package is missing."""


@dataclass(frozen=True)
class TLSFiles:
    ca: Path  # what SSL_CERT_FILE should name
    cert: Path
    key: Path


def make_tls_files(folder: str | os.PathLike[str], hosts: list[str]) -> TLSFiles:
    """A new CA and a server certificate for `hosts` (names or IP addresses) in `folder`.
    Made afresh on every start: a CA key that outlives the emulator is a CA nobody needs."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:
        raise TLSUnavailable(
            "--tls needs the cryptography package: pip install 'falhook[emulate]'"
        ) from None
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    ca = _ca_certificate(ca_key)
    cert = _server_certificate(ca, ca_key, key, hosts)
    pem = serialization.Encoding.PEM
    files = TLSFiles(out / CA_FILE, out / CERT_FILE, out / KEY_FILE)
    files.ca.write_bytes(ca.public_bytes(pem))
    files.cert.write_bytes(cert.public_bytes(pem))
    private = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    return files


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=_VALID_DAYS)


def _ca_certificate(ca_key: Any) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "falhook emulator CA")])
    start, end = _validity()
    usage = x509.KeyUsage(
        digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )


def _server_certificate(ca: Any, ca_key: Any, key: Any, hosts: list[str]) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    start, end = _validity()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )


def default_hosts(host: str, public_host: str | None = None) -> list[str]:
    """The names a client may use to reach the emulator: the address it listens on (a
    wildcard stands for every local name), loopback, and the public URL's host."""
    hosts = [] if host in ("0.0.0.0", "::", "") else [host]  # noqa: S104 - names, not a bind
    hosts += ["localhost", "127.0.0.1", "::1"]
    if public_host:
        hosts.insert(0, public_host)
    return hosts
