"""`syntho-agent check ROLE` and the checks before every role run, on the real engine; and
Ray's pinned ports, measured with `ss -ltnp` inside a running head and a worker that share
this host's network (as a VM that runs both would).

The failure rows point check at values no host can take (more shared memory than the machine
has, a nofile above the kernel's nr_open, a port a listener of the test holds): each is a
`fail` line with what to do, and exit 1; a role run stops on it (exit 3) before the engine is
touched.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from agent import check, cluster
from agent.config import RAY_PORTS
from agent.roles import ray
from agent.waits import poll
from tests.integration.agent_helpers import HeadVM, engine_snapshot
from tests.support import reads
from tests.support.agent_cli import run_agent
from tests.support.constants import NOFILE
from tests.support.ports import free_port
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

IMPOSSIBLE_SHM = "100000gb"  # no machine has it
CHECK_LINE = re.compile(r"^(ok|warn|fail)  ", re.MULTILINE)


def nofile_above_kernel() -> str:
    """A nofile no engine can give: above the kernel's nr_open."""
    return str(int(Path("/proc/sys/fs/nr_open").read_text()) + 1)


@pytest.fixture
def listener() -> Iterator[int]:
    """A port this test holds with a listening socket on every address."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", free_port()))
        sock.listen()
        yield int(sock.getsockname()[1])


def fails(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("fail  ")]


def ray_args(tmp: Path, images: dict[str, str], *more: str) -> list[str]:
    return ["--data-dir", str(tmp), "--ray-image", images["ray"], "--nofile", NOFILE,
            "--shm-size", "512mb", *more]


# ---- the failure rows ---------------------------------------------------------------------------

@pytest.mark.parametrize("row", ["shm", "nofile", "port"])
def test_each_impossible_value_fails_its_check_with_advice(
        row: str, tmp_path: Path, images: dict[str, str], listener: int) -> None:
    more = {"shm": ["--shm-size", IMPOSSIBLE_SHM], "nofile": ["--nofile", nofile_above_kernel()],
            "port": ["--node-manager-port", str(listener)]}[row]
    # A worker: its ports are the ones `--node-manager-port` moves; its head is this host.
    done = run_agent("check", "worker", "--head", "127.0.0.1", "--instance", "chk",
                     *ray_args(tmp_path, images), *more)
    assert done.returncode == 1, f"{done.stdout}\n{done.stderr}"
    expected = {"shm": "fail  memory: --shm-size 100000gb of ",
                "nofile": "fail  nofile: the engine refuses --nofile ",
                "port": f"fail  ports: {listener} on 0.0.0.0 (--node-manager-port) is taken"}[row]
    found = [line for line in fails(done.stdout) if line.startswith(expected)]
    assert found, done.stdout
    advice = {"shm": "-- lower --shm-size", "nofile": "-- lower --nofile",
              "port": "-- free it"}[row]
    assert advice in found[0], found[0]
    # No head runs on this host: its ports fail too, with the firewall table after them.
    assert "fail  head: 127.0.0.1:6379 (Ray's GCS) does not answer" in done.stdout
    assert "firewall: this worker VM accepts (tcp)" in done.stdout


def test_a_taken_app_port_fails(tmp_path: Path, listener: int) -> None:
    done = run_agent("check", "app", "--head", "127.0.0.1", "--data-dir", str(tmp_path),
                     "--frontend-port", str(listener), "--backend-port", str(free_port()))
    assert done.returncode == 1
    assert (f"fail  ports: {listener} on 0.0.0.0 (--frontend-port) is taken on this host"
            in done.stdout), done.stdout
    assert f"  {listener} " in done.stdout  # in the firewall table


def test_a_role_run_stops_at_a_failed_check_before_anything_changes(
        tmp_path: Path, images: dict[str, str], docker_client: docker.DockerClient) -> None:
    before = engine_snapshot(docker_client)
    done = run_agent("head", "--instance", "chk", *ray_args(tmp_path, images),
                     "--shm-size", IMPOSSIBLE_SHM)
    assert done.returncode == 3, f"{done.stdout}\n{done.stderr}"
    assert [line.split(":")[0] for line in fails(done.stdout)] == ["fail  memory"], done.stdout
    assert not re.search(r"^(ok|warn)  ", done.stdout, re.MULTILINE)  # only the failing one
    assert "host check(s) failed" in done.stderr and "--skip-checks" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert engine_snapshot(docker_client) == before


def test_skip_checks_goes_past_them(tmp_path: Path, images: dict[str, str],
                                    docker_client: docker.DockerClient) -> None:
    """With --skip-checks the same run goes on, to the next thing that stops it (an image
    that is not here), changing nothing either."""
    before = engine_snapshot(docker_client)
    done = run_agent("head", "--instance", "chk", *ray_args(tmp_path, images),
                     "--shm-size", IMPOSSIBLE_SHM, "--ray-image", "syntho-test/no-such:image",
                     "--skip-checks")
    assert done.returncode == 3, f"{done.stdout}\n{done.stderr}"
    assert not CHECK_LINE.search(done.stdout), done.stdout
    assert "host check" not in done.stderr and "no-such" in done.stderr, done.stderr
    assert engine_snapshot(docker_client) == before


def test_colliding_ports_are_bad_input(tmp_path: Path) -> None:
    done = run_agent("head", "--data-dir", str(tmp_path), "--object-manager-port", "6380")
    assert done.returncode == 2
    assert done.stderr.strip() == ("syntho-agent: error: --object-manager-port 6380 collides "
                                   "with --node-manager-port of the head: give each Ray port "
                                   "its own number")


def test_the_nofile_try_leaves_nothing_behind(tmp_path: Path, images: dict[str, str],
                                              docker_client: docker.DockerClient) -> None:
    done = run_agent("check", "head", *ray_args(tmp_path, images))
    assert "ok    nofile: the engine starts a container with --nofile" in done.stdout, done.stdout
    assert not docker_client.containers.list(all=True, filters={"label": check.CHECK_LABEL})


def test_check_of_a_worker_needs_head() -> None:
    done = run_agent("check", "worker")
    assert done.returncode == 2
    assert "check worker needs --head" in done.stderr


# ---- a head and a worker on this host's network -------------------------------------------------

def listening(docker_client: docker.DockerClient, name: str) -> set[tuple[str, int]]:
    """(address, port) of every TCP listener of the container's own processes: on the host
    network `ss` sees every socket of the host, but names only the processes it can see."""
    code, out = reads.read(docker_client.containers.get(name), ["ss", "-ltnpH"])
    assert code == 0, out
    found = set()
    for line in out.splitlines():
        if "users:((" in line:
            address, _, port = line.split()[3].rpartition(":")
            found.add((address, int(port)))
    return found


def pinned(role: str) -> tuple[set[int], range]:
    """The ports a node of the role may listen on: its pinned ones and its worker range."""
    pick = 0 if role == "head" else 1
    ports = {v[pick] for k, v in RAY_PORTS.items() if k not in ("min_worker_port",
                                                                 "max_worker_port")}
    if role == "head":
        ports |= {ray.GCS_PORT, ray.DASHBOARD_PORT, ray.CLIENT_PORT, *ray.HEAD_METRICS_PORTS}
    return ports, range(RAY_PORTS["min_worker_port"][pick], RAY_PORTS["max_worker_port"][pick]
                        + 1)


def stray(found: set[tuple[str, int]], role: str) -> set[tuple[str, int]]:
    ports, workers = pinned(role)
    # The Ray client server's per-client servers: loopback only (ray.util.client proxier).
    return {(a, p) for a, p in found
            if p not in ports and p not in workers and not (a == "127.0.0.1" and
                                                            23000 <= p < 24000)}


def test_every_ray_listener_is_pinned_and_reruns_pass_their_own_checks(
        head_vm: HeadVM, module_sandbox: Sandbox, images: dict[str, str],
        docker_client: docker.DockerClient) -> None:
    head_args = head_vm.args()
    # A no-op re-run: its own container holds the ports, and no check line is printed.
    again = run_agent("head", *head_args)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout and not CHECK_LINE.search(again.stdout), again.stdout
    seen = run_agent("check", "head", *head_args)
    assert seen.returncode == 0 and not fails(seen.stdout), seen.stdout
    assert "ok    ports: every one free, or held by this agent's running containers" in seen.stdout

    # A worker beside the head on this host's network: its default ports differ.
    worker_instance = module_sandbox.instance("hostw")
    worker_args = ["--data-dir", str(module_sandbox.tmp / "hostw"), "--instance",
                   worker_instance, "--head", head_vm.node_ip, "--ray-image", images["ray"],
                   "--shm-size", "512mb", "--nofile", NOFILE, "--token-file",
                   str(head_vm.data_dir / "ray-token")]
    joined = run_agent("worker", *worker_args)
    assert joined.returncode == 0, f"{joined.stdout}\n{joined.stderr}"
    assert not CHECK_LINE.search(joined.stdout), joined.stdout
    seen = run_agent("check", "worker", *worker_args)
    assert seen.returncode == 0 and not fails(seen.stdout), seen.stdout
    for port in (6379, 8265, 10001):
        assert f"ok    head: {head_vm.node_ip}:{port} " in seen.stdout, seen.stdout

    # Both nodes alive (the agent's join check is met by the head's node here: one IP for
    # both), then an actor on each: a worker process that outlives the driver, listening.
    assert poll(lambda: len(cluster.alive_nodes(head_vm.address, head_vm.token)) == 2, 60,
                "the worker's node alive"), cluster.alive_nodes(head_vm.address, head_vm.token)
    head_name, worker_name = f"ray-head-{head_vm.instance}", f"ray-worker-{worker_instance}"
    code, out = docker_client.containers.get(head_name).exec_run(["python3", "-c", (
        "import ray\n"
        "from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On\n"
        "ray.init(address='auto', namespace='check', log_to_driver=False)\n"
        "@ray.remote(num_cpus=0)\n"
        "class Here:\n"
        "    def node(self): return ray.get_runtime_context().get_node_id()\n"
        "nodes = [n['NodeID'] for n in ray.nodes() if n['Alive']]\n"
        "actors = [Here.options(name=f'here-{i}', lifetime='detached', scheduling_strategy="
        "On(n, soft=False)).remote() for i, n in enumerate(nodes)]\n"
        "on = sum(ray.get(a.node.remote(), timeout=60) == n for a, n in zip(actors, nodes))\n"
        "print(f'actors on their nodes: {on}')\n"
    )])
    assert code == 0 and "actors on their nodes: 2" in out.decode(), out.decode()[-2000:]

    head_found = listening(docker_client, head_name)
    worker_found = listening(docker_client, worker_name)
    assert not stray(head_found, "head"), f"the head listens on unpinned ports: {head_found}"
    assert not stray(worker_found, "worker"), f"the worker listens on unpinned ports: " \
                                              f"{worker_found}"
    # Every pinned port is really taken (Ray honoured the flags), workers in their ranges.
    for found, role in ((head_found, "head"), (worker_found, "worker")):
        ports, workers = pinned(role)
        assert ports <= {p for _, p in found}, (role, sorted(ports - {p for _, p in found}))
        assert any(p in workers for _, p in found), (role, found)
