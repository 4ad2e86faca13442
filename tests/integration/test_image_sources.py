"""Images from a registry (a real registry v2 server with htpasswd auth) or an offline bundle,
and the watch mode healing from engine events. All on the real engine."""

from __future__ import annotations

import gzip
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from agent.waits import poll
from tests.integration.agent_helpers import start_registry
from tests.support.agent_cli import agent_cmd, agent_env, run_agent
from tests.support.constants import NOFILE, REPO
from tests.support.processes import started
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

USER, PASSWORD = "syntho", "registry-pass-7f3a"


@dataclass
class Registry:
    address: str


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry on loopback with htpasswd auth."""
    proc, port = start_registry(tmp_path, USER, PASSWORD)
    try:
        yield Registry(f"127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def push(client: docker.DockerClient, source: str, target: str) -> None:
    repo, tag = target.rsplit(":", 1)
    client.images.get(source).tag(repo, tag)
    auth = {"username": USER, "password": PASSWORD}
    for line in client.images.push(repo, tag, auth_config=auth, stream=True, decode=True):
        assert "error" not in line, line
    client.images.remove(target)


def worker_args(sandbox: Sandbox, nobody_ip: str, image: str) -> list[str]:
    """A worker whose head never answers: enough to see the image step happen first."""
    return ["worker", "--data-dir", str(sandbox.tmp / "w"), "--instance", sandbox.instance("w"),
            "--head", nobody_ip, "--wait", "1", "--no-auth", "--ray-image", image,
            "--nofile", NOFILE]


@pytest.mark.parametrize("how", ["env", "file", "stdin"])
def test_missing_image_is_pulled_from_the_registry_with_a_password_never_on_argv(
        sandbox: Sandbox, images: dict[str, str], registry: Registry, nobody: str,
        tmp_path: Path, how: str) -> None:
    ref = f"syntho/ray-{sandbox.id}:1"
    push(sandbox.client, images["busybox"], f"{registry.address}/{ref}")
    env = {"HOME": str(tmp_path / "home")}
    args = [*worker_args(sandbox, nobody, ref), "--registry", registry.address,
            "--registry-user", USER]
    stdin = None
    if how == "env":
        env["SYNTHO_AGENT_REGISTRY_PASSWORD"] = PASSWORD
    elif how == "file":
        (tmp_path / "pw").write_text(PASSWORD + "\n")
        args += ["--registry-password-file", str(tmp_path / "pw")]
    else:
        args += ["--registry-password-stdin"]
        stdin = PASSWORD + "\n"
    try:
        result = run_agent(*args, env=env, stdin=stdin)
        # The image step passed (pulled, under the registry), then the head did not answer.
        assert result.returncode == 3 and "did not answer" in result.stderr, result.stderr
        assert f"pulled {registry.address}/{ref}" in result.stdout
        assert sandbox.client.images.get(f"{registry.address}/{ref}")
        assert PASSWORD not in result.stdout + result.stderr
        assert PASSWORD not in " ".join(args)
        assert not (tmp_path / "home" / ".docker").exists()  # no credentials file written
    finally:
        for tag in [f"{registry.address}/{ref}"]:
            try:
                sandbox.client.images.remove(tag)
            except docker.errors.ImageNotFound:
                pass


def test_a_wrong_registry_password_is_a_clear_error(
        sandbox: Sandbox, images: dict[str, str], registry: Registry, nobody: str) -> None:
    result = run_agent(*worker_args(sandbox, nobody, f"syntho/missing-{sandbox.id}:1"),
                       "--registry", registry.address, "--registry-user", USER,
                       env={"SYNTHO_AGENT_REGISTRY_PASSWORD": "wrong-password"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "refused the login" in result.stderr


def test_missing_image_is_loaded_from_an_offline_bundle(
        sandbox: Sandbox, images: dict[str, str], nobody: str, tmp_path: Path) -> None:
    ref = f"syntho/bundled-{sandbox.id}:1"
    repo, tag = ref.split(":")
    sandbox.client.images.get(images["busybox"]).tag(repo, tag)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    with gzip.open(bundle / "images.tar.gz", "wb") as out:
        for chunk in sandbox.client.images.get(ref).save(named=ref):
            out.write(chunk)
    sandbox.client.images.remove(ref)
    try:
        result = run_agent(*worker_args(sandbox, nobody, ref), "--images", str(bundle))
        assert result.returncode == 3 and "did not answer" in result.stderr
        assert "loaded " in result.stdout and ref in result.stdout
        assert sandbox.client.images.get(ref)
    finally:
        sandbox.client.images.remove(ref)


def test_a_missing_image_with_no_source_names_it_and_the_ways(
        sandbox: Sandbox, nobody: str) -> None:
    result = run_agent(*worker_args(sandbox, nobody, "syntho/nowhere:1"))
    assert result.returncode == 3
    assert "image syntho/nowhere:1" in result.stderr and "--images PATH" in result.stderr
    assert "--registry" in result.stderr


def test_watch_heals_a_removed_a_stopped_and_a_killed_container(
        sandbox: Sandbox, images: dict[str, str]) -> None:
    sandbox.create_network()
    instance = sandbox.instance("head")
    watching = started(
        agent_cmd("head", "--data-dir", str(sandbox.tmp / "h"), "--instance", instance,
                  "--network", sandbox.network, "--ray-image", images["ray"],
                  "--shm-size", "512mb", "--nofile", NOFILE, "--watch"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=agent_env({"PYTHONUNBUFFERED": "1"}))
    name = f"ray-head-{instance}"
    with watching as proc:  # (killed with its process group at the end, pass or fail)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("watching"):
                break
        else:
            pytest.fail("the agent never started watching")

        def container_running() -> bool:
            try:
                return bool(sandbox.client.containers.get(name).status == "running")
            except docker.errors.NotFound:
                return False

        first = sandbox.client.containers.get(name).id
        sandbox.client.containers.get(name).remove(force=True)
        assert poll(container_running, 30, "recreated after removal")
        second = sandbox.client.containers.get(name).id
        assert second != first
        sandbox.client.containers.get(name).stop(timeout=1)
        assert poll(container_running, 30, "started after stop")
        sandbox.client.containers.get(name).kill("SIGKILL")
        assert poll(container_running, 30, "running after SIGKILL")
        assert sandbox.client.containers.get(name).id == second
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "healed: created" in out and "healed: started" in out
    assert out.endswith("stopped watching (SIGINT); the containers keep running\n"), out
