"""Ray's mutual TLS on the real engine (docs/security.md): a new head on the host's network and a
worker beside it speak TLS; a certificate near its end (or past it) is warned about and renewed
by a re-run, which recreates that node's Ray only, and the cluster keeps running; a node whose
certificate another CA signed never joins; a worker that cannot speak as the head does is
refused in one line before any container changes. What crosses the wire between VMs is
tests/integration/test_wire.py's."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import docker
import pytest

from agent import cluster, ray_tls
from agent.waits import poll
from tests.integration.agent_helpers import HeadVM, ok
from tests.support.agent_cli import run_agent
from tests.support.constants import NOFILE
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker_args(head_vm: HeadVM, module_sandbox: Sandbox, images: dict[str, str]) -> list[str]:
    """A worker beside the head on this host's network (its own ports), joined."""
    args = ["--data-dir", str(module_sandbox.tmp / "w"), "--instance",
            module_sandbox.instance("w"), "--head", head_vm.node_ip, "--ray-image", images["ray"],
            "--shm-size", "512mb", "--nofile", NOFILE, "--token-file",
            str(head_vm.data_dir / "ray-token")]
    out = ok(run_agent("worker", *args))
    assert "issued this node's Ray TLS certificate (first run)" in out, out
    return args


def alive(head_vm: HeadVM) -> int:
    return len(cluster.alive_nodes("127.0.0.1", head_vm.token))


def ids(client: docker.DockerClient, *names: str) -> dict[str, str]:
    return {name: str(client.containers.get(name).id) for name in names}


def age_certificate(data_dir: Path, token: str, days_ago: int) -> None:
    """The node's certificate replaced by one issued days_ago days ago (365 days' validity),
    as if it had served that long; the node's key stays."""
    for old in ray_tls.folder(data_dir).glob("node-*.crt"):
        old.unlink()
    ray_tls.node_material(data_dir, token, ray_tls.host_names(),
                          now=datetime.now(timezone.utc) - timedelta(days=days_ago))


def test_a_head_certificate_near_its_end_is_warned_about_and_renewed_by_a_re_run(
        head_vm: HeadVM, worker_args: list[str], docker_client: docker.DockerClient) -> None:
    head, worker = f"ray-head-{head_vm.instance}", worker_args[worker_args.index("--instance") + 1]
    others = (f"gcs-redis-{head_vm.instance}", f"ray-worker-{worker}")
    assert poll(lambda: alive(head_vm) == 2, 60, "head and worker alive")
    age_certificate(head_vm.data_dir, head_vm.token, 340)  # 25 days left

    status = ok(run_agent("status", "--data-dir", str(head_vm.data_dir), "--instance",
                          head_vm.instance))
    assert re.search(r"this node's certificate for .*WARNING: it expires in 2[45] day", status), \
        status
    check = run_agent("check", "head", *head_vm.args())
    assert re.search(r"warn  ray tls: this node's certificate .*expires in 2[45] day",
                     check.stdout), check.stdout

    before = ids(docker_client, head, *others)
    out = ok(run_agent("head", *head_vm.args()))
    assert re.search(r"issued this node's Ray TLS certificate \(it expires in 2[45] day", out), out
    after = ids(docker_client, head, *others)
    assert after[head] != before[head], "the head's Ray restarts to read its new certificate"
    assert {n: after[n] for n in others} == {n: before[n] for n in others}, \
        "only the head's Ray is recreated"
    # GCS fault tolerance: the worker's Ray carries on with the restarted head.
    assert poll(lambda: alive(head_vm) == 2, 120, "the worker alive with the renewed head")
    status = ok(run_agent("status", "--data-dir", str(head_vm.data_dir), "--instance",
                          head_vm.instance))
    assert "ray traffic: mutual TLS" in status and "WARNING" not in status, status
    assert "nothing to do" in ok(run_agent("head", *head_vm.args()))


def test_an_expired_worker_certificate_is_renewed_by_a_re_run_of_that_worker_only(
        head_vm: HeadVM, worker_args: list[str], docker_client: docker.DockerClient) -> None:
    worker = f"ray-worker-{worker_args[worker_args.index('--instance') + 1]}"
    data_dir = Path(worker_args[worker_args.index("--data-dir") + 1])
    head = f"ray-head-{head_vm.instance}"
    age_certificate(data_dir, head_vm.token, 400)  # ended 35 days ago
    check = run_agent("check", "worker", *worker_args)
    assert re.search(r"fail  ray tls: this node's certificate .*EXPIRED", check.stdout), \
        check.stdout
    before = ids(docker_client, head, worker)
    out = ok(run_agent("worker", *worker_args, "--skip-checks"))
    assert "issued this node's Ray TLS certificate (it had expired)" in out, out
    assert "joined the Ray cluster" in out, out
    after = ids(docker_client, head, worker)
    assert after[worker] != before[worker] and after[head] == before[head]
    assert poll(lambda: alive(head_vm) == 2, 120, "head and worker alive")


def test_a_node_whose_certificate_another_ca_signed_never_joins(
        head_vm: HeadVM, worker_args: list[str], module_sandbox: Sandbox,
        images: dict[str, str]) -> None:
    """Ray itself refuses it: the right token, Ray's TLS settings, the cluster's own CA to
    check the head with, a certificate for the right names, but signed by another CA (a
    forgery): its handshakes fail and it never shows in the cluster."""
    forged = module_sandbox.tmp / "forged"
    material = ray_tls.node_material(forged, "f0" * 32, ray_tls.host_names())
    (material.folder / ray_tls.CA_FILE).write_text(ray_tls.derived_ca(head_vm.token).pem)
    assert poll(lambda: alive(head_vm) == 2, 60, "head and worker alive")
    env = {**dict(material.env()), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": head_vm.token}
    box = module_sandbox.run(
        images["ray"], "forged", network="host", environment=env,
        volumes={str(material.folder): {"bind": ray_tls.INSIDE, "mode": "ro"}},
        command=["ray", "start", f"--address={head_vm.node_ip}:6379", "--block",
                 "--node-manager-port=6490", "--object-manager-port=6491",
                 "--runtime-env-agent-port=6492", "--dashboard-agent-grpc-port=6493",
                 "--dashboard-agent-listen-port=6494", "--metrics-export-port=6495",
                 "--min-worker-port=12000", "--max-worker-port=12099",
                 "--disable-usage-stats"])

    def tried() -> bool:
        logs = box.logs().decode(errors="replace")
        return "Failed to connect to GCS" in logs or "Handshake failed" in logs

    # It tries (its log says so) and, for a minute and a half, never shows in the cluster.
    assert poll(tried, 120, "the forged node trying the head"), box.logs(tail=20)
    assert poll(lambda: alive(head_vm) != 2, 90, "the forged node showing") is False
    assert alive(head_vm) == 2
    box.remove(force=True)


@pytest.mark.parametrize("extra, says", [
    (["--no-ray-tls"], "speaks TLS and this worker was given --no-ray-tls"),
    (["--network", "NET"], "runs on the Docker network"),
    (["--token-file", "OTHER"], "presents a certificate that this cluster's CA did not sign"),
])
def test_a_worker_that_cannot_speak_as_the_head_is_refused_before_any_change(
        head_vm: HeadVM, module_sandbox: Sandbox, images: dict[str, str],
        docker_client: docker.DockerClient, extra: list[str], says: str) -> None:
    module_sandbox.create_network()
    other = module_sandbox.tmp / "other-token"
    other.write_text("e1" * 32 + "\n")
    other.chmod(0o600)
    extra = [{"NET": module_sandbox.network, "OTHER": str(other)}.get(e, e) for e in extra]
    instance = module_sandbox.instance("refused")
    data_dir = module_sandbox.tmp / f"refused-{extra[0].strip('-')}"
    result = run_agent("worker", "--data-dir", str(data_dir), "--instance", instance,
                       "--head", head_vm.node_ip,
                       "--ray-image", images["ray"], "--nofile", NOFILE, "--skip-checks",
                       "--token-file", str(head_vm.data_dir / "ray-token"), *extra)
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("syntho-agent:")]
    assert len(errors) == 1 and says in errors[0], result.stderr
    assert not docker_client.containers.list(all=True, filters={"name": instance})
    assert not ray_tls.folder(data_dir).exists()


def test_switching_off_and_on_again_restarts_ray_across_the_cluster_and_status_follows(
        head_vm: HeadVM, worker_args: list[str], docker_client: docker.DockerClient) -> None:
    """The documented switch, both ways: the head, then the worker re-run. Each worker run
    waits for its new node (the restarted head lists the old one alive for a while), and
    `status` on the worker asks the head as it now speaks (the worker's files are gone once
    the head speaks plain)."""
    worker_dir = Path(worker_args[worker_args.index("--data-dir") + 1])
    worker = f"ray-worker-{worker_args[worker_args.index('--instance') + 1]}"
    for flag, speaks in (("--no-ray-tls", "NOT encrypted"), ("--ray-tls", "mutual TLS")):
        ok(run_agent("head", *head_vm.args(), flag))
        out = ok(run_agent("worker", *worker_args))
        assert f"recreated {worker}" in out and "joined the Ray cluster" in out, out
        assert ray_tls.folder(worker_dir).is_dir() == (flag == "--ray-tls")
        assert ray_tls.folder(head_vm.data_dir).is_dir() == (flag == "--ray-tls")
        status = run_agent("status", "--data-dir", str(worker_dir), "--instance",
                           worker_args[worker_args.index("--instance") + 1])
        assert status.returncode == 0 and "joined the cluster" in status.stdout and \
            speaks in status.stdout, status.stdout
        assert poll(lambda: alive(head_vm) == 2, 60, "head and worker alive")
        env = docker_client.containers.get(worker).attrs["Config"]["Env"]
        assert ("RAY_USE_TLS=1" in env) == (flag == "--ray-tls"), env
