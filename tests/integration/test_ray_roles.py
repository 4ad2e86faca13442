"""The head and worker roles on the real engine, forming a real Ray cluster.

One engine stands for several VMs: each agent gets its own data dir and --instance, and the
Ray containers share a user-defined network (each node its own IP), as machine-facts advise.
"""

from __future__ import annotations

import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from agent import cluster
from agent.roles.ray import head_labels
from agent.waits import poll
from tests.integration.agent_helpers import Node, engine_snapshot, ip_on, ok
from tests.support import reads
from tests.support.agent_cli import agent_cmd, run_agent
from tests.support.constants import NOFILE, REPO
from tests.support.processes import started
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration


def alive(head_ip: str, token: str | None) -> int:
    return len(cluster.alive_nodes(head_ip, token))


def ray_active_nodes(head: Node) -> int:
    _, out = reads.read(head.container("ray-head"), ["ray", "status"])
    return out.split("Active:")[-1].split("Pending:")[0].count("node_")


def test_head_and_two_workers_form_a_cluster_and_a_wrong_token_never_joins(
        sandbox: Sandbox, images: dict[str, str], head: Node) -> None:
    token = head.token_file.read_text().strip()
    assert len(token) == 64
    assert stat.S_IMODE(head.token_file.stat().st_mode) == 0o600
    head_ip = ip_on(head.container("ray-head"), sandbox.network)
    # One worker gets the token through the env, the other through a file.
    w1, w2 = Node(sandbox, images, "w1"), Node(sandbox, images, "w2")
    out1 = ok(w1.run("worker", "--head", head_ip, env={"SYNTHO_AGENT_TOKEN": token}))
    assert "joined the Ray cluster" in out1
    ok(w2.run("worker", "--head", head_ip, "--token-file", str(head.token_file)))
    assert alive(head_ip, token) == 3
    status = ok(head.cmd("status"))
    assert "3 node(s) alive" in status
    # Ray's own view agrees (its autoscaler report refreshes every few seconds).
    assert poll(lambda: ray_active_nodes(head) == 3, 60, "ray status: 3 nodes")
    # A worker with a wrong token is refused by Ray: the agent says so and exits 4.
    bad = Node(sandbox, images, "bad")
    result = bad.run("worker", "--head", head_ip, "--ready-timeout", "20",
                     env={"SYNTHO_AGENT_TOKEN": "f" * 64})
    assert result.returncode == 4, result.stderr
    assert "did not join" in result.stderr and "InvalidAuthToken" in result.stderr
    assert alive(head_ip, token) == 3
    for output in (out1, status, result.stdout, result.stderr):
        assert token not in output


def test_rerun_changes_nothing_and_heals_exactly_what_broke(
        sandbox: Sandbox, images: dict[str, str], head: Node) -> None:
    token = head.token_file.read_text().strip()
    head_ip = ip_on(head.container("ray-head"), sandbox.network)
    worker = Node(sandbox, images, "w1")
    ok(worker.run("worker", "--head", head_ip, env={"SYNTHO_AGENT_TOKEN": token}))
    before = engine_snapshot(sandbox.client)
    again = ok(head.run("head"))
    assert "nothing to do" in again and f"unchanged ray-head-{head.instance}" in again
    assert "nothing to do" in ok(worker.run("worker", "--head", head_ip))  # token remembered
    assert engine_snapshot(sandbox.client) == before
    assert head.token_file.read_text().strip() == token

    # Stopped worker: started again (same container), the head untouched.
    head_id = head.container("ray-head").id
    worker.container("ray-worker").stop(timeout=2)
    out = ok(worker.run("worker", "--head", head_ip))
    assert f"started ray-worker-{worker.instance}" in out
    # Removed worker: created again.
    worker.container("ray-worker").remove(force=True)
    out = ok(worker.run("worker", "--head", head_ip))
    assert f"created ray-worker-{worker.instance}" in out
    # Changed by hand (another image setting): recreated to the spec.
    worker_id = worker.container("ray-worker").id
    out = ok(worker.run("worker", "--head", head_ip, "--shm-size", "256mb"))
    assert f"recreated ray-worker-{worker.instance}" in out
    assert worker.container("ray-worker").id != worker_id
    assert worker.container("ray-worker").attrs["HostConfig"]["ShmSize"] == 256 * 1024**2
    assert head.container("ray-head").id == head_id
    assert poll(lambda: alive(head_ip, token) == 2, 60, "2 nodes")


def test_worker_waits_for_the_head_then_joins(sandbox: Sandbox, images: dict[str, str]) -> None:
    sandbox.create_network()
    head = Node(sandbox, images, "head")
    head.data_dir.mkdir(parents=True)
    token = "0123456789abcdef" * 4
    # A placeholder holds the head's address on the network until the head really starts.
    holder = sandbox.run(images["busybox"], "ipholder", network=sandbox.network,
                         command=["sleep", "600"])
    head_ip = ip_on(holder, sandbox.network)
    holder.remove(force=True)
    worker = Node(sandbox, images, "w1")
    with started(
        agent_cmd("worker", *worker.args(), "--head", head_ip, "--wait", "300"), cwd=REPO,
        env={"SYNTHO_AGENT_TOKEN": token, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        # (its process group is killed at the end of the block, however it ends)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"waiting for the Ray head at {head_ip}:6379" in first
        assert proc.poll() is None
        sandbox.client.containers.run(
            images["ray"], name=f"head-{sandbox.id}", detach=True, network=sandbox.network,
            labels=sandbox.labels, shm_size="512m",
            environment={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
            command=["ray", "start", "--head", "--port=6379", "--dashboard-host", "0.0.0.0",
                     "--node-ip-address", head_ip, "--block", "--disable-usage-stats"])
        # The network hands out the held address to the next container on it.
        rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, first + rest
    assert "joined the Ray cluster" in rest
    assert alive(head_ip, token) == 2


def test_a_head_name_that_does_not_resolve_says_so_at_once(
        sandbox: Sandbox, images: dict[str, str]) -> None:
    """DNS may come up later at boot: the worker says the name does not resolve, keeps
    trying while --wait allows, then says so again instead of "did not answer"."""
    worker = Node(sandbox, images, "w1")
    name = f"no-such-head-{sandbox.id}.invalid"
    with started(
        agent_cmd("worker", *worker.args(), "--head", name, "--wait", "4", "--no-auth"),
        cwd=REPO, env={"PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) as proc:
        # (its process group is killed at the end of the block, however it ends)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"the Ray head's name {name} does not resolve" in first, first
        assert proc.poll() is None  # still trying
        rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, first + rest + err
    assert err.count("\n") == 1 and "does not resolve" in err and "did not answer" not in err
    assert not sandbox.client.containers.list(
        all=True, filters={"label": f"io.syntho.agent.instance={worker.instance}"})


def test_worker_follows_a_moved_head(sandbox: Sandbox, images: dict[str, str], head: Node) -> None:
    token = head.token_file.read_text().strip()
    head_ip = ip_on(head.container("ray-head"), sandbox.network)
    worker = Node(sandbox, images, "w1")
    ok(worker.run("worker", "--head", head_ip, env={"SYNTHO_AGENT_TOKEN": token}))
    # A second head (another cluster, same token) at another address: the worker moves.
    head2 = Node(sandbox, images, "head2")
    head2.data_dir.mkdir(parents=True)
    out = ok(head2.run("head", "--token-file", str(head.token_file)))
    assert "stored the cluster's Ray token" in out  # supplied: not "generated"
    assert "generated the cluster's Ray token" not in out
    head2_ip = ip_on(head2.container("ray-head"), sandbox.network)
    out = ok(worker.run("worker", "--head", head2_ip))
    assert f"recreated ray-worker-{worker.instance}" in out
    assert poll(lambda: alive(head2_ip, token) == 2, 60, "worker on the new head")
    assert poll(lambda: alive(head_ip, token) == 1, 120, "worker gone from the old head")


def test_no_auth_is_loud_and_runs_without_a_token(sandbox: Sandbox,
                                                   images: dict[str, str]) -> None:
    sandbox.create_network()
    node = Node(sandbox, images, "head")
    out = ok(node.run("head", "--no-auth"))
    assert "WARNING: Ray token auth is OFF" in out
    assert not node.token_file.exists()
    env = node.container("ray-head").attrs["Config"]["Env"]
    assert not any(e.startswith("RAY_AUTH") for e in env)


def test_head_on_the_host_network_as_on_a_vm(sandbox: Sandbox, images: dict[str, str],
                                             tmp_path: Path) -> None:
    """The default network mode: host, the head reached at 127.0.0.1, options applied."""
    instance = sandbox.instance("host")
    args = ["--data-dir", str(tmp_path / "d"), "--instance", instance, "--ray-image",
            images["ray"], "--shm-size", "1gb", "--nofile", "20000", "--cpus", "1.5",
            "--memory", "2gb", "--ray-arg=--num-cpus=1"]
    out = ok(run_agent("head", *args))
    assert "ray head ready at 127.0.0.1:6379" in out
    c = sandbox.client.containers.get(f"ray-head-{instance}")
    host = c.attrs["HostConfig"]
    assert host["NetworkMode"] == "host"
    assert host["RestartPolicy"]["Name"] == "always"
    assert host["ShmSize"] == 1024**3
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 20000, "Hard": 20000}]
    assert host["NanoCpus"] == 1_500_000_000
    assert host["Memory"] == host["MemoryReservation"] == 2 * 1024**3
    # GCS fault tolerance (the default): `ray start` through a shell that passes the GCS
    # Redis password from the environment, so that it is on no command line the engine keeps.
    sh, dash_c, script = c.attrs["Config"]["Cmd"]
    words = shlex.split(script)
    assert (sh, dash_c, words[0]) == ("sh", "-c", "exec")
    at = words.index("--redis-password")
    assert words[at + 1] == "$GCS_REDIS_PASSWORD" and '"$GCS_REDIS_PASSWORD"' in script
    assert words[1:at] + words[at + 2:] == [
        # A new head on the host's network speaks TLS: the dashboard keeps the loopback, its
        # TLS front (ray-dashboard-tls) the host's other addresses (docs/security.md).
        "ray", "start", "--head", "--port=6379", "--dashboard-host", "127.0.0.1",
        "--ray-client-server-port=10001", "--node-manager-port=6380",
        "--object-manager-port=6381", "--runtime-env-agent-port=6382",
        "--dashboard-agent-grpc-port=6383", "--dashboard-agent-listen-port=6384",
        "--metrics-export-port=6385", "--min-worker-port=10002", "--max-worker-port=10999",
        "--block", "--disable-usage-stats", "--labels", head_labels(images["ray"], None),
        "--num-cpus=1"]
    env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])
    assert env["RAY_SCHEDULER_SPREAD_THRESHOLD"] == "0.0"
    assert "LICENSE_KEY_SIGNED" in env
    token = (tmp_path / "d" / "ray-token").read_text().strip()
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == token
    assert env["RAY_USE_TLS"] == "1"
    front = sandbox.client.containers.get(f"ray-dashboard-tls-{instance}")
    assert front.attrs["HostConfig"]["NetworkMode"] == "host"
    assert poll(lambda: alive("127.0.0.1", token) == 1, 60, "the head in its own node list")


def test_a_nofile_limit_the_host_refuses_is_a_clear_error_and_nothing_is_left(
        sandbox: Sandbox, images: dict[str, str], head: Node) -> None:
    """Raising nofile past what the kernel allows: refused, and the running head is kept."""
    too_many = int(Path("/proc/sys/fs/nr_open").read_text()) + 1
    head_id = head.container("ray-head").id
    before = engine_snapshot(sandbox.client)
    # Past the host checks (test_check.py has them refuse it first): the engine's refusal.
    result = head.run("head", "--nofile", str(too_many), "--skip-checks")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "lower --nofile" in result.stderr
    # The old head is back, running, under its own name: nothing lost.
    assert poll(lambda: head.container("ray-head").status == "running", 30, "head back")
    assert head.container("ray-head").id == head_id
    assert {x for x in engine_snapshot(sandbox.client) if x[0] == "container"} == {
        x for x in before if x[0] == "container"}


@pytest.mark.parametrize("args,code,message", [
    (["worker"], 2, "worker needs --head"),
    (["worker", "--head", "10.0.0.999"], 2, "not an IP address or hostname"),
    (["head", "--shm-size", "4 lots"], 2, "not a size"),
    (["head", "--ray-image", "UPPER/case"], 2, "not an image reference"),
    (["head", "--nofile", "-5"], 2, "must be larger than zero"),
    (["head", "--cpus", "none"], 2, "not a number"),
    (["head", "--node-ip", "localhost"], 2, "not an IP address"),
    (["head", "--ray-image", "syntho-test/does-not-exist:1"], 3, "is not on this engine"),
    (["worker", "--head", "127.0.0.1", "--no-auth", "--ray-image", "no/such:image"], 3,
     "is not on this engine"),
    (["worker", "--head", "127.0.0.1"], 2, "uses token auth"),
    (["worker", "--head", "127.0.0.1", "--no-auth", "--wait", "1"], 3, "did not answer within"),
    (["head", "--config", "/nonexistent/config.yaml"], 2, "does not exist"),
    (["head", "--wait", "-1"], 2, "No such option"),
])
def test_invalid_input_is_one_line_nonzero_and_changes_nothing(
        sandbox: Sandbox, images: dict[str, str], tmp_path: Path,
        args: list[str], code: int, message: str) -> None:
    before = engine_snapshot(sandbox.client)
    data_dir = tmp_path / "data"
    full = [*args, "--data-dir", str(data_dir)]
    if "--ray-image" not in args and args[0] in ("head", "worker") and len(args) > 1:
        full += ["--ray-image", images["ray"]]
    if args[0] in ("head", "worker") and "--nofile" not in args:
        full += ["--nofile", NOFILE]  # what this host allows: its host check passes
    started = time.monotonic()
    result = run_agent(*full)
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert engine_snapshot(sandbox.client) == before
    assert not (data_dir / "ray-token").exists()
    assert time.monotonic() - started < 60


def test_an_engine_that_does_not_answer_or_refuses_the_user_is_one_clear_line(
        sandbox: Sandbox, images: dict[str, str], tmp_path: Path) -> None:
    before = engine_snapshot(sandbox.client)
    args = ["head", "--data-dir", str(tmp_path / "d"), "--ray-image", images["ray"]]
    absent = run_agent(*args, env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert absent.returncode == 3, absent.stderr
    assert absent.stderr.count("\n") == 1 and "does not answer" in absent.stderr
    # A user outside the docker group: the socket refuses them. (Their data dir must be one
    # they can write: the data dir is checked before the engine.)
    shared = Path(tempfile.mkdtemp(prefix="syntho-d2-"))
    try:
        shared.chmod(0o755)
        (shared / "d2").mkdir(mode=0o777)
        (shared / "d2").chmod(0o777)
        denied = subprocess.run(
            ["setpriv", "--reuid=54321", "--regid=54321", "--clear-groups",
             *agent_cmd("head", "--data-dir", str(shared / "d2"), "--ray-image",
                        images["ray"])],
            cwd=REPO, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert denied.returncode == 3, denied.stderr
        assert denied.stderr.count("\n") == 1 and "no permission" in denied.stderr
    finally:
        shutil.rmtree(shared)
    assert engine_snapshot(sandbox.client) == before
    assert not (tmp_path / "d" / "ray-token").exists()


def test_a_network_whose_name_extends_ours_is_not_mistaken_for_it(
        sandbox: Sandbox, images: dict[str, str]) -> None:
    """The engine's name filter matches substrings; the agent must still create its own."""
    longer = sandbox.client.networks.create(f"{sandbox.network}-longer", labels=sandbox.labels)
    try:
        node = Node(sandbox, images, "head")
        out = ok(node.run("head"))
        assert f"created network {sandbox.network}" in out
        assert sandbox.network in node.container("ray-head").attrs["NetworkSettings"]["Networks"]
    finally:
        node.container("ray-head").remove(force=True)
        longer.remove()
