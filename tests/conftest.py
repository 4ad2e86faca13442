"""Test wiring shared by every suite: the real engine, the test images, clean-up, and an
environment without the agent's own variables.

A test that needs Docker fails (never skips) when the engine does not answer. The helpers the
fixtures use live in tests/support (shared with bench/).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.images import build as image_build
from tests.support.engine import connect
from tests.support.sandbox import Sandbox


@pytest.fixture(autouse=True)
def _no_agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SYNTHO_AGENT_* from the environment the tests run in reaches any test."""
    for key in list(os.environ):
        if key.startswith("SYNTHO_AGENT_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        return connect(timeout=120)
    except docker.errors.DockerException as exc:
        pytest.fail(f"the Docker engine does not answer ({exc}); start it (see .ci/run) and "
                    "run the tests again", pytrace=False)


@pytest.fixture(scope="session")
def images(docker_client: docker.DockerClient) -> dict[str, str]:
    """The test images' references, built first if their recipe changed (cached by hash)."""
    return image_build.build_all(docker_client)


@pytest.fixture
def sandbox(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[Sandbox]:
    with Sandbox(docker_client, tmp_path) as box:
        yield box
