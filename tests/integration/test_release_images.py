"""The release images the upgrade and rollback tests use (tests/support/releases.py), on the
real engine and a real registry: what each release claims, and that it is in the registry.
And the stand-in's side of it, run on the host: its health answers carry the release's
version, and a broken release answers 503 while it runs on."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest

from agent.waits import poll, tcp_open
from tests.integration.agent_helpers import http
from tests.support.constants import REPO, TEST_LABEL
from tests.support.ports import free_port
from tests.support.releases import (
    AUTH,
    USER,
    PushFailed,
    ReleaseRegistry,
    health_version,
    remove_local,
    retag_and_push,
)

pytestmark = pytest.mark.integration

SYNTHO = ["ray", "core", "backend", "frontend"]
OTHER_RAY = "2.59.9"
STANDIN = REPO / "tests" / "images" / "standin" / "standin.py"


@dataclass
class Releases:
    registry: str
    a: dict[str, str]
    b: dict[str, str]
    broken: dict[str, str]  # "Bx": B with a core whose health answers 503
    ray: dict[str, str]  # "R": A's, with a Ray image that claims OTHER_RAY
    made: list[str]  # every tag the tests added on the engine (removed at the end)


@pytest.fixture(scope="module")
def releases(docker_client: docker.DockerClient,
             release_registry: ReleaseRegistry) -> Iterator[Releases]:
    r = release_registry
    made: list[str] = []
    try:
        yield Releases(r.registry, a=r.release("A"), b=r.release("B"),
                       broken=r.release("Bx", broken=frozenset({"core"})),
                       ray=r.release("R", ray_version=OTHER_RAY), made=made)
    finally:
        remove_local(docker_client, sorted(set(made)))  # the tags the tests added


def image_id(client: docker.DockerClient, ref: str) -> str:
    return str(client.images.get(ref).id)


def env_of(client: docker.DockerClient, ref: str) -> list[str]:
    return list(client.images.get(ref).attrs["Config"]["Env"])


def run_in(client: docker.DockerClient, ref: str, *command: str) -> str:
    out = client.containers.run(ref, list(command), remove=True,
                                labels={TEST_LABEL: "release-images"})
    return bytes(out).decode().strip()


def test_a_release_is_in_the_registry(docker_client: docker.DockerClient,
                                      releases: Releases) -> None:
    a = releases.a
    assert set(a) == {"ray", "core", "backend", "frontend", "postgres", "redis"}
    r = releases.registry
    assert a == {"ray": f"{r}/syntho-ray:A", "core": f"{r}/syntho-core-api:A",
                 "backend": f"{r}/syntho-backend:A", "frontend": f"{r}/syntho-frontend:A",
                 "postgres": f"{r}/postgres:test", "redis": f"{r}/redis:test"}
    before = {name: image_id(docker_client, ref) for name, ref in a.items()}
    remove_local(docker_client, list(a.values()))
    remove_local(docker_client, list(a.values()))  # gone already: no error
    for ref in a.values():
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(ref)
    for name, ref in a.items():
        repo, tag = ref.rsplit(":", 1)
        pulled = docker_client.images.pull(repo, tag=tag, auth_config=AUTH)
        assert pulled.id == before[name], name


def test_each_release_is_its_own_build(docker_client: docker.DockerClient,
                                       images: dict[str, str], releases: Releases) -> None:
    for name in SYNTHO:
        ids = {image_id(docker_client, rel[name])
               for rel in (releases.a, releases.b, releases.broken)}
        assert len(ids) == 3, name
        assert image_id(docker_client, releases.a[name]) != image_id(docker_client,
                                                                     images[name])
        labels = docker_client.images.get(releases.b[name]).labels
        assert labels["org.syntho.test.release"] == "B", name
    for name in ("postgres", "redis"):  # the test images themselves, not rebuilt
        assert image_id(docker_client, releases.a[name]) == image_id(docker_client,
                                                                     images[name])
    for name in ("core", "backend", "frontend"):
        assert "STANDIN_VERSION=A" in env_of(docker_client, releases.a[name])
        assert not any(e.startswith("STANDIN_BROKEN=")
                       for e in env_of(docker_client, releases.a[name]))
        assert "STANDIN_BROKEN=core" in env_of(docker_client, releases.broken[name])
        assert "STANDIN_VERSION=Bx" in env_of(docker_client, releases.broken[name])
    assert "SYNTHO_TEST_RELEASE=B" in env_of(docker_client, releases.b["ray"])


def test_a_ray_image_can_claim_another_ray_version(docker_client: docker.DockerClient,
                                                   releases: Releases) -> None:
    script = "import ray; print(ray.__version__)"
    real = run_in(docker_client, releases.a["ray"], "python3", "-c", script)
    assert real == "2.60.0"  # tests/images/build.py's RAY_VERSION
    assert run_in(docker_client, releases.ray["ray"], "python3", "-c", script) == OTHER_RAY
    assert run_in(docker_client, releases.ray["ray"], "ray", "--version") == \
        f"ray, version {OTHER_RAY}"
    assert "SYNTHO_TEST_RELEASE=R" in env_of(docker_client, releases.ray["ray"])


def test_a_moving_tag_is_pushed_again_and_a_refused_push_says_why(
        docker_client: docker.DockerClient, releases: Releases) -> None:
    latest = f"{releases.registry}/syntho-core-api:latest"
    releases.made.append(latest)
    retag_and_push(docker_client, releases.a["core"], latest, AUTH)
    retag_and_push(docker_client, releases.b["core"], latest, AUTH)
    remove_local(docker_client, [latest])
    repo, tag = latest.rsplit(":", 1)
    pulled = docker_client.images.pull(repo, tag=tag, auth_config=AUTH)
    assert pulled.id == image_id(docker_client, releases.b["core"])

    denied = f"{releases.registry}/syntho-core-api:denied"
    releases.made.append(denied)
    with pytest.raises(PushFailed, match="push of .*:denied failed: .*(unauthorized|denied)"):
        retag_and_push(docker_client, releases.a["core"], denied,
                       {"username": USER, "password": "wrong"})


# ---- the stand-in itself, on the host ----

@pytest.fixture
def backend_stub() -> Iterator[str]:
    """host:port of a server that answers 200 to everything: a healthy backend for the
    frontend stand-in to check."""

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def frontend(backend_stub: str, tmp_path: Path) -> Iterator[Any]:
    """Starts standin.py's frontend role on the host with extra env; yields (process, url)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**extra: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STANDIN_")}
        env.update({"PORT": str(port), "BACKEND_HOST": backend_stub,
                    "OPEN_API_URL": "http://127.0.0.1/api", **extra})
        log = (tmp_path / f"frontend-{port}.log").open("wb")
        proc = subprocess.Popen([sys.executable, str(STANDIN), "frontend"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        started.append(proc)
        alive = poll(lambda: tcp_open("127.0.0.1", port) or proc.poll() is not None, 20,
                     "the frontend stand-in")
        assert alive and proc.poll() is None, (tmp_path / f"frontend-{port}.log").read_text()
        return proc, f"http://127.0.0.1:{port}/"

    try:
        yield start
    finally:
        for proc in started:
            proc.terminate()
            proc.wait(timeout=10)


def test_the_standin_health_answers_with_its_release_version(frontend: Any) -> None:
    _, url = frontend(STANDIN_VERSION="A")
    code, body = http(url)
    assert code == 200 and body["healthy"] is True and body["version"] == "A", body
    assert health_version(url) == "A"

    _, url = frontend()  # unset: an empty version
    code, body = http(url)
    assert code == 200 and body["version"] == "", body
    assert health_version(url) == ""


@pytest.mark.parametrize("broken", ["frontend", "core, frontend"])
def test_a_broken_release_answers_503_and_runs_on(frontend: Any, broken: str) -> None:
    proc, url = frontend(STANDIN_VERSION="A", STANDIN_BROKEN=broken)
    for _ in range(2):
        code, body = http(url)
        assert (code, body) == (503, {"error": "broken release", "version": "A"})
    assert health_version(url) == "A"
    assert proc.poll() is None


def test_a_release_broken_elsewhere_is_healthy_here(frontend: Any) -> None:
    _, url = frontend(STANDIN_VERSION="Bx", STANDIN_BROKEN="core,backend")
    code, body = http(url)
    assert code == 200 and body["version"] == "Bx", body
