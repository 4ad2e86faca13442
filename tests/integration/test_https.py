"""The HTTPS front door on the real engine: Caddy (Debian's package, standing in for the
official caddy:2 image) before the app's stand-ins, with a certificate of the test's own CA,
then Caddy's internal CA; a certificate rotated under a polling client; bad input refused with
nothing changed.

The clients here trust only the CA under test and name the site (SNI and Host) while they
connect to this machine's loopback, as a browser that resolves the name to this VM would.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from agent.waits import poll
from tests.integration.agent_helpers import App, HeadVM, engine_snapshot, ok
from tests.support import certs, releases
from tests.support.agent_cli import Agent
from tests.support.ports import free_port
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

HOST = "syntho.test"
UPLOAD_MB = 300


class Pinned(http.client.HTTPSConnection):
    """HTTPS to this machine's loopback for a named site: SNI and Host are the site's."""

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def trusting(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def get(port: int, path: str, ca_file: Path, host: str = HOST) -> tuple[int, Any, dict[str, str]]:
    conn = Pinned(host, port, context=trusting(ca_file), timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, json.loads(body) if body else None, dict(resp.getheaders())
    finally:
        conn.close()


def served_cert(port: int, ca_file: Path, host: str = HOST) -> x509.Certificate:
    """The certificate served for host, verified against ca_file alone."""
    with socket.create_connection(("127.0.0.1", port), 10) as sock, \
            trusting(ca_file).wrap_socket(sock, server_hostname=host) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def refused_on_host(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 2).close()
    except ConnectionRefusedError:
        return True
    return False


@dataclass
class Tls:
    app: App
    ca: certs.CA
    ca_file: Path
    cert: Path
    key: Path
    https: int
    http: int
    first_output: str
    deployed: list[str] = field(default_factory=list)  # image flags a test moved it to

    def args(self, *more: str) -> list[str]:
        return ["--tls", "cert", "--tls-cert", str(self.cert), "--tls-key", str(self.key),
                "--frontend-host", HOST, "--https-port", str(self.https), "--http-port",
                str(self.http), "--proxy-image", self.app.images["proxy"], *self.deployed,
                *more]

    def replace_pair(self) -> x509.Certificate:
        """A new certificate and key for the site, written over the operator's files."""
        cert, key = certs.leaf(self.ca, (HOST,))
        self.cert.write_bytes(certs.pem(cert, self.ca.cert))
        self.key.write_bytes(certs.key_pem(key))
        return cert

    def run(self, *more: str) -> Any:
        return self.app.run(*self.args(*more))

    def issue(self, folder: Path, names: tuple[str, ...] = (HOST,), **kw: Any) -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        cert, key = certs.leaf(self.ca, names, **kw)
        return certs.write(folder, certs.pem(cert, self.ca.cert), certs.key_pem(key))


@pytest.fixture(scope="module")
def tls_app(module_sandbox: Sandbox, images: dict[str, str], head_vm: HeadVM) -> Tls:
    """The app with --tls cert: a certificate for syntho.test from the test's own CA."""
    module_sandbox.create_network()
    ca = certs.make_ca("Syntho test CA")
    ca_file = module_sandbox.tmp / "ca.pem"
    ca_file.write_bytes(certs.pem(ca.cert))
    app = App(module_sandbox, images, head_vm, "tls")
    cert, key = certs.leaf(ca, (HOST,))
    c, k = certs.write(module_sandbox.tmp, certs.pem(cert, ca.cert), certs.key_pem(key))
    setup = Tls(app, ca, ca_file, c, k, free_port(), free_port(), "")
    setup.first_output = ok(setup.run())
    return setup


def test_the_app_is_served_over_https_only(tls_app: Tls) -> None:
    t, app = tls_app, tls_app.app
    out = t.first_output
    assert f"the app is up: open https://{HOST}:{t.https}/" in out
    # The frontend at /, the backend's docs at /api/docs/, through one certificate the test's
    # CA issued for the site (the client trusts nothing else).
    code, body, headers = get(t.https, "/", t.ca_file)
    assert code == 200 and body["dependencies"]["backend"]["ok"]  # the frontend's health
    assert headers["Strict-Transport-Security"].startswith("max-age=")
    code, body, _ = get(t.https, "/api/docs/", t.ca_file)
    assert code == 200 and body["dependencies"]["core"]["ok"]  # the backend's health
    assert get(t.https, "/version", t.ca_file)[1]["role"] == "frontend"
    assert get(t.https, "/api/version/", t.ca_file)[1]["role"] == "backend"
    cert = served_cert(t.https, t.ca_file)
    assert cert.issuer == t.ca.cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOST]
    # Plain HTTP redirects to HTTPS, to the same path.
    conn = http.client.HTTPConnection("127.0.0.1", t.http, timeout=10)
    conn.request("GET", "/api/docs/?x=1", headers={"Host": f"{HOST}:{t.http}"})
    resp = conn.getresponse()
    assert resp.status in (301, 308)
    assert resp.getheader("Location") == f"https://{HOST}:{t.https}/api/docs/?x=1"
    conn.close()
    # Only the proxy is reachable from outside: the frontend's and the backend's own ports
    # are not published.
    for service in ("frontend", "backend"):
        assert not app.container(service).attrs["HostConfig"]["PortBindings"], service
    assert refused_on_host(app.frontend_port) and refused_on_host(app.backend_port)
    # The app follows: https URLs, secure cookies, the site's name as the allowed host.
    env = dict(e.split("=", 1) for e in app.container("backend").attrs["Config"]["Env"])
    assert env["SECURE_COOKIES"] == "True"
    assert env["FRONTEND_URL"] == f"https://{HOST}:{t.https}"
    assert HOST in env["EXTRA_ALLOWED_HOSTS"].split()
    written = (app.data_dir / "app.env").read_text()
    for line in (f"FRONTEND_HOST={HOST}:{t.https}", f"FRONTEND_DOMAIN={HOST}",
                 "FRONTEND_PROTOCOL=https", "SECURED_COOKIES=True"):
        assert line in written.splitlines(), line
    # The key's copy for the proxy is as private as the operator's file.
    keys = list((app.data_dir / "proxy").glob("key-*.pem"))
    assert len(keys) == 1 and keys[0].stat().st_mode & 0o777 == 0o600
    proxy = app.container("proxy").attrs
    mounts = {m["Destination"]: m for m in proxy["Mounts"]}
    assert mounts["/etc/caddy"]["RW"] is False
    # status shows the URL and the certificate the proxy serves.
    status = ok(app.cmd("status"))
    assert f"open the app at https://{HOST}:{t.https}/ (HTTPS, --tls cert)" in status
    assert f"certificate for {HOST}, issued by" in status and "Syntho test CA" in status
    assert "valid until" in status and "WARNING" not in status
    report = json.loads(ok(app.cmd("status", "--json")))
    assert report["https"]["certificate"]["names"] == [HOST]


def test_a_300_mb_upload_reaches_the_backend_intact(tls_app: Tls, tmp_path: Path) -> None:
    # The vendor's ingress allows 512 MB request bodies for dataset uploads: so does the proxy.
    data = tmp_path / "dataset.bin"
    digest = hashlib.sha256()
    with data.open("wb") as f:
        for _ in range(UPLOAD_MB):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    conn = Pinned(HOST, tls_app.https, context=trusting(tls_app.ca_file), timeout=300)
    with data.open("rb") as body:
        conn.request("POST", "/api/upload/", body=body,
                     headers={"Content-Length": str(UPLOAD_MB << 20),
                              "Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        answer = json.loads(resp.read())
    conn.close()
    assert resp.status == 200, answer
    assert answer == {"bytes": UPLOAD_MB << 20, "sha256": digest.hexdigest()}


class Poller:
    """A client asking the proxy for each of `paths` in turn, in a loop (to this machine only,
    bounded): every failure is kept, and the release each answer came from, in order."""

    def __init__(self, port: int, ca_file: Path, paths: tuple[str, ...] = ("/version",)) -> None:
        self.port, self.ca_file, self.paths = port, ca_file, paths
        self.failures: list[str] = []
        self.versions: dict[str, list[str]] = {path: [] for path in paths}
        self.done = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set() and self.done < 100_000:
            path = self.paths[self.done % len(self.paths)]
            try:
                code, body, _ = get(self.port, path, self.ca_file)
                if code != 200:
                    self.failures.append(f"{path}: HTTP {code} {body}")
                else:
                    self.versions[path].append(str(body["version"]))
            except Exception as exc:  # every kind of failure counts
                self.failures.append(f"{path}: {exc!r}")
            self.done += 1

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def test_a_replaced_certificate_is_reloaded_without_a_refused_request(tls_app: Tls) -> None:
    t, app = tls_app, tls_app.app
    before = app.container("proxy").id
    old = served_cert(t.https, t.ca_file)
    # The operator replaces both files in place (the same paths), then runs the agent again.
    with Poller(t.https, t.ca_file) as poller:
        assert poll(lambda: poller.done >= 5, 30, "the first requests")
        new_cert = t.replace_pair()
        out = ok(t.run())
        assert poll(lambda: served_cert(t.https, t.ca_file).serial_number
                    == new_cert.serial_number, 30, "the new certificate")
        served_then = poller.done
        assert poll(lambda: poller.done >= served_then + 5, 30, "requests after the reload")
    assert "reloaded syntho-proxy" in out
    assert poller.failures == [], poller.failures[:5]
    assert poller.done > 10
    assert app.container("proxy").id == before  # reloaded, not re-created
    assert served_cert(t.https, t.ca_file).serial_number != old.serial_number
    # The replaced certificate's copies are gone; a re-run with nothing new does nothing.
    assert len(list((app.data_dir / "proxy").glob("key-*.pem"))) == 1
    again = ok(t.run())
    assert "reloaded" not in again and "nothing to do" in again


def test_a_watcher_serves_a_replaced_certificate_within_its_resync(tls_app: Tls) -> None:
    t, app = tls_app, tls_app.app
    watcher = Agent("app", *app.args(), *t.args(), "--watch")
    try:
        watcher.wait_for("watching", timeout=120)
        new_cert = t.replace_pair()

        def new_one_served() -> bool:
            return served_cert(t.https, t.ca_file).serial_number == new_cert.serial_number

        # The watcher looks at the files at each resync (30 s).
        assert poll(new_one_served, 90, "the replaced certificate, served")
        watcher.wait_for("reloaded syntho-proxy", timeout=30)
    finally:
        watcher.stop()
    assert any("the certificate files changed" in line for line in watcher.seen), watcher.seen


@pytest.mark.parametrize("case", ["mismatch", "expired", "other-name", "key-mode", "acme-ip",
                                  "https-port-taken"])
def test_bad_input_is_refused_with_nothing_changed(tls_app: Tls, case: str,
                                                   tmp_path: Path) -> None:
    t, app = tls_app, tls_app.app
    client = app.sandbox.client
    cert, key = t.cert, t.key
    extra: list[str] = []
    holder: socket.socket | None = None
    if case == "mismatch":
        other, _ = t.issue(tmp_path / "other")
        cert = other  # the other certificate with the deployed key
    elif case == "expired":
        from datetime import datetime, timedelta, timezone

        now = datetime.now(timezone.utc)
        cert, key = t.issue(tmp_path / "old", start=now - timedelta(days=90),
                            end=now - timedelta(days=1))
    elif case == "other-name":
        cert, key = t.issue(tmp_path / "other", names=("elsewhere.test",))
    elif case == "key-mode":
        cert, key = t.issue(tmp_path / "open")
        key.chmod(0o644)
    elif case == "https-port-taken":
        holder = socket.socket()
        holder.bind(("0.0.0.0", free_port()))
        holder.listen()
        extra = ["--https-port", str(holder.getsockname()[1])]
    caddyfile = (app.data_dir / "proxy" / "Caddyfile").read_text()
    snapshot = engine_snapshot(client)
    try:
        if case == "acme-ip":
            result = app.run("--tls", "acme", "--frontend-host", "10.0.0.5",
                             "--https-port", str(t.https), "--http-port", str(t.http),
                             "--proxy-image", app.images["proxy"])
        else:
            args = t.args()
            args[args.index("--tls-cert") + 1] = str(cert)
            args[args.index("--tls-key") + 1] = str(key)
            result = app.run(*args, *extra)
    finally:
        if holder is not None:
            holder.close()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    expected = {"mismatch": "does not belong to the certificate", "expired": "expired on",
                "other-name": f"is for elsewhere.test, not {HOST}",
                "key-mode": f"run chmod 600 {key}",
                "acme-ip": "an IP address cannot get a public certificate",
                "https-port-taken": "is taken on this host"}[case]
    assert expected in result.stderr, result.stderr
    assert result.returncode == (3 if case == "https-port-taken" else 2), result.stderr
    if case != "https-port-taken":  # the checks' report has a line per check
        assert len(lines) == 1, lines
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    assert engine_snapshot(client) == snapshot
    assert (app.data_dir / "proxy" / "Caddyfile").read_text() == caddyfile


def changes(seen: list[str]) -> list[str]:
    """The distinct values of seen, in order: ['', '', 'B', 'B'] -> ['', 'B']."""
    return [v for i, v in enumerate(seen) if i == 0 or v != seen[i - 1]]


def test_an_upgrade_behind_the_proxy_drops_no_request(tls_app: Tls) -> None:
    t, app = tls_app, tls_app.app
    client = app.sandbox.client
    moved = {name: releases.build_local(client, app.images[name], "B") for name in
             ("frontend", "backend")}
    with Poller(t.https, t.ca_file, ("/version", "/api/version/")) as poller:
        assert poll(lambda: poller.done >= 10, 30, "the first requests")
        out = ok(t.run("--frontend-image", moved["frontend"], "--backend-image",
                       moved["backend"]))
        served_then = poller.done
        upgraded = {path: len(seen) for path, seen in poller.versions.items()}
        assert poll(lambda: poller.done >= served_then + 10, 30, "requests after the upgrade")
    for service in ("frontend", "backend"):
        assert f"recreated syntho-{service}-{app.instance} with no request dropped" in out, out
    assert poller.failures == [], poller.failures[:5]
    # Each path moved from the test images (no release) to B. At a graceful reload Caddy's
    # old configuration still serves what it accepted during the handover (our reading of
    # its reloads: not traced), so the old release may answer again right at the switch: one
    # such window (17 answers once, on a loaded machine), never a failure (the old container
    # stops only after its requests are done), and only B once the run has returned.
    for path, seen in poller.versions.items():
        assert seen[0] == "" and seen[-1] == "B", (path, changes(seen))
        after = seen[upgraded[path]:]
        assert changes(seen) in (["", "B"], ["", "B", "", "B"]), (path, changes(seen))
        assert after and set(after) == {"B"}, (path, changes(seen))
    # The old containers were kept stopped until the new release was healthy, then removed (as
    # for any release change); the new ones have their names.
    assert "removed the previous release's 3 kept container(s)" in out  # worker's too
    names = {c.name for c in client.containers.list(all=True, ignore_removed=True)
             if app.instance in (c.name or "")}
    assert not any(n.endswith(("-next", "-previous")) for n in names), names
    for service in ("frontend", "backend"):
        assert app.container(service).attrs["Config"]["Image"] == moved[service]
    t.deployed = ["--frontend-image", moved["frontend"], "--backend-image", moved["backend"]]
    # The proxy serves the service names again (no container's address is pinned).
    caddyfile = (app.data_dir / "proxy" / "Caddyfile").read_text()
    assert "reverse_proxy backend:8000" in caddyfile and "reverse_proxy frontend:" in caddyfile


def test_internal_ca_serves_a_certificate_its_printed_root_verifies(tls_app: Tls) -> None:
    """Last in this module: it moves the deployment to --tls internal."""
    t, app = tls_app, tls_app.app
    before = app.container("proxy").id
    out = ok(app.run("--tls", "internal", "--frontend-host", HOST, "--https-port",
                     str(t.https), "--http-port", str(t.http), "--proxy-image",
                     app.images["proxy"], *t.deployed))
    assert "reloaded syntho-proxy" in out
    root = app.data_dir / "proxy-root-ca.crt"
    assert f"trust its root certificate, {root}," in out
    assert app.container("proxy").id == before  # the new CA by a reload, not a new proxy

    def internal_served() -> bool:
        try:
            return served_cert(t.https, root).issuer != t.ca.cert.subject
        except (ssl.SSLError, OSError):
            return False

    assert poll(internal_served, 60, "the internal CA's certificate")
    code, body, _ = get(t.https, "/api/version/", root)
    assert code == 200 and body["role"] == "backend"
    # The operator's CA no longer verifies what is served.
    with pytest.raises(ssl.SSLCertVerificationError):
        served_cert(t.https, t.ca_file)
    status = ok(app.cmd("status"))
    assert "(HTTPS, --tls internal)" in status and "Caddy Local Authority" in status


def test_turning_tls_off_publishes_the_app_again(tls_app: Tls) -> None:
    app = tls_app.app
    out = ok(app.run(*tls_app.deployed))
    assert "removed syntho-proxy" in out
    assert refused_on_host(tls_app.https)
    code = http.client.HTTPConnection("127.0.0.1", app.frontend_port, timeout=10)
    code.request("GET", "/")
    assert code.getresponse().status == 200
    code.close()



# ---- --tls acme against a real ACME server ------------------------------------------------------

@dataclass
class Acme:
    app: App
    pebble: Any  # the pebble container
    directory: str
    management: str
    ca_file: Path  # the test CA, which signed pebble's own HTTPS
    https: int
    http: int

    def args(self) -> list[str]:
        return ["--tls", "acme", "--frontend-host", HOST, "--acme-ca", self.directory,
                "--acme-ca-root", str(self.ca_file), "--https-port", str(self.https),
                "--http-port", str(self.http), "--proxy-image", self.app.images["proxy"]]

    def orders(self) -> int:
        """New orders pebble has received (its request log: one POST /order-plz each)."""
        log = self.pebble.logs().decode(errors="replace")
        return sum(1 for line in log.splitlines() if "POST /order-plz" in line)

    def root(self, folder: Path) -> Path:
        """Pebble's issuing root (made at its start), from its management API."""
        ctx = trusting(self.ca_file)
        host, port = self.management.rsplit(":", 1)
        conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
        conn.request("GET", "/roots/0")
        pem_text = conn.getresponse().read()
        conn.close()
        path = folder / "pebble-root.pem"
        path.write_bytes(pem_text)
        return path


@pytest.fixture(scope="module")
def acme(module_sandbox: Sandbox, images: dict[str, str], head_vm: HeadVM) -> Acme:
    """Pebble and its mock DNS on this machine's network; every name resolves to this
    machine (the Docker bridge's address), where the proxy's ports are published, so pebble
    validates the challenges through the proxy as a public CA would through the VM's IP."""
    box = module_sandbox
    gateway = box.client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]
    ca = certs.make_ca("Pebble's HTTPS test CA")
    folder = box.tmp / "pebble"
    folder.mkdir()
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(certs.pem(ca.cert))
    cert, key = certs.leaf(ca, ("localhost",), ips=(gateway, "127.0.0.1"))
    certs.write(folder, certs.pem(cert, ca.cert), certs.key_pem(key), key_mode=0o644)
    https, plain, acme_port, manage, dns, dns_manage = (free_port() for _ in range(6))
    (folder / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"0.0.0.0:{acme_port}",
        "managementListenAddress": f"0.0.0.0:{manage}",
        "certificate": "/pebble/cert.pem", "privateKey": "/pebble/key.pem",
        "httpPort": plain, "tlsPort": https, "ocspResponderURL": "",
        "externalAccountBindingRequired": False}}))
    box.run(images["pebble"], "challtestsrv", network_mode="host",
            command=["pebble-challtestsrv", "-defaultIPv4", gateway, "-defaultIPv6", "",
                     "-dns01", f"127.0.0.1:{dns}", "-management", f"127.0.0.1:{dns_manage}",
                     "-http01", "", "-https01", "", "-tlsalpn01", ""])
    pebble = box.run(images["pebble"], "pebble", network_mode="host",
                     command=["pebble", "-config", "/pebble/pebble.json", "-dnsserver",
                              f"127.0.0.1:{dns}"],
                     environment={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"},
                     volumes={str(folder): {"bind": "/pebble", "mode": "ro"}})

    def answers() -> bool:
        try:
            socket.create_connection(("127.0.0.1", acme_port), 1).close()
            return True
        except OSError:
            return False

    assert poll(answers, 30, "pebble"), pebble.logs().decode(errors="replace")
    app = App(box, images, head_vm, "acme")
    setup = Acme(app, pebble, f"https://{gateway}:{acme_port}/dir", f"{gateway}:{manage}",
                 ca_file, https, plain)
    out = ok(app.run(*setup.args()))
    assert f"the app is up: open https://{HOST}:{https}/" in out
    return setup


def test_acme_issues_through_the_proxy_once(acme: Acme, tmp_path: Path) -> None:
    root = acme.root(tmp_path)
    code, body, _ = get(acme.https, "/version", root)  # verified against pebble's root alone
    assert code == 200 and body["role"] == "frontend"
    first = served_cert(acme.https, root)
    assert "Pebble" in first.issuer.rfc4514_string()
    assert acme.orders() == 1
    # A re-run and a restart of the proxy use the stored certificate: no new order.
    again = ok(acme.app.run(*acme.args()))
    assert "nothing to do" in again
    acme.app.container("proxy").restart()

    def same_served() -> bool:
        try:
            return served_cert(acme.https, root).serial_number == first.serial_number
        except (ssl.SSLError, OSError):
            return False

    assert poll(same_served, 60, "the stored certificate after the restart")
    assert acme.orders() == 1
    assert poll(lambda: acme.app.cmd("status").returncode == 0, 60, "the proxy healthy again")
    status = ok(acme.app.cmd("status"))
    assert "(HTTPS, --tls acme)" in status and "Pebble" in status
