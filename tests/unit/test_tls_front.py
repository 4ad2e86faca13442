"""The dashboard's TLS front (agent/assets/tls-front.py) on loopback: a throwaway CA's certificate
for 127.0.0.2, the front listening there and relaying to a stand-in dashboard on 127.0.0.1
(Linux routes all of 127/8 to lo). What passes through it unchanged, what it refuses, its health
check, its settings' refusals and its end on SIGTERM."""

from __future__ import annotations

import http.client
import http.server
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.waits import poll
from tests.support import certs
from tests.support.ports import free_port

PROGRAM = Path(__file__).parents[2] / "agent" / "assets" / "tls-front.py"
FRONT = "127.0.0.2"
CHUNKS = [b"first chunk\n", b"x" * 70000, b"last\n"]


@dataclass
class Pki:
    ca: Path  # the CA the front's certificate is issued by
    other_ca: Path  # a CA that has nothing to do with it
    cert: Path
    key: Path
    encrypted_key: Path  # the same key, with a passphrase


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = certs.make_ca(), certs.make_ca("Another CA")
    cert, key = certs.leaf(ca, (), (FRONT,))
    c, k = certs.write(folder, certs.pem(cert), certs.key_pem(key))
    (folder / "ca.pem").write_bytes(certs.pem(ca.cert))
    (folder / "other.pem").write_bytes(certs.pem(other.cert))
    (folder / "encrypted.pem").write_bytes(certs.key_pem(key, b"passphrase"))
    return Pki(folder / "ca.pem", folder / "other.pem", c, k, folder / "encrypted.pem")


class Dashboard(http.server.BaseHTTPRequestHandler):
    """The stand-in: / answers, /stream streams CHUNKS chunked, /echo sends the POST body back."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in CHUNKS:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        self.reply(b"hello from the dashboard\n")

    def do_POST(self) -> None:
        self.reply(self.rfile.read(int(self.headers["Content-Length"])))

    def reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def backend() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Dashboard)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@dataclass
class Front:
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path

    def context(self, ca: Path) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(ca))

    def https(self, ca: Path) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(FRONT, self.port, timeout=10, context=self.context(ca))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def environment(pki: Pki, port: int, backend_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FRONT_") and k != "BACKEND"}
    return {**env, "FRONT_CERT": str(pki.cert), "FRONT_KEY": str(pki.key),
            "FRONT_LISTEN": FRONT, "FRONT_PORT": str(port),
            "BACKEND": f"127.0.0.1:{backend_port}"}


def handshake_completes(port: int) -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((FRONT, port), timeout=2) as raw, ctx.wrap_socket(raw):
            return True
    except OSError:
        return False


def start(pki: Pki, backend_port: int, folder: Path) -> Front:
    port = free_port()
    env = environment(pki, port, backend_port)
    log = folder / f"front-{port}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, str(PROGRAM)], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    front = Front(port, env, proc, log)
    ready = poll(lambda: proc.poll() is not None or handshake_completes(port), 20, "the front")
    if not ready or proc.poll() is not None:
        front.stop()
        pytest.fail(f"the front did not start: {log.read_text()}")
    return front


@pytest.fixture(scope="module")
def front(pki: Pki, backend: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    f = start(pki, backend, tmp_path_factory.mktemp("front"))
    yield f
    f.stop()


def test_it_says_where_it_listens_and_where_it_relays_but_nothing_of_the_key(
        front: Front, backend: int, pki: Pki) -> None:
    first = front.log.read_text().splitlines()[0]
    assert first == f"tls-front: TLS on {FRONT}:{front.port}, relayed to 127.0.0.1:{backend}"
    assert "PRIVATE" not in front.log.read_text()


def test_https_verified_against_the_ca_reaches_the_dashboard_and_keeps_the_connection(
        front: Front, pki: Pki) -> None:
    conn = front.https(pki.ca)
    try:
        sockets = []
        for _ in range(2):
            conn.request("GET", "/")
            reply = conn.getresponse()
            assert (reply.status, reply.read()) == (200, b"hello from the dashboard\n")
            sockets.append(conn.sock)
        assert sockets[0] is sockets[1]  # the same connection: keep-alive passed
        conn.request("GET", "/stream")
        reply = conn.getresponse()
        assert reply.getheader("Transfer-Encoding") == "chunked"
        assert reply.read() == b"".join(CHUNKS)
    finally:
        conn.close()


def test_a_tls_12_client_is_served_too(front: Front, pki: Pki) -> None:
    ctx = front.context(pki.ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    conn = http.client.HTTPSConnection(FRONT, front.port, timeout=10, context=ctx)
    try:
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"hello from the dashboard\n"
        assert isinstance(conn.sock, ssl.SSLSocket) and conn.sock.version() == "TLSv1.2"
    finally:
        conn.close()


def test_a_2mb_post_comes_back_byte_identical(front: Front, pki: Pki) -> None:
    body = os.urandom(2 * 1024 * 1024)
    conn = front.https(pki.ca)
    try:
        conn.request("POST", "/echo", body=body)
        reply = conn.getresponse()
        assert reply.status == 200 and reply.read() == body
    finally:
        conn.close()


def test_clients_at_once_each_get_their_own_bytes(front: Front, pki: Pki) -> None:
    bodies = [os.urandom(256 * 1024) for _ in range(12)]
    echoed: dict[int, bytes] = {}

    def one(i: int) -> None:
        conn = front.https(pki.ca)
        try:
            conn.request("POST", "/echo", body=bodies[i])
            echoed[i] = conn.getresponse().read()
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert echoed == dict(enumerate(bodies))


def test_the_backends_close_reaches_the_client_as_a_close_notify(front: Front, pki: Pki) -> None:
    raw = socket.create_connection((FRONT, front.port), timeout=10)
    with front.context(pki.ca).wrap_socket(raw, server_hostname=FRONT,
                                           suppress_ragged_eofs=False) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.2\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):  # a FIN without close_notify would raise SSLEOFError
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello from the dashboard\n")


def test_a_clients_end_reaches_the_backend_after_what_it_sent(pki: Pki, tmp_path: Path) -> None:
    """The client's FIN (here without a close_notify) is passed on once its bytes are."""
    totals: list[int] = []  # what each connection brought until its end
    with socket.create_server(("127.0.0.1", 0)) as server:
        def counter() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:  # the test is over
                    return
                with conn:
                    total = 0
                    while chunk := conn.recv(65536):
                        total += len(chunk)
                    totals.append(total)

        threading.Thread(target=counter, daemon=True).start()
        f = start(pki, server.getsockname()[1], tmp_path)
        try:
            raw = socket.create_connection((FRONT, f.port), timeout=10)
            with f.context(pki.ca).wrap_socket(raw, server_hostname=FRONT) as tls:
                tls.sendall(b"x" * 300000)
                socket.socket.shutdown(tls, socket.SHUT_WR)  # the TCP end alone
                assert poll(lambda: 300000 in totals, 10, "the backend's end"), totals
        finally:
            f.stop()


def test_plain_http_gets_no_http_answer_and_the_failed_handshake_is_logged(
        front: Front) -> None:
    with socket.create_connection((FRONT, front.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.2\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # a reset is no HTTP answer either
        host, port = sock.getsockname()
        me = f"{host}:{port}"
    assert b"HTTP/" not in answer and b"hello" not in answer

    def logged() -> bool:
        return any(line.startswith(f"tls-front: handshake with {me} failed: ")
                   for line in front.log.read_text().splitlines())

    assert poll(logged, 10, "the log line"), front.log.read_text()


def test_a_client_trusting_another_ca_refuses_the_front(front: Front, pki: Pki) -> None:
    conn = front.https(pki.other_ca)
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/")
    conn.close()


def test_a_client_slow_to_handshake_holds_up_no_other(front: Front, pki: Pki) -> None:
    with socket.create_connection((FRONT, front.port), timeout=10):  # says nothing
        conn = front.https(pki.ca)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        conn.close()


def test_the_health_check_passes_while_it_runs_and_fails_on_a_silent_port(front: Front) -> None:
    run = subprocess.run([sys.executable, str(PROGRAM), "--check"], env=front.env,
                         capture_output=True, timeout=30)
    assert run.returncode == 0, run.stderr
    silent = {**front.env, "FRONT_PORT": str(free_port())}
    run = subprocess.run([sys.executable, str(PROGRAM), "--check"], env=silent,
                         capture_output=True, timeout=30)
    assert run.returncode == 1 and run.stderr.decode().startswith("tls-front: check failed")


def test_a_backend_that_does_not_answer_closes_the_clients_connection(
        pki: Pki, tmp_path: Path) -> None:
    f = start(pki, free_port(), tmp_path)  # nothing listens on the backend's port
    try:
        conn = f.https(pki.ca)
        conn.request("GET", "/")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            conn.getresponse()
        conn.close()
    finally:
        f.stop()
    assert "did not answer" in f.log.read_text()


@pytest.mark.parametrize(("change", "message"), [
    ({"FRONT_CERT": None}, "tls-front: FRONT_CERT is not set"),
    ({"FRONT_KEY": "/nonexistent/key.pem"}, "tls-front: FRONT_KEY: no file /nonexistent/key.pem"),
    ({"FRONT_LISTEN": "127.0.0.2,nowhere"}, "tls-front: FRONT_LISTEN: 'nowhere' is not an IPv4"),
    ({"FRONT_PORT": "70000"}, "tls-front: FRONT_PORT: '70000' is not a TCP port"),
    ({"BACKEND": "8265"}, "tls-front: BACKEND: '8265' is not host:port"),
    ({"FRONT_KEY": "CERT"}, "tls-front: cannot load FRONT_CERT and FRONT_KEY: "),
    ({"FRONT_KEY": "ENCRYPTED"}, "tls-front: cannot load FRONT_CERT and FRONT_KEY: FRONT_KEY is "
                                 "encrypted"),
    ({"FRONT_LISTEN": "10.255.255.254"}, "tls-front: cannot listen on 10.255.255.254:"),
])
def test_a_missing_or_bad_setting_is_one_line_and_exit_2(
        pki: Pki, change: dict[str, str | None], message: str) -> None:
    env = environment(pki, free_port(), free_port())
    for key, value in change.items():
        if value is None:
            del env[key]
        else:
            env[key] = {"CERT": str(pki.cert), "ENCRYPTED": str(pki.encrypted_key)}.get(
                value, value)
    run = subprocess.run([sys.executable, str(PROGRAM)], env=env, capture_output=True,
                         timeout=30)
    err = run.stderr.decode()
    assert run.returncode == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_sigterm_ends_it_promptly_with_connections_open(
        pki: Pki, backend: int, tmp_path: Path) -> None:
    f = start(pki, backend, tmp_path)
    try:
        conn = f.https(pki.ca)
        conn.request("GET", "/")
        assert conn.getresponse().read()  # a kept-alive connection stays open, idle
        idle = socket.create_connection((FRONT, f.port), timeout=10)  # and one mid-handshake
        began = time.monotonic()
        f.proc.send_signal(signal.SIGTERM)
        assert f.proc.wait(timeout=5) == 0
        assert time.monotonic() - began < 5
        conn.close()
        idle.close()
    finally:
        f.stop()
    assert f.log.read_text().splitlines()[-1] == "tls-front: stopping (SIGTERM)"


def test_listen_star_serves_every_address_of_the_host_but_loopback(
        pki: Pki, backend: int, tmp_path: Path) -> None:
    """FRONT_LISTEN=* (Ray's launcher's head, whose addresses the config cannot know): the
    same addresses the agent's own certificate names (ray_tls.local_ipv4)."""
    from agent.ray_tls import local_ipv4

    port = free_port()
    env = {**environment(pki, port, backend), "FRONT_LISTEN": "*"}
    log = tmp_path / "front.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, str(PROGRAM)], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert poll(lambda: "TLS on" in log.read_text() or proc.poll() is not None, 20, "")
        expected = ", ".join(f"{a}:{port}" for a in local_ipv4())
        assert log.read_text().splitlines()[0] == (
            f"tls-front: TLS on {expected}, relayed to 127.0.0.1:{backend}")
        with pytest.raises(OSError):  # loopback stays the dashboard's
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        proc.kill()
        proc.wait()


def test_a_pidfile_makes_a_new_front_take_over_from_the_one_before(
        pki: Pki, backend: int, tmp_path: Path) -> None:
    """Each `ray up` starts the front again in the head's container: the one before stops
    first (its port is then free), and a stale pidfile naming another program stops nothing."""
    port = free_port()
    pidfile = tmp_path / "front.pid"
    env = {**environment(pki, port, backend), "FRONT_PIDFILE": str(pidfile)}
    stranger = subprocess.Popen(["sleep", "60"])
    pidfile.write_text(f"{stranger.pid}\n")  # a reused process id: not a front
    fronts = []
    try:
        for n in range(2):
            log = tmp_path / f"front{n}.log"
            with log.open("wb") as err:
                proc = subprocess.Popen([sys.executable, str(PROGRAM)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=err)
            fronts.append(proc)
            pid = str(proc.pid)
            assert poll(lambda: pidfile.read_text().strip() == pid  # noqa: B023 (polled here)
                        and handshake_completes(port), 20, "the front"), log.read_text()
        assert fronts[0].wait(timeout=10) == 0  # stopped by the second
        assert fronts[1].poll() is None and stranger.poll() is None
        assert "stopping the front before this one" in (tmp_path / "front1.log").read_text()
    finally:
        for proc in (*fronts, stranger):
            proc.kill()
            proc.wait()
