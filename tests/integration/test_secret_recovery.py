"""A secret file that goes missing is recovered from the container that carries it, never
regenerated once anything depends on it; with nothing to recover it from, the run stops.

One deployment (head on the host network, a worker, the app) for the module; each test moves
a file away with the deployment running, or with its containers removed and the database
volume kept.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import docker
import pytest

from agent import cluster
from tests.integration.agent_helpers import App, HeadVM, engine_snapshot, ok
from tests.support.agent_cli import run_agent
from tests.support.constants import NOFILE

pytestmark = pytest.mark.integration

APP_SECRETS = ("postgres-password", "core-secret-key", "backend-secret-key", "admin-password")


def container_ids(client: docker.DockerClient, instance: str) -> dict[str, tuple[str, str]]:
    """Every container of an agent instance: name -> (ID, StartedAt)."""
    found = client.containers.list(all=True, filters={
        "label": f"io.syntho.agent.instance={instance}"})
    return {str(c.name): (str(c.id), str(c.attrs["State"]["StartedAt"])) for c in found}


def moved_away(path: Path) -> tuple[Path, str]:
    """Move path aside (as an operator's mistake would); its content, to compare."""
    content = path.read_text()
    aside = path.with_name(path.name + ".aside")
    shutil.move(path, aside)
    return aside, content


def head_run(head_vm: HeadVM) -> str:
    """The head role again, with the arguments the fixture made it with."""
    return ok(run_agent("head", "--data-dir", str(head_vm.data_dir), "--instance",
                        head_vm.instance, "--ray-image", head_vm.ray_image, "--shm-size", "1gb",
                        "--nofile", NOFILE))


def assert_restored(path: Path, content: str, out: str) -> None:
    assert f"restored {path}" in out, out
    assert path.read_text() == content
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "generated" not in out, out


def test_the_heads_token_is_restored_and_the_worker_stays_joined(
        stack: App, head_vm: HeadVM) -> None:
    client = stack.sandbox.client
    path = head_vm.data_dir / "ray-token"
    before = container_ids(client, head_vm.instance)
    nodes = len(cluster.alive_nodes("127.0.0.1", head_vm.token))
    aside, content = moved_away(path)
    out = head_run(head_vm)
    assert_restored(path, content, out)
    assert "nothing to do" in out
    assert container_ids(client, head_vm.instance) == before  # not recreated, not restarted
    assert len(cluster.alive_nodes("127.0.0.1", head_vm.token)) == nodes == 2
    aside.unlink()


@pytest.mark.parametrize("name", [*APP_SECRETS, "ray-token"])
def test_an_app_secret_is_restored_from_its_container(stack: App, name: str) -> None:
    path = stack.data_dir / ("ray-token" if name == "ray-token" else f"secrets/{name}")
    before = container_ids(stack.sandbox.client, stack.instance)
    aside, content = moved_away(path)
    # The app's token comes from the head's file in the fixture: without it, only the
    # container has it.
    args = [a for a in stack.args() if a != "--token-file" and
            a != str(stack.head.data_dir / "ray-token")] if name == "ray-token" else []
    out = ok(run_agent("app", *args)) if args else ok(stack.run())
    assert_restored(path, content, out)
    assert "nothing to do" in out
    assert container_ids(stack.sandbox.client, stack.instance) == before
    aside.unlink()


def test_a_missing_secret_with_no_container_but_the_volume_is_refused(stack: App) -> None:
    """Containers gone (down keeps the volume), a secret gone: no new value is made, nothing
    changes; the file put back, the app converges again with its data."""
    ok(stack.cmd("down"))
    for name in APP_SECRETS:
        path = stack.data_dir / "secrets" / name
        aside, content = moved_away(path)
        secrets_before = sorted(p.name for p in (stack.data_dir / "secrets").iterdir())
        snapshot = engine_snapshot(stack.sandbox.client)
        result = stack.run()
        assert result.returncode == 3, (name, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1 and str(path) in result.stderr, result.stderr
        assert "backup" in result.stderr
        assert not path.exists()
        assert sorted(p.name for p in (stack.data_dir / "secrets").iterdir()) == secrets_before
        assert engine_snapshot(stack.sandbox.client) == snapshot
        shutil.move(aside, path)
        assert path.read_text() == content
    out = ok(stack.run())
    assert "the app is up" in out and "generated" not in out
