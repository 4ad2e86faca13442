"""Helpers for tests that drive the agent's CLI against the real engine."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import docker

from tests.conftest import NOFILE, Sandbox, run_agent


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


def engine_snapshot(client: docker.DockerClient) -> set[tuple[str, str, str]]:
    """Every container, network and volume with its ID and state: 'nothing changed' is equality."""
    found = {("container", c.name or "", f"{c.id}:{c.status}")
             for c in client.containers.list(all=True)}
    found |= {("network", n.name or "", str(n.id)) for n in client.networks.list()}
    found |= {("volume", v.name or "", "") for v in client.volumes.list()}
    return found


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout
