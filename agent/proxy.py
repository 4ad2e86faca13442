"""The HTTPS proxy beside the app, as the agent handles it: its folder in the data dir (the
Caddyfile and the files it names), a graceful reload when they change, and what it serves.

The container itself is declared in roles/app.py (`proxy`); the text of its configuration and
every check of the operator's input are in tls.py. Caddy's admin API answers on loopback inside
the container only, so a reload runs `caddy reload` there, through the engine.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
from pathlib import Path
from typing import Callable

from cryptography import x509

from agent import spec as s
from agent import store, tls
from agent.config import AppSettings
from agent.engine import Engine
from agent.errors import ConvergeError
from agent.roles.app import PROXY_DIR
from agent.waits import poll

Say = Callable[[str], None]

CADDYFILE = "Caddyfile"
SITE = "site.json"  # what `status` reads: the mode, the name, the ports
LOADED = ".loaded"  # the digest of the Caddyfile the running proxy has loaded
INSIDE = "/etc/caddy"  # where the folder is mounted, read-only
# Caddy's internal CA (tls internal) keeps its root here, in the /data volume.
INTERNAL_ROOT = "/data/caddy/pki/authorities/local/root.crt"
ROOT_COPY = "proxy-root-ca.crt"  # in the data dir: the internal CA's root, to trust
BACKEND_PORT = 8000  # the backend's port on the app's network (the vendor's images)
ROUTED = ("frontend", "backend")  # the services behind the proxy


def folder(settings: AppSettings) -> Path:
    return settings.data_dir / PROXY_DIR


def _put(path: Path, content: bytes, mode: int) -> None:
    if not path.exists() or path.read_bytes() != content:
        store.write_with(path, mode, lambda f: f.write(content))


def upstream(settings: AppSettings, service: str) -> str:
    """The service's address on the app's network, by its name (every container of it)."""
    return f"{service}:{port_of(settings, service)}"


def port_of(settings: AppSettings, service: str) -> int:
    return settings.frontend_port if service == "frontend" else BACKEND_PORT


def write_files(settings: AppSettings, site: tls.Site,
                pinned: dict[str, str] | None = None) -> None:
    """The Caddyfile and the files it names. Copies are named by their content's digest, so a
    replaced certificate is a changed Caddyfile, which a reload picks up for certain.
    `pinned`: a service's traffic sent to one container's address (during a handover)."""
    pinned = pinned or {}
    here = store.ensure_dir(folder(settings), 0o700)
    keep = {CADDYFILE, SITE, LOADED}
    cert_file = key_file = ca_root = ""
    if site.mode == "cert":
        assert site.pem is not None  # tls.site kept what it checked
        cert, key = site.pem
        tag = hashlib.sha256(cert + key).hexdigest()[:16]
        names = (f"cert-{tag}.pem", f"key-{tag}.pem")
        _put(here / names[0], cert, 0o644)
        _put(here / names[1], key, 0o600)  # the key stays in 0600 files, as the operator's
        keep.update(names)
        cert_file, key_file = (f"{INSIDE}/{n}" for n in names)
    if site.mode == "acme" and settings.acme_ca_root is not None:
        root = settings.acme_ca_root.read_bytes()
        name = f"acme-ca-root-{hashlib.sha256(root).hexdigest()[:16]}.pem"
        _put(here / name, root, 0o644)
        keep.add(name)
        ca_root = f"{INSIDE}/{name}"
    text = tls.caddyfile(
        site.mode, site.host, email=settings.acme_email or "", acme_ca=settings.acme_ca or "",
        ca_root=ca_root, backend=pinned.get("backend", upstream(settings, "backend")),
        frontend=pinned.get("frontend", upstream(settings, "frontend")),
        https_port=site.https_port, http_port=site.http_port,
        **({"cert_file": cert_file, "key_file": key_file} if cert_file else {}))
    _put(here / CADDYFILE, text.encode(), 0o644)
    record = {"mode": site.mode, "host": site.host, "address": site.address,
              "https_port": site.https_port, "http_port": site.http_port}
    _put(here / SITE, (json.dumps(record, indent=2) + "\n").encode(), 0o644)
    for stale in here.iterdir() if here.is_dir() else ():  # a replaced certificate's copies
        if stale.name not in keep:
            store.remove(stale)


def _digest(settings: AppSettings) -> str:
    return hashlib.sha256((folder(settings) / CADDYFILE).read_bytes()).hexdigest()


def _caddy_reload(engine: Engine, settings: AppSettings, name: str) -> None:
    """A graceful reload: Caddy starts serving the new configuration and lets the requests
    in flight finish on the old one; a configuration it refuses leaves the old one serving."""
    code, out = engine.exec(name, ["caddy", "reload", "--config", f"{INSIDE}/{CADDYFILE}",
                                   "--adapter", "caddyfile"])
    if code != 0:
        last = out.strip().splitlines()[-1] if out.strip() else f"exit {code}"
        raise ConvergeError(f"the HTTPS proxy {name} refused its new configuration ({last}); "
                            "it keeps serving the previous one")
    store.write_atomic(folder(settings) / LOADED, _digest(settings) + "\n", mode=0o644)


def reload(engine: Engine, settings: AppSettings, name: str, started: bool, say: Say) -> int:
    """After the proxy's action: a proxy this run (re)started read the files itself; one left
    running reloads them when they changed. Returns 1 for a reload."""
    stamp = folder(settings) / LOADED
    loaded = stamp.read_text().strip() if stamp.exists() else ""
    if loaded == _digest(settings):
        return 0
    if started:
        store.write_atomic(stamp, _digest(settings) + "\n", mode=0o644)
        return 0
    _caddy_reload(engine, settings, name)
    say(f"reloaded {name} (its configuration or certificate changed)")
    return 1


class Router:
    """The proxy as reconcile.handover sees it: the frontend's and the backend's traffic sent
    to one container at a time (a reload each), and the requests in flight to an address
    (Caddy's admin API, inside the container)."""

    def __init__(self, engine: Engine, settings: AppSettings, site: tls.Site, name: str,
                 running: bool) -> None:
        self.engine, self.settings, self.site, self.name = engine, settings, site, name
        self.running = running  # the proxy ran when the run began, and is left as it is
        self.pinned: dict[str, str] = {}

    def handles(self, c: s.Container) -> bool:
        return self.running and c.service in ROUTED

    def port(self, c: s.Container) -> int:
        return port_of(self.settings, c.service)

    def route(self, c: s.Container, address: str | None) -> None:
        if address is None:
            self.pinned.pop(c.service, None)
        else:
            self.pinned[c.service] = address
        write_files(self.settings, self.site, self.pinned)
        _caddy_reload(self.engine, self.settings, self.name)

    def idle(self, address: str) -> bool:
        url = f"http://{tls.ADMIN}/reverse_proxy/upstreams"
        code, out = self.engine.exec(self.name, [
            "sh", "-c", f"curl -fsS {url} 2>/dev/null || wget -q -O - {url}"])
        try:
            upstreams = json.loads(out) if code == 0 else None
        except ValueError:
            upstreams = None
        if not isinstance(upstreams, list):
            return False  # cannot tell: the caller's wait bounds this
        return all(int(u.get("num_requests", 0)) == 0 for u in upstreams
                   if isinstance(u, dict) and u.get("address") == address)


def served(address: str, port: int, host: str, timeout: float = 3.0) -> tls.CertInfo | None:
    """The certificate the proxy serves for host (not verified: this reads, it does not
    trust), or None when nothing answers with one."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock, \
                ctx.wrap_socket(sock, server_hostname=host) as conn:
            der = conn.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return None
    return tls.info_of(x509.load_der_x509_certificate(der)) if der else None


def https_ok(address: str, site: tls.Site, path: str = "/", timeout: float = 3.0) -> bool:
    """Whether the proxy answers GET path for the site with a 2xx (its certificate not
    verified: the agent proves the way through, the operator's clients judge the
    certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    request = (f"GET {path} HTTP/1.1\r\nHost: {site.address}\r\nConnection: close\r\n\r\n")
    try:
        with socket.create_connection((address, site.https_port), timeout=timeout) as sock, \
                ctx.wrap_socket(sock, server_hostname=site.host) as conn:
            conn.sendall(request.encode())
            status = conn.recv(64).split(b" ", 2)
    except (OSError, ValueError):
        return False
    return len(status) > 1 and status[1][:1] == b"2"


def copy_internal_root(engine: Engine, settings: AppSettings, name: str, timeout: float,
                       say: Say) -> Path | None:
    """--tls internal: Caddy's root certificate, copied into the data dir for the operator to
    trust (Caddy makes it when it first issues, moments after it starts)."""
    found: list[str] = []

    def made() -> bool:
        code, out = engine.exec(name, ["cat", INTERNAL_ROOT])
        if code == 0 and "BEGIN CERTIFICATE" in out:
            found.append(out)
        return bool(found)

    if not poll(made, timeout, "the proxy's internal CA", say):
        return None
    target = settings.data_dir / ROOT_COPY
    _put(target, found[0].encode(), 0o644)
    return target


def site_record(data_dir: Path) -> dict[str, object] | None:
    """What write_files recorded of the site, for `status`."""
    path = data_dir / PROXY_DIR / SITE
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None
