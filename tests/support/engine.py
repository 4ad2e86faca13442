"""A Docker client for the real engine, checked to answer; files into its containers."""

from __future__ import annotations

import io
import tarfile

import docker


def connect(timeout: int) -> docker.DockerClient:
    """A client from the environment (DOCKER_HOST, ...) that has answered a ping.

    Raises docker.errors.DockerException when the engine does not answer: the caller says
    what to do about it (pytest.fail in a fixture, SystemExit in a benchmark).
    """
    client = docker.from_env(timeout=timeout)
    client.ping()
    return client


def tar(files: dict[str, bytes]) -> bytes:
    """A tar of files (absolute path -> content, mode 0600) for put_archive("/", ...)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size, info.mode = len(data), 0o600
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()
