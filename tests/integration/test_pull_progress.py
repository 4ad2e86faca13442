"""Progress of a real pull (from a local registry) and of a real bundle load, as a log sees it
(standard output captured, not a terminal): lines with bytes, a bounded number of them."""

from __future__ import annotations

import io
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from agent import progress
from tests.integration.agent_helpers import start_registry
from tests.support.agent_cli import run_agent
from tests.support.constants import NOFILE
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

USER, PASSWORD = "syntho", "registry-pass-81c2"
# Three layers: busybox's (on the engine already), then 3 MB and 40 MB that do not compress.
RECIPE = ("FROM {base}\n"
          "RUN head -c 3000000 /dev/urandom > /small\n"
          "RUN head -c 40000000 /dev/urandom > /large\n")
BYTES = r"[0-9.]+ (?:B|kB|MB)"


@dataclass(frozen=True)
class Blob:
    ref: str  # in the registry, not on the engine
    registry: str
    bundle: Path  # a `docker save` archive of it


@pytest.fixture(scope="module")
def blob(docker_client: docker.DockerClient, images: dict[str, str],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Blob]:
    """A fresh three-layer image, pushed to a registry and saved to a bundle, then removed
    from the engine (so that both tests fetch its layers)."""
    tmp = tmp_path_factory.mktemp("progress")
    proc, port = start_registry(tmp, USER, PASSWORD)
    ref = f"127.0.0.1:{port}/syntho/progress-{uuid.uuid4().hex[:6]}:1"
    try:
        image, _ = docker_client.images.build(
            fileobj=io.BytesIO(RECIPE.format(base=images["busybox"]).encode()), tag=ref,
            rm=True)
        repo, tag = ref.rsplit(":", 1)
        auth = {"username": USER, "password": PASSWORD}
        for line in docker_client.images.push(repo, tag, auth_config=auth, stream=True,
                                              decode=True):
            assert "error" not in line, line
        bundle = tmp / "bundle"
        bundle.mkdir()
        with (bundle / "images.tar").open("wb") as out:
            for chunk in image.save(named=ref):
                out.write(chunk)
        docker_client.images.remove(ref)
        yield Blob(ref, f"127.0.0.1:{port}", bundle)
    finally:
        try:
            docker_client.images.remove(ref)
        except docker.errors.ImageNotFound:
            pass
        proc.terminate()
        proc.wait(timeout=10)


def worker(sandbox: Sandbox, head: str, blob: Blob, *more: str
           ) -> tuple[list[str], float]:
    """A worker run that needs the blob image; its output lines and how long it took."""
    started = time.monotonic()
    try:
        done = run_agent("worker", "--data-dir", str(sandbox.tmp / "w"),
                         "--instance", sandbox.instance("w"), "--head", head, "--wait", "1",
                         "--no-auth", "--ray-image", blob.ref, "--nofile", NOFILE, *more,
                         env={"SYNTHO_AGENT_REGISTRY_PASSWORD": PASSWORD})
        elapsed = time.monotonic() - started
        # The image step passed, then the head did not answer.
        assert done.returncode == 3 and "did not answer" in done.stderr, done.stderr
        assert sandbox.client.images.get(blob.ref)
    finally:
        try:
            sandbox.client.images.remove(blob.ref)
        except docker.errors.ImageNotFound:
            pass
    assert "\r" not in done.stdout and "\x1b" not in done.stdout  # no terminal, no rewrites
    return done.stdout.splitlines(), elapsed


def bounded(count: int, elapsed: float) -> bool:
    """At most the first line and one per LOG_EVERY seconds after it (never one per event)."""
    return 1 <= count <= 1 + elapsed / progress.LOG_EVERY


def test_a_pull_shows_bytes_in_a_few_lines(sandbox: Sandbox, blob: Blob, nobody: str) -> None:
    lines, elapsed = worker(sandbox, nobody, blob, "--registry", blob.registry,
                            "--registry-user", USER)
    assert f"pulling {blob.ref}" in lines
    shown = [line for line in lines if line.startswith(f"  {blob.ref}: ")]
    assert bounded(len(shown), elapsed), lines
    for line in shown:  # three layers: the tag is not counted as one
        assert re.fullmatch(rf"  {re.escape(blob.ref)}: [0-3]/3 layers, {BYTES} / "
                            rf"{BYTES}\+?", line), line
    pulled = [line for line in lines if line.startswith(f"pulled {blob.ref} in ")]
    assert len(pulled) == 1, lines
    # Both new layers downloaded (43 MB: random bytes do not compress); busybox's was here.
    assert re.search(r": 3 layers \(1 already here\), 43\.\d MB$", pulled[0]), pulled


def test_a_bundle_load_shows_bytes_in_a_few_lines(sandbox: Sandbox, blob: Blob,
                                                  nobody: str) -> None:
    archive = blob.bundle / "images.tar"
    total = progress.size(archive.stat().st_size)
    lines, elapsed = worker(sandbox, nobody, blob, "--images", str(blob.bundle))
    assert f"loading images from {archive}" in lines
    shown = [line for line in lines if line.startswith("  images.tar: ")]
    assert bounded(len(shown), elapsed), lines
    for line in shown:
        assert re.fullmatch(rf"  images\.tar: {BYTES} / {re.escape(total)}", line), line
    loaded = [line for line in lines if line.startswith(f"loaded {blob.ref} in ")]
    assert len(loaded) == 1 and loaded[0].endswith(f"s ({total})"), lines
