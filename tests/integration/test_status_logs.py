"""`status` (its --json schema, the Ray cluster as each VM sees it) and `logs` (follow,
--service, --tail, --since, -o -) on the real engine, against a real Ray head and worker.

One engine stands for three VMs: the head, a worker (each its own --instance, on one Docker
network), and an app VM. The app side of `status` reads only its containers' labels and the
Ray address and token in their environment, so a busybox container that carries them stands
in for the app's core (the 7-container stack would add a minute and nothing to these checks).
"""

from __future__ import annotations

import contextlib
import json
import queue
import secrets
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker.models.containers
import pytest

from agent import __version__
from agent.spec import LABEL_INSTANCE, LABEL_MANAGED, LABEL_ROLE, LABEL_SERVICE
from agent.waits import poll
from tests.integration.agent_helpers import Node, ip_on, ok
from tests.support.agent_cli import agent_cmd, agent_env
from tests.support.constants import REPO
from tests.support.processes import kill_group, spawn
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

# The keys README "status --json" documents (schema 1).
TOP = {"schema", "instance", "roles", "ready", "not_ready", "containers", "ray", "releases",
       "https", "leftovers", "ray_tls", "disk", "agent"}
FILESYSTEM = {"what", "path", "free_bytes", "used_share", "level"}
CONTAINER = {"name", "role", "service", "image", "image_id", "state", "health", "started_at",
             "uptime_seconds", "restart_count", "ports", "ready"}
HEAD = {"address", "answers", "error", "alive", "nodes", "publishes"}
NODE = {"node_ip", "node_id", "head", "state", "cpus"}
WORKER = {"head", "node_ip", "answers", "error", "joined"}
APP = {"head", "answers", "error", "alive", "head_runs"}


@dataclass
class Cluster:
    box: Sandbox
    head: Node  # instance: the head VM, and the app's stand-in core (role app) beside it
    worker: Node
    head_ip: str
    token: str
    file_secret: str  # a value only the head's data dir holds (secrets/), in no container
    core: docker.models.containers.Container


def stand_in(box: Sandbox, image: str, instance: str, role: str, service: str,
             env: dict[str, str], command: list[str],
             **kw: Any) -> docker.models.containers.Container:
    """A busybox container labelled as the agent labels one of its own."""
    labels = {**box.labels, LABEL_MANAGED: "true", LABEL_INSTANCE: instance, LABEL_ROLE: role,
              LABEL_SERVICE: service}
    container: docker.models.containers.Container = box.client.containers.run(
        image, command, name=f"{service}-{instance}", labels=labels,
        environment=env, network=box.network, detach=True, **kw)
    return container


@pytest.fixture(scope="module")
def cluster(module_sandbox: Sandbox, images: dict[str, str]) -> Cluster:
    box = module_sandbox
    box.create_network()
    head = Node(box, images, "head")
    ok(head.run("head"))
    head_ip = ip_on(head.container("ray-head"), box.network)
    token = head.token_file.read_text().strip()
    worker = Node(box, images, "w1")
    ok(worker.run("worker", "--head", head_ip, "--token-file", str(head.token_file)))
    file_secret = secrets.token_hex(12)
    (head.data_dir / "secrets").mkdir(mode=0o700)
    (head.data_dir / "secrets" / "extra").write_text(file_secret + "\n")
    # Exits once, then runs: the engine restarts it (restart count 1), three lines each start.
    core = stand_in(
        box, images["busybox"], head.instance, "app", "core",
        {"RAY_ADDRESS": head_ip, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
        ["sh", "-c", "for i in 1 2 3; do echo core line $i; done; "
         "if [ ! -e /tmp/once ]; then touch /tmp/once; exit 1; fi; exec sleep 3600"],
        restart_policy={"Name": "on-failure"})

    def restarted_and_running() -> bool:
        core.reload()
        return bool(core.status == "running" and core.attrs["RestartCount"] == 1)

    assert poll(restarted_and_running, 30, "the stand-in core restarted once")
    return Cluster(box, head, worker, head_ip, token, file_secret, core)


def status_json(node: Node) -> tuple[int, dict[str, Any]]:
    done = node.cmd("status", "--json")
    assert done.stderr == "", done.stderr
    return done.returncode, json.loads(done.stdout)


def test_status_json_holds_the_documented_keys_with_real_values(
        cluster: Cluster, images: dict[str, str]) -> None:
    code, report = status_json(cluster.head)
    assert code == 0, report["not_ready"]
    assert set(report) == TOP
    assert report["schema"] == 1 and report["instance"] == cluster.head.instance
    assert report["agent"]["version"] == __version__ and set(report["agent"]) == {
        "version", "commit", "installed"}
    assert report["roles"] == ["head", "app"]
    assert report["ready"] is True and report["not_ready"] == []
    by_service = {c["service"]: c for c in report["containers"]}
    assert set(by_service) == {"gcs-redis", "ray-head", "core"}  # GCS FT: on by default
    for c in report["containers"]:
        assert set(c) == CONTAINER
        engine = cluster.box.client.containers.get(c["name"])
        assert c["image_id"] == engine.attrs["Image"] and c["image_id"].startswith("sha256:")
        assert c["started_at"] == engine.attrs["State"]["StartedAt"]
        assert c["state"] == "running" and c["ready"] is True
        # the uptime agrees with started-at (to the second the report took)
        assert 0 <= c["uptime_seconds"] < 600
    head = by_service["ray-head"]
    assert head["role"] == "head" and head["image"] == images["ray"]
    assert head["restart_count"] == 0 and head["health"] is None
    gcs = by_service["gcs-redis"]
    assert gcs["role"] == "head" and gcs["health"] == "healthy"
    assert by_service["core"]["restart_count"] == 1
    assert by_service["core"]["image"] == images["busybox"]

    ray = report["ray"]
    assert set(ray) == {"head", "app"}
    assert set(ray["head"]) == HEAD
    assert ray["head"]["answers"] is True and ray["head"]["address"] == cluster.head_ip
    assert ray["head"]["alive"] == 2
    assert all(set(n) == NODE for n in ray["head"]["nodes"])
    assert [n["node_ip"] for n in ray["head"]["nodes"] if n["head"]] == [cluster.head_ip]
    assert set(ray["app"]) == APP
    published = {"image": images["ray"], "release": ""}  # what the head publishes (labels)
    assert ray["head"]["publishes"] == published
    assert ray["app"] == {"head": cluster.head_ip, "answers": True, "error": None, "alive": 2,
                          "head_runs": published}
    assert report["releases"]["head"]["state"] == "healthy"
    assert report["releases"]["head"]["name"] == images["ray"].rsplit(":", 1)[1]
    # Ray on a Docker network speaks plain, and says so; the disks, and what the role holds.
    assert report["ray_tls"]["encrypted"] is False and "NOT encrypted" in \
        report["ray_tls"]["advice"]
    disk = report["disk"]
    assert [fs["what"] for fs in disk["filesystems"]][-1] == "the data dir"
    assert all(set(fs) == FILESYSTEM and 0 < fs["used_share"] < 1 and fs["free_bytes"] > 0
               for fs in disk["filesystems"])
    assert disk["volumes"].get(f"syntho-gcs-redis-data-{cluster.head.instance}", -1) >= 0
    assert disk["writable_layers"].get(f"ray-head-{cluster.head.instance}", 0) > 0
    assert disk["backups"]["count"] == 0

    human = ok(cluster.head.cmd("status"))
    header = human.splitlines()[0].split()
    assert header == ["ROLE", "CONTAINER", "STATE", "HEALTH", "UPTIME", "RESTARTS", "IMAGE"]
    core_row = next(line.split() for line in human.splitlines() if "core-" in line)
    assert core_row[0] == "app" and core_row[5] == "1" and core_row[6] == images["busybox"]
    assert f"ray cluster at {cluster.head_ip}:6379: 2 node(s) alive" in human
    assert f"the app's ray cluster at {cluster.head_ip}:6379: 2 node(s) alive" in human
    assert cluster.token not in human + json.dumps(report)


def test_a_worker_vm_says_whether_the_head_lists_it_alive(
        cluster: Cluster, images: dict[str, str]) -> None:
    code, report = status_json(cluster.worker)
    assert code == 0, report["not_ready"]
    assert report["roles"] == ["worker"] and set(report["ray"]) == {"worker"}
    worker_ip = ip_on(cluster.worker.container("ray-worker"), cluster.box.network)
    published = {"image": images["ray"], "release": ""}
    assert report["ray"]["worker"] == {"head": cluster.head_ip, "node_ip": worker_ip,
                                       "answers": True, "error": None, "joined": True,
                                       "head_runs": published, "matches_head": True}
    human = ok(cluster.worker.cmd("status"))
    assert (f"ray worker {worker_ip}: joined the cluster at {cluster.head_ip}:6379 (the head "
            "lists it alive)") in human

    # A worker the head does not list (its container runs, but no Ray joined from it):
    # not ready, exit 1, and the human output says so.
    ghost = Node(cluster.box, {}, "ghost")
    stand_in(cluster.box, images["busybox"], ghost.instance, "worker", "ray-worker",
             {"RAY_AUTH_TOKEN": cluster.token},
             ["sh", "-c", "exec sleep 3600", "ray", f"--address={cluster.head_ip}:6379"])
    code, report = status_json(ghost)
    assert code == 1
    ghost_ip = ip_on(ghost.container("ray-worker"), cluster.box.network)
    assert report["ray"]["worker"] == {"head": cluster.head_ip, "node_ip": ghost_ip,
                                       "answers": True, "error": None, "joined": False,
                                       "head_runs": published, "matches_head": False}
    assert report["not_ready"] == ["ray worker: not listed alive by the head (not joined)"]
    done = ghost.cmd("status")
    assert done.returncode == 1
    assert (f"ray worker {ghost_ip}: NOT joined: the head at {cluster.head_ip} does not list "
            "it alive") in done.stdout


class Follower:
    """`logs -f` running: its output lines as they come (in a process group of its own, which
    the fixture kills)."""

    def __init__(self, *args: str) -> None:
        self.proc: subprocess.Popen[str] = spawn(
            agent_cmd("logs", "-f", *args), cwd=REPO, env=agent_env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def saw(self, text: str, timeout: float = 0.5) -> bool:
        """Whether a line holding text has come (waiting up to timeout for more lines)."""
        try:
            while not any(text in line for line in self.seen):
                self.seen.append(self.lines.get(timeout=timeout))
        except queue.Empty:
            return False
        return True

    def kill(self) -> None:
        """In a finally: the whole process group, if it still runs."""
        kill_group(self.proc)

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=30)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.proc.returncode, err


def say_in(container: docker.models.containers.Container, text: str) -> None:
    """A line in the container's log, written now (to its main process's standard output)."""
    code, out = container.exec_run(["sh", "-c", f"echo '{text}' > /proc/1/fd/1"])
    assert code == 0, out


@pytest.fixture
def follower(cluster: Cluster) -> Iterator[Follower]:
    """Following every container of the head VM, new lines only (--tail 0)."""
    f = Follower("--data-dir", str(cluster.head.data_dir), "--instance", cluster.head.instance,
                 "--tail", "0")
    try:
        yield f
    finally:
        f.kill()


def test_logs_follow_streams_new_lines_of_each_service_redacted(
        cluster: Cluster, follower: Follower) -> None:
    ray_head = cluster.head.container("ray-head")
    n = iter(range(1000))

    def arrives(container: docker.models.containers.Container, marker: str,
                more: str = "") -> bool:
        # written again at each look: a line written before the follower attached is not
        # followed (--tail 0), one written after it is
        say_in(container, f"{marker} {more}")
        return follower.saw(marker)

    secret_line = f"leaked {cluster.file_secret} and {cluster.token}"
    assert poll(lambda: arrives(cluster.core, f"core says {next(n)}", secret_line), 60,
                "a followed line of core")
    assert poll(lambda: arrives(ray_head, f"head says {next(n)}"), 30,
                "a followed line of ray-head")
    code, err = follower.stop()
    assert code == 0 and err == "stopped following (SIGINT)\n", err
    core_lines = [line for line in follower.seen if "core says" in line]
    # Names padded to the longest service's: gcs-redis (the head's GCS Redis), 9 characters.
    assert core_lines and all(line.startswith("core      | ") for line in core_lines)
    assert all("leaked *** and ***" in line for line in core_lines)
    assert any(line.startswith("ray-head  | ") and "head says" in line
               for line in follower.seen)
    text = "\n".join(follower.seen)
    assert cluster.file_secret not in text and cluster.token not in text
    assert "core line" not in text  # --tail 0: nothing from before


def test_logs_service_tail_since_and_standard_output(cluster: Cluster) -> None:
    node = cluster.head
    for i in (1, 2, 3):
        say_in(cluster.core, f"tail line {i}")
    assert poll(lambda: cluster.core.logs(tail=1).strip() == b"tail line 3", 30, "the log")
    out = ok(node.cmd("logs", "-o", "-", "--service", "core", "--tail", "2"))
    lines = out.splitlines()
    assert lines[0] == f"===== core-{node.instance} (running) ====="
    assert len(lines) == 3
    assert lines[1].endswith(" tail line 2") and lines[2].endswith(" tail line 3")
    assert not (REPO / "-").exists()
    # Both services by name, each with its last line; nothing since a time to come.
    both = ok(node.cmd("logs", "-o", "-", "--service", "core", "--service", "ray-head",
                       "--tail", "1")).splitlines()
    assert [line for line in both if line.startswith("=====")] == [
        f"===== ray-head-{node.instance} (running) =====",
        f"===== core-{node.instance} (running) ====="]
    assert len(both) == 4
    recent = ok(node.cmd("logs", "-o", "-", "--service", "core", "--since", "1h"))
    assert recent.count("core line") == 6  # both starts
    ahead = ok(node.cmd("logs", "-o", "-", "--service", "core", "--since",
                        "2999-01-01T00:00:00Z"))
    assert ahead.splitlines() == [f"===== core-{node.instance} (running) ====="]

    unknown = node.cmd("logs", "-o", "-", "--service", "nope")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr == (f"syntho-agent: error: --service nope is not a service here "
                              f"(instance {node.instance}); the services here are: core, "
                              "gcs-redis, ray-head\n")
    file_out = cluster.box.tmp / "tail.log"
    written = ok(node.cmd("logs", "-o", str(file_out), "--service", "core", "--tail", "2"))
    assert f"wrote the logs of 1 container(s) to {file_out}" in written
    assert file_out.read_text() == out
    assert cluster.file_secret not in out + "\n".join(both) + recent


def test_logs_follow_picks_up_a_recreated_container_and_says_it_was_replaced(
        cluster: Cluster, images: dict[str, str]) -> None:
    """`logs -f` follows the managed set as it changes: a container re-created while it runs
    (here a stand-in removed and made again, as --watch or an upgrade does) is followed from
    its first line, after a line that says it replaced the old one. An instance of its own:
    the other tests' containers are left alone."""
    node = Node(cluster.box, {}, "relog")

    def make(generation: str) -> docker.models.containers.Container:
        return stand_in(cluster.box, images["busybox"], node.instance, "app", "core", {},
                        ["sh", "-c", f"echo {generation} generation; exec sleep 3600"])

    first = make("first")
    follower = Follower("--data-dir", str(node.data_dir), "--instance", node.instance)
    try:
        assert follower.saw("first generation", timeout=30), follower.seen
        first.remove(force=True)
        second = make("second")
        assert follower.saw("second generation", timeout=30), follower.seen
        replaced = [line for line in follower.seen if "replaced" in line]
        assert replaced == [f"===== core: a new container core-{node.instance} "
                            f"({second.id[:12]}) replaced {first.id[:12]}: following it ====="]
        assert follower.seen.index(replaced[0]) < next(
            i for i, line in enumerate(follower.seen) if "second generation" in line)
        code, err = follower.stop()
        assert code == 0 and err == "stopped following (SIGINT)\n", err
    finally:
        follower.kill()
        with contextlib.suppress(docker.errors.NotFound):
            cluster.box.client.containers.get(f"core-{node.instance}").remove(force=True)
