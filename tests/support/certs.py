"""Certificates for tests: a CA of the test's own and the leaves it issues (cryptography)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

Key = ec.EllipticCurvePrivateKey


@dataclass
class CA:
    key: Key
    cert: x509.Certificate


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Syntho test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "Test CA", now: datetime | None = None) -> CA:
    now = now or datetime.now(timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=365)).not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return CA(key, cert)


def leaf(ca: CA, names: tuple[str, ...], ips: tuple[str, ...] = (), key: Key | None = None,
         start: datetime | None = None, end: datetime | None = None, san: bool = True,
         now: datetime | None = None) -> tuple[x509.Certificate, Key]:
    """A server certificate for names (and IP addresses), valid from start to end (by default
    a day before now to 90 days after)."""
    now = now or datetime.now(timezone.utc)
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = (x509.CertificateBuilder().subject_name(name(names[0] if names else "no-san"))
         .issuer_name(ca.cert.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(start or now - timedelta(days=1))
         .not_valid_after(end or now + timedelta(days=90)))
    if san:
        general: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        general += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        b = b.add_extension(x509.SubjectAlternativeName(general), critical=False)
    return b.sign(ca.key, hashes.SHA256()), key


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: Key, password: bytes | None = None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def write(folder: Path, cert_data: bytes, key_data: bytes,
          key_mode: int = 0o600) -> tuple[Path, Path]:
    """cert.pem (0644) and key.pem (key_mode) in folder."""
    c, k = folder / "cert.pem", folder / "key.pem"
    c.write_bytes(cert_data)
    k.write_bytes(key_data)
    os.chmod(c, 0o644)
    os.chmod(k, key_mode)
    return c, k


def ca_files(folder: Path, cn: str, ca: bool = True,
             until: datetime | None = None) -> tuple[Path, Path]:
    """An organisation's CA (RSA, as many are) as files: <cn>.crt and <cn>.key (0600);
    `ca=False` makes it a plain certificate, `until` ends it early."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(until or now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{cn}.crt", folder / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path
