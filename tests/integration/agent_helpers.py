"""Helpers for tests that drive the agent's CLI against the real engine."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from agent.spec import LABEL_PREFIX
from agent.waits import poll, tcp_open
from tests.support import reads
from tests.support.agent_cli import run_agent
from tests.support.constants import NOFILE, TEST_LABEL
from tests.support.ports import free_port
from tests.support.sandbox import Sandbox, owned_elsewhere


@dataclass
class Node:
    """One agent 'VM' on the shared engine: its own data dir and instance name."""

    sandbox: Sandbox
    images: dict[str, str]
    name: str
    extra: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.instance = self.sandbox.instance(self.name)
        self.data_dir = self.sandbox.tmp / self.name

    def args(self) -> list[str]:
        return ["--data-dir", str(self.data_dir), "--instance", self.instance,
                "--network", self.sandbox.network, "--ray-image", self.images["ray"],
                "--shm-size", "512mb", "--nofile", NOFILE, *self.extra]

    def run(self, role: str, *more: str, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run_agent(role, *self.args(), *more, env=env, timeout=timeout)

    def cmd(self, command: str, *more: str) -> subprocess.CompletedProcess[str]:
        return run_agent(command, "--data-dir", str(self.data_dir), "--instance",
                         self.instance, *more)

    @property
    def token_file(self) -> Path:
        return self.data_dir / "ray-token"

    def container(self, service: str) -> docker.models.containers.Container:
        return self.sandbox.client.containers.get(f"{service}-{self.instance}")


def ip_on(container: docker.models.containers.Container, network: str) -> str:
    container.reload()
    return str(container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


def not_elsewhere(labels: dict[str, str] | None) -> bool:
    return not owned_elsewhere(labels)


def engine_snapshot(client: docker.DockerClient,
                    keep: Callable[[dict[str, str] | None], bool] = not_elsewhere
                    ) -> set[tuple[str, str, str]]:
    """Every container, network and volume with its ID and state: 'nothing changed' is equality.

    Only the objects whose labels `keep` accepts: by default all but what another test process
    owns (the suite runs in shards at once: see owned_elsewhere); only the containers the agent
    or a test sandbox labelled (`ours`), and no anonymous volume. A container already being
    removed is left out: it is on its way out from before. One list request per kind, nothing
    inspected one by one (that would race with other tests' removals).
    """
    api = client.api
    found = {("container", c["Names"][0].lstrip("/") if c.get("Names") else "",
              f"{c['Id']}:{c['State']}")
             for c in api.containers(all=True)
             if c["State"] != "removing" and ours(c.get("Labels")) and keep(c.get("Labels"))}
    found |= {("network", n["Name"], n["Id"]) for n in api.networks() if keep(n.get("Labels"))}
    found |= {("volume", v["Name"], "") for v in api.volumes().get("Volumes") or []
              if not ANONYMOUS.fullmatch(v["Name"]) and keep(v.get("Labels"))}
    return found


# An anonymous volume (an image's VOLUME, made for whichever container started from it): the
# agent names every volume it makes, and a container that brought one along shows itself.
ANONYMOUS = re.compile(r"[0-9a-f]{64}")


def ours(labels: dict[str, str] | None) -> bool:
    """Whether a container carries the agent's labels (every container it makes, its
    throw-away ones included) or a test sandbox's. Others (a test's unlabelled helper with
    --rm, an image build's intermediate) are not the command under test's."""
    return any(k == TEST_LABEL or k.startswith(LABEL_PREFIX) for k in labels or {})


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def http(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@dataclass
class HeadVM:
    """The Ray head on the host network, as on its own VM."""

    data_dir: Path
    node_ip: str
    token: str
    instance: str
    ray_image: str
    address: str = "127.0.0.1"  # where the app's agent finds it: on its own network, node_ip
    network: str = ""  # its Docker network (head_on_a_network), "" on the host's

    def args(self) -> list[str]:
        """The head role's arguments that made it (a re-run with them changes nothing)."""
        return head_role_args(self.data_dir, self.instance, self.ray_image, self.network)


def head_role_args(data_dir: Path, instance: str, ray_image: str, network: str) -> list[str]:
    """The arguments of the shared stack's head (conftest's head_vm), on the host's network
    unless `network` names one."""
    return ["--data-dir", str(data_dir), "--instance", instance, "--ray-image", ray_image,
            "--shm-size", "1gb", "--nofile", NOFILE, *(["--network", network] if network else [])]


@dataclass
class App:
    """One app deployment: its instance, data dir, ports and the arguments that make it."""

    sandbox: Sandbox
    images: dict[str, str]
    head: HeadVM
    name: str
    first_output: str = field(default="", init=False)  # the `stack` fixture's converging run

    def __post_init__(self) -> None:
        self.instance = self.sandbox.instance(self.name)
        self.data_dir = self.sandbox.tmp / self.name
        self.frontend_port = free_port()
        self.backend_port = free_port()

    def args(self) -> list[str]:
        i = self.images
        return ["--data-dir", str(self.data_dir), "--instance", self.instance,
                "--head", self.head.address, "--token-file", str(self.head.data_dir / "ray-token"),
                "--core-image", i["core"], "--backend-image", i["backend"],
                "--frontend-image", i["frontend"], "--postgres-image", i["postgres"],
                "--redis-image", i["redis"], "--frontend-port", str(self.frontend_port),
                "--backend-port", str(self.backend_port), "--ready-timeout", "360"]

    def run(self, *more: str) -> subprocess.CompletedProcess[str]:
        return run_agent("app", *self.args(), *more)

    def cmd(self, command: str, *more: str) -> subprocess.CompletedProcess[str]:
        return run_agent(command, "--data-dir", str(self.data_dir), "--instance", self.instance,
                         *more)

    def container(self, service: str) -> docker.models.containers.Container:
        return self.sandbox.client.containers.get(f"syntho-{service}-{self.instance}")

    def secrets(self) -> dict[str, str]:
        folder = self.data_dir / "secrets"
        return {p.name: p.read_text() for p in sorted(folder.iterdir())}

    def psql(self, db: str, sql: str) -> str:
        code, out = reads.psql(self.container("postgres"), db, sql)
        assert code == 0, out
        return out


def why_unhealthy(app: App) -> str:
    """What an app that did not come up says of itself: the core's and the backend's health
    answers (which dependency fails, in the stand-ins' JSON) and the last lines of their logs
    and the relay's, for a failure in CI where nothing else is left to read."""
    parts = []
    for service, url in (("core", "http://localhost:8080/api/v1/status"),
                         ("backend", "http://backend:8000/api/docs/")):
        try:
            box = app.container(service)
            _, out = box.exec_run(["curl", "-sS", "--max-time", "20", url])
            parts.append(f"{service} health: {out.decode(errors='replace')[:1500]}")
        except docker.errors.APIError as exc:
            parts.append(f"{service} health: {exc}")
    for service in ("core", "backend", "ray-relay"):
        try:
            logs = app.container(service).logs(tail=15).decode(errors="replace")
            parts.append(f"{service} log:\n{logs}")
        except docker.errors.APIError as exc:
            parts.append(f"{service} log: {exc}")
    return "\n".join(parts)


def start_registry(tmp: Path, user: str, password: str, listen: str = "127.0.0.1"
                   ) -> tuple[subprocess.Popen[bytes], int]:
    """Debian's docker-registry (a real registry v2) with htpasswd auth, on `listen`.

    Returns the process (terminate it) and its port. Engines trust 127.0.0.0/8 without TLS.
    """
    binary, htpasswd = shutil.which("docker-registry"), shutil.which("htpasswd")
    if not binary or not htpasswd:
        pytest.fail("docker-registry and htpasswd are needed: apt-get install docker-registry "
                    "apache2-utils (.ci/run does)", pytrace=False)
    port = free_port()
    users = subprocess.run([htpasswd, "-Bbn", user, password], check=True, capture_output=True,
                           text=True).stdout
    (tmp / "htpasswd").write_text(users)
    (tmp / "registry.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp / 'registry'}\n"
        f"http:\n  addr: {listen}:{port}\nauth:\n  htpasswd:\n    realm: test\n"
        f"    path: {tmp / 'htpasswd'}\n")
    proc = subprocess.Popen([binary, "serve", str(tmp / "registry.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not poll(lambda: tcp_open("127.0.0.1", port), 20, "registry"):
        proc.terminate()
        pytest.fail("the registry did not start", pytrace=False)
    return proc, port
