"""A throw-away PKI for TLS tests: a CA, a server certificate for 127.0.0.1/localhost and a
client certificate, written as PEM files (generated with ``cryptography``)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _issue(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool, server: bool = False):
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                          crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> Pki:
    """Create the CA, server and client certificates (and a second, untrusted CA + client)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for prefix in ("", "other_"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _issue(f"{prefix}test CA", ca_key, _name(f"{prefix}test CA"), ca_key, ca=True)
        (folder / f"{prefix}ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        out[f"{prefix}ca"] = folder / f"{prefix}ca.pem"
        roles = [("client", False)] if prefix else [("server", True), ("client", False)]
        for role, server in roles:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _issue(f"{prefix}{role}", key, ca_cert.subject, ca_key, ca=False, server=server)
            (folder / f"{prefix}{role}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            _write_key(key, folder / f"{prefix}{role}.key")
            out[f"{prefix}{role}_cert"] = folder / f"{prefix}{role}.pem"
            out[f"{prefix}{role}_key"] = folder / f"{prefix}{role}.key"
    return Pki(**out)
