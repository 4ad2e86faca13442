"""HTTPS for the app's front door, pure: the operator's certificate and key checked before they
are mounted, a host checked before Caddy asks a public CA for it, and the proxy's Caddyfile.

Three modes: `cert` (the operator's chain and key, mounted read-only), `acme` (Caddy gets and
renews a certificate for --frontend-host; its account and certificates live in the volume at
/data) and `internal` (Caddy's own CA). No engine, no agent state: the role mounts what these
functions accepted and writes the text `caddyfile` returns.

Every refusal is a UsageError with one line that says what is wrong and what to do; none
quotes the files' contents, so no key material reaches a terminal or a log.
"""

from __future__ import annotations

import ipaddress
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from agent.config import AppSettings
from agent.errors import UsageError

MODES = ("cert", "acme", "internal")
# The vendor's ingress allows 512m bodies; nginx's m is a mebibyte, and so is Caddy's MiB
# (Caddy reads sizes with go-humanize, where MB would be 10^6 bytes).
MAX_BODY = "512MiB"
TIMEOUT = "600s"  # the ingress's proxy read/send/connect timeouts
HSTS = "max-age=31536000"
ADMIN = "localhost:2019"  # the admin API answers inside the container only

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Names no public CA will certify (RFC 6761, RFC 6762, RFC 8375, ICANN's .internal).
_PRIVATE = ("localhost", "local", "test", "invalid", "example", "internal", "home.arpa")
_SHOWN = 8  # at most this many of a certificate's names in a message


@dataclass(frozen=True)
class CertInfo:
    """What the agent keeps about an accepted certificate (its leaf)."""

    subject: str  # RFC 4514
    issuer: str  # RFC 4514
    not_after: datetime  # aware, UTC
    names: tuple[str, ...]  # the SubjectAlternativeName's DNS names, then its IP addresses
    fingerprint: str  # SHA-256 of the leaf's DER, hex: changes when the certificate is replaced


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now


def _when(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def read_file(path: Path, what: str) -> bytes:
    """A PEM file's bytes; UsageError, one line, when it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"the {what} file {path} does not exist: give the path of the PEM "
                         f"{what} file") from None
    except IsADirectoryError:
        raise UsageError(f"the {what} file {path} is a directory: give the path of the PEM "
                         f"{what} file") from None
    except OSError as e:
        raise UsageError(f"cannot read the {what} file {path} ({e.strerror}): check its "
                         f"path and permissions") from None


def spki(key: PublicKeyTypes) -> bytes:
    """A public key's DER SubjectPublicKeyInfo: what tells two keys (or a key and a
    certificate) apart."""
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _host_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _covers(name: str, host: str) -> bool:
    """Whether a SAN DNS name covers host: exactly, or a leading `*.` standing for one label."""
    name, host = name.lower().rstrip("."), host.lower().rstrip(".")
    if name == host:
        return True
    if not name.startswith("*."):
        return False
    label, _, rest = host.partition(".")
    return bool(label) and label != "*" and rest == name[2:] and "*" not in rest


def _names_of(leaf: x509.Certificate) -> tuple[list[str], list[ipaddress.IPv4Address
                                                           | ipaddress.IPv6Address]]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    ips = [ip for ip in san.get_values_for_type(x509.IPAddress)
           if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address))]
    return list(san.get_values_for_type(x509.DNSName)), ips


def load_pair(cert_path: Path, key_path: Path, host: str,
              now: datetime | None = None) -> CertInfo:
    """Read a PEM certificate chain (leaf first) and its PEM private key, and accept them only
    if the key is private to its owner, matches the leaf, the leaf is valid now and its
    SubjectAlternativeName covers host."""
    return _checked_pair(cert_path, key_path, host, now)[0]


def _checked_pair(cert_path: Path, key_path: Path, host: str,
                  now: datetime | None) -> tuple[CertInfo, bytes, bytes]:
    """load_pair, and the bytes it accepted."""
    cert_data = read_file(cert_path, "certificate")
    try:
        mode = key_path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"the key file {key_path} does not exist: give the path of the PEM "
                         f"private key file") from None
    except OSError as e:
        raise UsageError(f"cannot read the key file {key_path} ({e.strerror}): check its path "
                         f"and permissions") from None
    if stat.S_ISREG(mode) and mode & 0o066:
        raise UsageError(f"the key file {key_path} is readable or writable by others (mode "
                         f"{stat.S_IMODE(mode):04o}): run chmod 600 {key_path}")
    key_data = read_file(key_path, "key")

    try:
        chain = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        hint = (" (it holds a private key: are the certificate and key files swapped?)"
                if b"PRIVATE KEY-----" in cert_data else "")
        raise UsageError(f"{cert_path} is not a PEM certificate{hint}: give the certificate "
                         f"chain in PEM, leaf first") from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise UsageError(f"the key file {key_path} is protected by a passphrase: give it "
                         f"unencrypted (openssl pkey -in {key_path} -out <new file>)") from None
    except Exception:  # ValueError, UnsupportedAlgorithm: never echo what the parser saw
        hint = (" (it holds a certificate: are the certificate and key files swapped?)"
                if b"BEGIN CERTIFICATE" in key_data else "")
        raise UsageError(f"{key_path} is not a PEM private key{hint}: give the unencrypted "
                         f"private key in PEM") from None

    leaf, mine = chain[0], spki(key.public_key())
    if spki(leaf.public_key()) != mine:
        if any(spki(c.public_key()) == mine for c in chain[1:]):
            raise UsageError(f"the chain in {cert_path} is not leaf first: put the server's "
                             f"certificate first, then the intermediates")
        raise UsageError(f"the key in {key_path} does not belong to the certificate in "
                         f"{cert_path}: give the key the certificate was issued for")

    t = _utc(now)
    if t >= leaf.not_valid_after_utc:
        raise UsageError(f"the certificate in {cert_path} expired on "
                         f"{_when(leaf.not_valid_after_utc)}: renew it and give the new files")
    if t < leaf.not_valid_before_utc:
        raise UsageError(f"the certificate in {cert_path} is not valid before "
                         f"{_when(leaf.not_valid_before_utc)}: check this machine's clock, "
                         f"or wait until then")

    dns, ips = _names_of(leaf)
    names = (*dns, *(str(ip) for ip in ips))
    ip = _host_ip(host)
    covered = (ip in ips) if ip is not None else any(_covers(n, host) for n in dns)
    if not covered:
        if not names:
            raise UsageError(f"the certificate in {cert_path} names no host in a "
                             f"SubjectAlternativeName (browsers ignore the CN): give a "
                             f"certificate issued for {host}")
        shown = ", ".join(names[:_SHOWN]) + (
            f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
        raise UsageError(f"the certificate in {cert_path} is for {shown}, not {host}: give "
                         f"--frontend-host one of those names, or a certificate for {host}")

    return info_of(leaf), cert_data, key_data


def info_of(leaf: x509.Certificate) -> CertInfo:
    dns, ips = _names_of(leaf)
    return CertInfo(
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        not_after=leaf.not_valid_after_utc,
        names=(*dns, *(str(ip) for ip in ips)),
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
    )


def describe(info: CertInfo, now: datetime | None = None, days: int = 14) -> str:
    """One line on a certificate: its names, issuer and expiry, and a warning when near."""
    names = ", ".join(info.names[:_SHOWN]) or info.subject
    line = f"certificate for {names}, issued by {info.issuer}, valid until {_when(info.not_after)}"
    if expires_soon(info, now, days):
        left = (info.not_after - _utc(now)).days
        line += (f"; WARNING: it expires in {max(left, 0)} day(s): renew it"
                 if info.not_after > _utc(now) else "; WARNING: it has EXPIRED: renew it")
    return line


def expires_soon(info: CertInfo, now: datetime | None = None, days: int = 14) -> bool:
    """Whether the certificate has expired or expires within `days`."""
    return info.not_after - _utc(now) <= timedelta(days=days)


def acme_host_ok(host: str, public: bool = True) -> None:
    """Refuse a host an ACME CA cannot issue for: an IP address, or no dotted DNS name; and,
    for a public CA (public=True), a name under a suffix reserved for private use."""
    if _host_ip(host) is not None:
        raise UsageError(f"--frontend-host {host} is an IP address, and an IP address cannot "
                         f"get a public certificate: give --frontend-host a domain name, or "
                         f"use --tls cert/internal")
    name = host.lower().rstrip(".")
    labels = name.split(".")
    if (len(labels) < 2 or len(name) > 253 or not all(_LABEL.match(x) for x in labels)
            or labels[-1].isdigit()):
        raise UsageError(f"--frontend-host {host!r} is not a dotted DNS name, which a public "
                         f"certificate needs: give a domain name such as syntho.example.com, "
                         f"or use --tls cert/internal")
    for suffix in _PRIVATE if public else ():
        if name == suffix or name.endswith("." + suffix):
            raise UsageError(f"--frontend-host {host} is under .{suffix}, which no public CA "
                             f"certifies: give a public domain name, or use --tls "
                             f"cert/internal")


def _token(value: str, what: str) -> str:
    if not value or re.search(r"[\s{}\"'`#]", value):
        raise ValueError(f"{what} {value!r} cannot go into a Caddyfile as one token")
    return value


def caddyfile(mode: str, host: str, *, email: str = "", acme_ca: str = "",
              cert_file: str = "/etc/caddy/tls/cert.pem",
              key_file: str = "/etc/caddy/tls/key.pem",
              backend: str = "backend:8000", frontend: str = "frontend:3000",
              https_port: int = 443, http_port: int = 80, ca_root: str = "") -> str:
    """The proxy's Caddyfile: /api/* to the backend, everything else to the frontend, on
    https://host, with the ingress's body limit and timeouts, HSTS, and the chosen TLS."""
    if mode not in MODES:
        raise ValueError(f"TLS mode {mode!r} is not one of {', '.join(MODES)}")
    host = _token(host, "host")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    options = [f"admin {ADMIN}"]
    if email:
        options.append(f"email {_token(email, 'email')}")
    if acme_ca:
        options.append(f"acme_ca {_token(acme_ca, 'ACME CA')}")
    if ca_root:
        options.append(f"acme_ca_root {_token(ca_root, 'ACME CA root')}")
    # Caddy listens on the host's port numbers (the container publishes them as they are), so
    # that its redirects name the ports users reach. HTTPS's is in the site's address, not in
    # `https_port`: Caddy leaves the port its https_port names out of a redirect.
    if http_port != 80:
        options.append(f"http_port {http_port}")
    if mode == "internal":
        options.append("skip_install_trust")  # no trust store to install into in a container
    # HTTP/3 would need UDP published as well: HTTP/1.1 and HTTP/2 only, so that Caddy does not
    # advertise a port nothing reaches.
    options += ["servers {", "\tprotocols h1 h2", "}"]
    tls = {
        "cert": [f"tls {_token(cert_file, 'cert file')} {_token(key_file, 'key file')}"],
        "internal": ["tls internal"],
        "acme": [],  # Caddy gets the certificate itself, from acme_ca or Let's Encrypt
    }[mode]

    def proxy(upstream: str) -> list[str]:
        return [
            f"reverse_proxy {_token(upstream, 'upstream')} {{",
            "\ttransport http {",
            f"\t\tdial_timeout {TIMEOUT}",
            f"\t\tread_timeout {TIMEOUT}",
            f"\t\twrite_timeout {TIMEOUT}",
            "\t}",
            "}",
        ]

    site = [
        *tls,
        "request_body {",
        f"\tmax_size {MAX_BODY}",
        "}",
        f'header Strict-Transport-Security "{HSTS}"',
        "handle /api/* {",
        *("\t" + line for line in proxy(backend)),
        "}",
        "handle {",
        *("\t" + line for line in proxy(frontend)),
        "}",
    ]
    lines = [
        "# Written by syntho-agent; it is rewritten on every deploy.",
        "# Caddy redirects http:// to https:// by itself for a site with a host name, and",
        "# answers ACME HTTP challenges on port 80, so no :80 site is needed.",
        "# WebSocket upgrades pass through reverse_proxy as they are.",
        "{",
        *("\t" + o for o in options),
        "}",
        "",
        f"{host}{'' if https_port == 443 else f':{https_port}'} {{",
        *("\t" + line for line in site),
        "}",
    ]
    return "\n".join(lines) + "\n"


# ---- the site: what --tls and its options resolve to -------------------------------------------

# Options that belong to one mode, and options that mean something only with a proxy.
_MODE_OF = {"tls_cert": "cert", "tls_key": "cert", "acme_email": "acme", "acme_ca": "acme",
            "acme_ca_root": "acme"}
_PROXY_ONLY = ("proxy_image", "https_port", "http_port", "publish_frontend", "publish_backend")


@dataclass(frozen=True)
class Site:
    """The HTTPS site the proxy serves, checked."""

    mode: str  # cert | acme | internal
    host: str  # the name users open, without a port: the certificate's name
    https_port: int
    http_port: int
    cert: CertInfo | None = None  # --tls cert: the operator's certificate
    # ... and its chain and key as they were checked: what the proxy is given, never read
    # again (a file replaced meanwhile waits for the next run's checks). Kept out of repr.
    pem: tuple[bytes, bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def address(self) -> str:
        """host[:port] as users type it (FRONTEND_HOST)."""
        return self.host if self.https_port == 443 else f"{self.host}:{self.https_port}"

    @property
    def url(self) -> str:
        return f"https://{self.address}/"


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _split_host(value: str) -> tuple[str, int | None]:
    """host[:port] -> (host, port); [v6]:port too."""
    if value.startswith("["):
        inside, _, rest = value[1:].partition("]")
        return inside, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    name, sep, number = value.rpartition(":")
    if sep and number.isdigit() and ":" not in name:
        return name, int(number)
    return value, None


def site(settings: AppSettings, now: datetime | None = None) -> Site | None:
    """The site --tls asks for, or None (off); every inconsistency is a UsageError, raised
    before anything is written or started."""
    mode = settings.tls
    for key, needs in _MODE_OF.items():
        if key in settings.given and mode != needs:
            raise UsageError(f"{_flag(key)} is for --tls {needs}, and this run has --tls {mode}: "
                             f"add --tls {needs}, or drop {_flag(key)}")
    if mode == "off":
        for key in _PROXY_ONLY:
            if key in settings.given:
                raise UsageError(f"{_flag(key)} is for the HTTPS proxy, which is off: add --tls "
                                 f"cert, acme or internal, or drop {_flag(key)}")
        return None
    if settings.https_port == settings.http_port:
        raise UsageError(f"--https-port and --http-port are both {settings.https_port}: give "
                         "them different ports")
    if settings.frontend_host is None:
        if mode != "internal":
            raise UsageError(f"--tls {mode} needs --frontend-host: the name users open, which "
                             "the certificate is for")
        host, port = "localhost", None
    else:
        host, port = _split_host(settings.frontend_host)
    if port is not None and port != settings.https_port:
        raise UsageError(f"--frontend-host {settings.frontend_host} names port {port}, and HTTPS "
                         f"is on --https-port {settings.https_port}: give --frontend-host {host} "
                         f"--https-port {port}")
    cert, pem = None, None
    if mode == "cert":
        if settings.tls_cert is None or settings.tls_key is None:
            raise UsageError("--tls cert needs --tls-cert FILE and --tls-key FILE: the "
                             "certificate chain and its private key, in PEM")
        cert, chain, key_pem = _checked_pair(settings.tls_cert, settings.tls_key, host, now)
        pem = (chain, key_pem)
    if mode == "acme":
        if settings.acme_ca_root is not None and settings.acme_ca is None:
            raise UsageError("--acme-ca-root is the root of --acme-ca's HTTPS: give --acme-ca "
                             "too, or drop --acme-ca-root")
        acme_host_ok(host, public=settings.acme_ca is None)
    return Site(mode, host, settings.https_port, settings.http_port, cert, pem)
