"""Ray's traffic in mutual TLS: the cluster CA the token carries, each node's certificate, and
the look at the head that tells a joining node which the head speaks.

The CA is derived from the cluster's token (docs/security.md, "Ray's wire"): every node that
holds the token computes the same CA key, so each issues its own certificate offline, in any
boot order, with no new port and nothing more to distribute. The CA is exactly as powerful as
the token, which already lets its holder run code on every node. A node's own key is made on
the node and never leaves it.

Files, in `<data-dir>/ray-tls/` (mounted read-only at /ray-tls in the Ray containers):
`ca.crt`, `node.key` (0600, made once, kept through renewals) and `node-<digest>.crt`: the
name carries the certificate's digest, so a renewed certificate is a changed container
setting (the node's Ray restarts and reads it: Ray reads its certificate once, at start) and
never a file swapped under a running process. The previous certificate is kept until the next
renewal, for a container that restarts before the run that replaced it ends.

On the head the folder's presence is the switch: a new head makes it (TLS on by default), a
head deployed by an earlier agent has none and stays as it is until the operator switches.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent import store
from agent.errors import EnvironmentProblem, UsageError
from agent.tls import CertInfo, info_of, read_file, spki

FOLDER = "ray-tls"
CA_FILE = "ca.crt"
KEY_FILE = "node.key"
INSIDE = "/ray-tls"  # where the containers see the folder
RENEW_WITHIN = timedelta(days=30)  # a re-run renews a certificate this close to its expiry
WARN_WITHIN_DAYS = 30
DEFAULT_DAYS = 365

# Fixed, so that every node derives the same CA certificate's content from the token.
_CA_NAME = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "syntho-agent"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "syntho-agent cluster CA")])
_CA_FROM = datetime(2025, 1, 1, tzinfo=timezone.utc)
_CA_UNTIL = datetime(2050, 1, 1, tzinfo=timezone.utc)
_SALT = b"syntho-agent cluster CA v1"
# The order of P-256's group: a derived scalar must lie in [1, n - 1].
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@dataclass(frozen=True)
class CA:
    key: CertificateIssuerPrivateKeyTypes
    cert: x509.Certificate

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def fingerprint(self) -> str:
        """The SHA-256 of the CA's public key: the same on every node of one cluster."""
        return hashlib.sha256(spki(self.cert.public_key())).hexdigest()


@functools.lru_cache(maxsize=4)
def derived_ca(token: str) -> CA:
    """The cluster's CA, from its token: the same key (and the same certificate content) on
    every node that holds the token. HKDF-SHA256 over the token gives the P-256 scalar."""
    material = HKDF(algorithm=hashes.SHA256(), length=48, salt=_SALT,
                    info=b"ray-tls ca key").derive(token.encode())
    scalar = int.from_bytes(material, "big") % (_P256_ORDER - 1) + 1
    key = ec.derive_private_key(scalar, ec.SECP256R1())
    public = key.public_key()
    serial = int.from_bytes(hashlib.sha256(spki(public)).digest()[:16], "big") >> 1
    cert = (x509.CertificateBuilder()
            .subject_name(_CA_NAME).issuer_name(_CA_NAME).public_key(public)
            .serial_number(serial).not_valid_before(_CA_FROM).not_valid_after(_CA_UNTIL)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256()))
    return CA(key, cert)


@dataclass(frozen=True)
class Names:
    """What a node's certificate must name: every name and address it is dialled at."""

    dns: tuple[str, ...]
    ips: tuple[str, ...]

    def all(self) -> tuple[str, ...]:
        return (*self.dns, *self.ips)


# Interfaces whose addresses are the engine's own bridges: no other VM dials them, and they
# come and go with Docker networks (a new one must not renew the certificate).
_ENGINE_IFACES = ("docker", "br-", "veth")


def local_ipv4() -> list[str]:
    """This host's own IPv4 addresses, one per interface that has one, loopback and the
    engine's bridges left out (SIOCGIFADDR; Linux)."""
    import fcntl
    import struct

    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            if name == "lo" or name.startswith(_ENGINE_IFACES):
                continue
            try:
                packed = fcntl.ioctl(sock.fileno(), 0x8915,  # SIOCGIFADDR
                                     struct.pack("256s", name[:15].encode()))
            except OSError:  # no IPv4 address on it
                continue
            address = socket.inet_ntoa(packed[20:24])
            if address not in found and not address.startswith("127."):
                found.append(address)
    return found


def host_names(extra: tuple[str, ...] = ()) -> Names:
    """What a node on this host's network is dialled at: loopback, the host's names and every
    address it holds, and the operator's extra names (--ray-tls-san: a DNS name or a NAT
    address the other VMs use)."""
    dns = ["localhost"]
    ips = ["127.0.0.1"]
    for name in (socket.gethostname(), *extra):
        try:
            ipaddress.ip_address(name)
            bucket = ips
        except ValueError:
            bucket = dns
        if name and name not in bucket:
            bucket.append(name)
    for address in local_ipv4():
        if address not in ips:
            ips.append(address)
    return Names(tuple(dns), tuple(ips))


def _issue(ca: CA, key: CertificateIssuerPrivateKeyTypes, names: Names, days: int,
           now: datetime) -> x509.Certificate:
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names.dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in names.ips]
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "syntho-agent"),
                         x509.NameAttribute(NameOID.COMMON_NAME,
                                            f"ray node {names.dns[-1] if names.dns else ''}")])
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca.key.public_key()), critical=False)
            .sign(ca.key, hashes.SHA256()))


def signed_by(cert: x509.Certificate, ca: CA) -> bool:
    """Whether ca's key signed cert (and cert names ca as its issuer)."""
    return cert.issuer == ca.cert.subject and _verifies(cert, ca.cert)


@dataclass(frozen=True)
class Material:
    """A node's TLS files, as the containers are given them."""

    folder: Path
    cert_file: str  # node-<digest>.crt
    ca_pem: str
    info: CertInfo
    renewed: str  # why it was issued in this run ("" when the one there was kept)
    listen: tuple[str, ...] = ()  # the head's addresses its dashboard's TLS front serves
    front: str = ""  # the head: the TLS front's program in the folder (front-<digest>.py)
    key_file: str = KEY_FILE  # the key as the containers' user reads it (readable_by)

    def env(self, inside: str = INSIDE, cert_file: str = "") -> tuple[tuple[str, str], ...]:
        """What a Ray process reads to speak TLS (once, at its start), the folder seen at
        `inside` (the certificate under another name: cert_file)."""
        return (("RAY_USE_TLS", "1"),
                ("RAY_TLS_SERVER_CERT", f"{inside}/{cert_file or self.cert_file}"),
                ("RAY_TLS_SERVER_KEY", f"{inside}/{self.key_file}"),
                ("RAY_TLS_CA_CERT", f"{inside}/{CA_FILE}"))


def readable_by(material: Material, uid: int, gid: int) -> Material:
    """material, its key readable by the user the containers run as: root reads node.key
    (0600, root's); another user gets a copy of its own, node-<uid>.key, 0600 and owned by it
    (an image that runs as `ray`, as Ray's own do, cannot read root's)."""
    if uid == 0:
        return material
    name = f"node-{uid}.key"
    key = store.read_text(material.folder / KEY_FILE) or ""
    path = material.folder / name
    if store.read_text(path) != key:
        store.write_atomic(path, key, how=f"copy the node's key for uid {uid}")
    if not store.dry_running():
        try:
            if (path.stat().st_uid, path.stat().st_gid) != (uid, gid):
                os.chown(path, uid, gid)
        except OSError as exc:
            raise store.tag(exc, path, "write", f"give it to uid {uid}") from None
    return replace(material, key_file=name)


def folder(data_dir: Path) -> Path:
    return data_dir / FOLDER


def _certs(where: Path) -> list[tuple[Path, x509.Certificate]]:
    found = []
    for path in sorted(where.glob("node-*.crt")):
        try:
            found.append((path, x509.load_pem_x509_certificate(path.read_bytes())))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda pc: pc[1].not_valid_before_utc)


def _same_ca(pem: str | None, ca: CA) -> bool:
    """Whether pem is ca's certificate: its content (ECDSA signatures differ from one signing
    to the next, so the bytes of two nodes' copies do)."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode()) if pem else None
    except ValueError:
        return False
    return cert is not None and cert.subject == ca.cert.subject and _same_key(
        cert, ca.key) and cert.not_valid_after_utc == ca.cert.not_valid_after_utc


def _node_key(where: Path) -> CertificateIssuerPrivateKeyTypes:
    """The node's key: made once, here; a damaged one is refused, never replaced silently."""
    path = where / KEY_FILE
    text = store.read_text(path)
    if text is None:
        key = ec.generate_private_key(ec.SECP256R1())
        store.write_atomic(path, key_pem(key), how="generate it")
        return key
    try:
        loaded = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError):
        loaded = None
    if not isinstance(loaded, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise EnvironmentProblem(f"{path} is not this node's Ray TLS key (damaged?): delete it "
                                 "and re-run (the node gets a new key and certificate)")
    return loaded


def _in_window(cert: x509.Certificate, now: datetime) -> bool:
    """Within the renewal window: the last 30 days, or the last third of a short validity (a
    test's, or an operator's choice), so that a fresh certificate is never renewed at once."""
    within = min(RENEW_WITHIN, (cert.not_valid_after_utc - cert.not_valid_before_utc) / 3)
    return cert.not_valid_after_utc - now <= within


def renewal_reason(cert: x509.Certificate, key: CertificateIssuerPrivateKeyTypes, ca: CA,
                   names: Names, now: datetime) -> str:
    """Why a node's certificate must be issued anew ("" when it serves as it is)."""
    if not signed_by(cert, ca):
        return "the cluster's CA changed (a new token, or another CA of your own)"
    if not _same_key(cert, key):
        return "the node's key changed"
    if _in_window(cert, now):
        left = (cert.not_valid_after_utc - now).days
        return ("it had expired" if cert.not_valid_after_utc <= now
                else f"it expires in {left} day(s)")
    missing = [n for n in names.all() if n not in info_of(cert).names]
    if missing:
        return f"this node is now also dialled at {', '.join(missing[:4])}"
    return ""


def node_material(data_dir: Path, issuer: str | CA, names: Names, days: int = DEFAULT_DAYS,
                  now: datetime | None = None) -> Material:
    """The node's TLS files in data_dir/ray-tls, made or renewed as needed: the CA's
    certificate, the node's key (kept), its certificate (kept while it serves). issuer: the
    cluster's token (its CA is derived from it) or a CA of the operator's."""
    t = now or datetime.now(timezone.utc)
    ca = derived_ca(issuer) if isinstance(issuer, str) else issuer
    where = store.ensure_dir(folder(data_dir), 0o755, exact=True)
    if not _same_ca(store.read_text(where / CA_FILE), ca):
        store.write_atomic(where / CA_FILE, ca.pem, mode=0o644)
    key = _node_key(where)
    certs = _certs(where)
    reason = "first run" if not certs else renewal_reason(certs[-1][1], key, ca, names, t)
    if reason:
        cert = _issue(ca, key, names, days, t)
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        name = f"node-{hashlib.sha256(pem.encode()).hexdigest()[:16]}.crt"
        store.write_atomic(where / name, pem, mode=0o644)
        for old, _ in certs[:-1]:  # keep the one a running container may still name
            store.remove(old)
    else:
        path, cert = certs[-1]
        name = path.name
    return Material(where, name, ca.pem, info_of(cert), reason)


FRONT_ASSET = "tls-front.py"
ISSUE_ASSET = "ray-tls-issue.sh"  # launcher-config: a node issues its own certificate


@functools.lru_cache(maxsize=4)
def program(asset: str) -> str:
    from importlib import resources

    return (resources.files("agent") / "assets" / asset).read_text()


def write_program(where: Path, asset: str) -> str:
    """An asset program in the node's folder, under a name that carries its digest (a changed
    program is a changed container or command, never a file swapped under one); the file's
    name. Older versions are removed."""
    text = program(asset)
    stem, _, suffix = asset.rpartition(".")
    stem = "front" if asset == FRONT_ASSET else stem
    name = f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.{suffix}"
    if store.read_text(where / name) != text:
        store.write_atomic(where / name, text, mode=0o644)
    for old in where.glob(f"{stem}-*.{suffix}"):
        if old.name != name:
            store.remove(old)
    return name


def write_front(where: Path) -> str:
    """The dashboard's TLS front program in the node's folder (write_program)."""
    return write_program(where, FRONT_ASSET)


def key_pem(key: CertificateIssuerPrivateKeyTypes) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def renewal_due(data_dir: Path, now: datetime | None = None) -> bool:
    """Whether this node's newest certificate is within its renewal window (what `--watch`
    asks at each resync: a run then renews it); False without one."""
    certs = _certs(folder(data_dir))
    if not certs:
        return False
    return _in_window(certs[-1][1], now or datetime.now(timezone.utc))


def existing(data_dir: Path) -> tuple[CertInfo, CertInfo | None] | None:
    """The CA's and the newest node certificate's description, for status; None when this
    data dir holds no Ray TLS material."""
    where = folder(data_dir)
    try:
        ca = x509.load_pem_x509_certificate((where / CA_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    certs = _certs(where)
    return info_of(ca), (info_of(certs[-1][1]) if certs else None)


# --- the operator's own PKI ------------------------------------------------------------------

def _private_key(path: Path, what: str) -> CertificateIssuerPrivateKeyTypes:
    data = read_file(path, what)  # a missing or unreadable file: one line
    mode = path.stat().st_mode
    if mode & 0o077:
        raise UsageError(f"the {what} {path} is readable by others (mode {mode & 0o777:04o}): "
                         f"run chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UsageError(f"the {what} {path} is protected by a passphrase: give it "
                         "unencrypted (openssl pkey -in KEY -out NEW)") from None
    except Exception:  # never echo what the parser saw
        raise UsageError(f"{path} is not a PEM private key: give the {what} in PEM") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise UsageError(f"the {what} {path} is neither an RSA nor an EC key: Ray's TLS takes "
                         "those")
    return key


def _certificate(path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificates(read_file(path, what))[0]
    except ValueError:
        raise UsageError(f"{path} is not a PEM certificate: give the {what} in PEM") from None


def _valid_now(cert: x509.Certificate, path: Path, now: datetime) -> None:
    if now >= cert.not_valid_after_utc:
        raise UsageError(f"the certificate in {path} expired on "
                         f"{cert.not_valid_after_utc:%Y-%m-%d}: give a valid one")
    if now < cert.not_valid_before_utc:
        raise UsageError(f"the certificate in {path} is not valid before "
                         f"{cert.not_valid_before_utc:%Y-%m-%d}: check this machine's clock")


def _same_key(cert: x509.Certificate, key: CertificateIssuerPrivateKeyTypes) -> bool:
    return spki(cert.public_key()) == spki(key.public_key())


def operator_ca(cert_path: Path, key_path: Path, now: datetime | None = None) -> CA:
    """--ray-tls-ca-cert/--ray-tls-ca-key, checked: a CA certificate, valid now, and its key
    (0600). UsageError (one line) otherwise."""
    t = now or datetime.now(timezone.utc)
    cert = _certificate(cert_path, "CA certificate")
    key = _private_key(key_path, "CA key")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise UsageError(f"{cert_path} is not a CA certificate (no basicConstraints CA:TRUE): "
                         "give the CA that issues the nodes' certificates")
    if not _same_key(cert, key):
        raise UsageError(f"the key in {key_path} does not belong to the CA certificate in "
                         f"{cert_path}: give the CA's own key")
    _valid_now(cert, cert_path, t)
    return CA(key, cert)


def client_ca(path: Path) -> str:
    """--ray-tls-ca, checked: a CA certificate in PEM; its PEM."""
    cert = _certificate(path, "CA certificate")
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def provided_material(data_dir: Path, cert_path: Path, key_path: Path, ca_path: Path,
                      names: Names, now: datetime | None = None) -> Material:
    """--ray-tls-cert/--ray-tls-key/--ray-tls-ca, checked (the key 0600 and the
    certificate's, valid now, its names covering every address Ray dials this node at, issued
    by the CA given) and copied into the node's folder. Their renewal is the operator's: a
    re-run takes the files again, and `status` warns 30 days ahead."""
    t = now or datetime.now(timezone.utc)
    cert = _certificate(cert_path, "certificate")
    key = _private_key(key_path, "key")
    ca_cert = _certificate(ca_path, "CA certificate")
    if not _same_key(cert, key):
        raise UsageError(f"the key in {key_path} does not belong to the certificate in "
                         f"{cert_path}: give the key it was issued for")
    _valid_now(cert, cert_path, t)
    if cert.issuer != ca_cert.subject or not _verifies(cert, ca_cert):
        raise UsageError(f"the certificate in {cert_path} was not issued by the CA in {ca_path}: "
                         "give the CA that signed it")
    missing = [n for n in names.ips if n not in info_of(cert).names]
    if missing:
        raise UsageError(f"the certificate in {cert_path} does not name {', '.join(missing)}, "
                         "where Ray dials this node: issue it with those addresses (127.0.0.1 "
                         "included) in its subjectAltName")
    where = store.ensure_dir(folder(data_dir), 0o755, exact=True)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    if store.read_text(where / CA_FILE) != ca_pem:
        store.write_atomic(where / CA_FILE, ca_pem, mode=0o644)
    if store.read_text(where / KEY_FILE) != key_pem(key):
        store.write_atomic(where / KEY_FILE, key_pem(key), how="copy it")
    name = f"node-{hashlib.sha256(pem.encode()).hexdigest()[:16]}.crt"
    renewed = ""
    if store.read_text(where / name) != pem:
        store.write_atomic(where / name, pem, mode=0o644)
        renewed = "a certificate of your own"
        for old, _ in _certs(where)[:-1]:
            if old.name != name:
                store.remove(old)
    return Material(where, name, ca_pem, info_of(cert), renewed)


def _verifies(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception:  # InvalidSignature, or a key of another kind
        return False
    return True


def ca_pem_of(material: Material | None) -> str | None:
    """The CA a client of the head's dashboard trusts: the cluster's, when its Ray speaks TLS."""
    return material.ca_pem if material is not None else None


def stored_ca(data_dir: Path) -> str | None:
    """The cluster CA's certificate this node keeps; None when its Ray speaks plain."""
    try:
        return (folder(data_dir) / CA_FILE).read_text()
    except OSError:
        return None


def front_answers(address: str, port: int, material: Material, timeout: float = 3.0) -> bool:
    """Whether the dashboard's TLS front completes a handshake that verifies the node's
    certificate against the cluster's CA, for address."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw, \
                client_context(material.ca_pem).wrap_socket(raw, server_hostname=address):
            return True
    except (OSError, ssl.SSLError):
        return False


# --- which the head speaks -----------------------------------------------------------------

HEAD_TLS, HEAD_PLAIN = "tls", "plain"


def client_context(ca_pem: str, material: Material | None = None) -> ssl.SSLContext:
    """A client's TLS context that trusts the cluster CA alone (and presents the node's
    certificate when given)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=ca_pem)
    if material is not None:
        context.load_cert_chain(material.folder / material.cert_file,
                                material.folder / KEY_FILE)
    return context


def head_speaks(host: str, port: int, ca_pem: str, timeout: float = 5.0,
                own_ca: bool = False) -> str:
    """Whether the head's GCS port speaks TLS (HEAD_TLS) or plain gRPC (HEAD_PLAIN), by a TLS
    handshake that trusts the cluster's CA alone; sends nothing else. UsageError when the
    head presents a certificate this cluster's CA did not sign (another cluster's head, or
    someone in between) or one that does not name host. OSError when it does not answer."""
    context = client_context(ca_pem)
    context.set_alpn_protocols(["h2"])  # gRPC's
    with socket.create_connection((host, port), timeout=timeout) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=host):
                return HEAD_TLS
        except ssl.SSLCertVerificationError as exc:
            if exc.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_
                raise UsageError(
                    f"the Ray head's certificate does not name {host}, the address this node "
                    f"dials: re-run the head with --ray-tls-san {host}, or give --head one of "
                    "the head's own addresses") from None
            which, hint = ("the CA you gave", "") if own_ca else (
                "this cluster's CA", " (or the head's CA of your own: --ray-tls-ca-cert or "
                "--ray-tls-ca)")
            raise UsageError(
                f"the Ray head at {host}:{port} presents a certificate that {which} did not "
                "sign: it is another cluster's head, or something in between; check --head and "
                f"the token{hint}, and send nothing until they agree") from None
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return HEAD_PLAIN  # a plain gRPC server answers a ClientHello with no handshake
