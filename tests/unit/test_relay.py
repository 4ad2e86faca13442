"""The relay's program (agent/assets/ray-relay.py) against a stand-in dashboard on loopback: what
it forwards, what it adds and drops, what it refuses and what it logs. The proof that the
backend reaches the real Ray dashboard through it is tests/integration/test_app.py's."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent import relay
from agent.config import AppSettings
from agent.roles import app
from agent.waits import poll
from tests.support.ports import free_port

TOKEN = "0123456789abcdef" * 4
PROGRAM = Path(relay.__file__).parent / "assets" / relay.ASSET


@dataclass
class Dashboard:
    """A stand-in dashboard: answers every request with what it was asked, and records it."""

    port: int
    seen: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def dashboard() -> Iterator[Dashboard]:
    board = Dashboard(free_port())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked = {"method": self.command, "path": self.path, "headers": dict(self.headers)}
            board.seen.append(asked)
            body = json.dumps({"ray_version": "2.60.0", **asked}).encode()
            self.send_response(401 if self.path.startswith("/api/refuse") else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", board.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield board
    server.shutdown()
    server.server_close()


@dataclass
class Running:
    port: int
    proc: subprocess.Popen[str]

    def ask(self, method: str, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, headers=headers or {})
            reply = conn.getresponse()
            return reply.status, reply.read()
        finally:
            conn.close()

    def log(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        return err


def start(dashboard_port: int, token: str | None) -> Running:
    port = free_port()
    env = {**os.environ, "RAY_DASHBOARD_HOST": "127.0.0.1",
           "RAY_DASHBOARD_PORT": str(dashboard_port), "RELAY_PORT": str(port),
           "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_TOKEN", None)
    if token:
        env["RAY_TOKEN"] = token
    proc = subprocess.Popen([sys.executable, str(PROGRAM)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    running = Running(port, proc)

    def alive() -> bool:
        try:
            return running.ask("GET", relay.ALIVE)[0] == 200
        except OSError:
            return False

    assert poll(alive, 20, "the relay"), "the relay did not start"
    return running


@pytest.fixture
def running(dashboard: Dashboard) -> Iterator[Running]:
    r = start(dashboard.port, TOKEN)
    yield r
    if r.proc.poll() is None:
        r.proc.kill()
        r.proc.communicate()


def test_a_read_of_the_api_is_forwarded_with_the_token_instead_of_the_callers_credentials(
        running: Running, dashboard: Dashboard) -> None:
    status, body = running.ask("GET", "/api/cluster_status?format=1",
                               {"Authorization": "Bearer the-backends-own", "Cookie": "a=b",
                                "Accept": "application/json"})
    assert status == 200 and json.loads(body)["ray_version"] == "2.60.0"
    asked = dashboard.seen[-1]
    headers = {k.lower(): v for k, v in asked["headers"].items()}
    assert asked["path"] == "/api/cluster_status?format=1"
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert "cookie" not in headers and headers["accept"] == "application/json"
    assert running.ask("HEAD", "/api/version")[0] == 200


def test_the_dashboards_refusal_reaches_the_caller_as_it_is(running: Running) -> None:
    assert running.ask("GET", "/api/refuse")[0] == 401


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/jobs/"), ("DELETE", "/api/jobs/x"), ("PUT", "/api/x"), ("GET", "/nodes"),
    ("GET", "/"), ("GET", "/apix"),
])
def test_anything_but_a_read_of_the_api_is_refused_and_never_forwarded(
        running: Running, dashboard: Dashboard, method: str, path: str) -> None:
    status, body = running.ask(method, path)
    assert status == 403 and b"only GET and HEAD requests of /api/" in body
    assert dashboard.seen == []


def test_without_a_token_nothing_is_added(dashboard: Dashboard) -> None:
    r = start(dashboard.port, None)
    try:
        assert r.ask("GET", "/api/version", {"Authorization": "Bearer x"})[0] == 200
        assert "authorization" not in {k.lower() for k in dashboard.seen[-1]["headers"]}
    finally:
        r.log()


def test_a_dashboard_that_does_not_answer_is_a_502_that_says_so() -> None:
    r = start(free_port(), TOKEN)  # nothing listens there
    try:
        status, body = r.ask("GET", "/api/version")
        assert status == 502 and b"did not answer" in body
    finally:
        r.log()


def test_the_log_names_requests_but_never_the_token_or_a_query(running: Running) -> None:
    running.ask("GET", "/api/version?secret-ish=1", {"Authorization": "Bearer mine"})
    running.ask("POST", "/api/jobs/")
    log = running.log()
    assert "GET /api/version 200" in log and "POST /api/jobs/ 403" in log
    assert TOKEN not in log and "secret-ish" not in log and "mine" not in log
    assert relay.ALIVE not in log  # the health checks would drown the rest


def test_the_backend_gets_the_relays_url_and_only_the_relay_the_token(tmp_path: Path) -> None:
    settings = AppSettings(head="10.0.0.4", data_dir=tmp_path)
    secrets = app.Secrets(db_password="d", core_secret_key="c", backend_secret_key="b",
                          admin_password="a", ray_token=TOKEN)
    spec = app.app_spec(settings, app.app_values(settings, secrets, "10.0.0.4"))
    by = {c.service: c for c in spec.containers}
    assert by["backend"].env_dict()["RAY_URL"] == "http://ray-relay:8265"
    assert relay.SERVICE in by["backend"].after
    holders = {c.service for c in spec.containers if TOKEN in c.env_dict().values()}
    assert holders == {"core", "core_worker", "ray-relay"}  # the Ray client's, and the relay's
    box = by[relay.SERVICE]
    assert box.ports == () and box.image == settings.core_image
    assert box.env_dict()["RAY_DASHBOARD_HOST"] == "10.0.0.4"
    assert box.entrypoint == ("python3", f"/relay/{relay.file_name(relay.program())}")


def test_the_program_is_written_once_under_its_digest_and_old_versions_go(tmp_path: Path) -> None:
    folder = tmp_path / relay.DIR
    folder.mkdir()
    (folder / "ray-relay-0000000000000000.py").write_text("an older relay")
    relay.write_files(tmp_path)
    assert [p.name for p in folder.iterdir()] == [relay.file_name(relay.program())]
    written = folder / relay.file_name(relay.program())
    assert written.read_text() == relay.program() and written.stat().st_mode & 0o777 == 0o644
    before = written.stat().st_mtime_ns
    relay.write_files(tmp_path)
    assert written.stat().st_mtime_ns == before  # unchanged: not rewritten
