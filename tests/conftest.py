"""Test wiring shared by every suite: the real engine, the test images, and clean-up.

A test that needs Docker fails (never skips) when the engine does not answer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.images import build as image_build

REPO = Path(__file__).resolve().parent.parent
TEST_LABEL = "syntho-test.owner"
# This machine refuses nofile 65536 (see README); tests use what it allows.
NOFILE = os.environ.get("SYNTHO_TEST_NOFILE", "20000")


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"the Docker engine does not answer ({exc}); start it (see .ci/run) and "
                    "run the tests again", pytrace=False)
    return client


@pytest.fixture(scope="session")
def images(docker_client: docker.DockerClient) -> dict[str, str]:
    """The test images' references, built first if their recipe changed (cached by hash)."""
    return image_build.build_all(docker_client)


class Sandbox:
    """Names for one test's engine objects, and their removal afterwards, pass or fail."""

    def __init__(self, client: docker.DockerClient, tmp_path: Path) -> None:
        self.client = client
        self.id = "t" + uuid.uuid4().hex[:6]
        self.network = f"sa-{self.id}"
        self.tmp = tmp_path
        self.labels = {TEST_LABEL: self.id}
        self.instances: list[str] = []
        self.extra_volumes: list[str] = []

    def instance(self, name: str) -> str:
        """An agent --instance name unique to this test."""
        full = f"{self.id}{name}"
        self.instances.append(full)
        return full

    def create_network(self) -> str:
        self.client.networks.create(self.network, driver="bridge", labels=self.labels)
        return self.network

    def run(self, image: str, name: str, **kwargs: object) -> docker.models.containers.Container:
        """A plain helper container (not the agent's), labelled for clean-up."""
        labels = {**self.labels, **kwargs.pop("labels", {})}  # type: ignore[dict-item]
        return self.client.containers.run(image, name=f"{self.id}-{name}", labels=labels,
                                          detach=True, **kwargs)

    def cleanup(self) -> None:
        filters = [{"label": f"{TEST_LABEL}={self.id}"}]
        filters += [{"label": f"io.syntho.agent.instance={i}"} for i in self.instances]
        for f in filters:
            for c in self.client.containers.list(all=True, filters=f):
                c.remove(force=True)
        for f in filters:
            for n in self.client.networks.list(filters=f):
                n.remove()
        for net in self.client.networks.list(names=[self.network]):
            net.remove()
        for f in filters:
            for v in self.client.volumes.list(filters=f):
                v.remove(force=True)
        for name in self.extra_volumes:
            try:
                self.client.volumes.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass


@pytest.fixture
def sandbox(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(docker_client, tmp_path)
    try:
        yield box
    finally:
        box.cleanup()


def run_agent(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
              stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess: real exit codes, real output."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHO_AGENT_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=stdin)
