"""A Docker client for the real engine, checked to answer."""

from __future__ import annotations

import docker


def connect(timeout: int) -> docker.DockerClient:
    """A client from the environment (DOCKER_HOST, ...) that has answered a ping.

    Raises docker.errors.DockerException when the engine does not answer: the caller says
    what to do about it (pytest.fail in a fixture, SystemExit in a benchmark).
    """
    client = docker.from_env(timeout=timeout)
    client.ping()
    return client
