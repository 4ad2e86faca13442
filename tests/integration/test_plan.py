"""`syntho-agent plan ROLE` on the real engine: it says what the run would do, the run then does
exactly that, and the plan itself changes nothing.

"Nothing" is checked as equality of two snapshots taken around each plan: the engine's
(every container with its ID and state, every network, volume and image) and the data dir's
(every path with its mode and its content's SHA-256).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import docker

from tests.integration.agent_helpers import Node, engine_snapshot, ok
from tests.support.agent_cli import run_agent
from tests.support.ports import free_port
from tests.support.sandbox import Sandbox

# A tag another test process makes to push an image into its registry, and removes (the suite
# runs in shards at once): never the agent's doing.
PUSHING = re.compile(r"127\.0\.0\.1:\d+/")
Snapshot = tuple[frozenset[tuple[str, str, str]], dict[str, tuple[int, str]] | None]


def snapshot(client: docker.DockerClient, data_dir: Path) -> Snapshot:
    engine = engine_snapshot(client) | {("image", str(i["Id"]), ",".join(sorted(
        t for t in i.get("RepoTags") or [] if t != "<none>:<none>" and not PUSHING.match(t))))
        for i in client.api.images(all=True)}
    files = None
    if data_dir.exists():
        files = {str(p.relative_to(data_dir)): (
            p.stat().st_mode, hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "")
            for p in data_dir.rglob("*")}
        files["."] = (data_dir.stat().st_mode, "")
    return frozenset(engine), files


def plan(client: docker.DockerClient, data_dir: Path, *args: str,
         code: int = 0) -> str:
    """`syntho-agent plan ARGS --exit-code`, asserted to change nothing; its output."""
    before = snapshot(client, data_dir)
    done = run_agent("plan", *args, "--exit-code")
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert snapshot(client, data_dir) == before, done.stdout
    assert "nothing is changed by this command" in done.stdout
    return done.stdout


def changes(out: str) -> list[str]:
    """What a run reports having done to containers."""
    return [line for line in out.splitlines() if line.split(" ", 1)[0] in (
        "created", "recreated", "started", "removed")]


def test_the_head_plan_is_what_the_run_does(sandbox: Sandbox, images: dict[str, str]) -> None:
    sandbox.create_network()
    node = Node(sandbox, images, "head")
    name = f"ray-head-{node.instance}"

    # A fresh machine: everything would be made; the data dir is not even created.
    out = plan(sandbox.client, node.data_dir, "head", *node.args(), code=1)
    assert f"  create {name}: missing" in out
    assert "  create the data dir (mode 0700)" in out
    assert "  ray-token: generate it (a secret: value not shown)" in out
    redis = f"gcs-redis-{node.instance}"  # GCS fault tolerance, on by default
    assert f"  create {redis}: missing" in out
    assert "  gcs-redis-password: generate it (a secret: value not shown)" in out
    assert not node.data_dir.exists()
    assert changes(ok(node.run("head"))) == [
        f"created volume syntho-gcs-redis-data-{node.instance}", f"created {redis}",
        f"created {name}"]
    token = node.token_file.read_text().strip()

    out = plan(sandbox.client, node.data_dir, "head", *node.args())
    assert f"  leave {name} alone (up to date)" in out and "nothing would change" in out

    # A secret file gone: the plan restores it from the container, in words only.
    aside = node.data_dir.parent / "ray-token.aside"
    node.token_file.rename(aside)
    out = plan(sandbox.client, node.data_dir, "head", *node.args(), code=1)
    assert f"  ray-token: restore it from the container {name} (a secret: value not shown)" \
        in out
    assert f"  leave {name} alone (up to date)" in out and not node.token_file.exists()
    aside.rename(node.token_file)

    # A changed option: the plan names the container and the field; the run does just that.
    out = plan(sandbox.client, node.data_dir, "head", *node.args(), "--shm-size", "1gb",
               code=1)
    assert f"  recreate {name}: configuration changed: shm_size" in out
    assert "files in" not in out  # no file would change
    assert token not in out
    done = ok(node.run("head", "--shm-size", "1gb"))
    assert changes(done) == [f"recreated {name} (configuration changed: shm_size)"]
    assert node.container("ray-head").attrs["HostConfig"]["ShmSize"] == 1024**3


def test_a_fresh_app_plan_lists_everything_and_makes_nothing(
        sandbox: Sandbox, images: dict[str, str]) -> None:
    instance = sandbox.instance("app")
    data_dir = sandbox.tmp / "app"
    registry = f"127.0.0.1:{free_port()}"
    missing = f"{registry}/syntho/core:absent"
    out = plan(sandbox.client, data_dir, "app", "--data-dir", str(data_dir), "--instance",
               instance, "--head", "127.0.0.1", "--no-auth", "--core-image", missing,
               "--backend-image", images["backend"], "--frontend-image", images["frontend"],
               "--postgres-image", images["postgres"], "--redis-image", images["redis"],
               "--frontend-port", str(free_port()), "--backend-port", str(free_port()),
               "--registry", registry, "--registry-user", "nobody", code=1)
    for service in ("postgres", "redis", "core", "core_worker", "backend", "worker",
                    "frontend"):
        assert f"  create syntho-{service}-{instance}: missing" in out
    assert f"network: create syntho-{instance}" in out
    assert f"volume: create syntho-database-data-{instance}" in out
    assert (f"  {missing} (for core) is not on this engine: the run would pull it from "
            f"{registry}") in out
    for secret in ("admin-password", "backend-secret-key", "core-secret-key",
                   "postgres-password"):
        assert f"  secrets/{secret}: generate it (a secret: value not shown)" in out
    assert "  app.env: write it" in out
    assert not data_dir.exists()
