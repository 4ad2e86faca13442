"""A head that restarts without taking the cluster down: GCS fault tolerance on the real engine.

The head runs on the host's network, as on its VM, with its GCS Redis (`--gcs-ft`); two
workers on a Docker network join it at the address Ray advertises. A detached actor lives on
a worker. The head's container is restarted (`docker restart`, then SIGKILL of its main
process, which the engine's restart policy answers): the workers' raylets keep their PIDs and
the actor answers, with its count, afterwards. Then the same with `--no-gcs-ft`, which
documents Ray's default: the workers' Ray restarts and the actor is gone. The tests run in
order on one module-wide cluster.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from agent import cluster
from agent.waits import poll
from tests.integration.agent_helpers import ok
from tests.support.agent_cli import run_agent
from tests.support.constants import NOFILE
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

GCS_REDIS_PORT = "6386"
# A driver in a throw-away container of the Ray image: creates the detached actor (or finds
# it, so that a driver that failed half-way can be run again), or asks it to count once more
# (Ray client, token auth from the environment).
DRIVER = """
import sys, ray
ray.init(address=f"ray://{sys.argv[1]}:10001", namespace="gcs-ft-test")
@ray.remote(num_cpus=1)
class Counter:
    def __init__(self):
        self.n = 0
    def incr(self):
        self.n += 1
        return self.n
if sys.argv[2] == "create":
    counter = Counter.options(name="counter", lifetime="detached", get_if_exists=True).remote()
else:
    try:
        counter = ray.get_actor("counter")
    except Exception:  # connected to the cluster, and it has no such actor
        sys.exit(3)
print("COUNT", ray.get(counter.incr.remote(), timeout=60))
"""
NO_ACTOR = 3  # the driver's exit code when it connected and found no actor


@dataclass
class Cluster:
    sandbox: Sandbox
    images: dict[str, str]
    head_dir: Path
    head_instance: str
    head_ip: str
    token: str
    workers: list[str]
    last_error: str = ""
    last_exit: int = 0  # the last driver's exit code

    def head(self, *more: str) -> str:
        return ok(run_agent("head", "--data-dir", str(self.head_dir), "--instance",
                            self.head_instance, "--ray-image", self.images["ray"],
                            "--gcs-redis-image", self.images["redis"], "--shm-size", "1gb",
                            "--nofile", NOFILE, "--ray-arg=--num-cpus=0", "--gcs-ft",
                            # Plain: its workers run on a Docker network of this engine (two
                            # VMs' stand-ins), where Ray cannot speak TLS (test_ray_tls's).
                            "--no-ray-tls", *more))

    def head_container(self) -> docker.models.containers.Container:
        return self.sandbox.client.containers.get(f"ray-head-{self.head_instance}")

    def count(self, mode: str = "incr") -> int | None:
        """The actor's count after one more increment; None when the driver fails."""
        out = self.sandbox.client.containers.run(
            self.images["ray"], ["python3", "-c", DRIVER, self.head_ip, mode],
            network=self.sandbox.network, remove=True, stdout=True, stderr=True,
            environment={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token},
            labels=self.sandbox.labels)
        found = [line for line in out.decode().splitlines() if line.startswith("COUNT ")]
        return int(found[-1].split()[1]) if found else None

    def try_count(self, mode: str = "incr") -> int | None:
        self.last_exit = 0
        try:
            return self.count(mode)
        except docker.errors.ContainerError as exc:
            self.last_exit = exc.exit_status
            self.last_error = (exc.stderr or b"").decode(errors="replace")[-1500:]
            return None

    def answer(self, mode: str = "incr", timeout: float = 180) -> int:
        """The actor's next count (`mode` create: made first), asked until it answers (the
        cluster may be settling: Ray's client server starts a server per driver, which fails
        while the head is coming up)."""
        found: list[int] = []

        def asked() -> bool:
            value = self.try_count(mode)
            if value is not None:
                found.append(value)
            return bool(found)

        poll(asked, timeout, "the actor")
        assert found, f"the actor never answered; the last driver said:\n{self.last_error}\n" \
                      f"the head's client server logs:\n{self.client_server_logs()}"
        return found[0]

    def actor_gone(self, timeout: float = 180) -> bool:
        """Whether a driver that connects finds no actor (True) or the actor answers (False),
        asked until one of the two (a driver fails otherwise while the head is settling)."""
        seen: list[bool] = []

        def decided() -> bool:
            if self.try_count() is not None:
                seen.append(False)
            elif self.last_exit == NO_ACTOR:
                seen.append(True)
            return bool(seen)

        poll(decided, timeout, "a driver's answer")
        assert seen, f"no driver connected; the last said:\n{self.last_error}"
        return seen[0]

    def client_server_logs(self) -> str:
        _, out = self.head_container().exec_run(
            ["sh", "-c", "tail -n 15 /tmp/ray/session_latest/logs/ray_client_server*.err"])
        return str(out.decode(errors="replace"))[-4000:]

    def raylet_pids(self) -> dict[str, str]:
        """Each worker's raylet, by its host PID."""
        found = {}
        for name in self.workers:
            top = self.sandbox.client.containers.get(name).top(ps_args="-eo pid,args")
            pids = [p[0] for p in top["Processes"] if "raylet" in " ".join(p[1:])
                    and "/raylet" in " ".join(p[1:])]
            found[name] = pids[0] if pids else ""
        return found

    def alive(self) -> int:
        return len(cluster.alive_nodes("127.0.0.1", self.token))


@pytest.fixture(scope="module")
def ray_cluster(docker_client: docker.DockerClient, images: dict[str, str],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("gcs")
    with Sandbox(docker_client, tmp) as box:
        box.create_network()
        head_dir, instance = tmp / "head", box.instance("head")
        c = Cluster(box, images, head_dir, instance, "", "", [])
        out = c.head()
        assert "generated the GCS Redis password" in out
        c.token = (head_dir / "ray-token").read_text().strip()
        c.head_ip = next(str(n["node_ip"]) for n in cluster.alive_nodes("127.0.0.1", c.token)
                         if n.get("is_head_node"))
        for name in ("w1", "w2"):
            worker = box.instance(name)
            ok(run_agent("worker", "--data-dir", str(tmp / name), "--instance", worker,
                         "--network", box.network, "--head", c.head_ip, "--ray-image",
                         images["ray"], "--token-file", str(head_dir / "ray-token"),
                         "--shm-size", "512mb", "--nofile", NOFILE, "--ray-arg=--num-cpus=1"))
            c.workers.append(f"ray-worker-{worker}")
        assert poll(lambda: c.alive() == 3, 60, "3 nodes"), "the cluster has 3 nodes"
        yield c


def test_the_gcs_redis_is_loopback_only_with_a_password(ray_cluster: Cluster) -> None:
    c = ray_cluster
    redis = c.sandbox.client.containers.get(f"gcs-redis-{c.head_instance}")
    assert redis.attrs["HostConfig"]["NetworkMode"] == "host"
    path = c.head_dir / "gcs-redis-password"
    assert path.stat().st_mode & 0o777 == 0o600
    password = path.read_text().strip()
    for container in (redis, c.head_container()):  # on no command line the engine records
        config = container.attrs["Config"]
        assert password not in " ".join([*(config["Entrypoint"] or []), *config["Cmd"]])

    def reply(host: str, command: bytes) -> bytes:
        with socket.create_connection((host, int(GCS_REDIS_PORT)), timeout=3) as s:
            s.sendall(command)
            return s.recv(200)

    assert reply("127.0.0.1", b"PING\r\n").startswith(b"-NOAUTH")
    assert reply("127.0.0.1", b"AUTH not-the-password\r\n").startswith(b"-WRONGPASS")
    assert reply("127.0.0.1", b"AUTH " + password.encode() + b"\r\nPING\r\n").startswith(b"+OK")
    # From another machine: a container on a Docker network reaches the head's VM at the
    # address Ray advertises; the Redis does not listen there.
    probe = c.sandbox.client.containers.run(
        c.images["ray"], ["python3", "-c", "import socket,sys; socket.create_connection("
                          f"('{c.head_ip}', {GCS_REDIS_PORT}), timeout=3)"],
        network=c.sandbox.network, remove=False, detach=True, labels=c.sandbox.labels)
    assert probe.wait(timeout=30)["StatusCode"] != 0, "the GCS Redis answers off loopback"
    probe.remove(force=True)


def _survives(c: Cluster, fault: str) -> None:
    before = c.raylet_pids()
    assert all(before.values()), before
    counted = c.answer()  # Ray's client server may still be settling from the last fault
    assert counted is not None
    head = c.head_container()
    if fault == "restart":
        head.restart(timeout=10)
    else:  # SIGKILL of the container's main process: the engine's restart policy starts it
        head.reload()
        started = head.attrs["State"]["StartedAt"]
        os.kill(int(head.attrs["State"]["Pid"]), signal.SIGKILL)
        assert poll(lambda: _restarted(head, started), 60, "the head restarted")
    assert poll(lambda: c.alive() == 3, 90, "3 nodes again"), "3 nodes within the timeout"
    # The actor answers with its count carried on: its worker's Ray never stopped.
    after = c.answer()
    assert after is not None and after > counted, "the detached actor answers after the restart"
    assert c.raylet_pids() == before, "the workers' raylets kept their PIDs"


def _restarted(head: docker.models.containers.Container, started: str) -> bool:
    head.reload()
    return bool(head.status == "running" and head.attrs["State"]["StartedAt"] != started)


def test_a_detached_actor_outlives_restarts_of_the_head(ray_cluster: Cluster) -> None:
    c = ray_cluster
    assert c.answer("create") >= 1
    _survives(c, "restart")
    _survives(c, "sigkill")


def test_the_cluster_survives_a_restart_of_the_gcs_redis(ray_cluster: Cluster) -> None:
    c = ray_cluster
    before = c.answer()
    assert before is not None
    c.sandbox.client.containers.get(f"gcs-redis-{c.head_instance}").restart(timeout=10)
    assert poll(lambda: c.alive() == 3, 90, "3 nodes"), "3 nodes after the Redis restarted"
    after = c.answer()
    assert after is not None and after > before, "the cluster kept its state"


def test_without_gcs_ft_the_workers_ray_restarts_and_the_actor_is_gone(
        ray_cluster: Cluster) -> None:
    """Ray's default, documented: the GCS keeps its state in memory."""
    c = ray_cluster
    out = c.head("--no-gcs-ft")
    assert f"removed gcs-redis-{c.head_instance}" in out
    assert poll(lambda: c.alive() == 3, 120, "3 nodes"), "the workers rejoined the new head"
    before = c.raylet_pids()
    c.answer("create")  # a new detached actor on this head (its client server may be starting)
    c.head_container().restart(timeout=10)
    assert poll(lambda: c.alive() == 3, 120, "3 nodes"), "the workers rejoin (their Ray restarts)"
    assert c.raylet_pids() != before, "the workers' Ray restarted with the head"
    assert c.actor_gone(), "the detached actor is gone with the head's state"
