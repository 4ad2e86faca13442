"""Releases on the real engine, from a real registry with htpasswd auth: upgrades that pull,
the health gate with its automatic rollback, history and `rollback`, Ray version coherence,
and a worker that follows the head's release.

One module-wide registry holds releases A and B of the test images, Bx (B whose core never
turns healthy) and R (a Ray image that claims another Ray version); a head runs release A.
The tests run in order: each starts from the state the previous one left (as an operator's
days follow each other)."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from agent import cluster
from agent.waits import poll
from tests.integration.agent_helpers import ok
from tests.support import reads
from tests.support.agent_cli import agent_cmd, agent_env, run_agent
from tests.support.constants import AGENT_INSTANCE_LABEL, NOFILE, REPO
from tests.support.engine_calls import CallCounter, counting_engine
from tests.support.ports import free_port
from tests.support.processes import started
from tests.support.releases import (
    PASSWORD,
    RELEASE_LABEL,
    USER,
    ReleaseRegistry,
    health_version,
    remove_local,
    retag_and_push,
)
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

SERVICES = ("core", "core_worker", "backend", "worker", "frontend")


@dataclass
class Deployment:
    sandbox: Sandbox
    registry: str
    releases: dict[str, dict[str, str]]
    head_dir: Path
    head_instance: str
    app_dir: Path
    app_instance: str
    frontend_port: int
    backend_port: int

    def registry_args(self) -> list[str]:
        return ["--registry", self.registry, "--registry-user", USER]

    def app(self, *more: str, registry: bool = True,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
        rel = self.releases["A"]
        return run_agent("app", *self.app_common(), *(self.registry_args() if registry else []),
                         "--postgres-image", rel["postgres"], "--redis-image", rel["redis"],
                         *more, env={"SYNTHO_AGENT_REGISTRY_PASSWORD": PASSWORD},
                         timeout=timeout)

    def app_common(self) -> list[str]:
        return ["--data-dir", str(self.app_dir), "--instance", self.app_instance,
                "--head", "127.0.0.1", "--token-file", str(self.head_dir / "ray-token"),
                "--frontend-port", str(self.frontend_port),
                "--backend-port", str(self.backend_port), "--ready-timeout", "120"]

    def rollback(self, *more: str, registry: bool = False) -> subprocess.CompletedProcess[str]:
        return run_agent("rollback", "app", *more, *self.app_common(),
                         *(self.registry_args() if registry else []),
                         env={"SYNTHO_AGENT_REGISTRY_PASSWORD": PASSWORD}, timeout=900)

    def app_in_process(self, *more: str) -> tuple[CallCounter, str]:
        """One app run of the CLI inside this process, its engine client counted."""
        from agent import cli

        rel = self.releases["A"]
        with counting_engine() as counters, contextlib.redirect_stdout(io.StringIO()) as out:
            cli.main(["app", *self.app_common(), *self.registry_args(), "--postgres-image",
                      rel["postgres"], "--redis-image", rel["redis"], *more])
        return counters[0], out.getvalue()

    def container(self, service: str) -> docker.models.containers.Container:
        return self.sandbox.client.containers.get(f"syntho-{service}-{self.app_instance}")

    def running_release(self) -> set[str]:
        """The release label of every versioned app container's image."""
        found = set()
        for service in SERVICES:
            c = self.container(service)
            assert c.status == "running", (service, c.status)
            found.add(c.image.labels.get(RELEASE_LABEL, "?"))
        return found

    def history(self) -> list[dict[str, object]]:
        out = ok(run_agent("history", "--data-dir", str(self.app_dir), "--json"))
        return list(json.loads(out)["releases"])

    def psql(self, sql: str) -> str:
        code, out = reads.psql(self.container("postgres"), "syntho-backend", sql)
        assert code == 0, out
        return out

    def leftovers(self) -> list[str]:
        """Containers of the app that are not one of its services' (kept or replaced)."""
        names = {f"syntho-{s}-{self.app_instance}"
                 for s in (*SERVICES, "postgres", "redis", "ray-relay")}
        return [c.name or "" for c in self.sandbox.client.containers.list(
            all=True, filters={"label": f"{AGENT_INSTANCE_LABEL}={self.app_instance}"})
            if c.name not in names]

    def head_ip(self) -> str:
        """The address Ray advertises for the head (on the host's network, as on its VM)."""
        token = (self.head_dir / "ray-token").read_text().strip()
        return next(str(n["node_ip"]) for n in cluster.alive_nodes("127.0.0.1", token)
                    if n.get("is_head_node"))

    def frontend_version(self) -> str:
        return health_version(f"http://127.0.0.1:{self.frontend_port}/")


@contextlib.contextmanager
def release_lab(shared: ReleaseRegistry, tmp: Path,
                releases: dict[str, dict[str, Any]]) -> Iterator[Deployment]:
    """The run's release registry with these releases (tag -> make_release's options), a head
    on A, and the app's place (not started); the deployment removed afterwards."""
    with Sandbox(shared.client, tmp) as box:
        refs = {tag: shared.release(tag, **options) for tag, options in releases.items()}
        head_dir, head_instance = tmp / "head", box.instance("head")
        # Plain (--no-ray-tls): a following worker runs on a Docker network of this engine,
        # where Ray cannot speak TLS (test_ray_tls's); later runs keep it (no ray-tls folder).
        ok(run_agent("head", "--data-dir", str(head_dir), "--instance", head_instance,
                     "--registry", shared.registry, "--registry-user", USER, "--release", "A",
                     "--shm-size", "1gb", "--nofile", NOFILE, "--no-ray-tls",
                     env={"SYNTHO_AGENT_REGISTRY_PASSWORD": PASSWORD}))
        yield Deployment(box, shared.registry, refs, head_dir, head_instance, tmp / "app",
                         box.instance("app"), free_port(), free_port())


@pytest.fixture(scope="module")
def deployment(release_registry: ReleaseRegistry,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with release_lab(release_registry, tmp_path_factory.mktemp("releases"), {
            "A": {}, "B": {}, "Bx": {"broken": frozenset({"core"})},
            "R": {"ray_version": "2.59.9"}}) as d:
        yield d


def test_upgrade_pulls_keeps_the_data_and_records_history(deployment: Deployment) -> None:
    d = deployment
    out = ok(d.app("--release", "A"))
    assert "the app is up" in out
    assert d.running_release() == {"A"} and d.frontend_version() == "A"
    d.psql("CREATE TABLE kept (x text); INSERT INTO kept VALUES ('before the upgrade')")

    out = ok(d.app("--release", "B", "--pull", "always"))
    assert d.running_release() == {"B"} and d.frontend_version() == "B"
    assert d.psql("SELECT x FROM kept") == "before the upgrade"
    assert "backing up the databases first" in out
    assert d.leftovers() == [], "the kept containers go once B is healthy"
    history = d.history()
    assert [(r["name"], r["state"]) for r in history[:2]] == [("B", "healthy"), ("A", "healthy")]
    assert Path(str(history[0]["backup"])).is_file(), "the backup before the schema moves"
    core = history[0]["images"]["core"]  # type: ignore[index]
    assert core["ref"] == d.releases["B"]["core"] and core["digests"], core


def test_pull_always_with_nothing_changed_changes_nothing(deployment: Deployment,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    d = deployment
    before = {s: d.container(s).id for s in SERVICES}
    monkeypatch.setenv("SYNTHO_AGENT_REGISTRY_PASSWORD", PASSWORD)
    calls, out = d.app_in_process("--release", "B", "--pull", "always")
    assert "--pull always: 0 of 5 image(s) changed in the registry" in out, out
    assert "nothing to do" in out
    assert {s: d.container(s).id for s in SERVICES} == before
    made = {k: n for k, n in calls.counts.items()
            if k in ("POST /containers/create", "POST /images/create")}
    assert made == {}, calls.counts
    # One question to the registry per reference, through the engine.
    asked = sum(n for k, n in calls.counts.items() if k.startswith("GET /distribution/"))
    assert asked == 5, calls.counts
    assert d.history()[0]["name"] == "B" and len(d.history()) == 2, "no new record"


def test_a_broken_release_goes_back_as_a_whole(deployment: Deployment) -> None:
    d = deployment
    done = d.app("--release", "Bx", "--ready-timeout", "25")
    assert done.returncode == 4, done.stdout + done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert "release Bx failed and the app went back to release B" in error, error
    assert f"syntho-core-{d.app_instance} is " in error and "503" in error, error
    assert error.index("syntho-core-") < error.index("syntho-backend-"), "where it broke first"
    assert "syntho-agent restore" in error, "the schema may have moved: the restore is offered"
    assert d.running_release() == {"B"} and d.frontend_version() == "B"
    assert d.psql("SELECT x FROM kept") == "before the upgrade"
    assert d.leftovers() == []
    states = [(r["name"], r["state"]) for r in d.history()[:3]]
    assert states == [("B", "healthy"), ("Bx", "failed"), ("B", "healthy")], states

    # A later run with the same failed release (a reboot, a restarted unit) keeps B.
    out = ok(d.app("--release", "Bx", "--ready-timeout", "25"))
    assert "--retry-failed" in out and d.running_release() == {"B"}


def test_rollback_without_a_registry_then_to_images_gone(deployment: Deployment,
                                                         docker_client: docker.DockerClient
                                                         ) -> None:
    d = deployment
    out = ok(d.rollback())  # B -> A: A's images are on the engine, no registry given
    assert "pulling" not in out and "going back from release B to release A" in out
    assert "syntho-agent restore" in out, "B moved the schema: the restore is offered"
    assert d.running_release() == {"A"} and d.frontend_version() == "A"
    assert d.psql("SELECT x FROM kept") == "before the upgrade"
    newest = d.history()[0]
    assert (newest["name"], newest["state"]) == ("A", "healthy")
    assert "rollback from release B" in str(newest["reason"])

    # B's images gone from the engine (every tag of them: an identical build elsewhere on this
    # engine shares their IDs): without a registry, one line says how to get them.
    for key in ("core", "backend", "frontend"):
        docker_client.images.remove(docker_client.images.get(d.releases["B"][key]).id,
                                    force=True)
    done = d.rollback("B")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "is no longer on this engine" in done.stderr and "--registry" in done.stderr
    assert d.running_release() == {"A"}
    # With the registry, they are pulled (by digest) and B runs again.
    out = ok(d.rollback("B", registry=True))
    assert "pulling" in out and d.running_release() == {"B"}


def test_a_worker_with_another_ray_is_refused(deployment: Deployment) -> None:
    d = deployment
    done = run_agent("worker", "--data-dir", str(d.sandbox.tmp / "w-wrong"), "--instance",
                     d.sandbox.instance("w-wrong"), "--head", "127.0.0.1", "--token-file",
                     str(d.head_dir / "ray-token"), "--ray-image", d.releases["R"]["ray"],
                     "--registry", d.registry, "--registry-user", USER, "--nofile", NOFILE,
                     "--shm-size", "512mb", env={"SYNTHO_AGENT_REGISTRY_PASSWORD": PASSWORD})
    assert done.returncode == 3, done.stdout + done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "Ray 2.59.9" in line and "Ray 2.60.0" in line and "--release" in line, line
    names = [c.name for c in d.sandbox.client.containers.list(all=True, ignore_removed=True)]
    assert f"ray-worker-{d.sandbox.instance('w-wrong')}" not in names


def test_a_moving_tag_is_picked_up_by_pull_always_only(deployment: Deployment,
                                                       docker_client: docker.DockerClient
                                                       ) -> None:
    """`latest` re-pushed: `--pull missing` keeps what it runs, `--pull always` moves."""
    d = deployment
    auth = {"username": USER, "password": PASSWORD}
    moving = f"{d.registry}/syntho-ray:moving"
    retag_and_push(docker_client, d.releases["A"]["ray"], moving, auth)
    instance = d.sandbox.instance("w-moving")
    name = f"ray-worker-{instance}"
    head = d.head_ip()

    def worker(*more: str) -> str:
        return ok(run_agent("worker", "--data-dir", str(d.sandbox.tmp / "w-moving"),
                            "--instance", instance, "--head", head, "--token-file",
                            str(d.head_dir / "ray-token"), "--ray-image", moving, "--registry",
                            d.registry, "--registry-user", USER, "--nofile", NOFILE,
                            "--shm-size", "512mb", "--ray-arg=--num-cpus=0", *more,
                            env={"SYNTHO_AGENT_REGISTRY_PASSWORD": PASSWORD}))

    def running() -> tuple[str, str]:
        c = d.sandbox.client.containers.get(name)
        return str(c.id), str(c.image.labels.get(RELEASE_LABEL))

    worker()
    first = running()
    assert first[1] == "A"
    retag_and_push(docker_client, d.releases["B"]["ray"], moving, auth)  # the tag moves...
    # ...in the registry only: this engine's tag stays on A, as on a VM that pulled it before.
    docker_client.images.get(d.releases["A"]["ray"]).tag(moving.rsplit(":", 1)[0], "moving")
    out = worker("--pull", "missing")
    assert "nothing to do" in out and running() == first, "missing: what it has is enough"
    out = worker("--pull", "always")
    assert "--pull always: 1 of 1 image(s) changed in the registry" in out, out
    assert running()[1] == "B" and running()[0] != first[0]
    d.sandbox.client.containers.get(name).remove(force=True)
    remove_local(docker_client, [moving])  # this engine's copy of the tag


def test_a_watching_worker_follows_the_head_to_a_new_release(deployment: Deployment) -> None:
    d = deployment
    instance = d.sandbox.instance("w-follow")
    token = (d.head_dir / "ray-token").read_text().strip()
    # The head runs on the host's network: a worker on a Docker network reaches it at the
    # address Ray advertises for it.
    head_ip = d.head_ip()
    with started(
        agent_cmd("worker", "--data-dir", str(d.sandbox.tmp / "w-follow"), "--instance",
                  instance, "--head", head_ip, "--token-file", str(d.head_dir / "ray-token"),
                  "--network", d.sandbox.create_network(), "--registry", d.registry,
                  "--registry-user", USER, "--nofile", NOFILE, "--shm-size", "512mb",
                  "--watch"),
        cwd=REPO, env=agent_env({"SYNTHO_AGENT_REGISTRY_PASSWORD": PASSWORD}),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as watcher:
        # (its process group killed at the end of the block, however it ends)
        try:
            name = f"ray-worker-{instance}"

            def runs(tag: str) -> bool:
                try:
                    c = d.sandbox.client.containers.get(name)
                except docker.errors.NotFound:
                    return False
                alive = [n for n in cluster.alive_nodes("127.0.0.1", token)
                         if not n.get("is_head_node")]
                return c.image.labels.get(RELEASE_LABEL) == tag and c.status == "running" and \
                    len(alive) >= 1

            assert poll(lambda: runs("A"), 180, "the worker on A"), "the worker follows A"
            ok(run_agent("head", "--data-dir", str(d.head_dir), "--instance", d.head_instance,
                         "--registry", d.registry, "--registry-user", USER, "--release", "B",
                         "--shm-size", "1gb", "--nofile", NOFILE,
                         env={"SYNTHO_AGENT_REGISTRY_PASSWORD": PASSWORD}))
            assert poll(lambda: runs("B"), 180, "the worker on B"), \
                "the watching worker moved to the head's release B and rejoined"
        finally:
            watcher.send_signal(signal.SIGTERM)
            try:
                output, _ = watcher.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                watcher.kill()
                output, _ = watcher.communicate()
    assert "following it" in output, output[-3000:]
