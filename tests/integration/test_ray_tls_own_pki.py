"""Ray's TLS with an organisation's own PKI (docs/security.md): a head that issues its
certificate from the organisation's CA (--ray-tls-ca-cert/--ray-tls-ca-key, RSA here) and a
worker beside it given a certificate that CA issued elsewhere (--ray-tls-cert/--ray-tls-key/
--ray-tls-ca); Ray runs across them, the dashboard answers in HTTPS under that CA, `status`
names it; a worker that trusts only the token's CA is refused in one line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from agent import cluster, ray_tls
from agent.waits import poll
from tests.integration.agent_helpers import head_role_args, ok
from tests.support import certs
from tests.support.agent_cli import run_agent
from tests.support.constants import NOFILE
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster_of_own_pki(module_sandbox: Sandbox, images: dict[str, str]) -> Iterator[
        tuple[list[str], list[str], str, Path]]:
    """The head and a worker (host network, its own ports), both on the organisation's PKI:
    (head args, worker args, the token, the CA's certificate)."""
    tmp = module_sandbox.tmp
    ca_cert, ca_key = certs.ca_files(tmp, "Example Bank Ray CA")
    # The worker's certificate, issued "elsewhere" (by the organisation, here through the
    # agent's own issuing into a folder of its own) for this host's addresses.
    issued = ray_tls.node_material(tmp / "issuer", ray_tls.operator_ca(ca_cert, ca_key),
                                   ray_tls.host_names())
    head_dir = tmp / "head"
    head = [*head_role_args(head_dir, module_sandbox.instance("head"), images["ray"], ""),
            "--ray-tls-ca-cert", str(ca_cert), "--ray-tls-ca-key", str(ca_key)]
    out = ok(run_agent("head", *head))
    assert "its traffic in TLS" in out, out
    token = (head_dir / "ray-token").read_text().strip()
    worker = ["--data-dir", str(tmp / "worker"), "--instance", module_sandbox.instance("w"),
              "--head", ray_tls.local_ipv4()[0], "--ray-image", images["ray"],
              "--shm-size", "512mb",
              "--nofile", NOFILE, "--token-file", str(head_dir / "ray-token"),
              "--ray-tls-cert", str(issued.folder / issued.cert_file),
              "--ray-tls-key", str(issued.folder / ray_tls.KEY_FILE), "--ray-tls-ca", str(ca_cert)]
    out = ok(run_agent("worker", *worker))
    assert "took this node's Ray TLS certificate" in out and "joined" in out, out
    yield head, worker, token, ca_cert


def test_ray_runs_across_nodes_of_the_organisations_pki(
        cluster_of_own_pki: tuple[list[str], list[str], str, Path],
        module_sandbox: Sandbox, docker_client: docker.DockerClient) -> None:
    head, worker, token, ca_cert = cluster_of_own_pki
    nodes = ray_tls.local_ipv4()
    assert nodes, "this host has an address besides loopback"
    ca = ca_cert.read_text()
    assert poll(lambda: len(cluster.alive_nodes(nodes[0], token, ca=ca)) == 2, 60,
                "both nodes alive, asked in HTTPS under the organisation's CA")
    assert ray_tls.head_speaks(nodes[0], 6379, ca) == ray_tls.HEAD_TLS
    with pytest.raises(Exception, match="did not sign"):  # the token's CA does not vouch
        ray_tls.head_speaks(nodes[0], 6379, ray_tls.derived_ca(token).pem)
    name = head[head.index("--instance") + 1]
    code, out = docker_client.containers.get(f"ray-head-{name}").exec_run(["python3", "-c", (
        "import ray\nray.init(address='auto', log_to_driver=False)\n"
        "@ray.remote(num_cpus=0)\ndef where(x): return ray.get_runtime_context().get_node_id()\n"
        "ids = {n['NodeID'] for n in ray.nodes() if n['Alive']}\n"
        "from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On\n"
        "print(sorted(ray.get([where.options(scheduling_strategy=On(i, soft=False)).remote(1)"
        " for i in ids])) == sorted(ids))\n")])
    assert code == 0 and out.decode().strip().endswith("True"), out.decode()
    status = ok(run_agent("status", "--data-dir", head[head.index("--data-dir") + 1],
                          "--instance", name))
    assert "CN=Example Bank Ray CA" in status, status


def test_a_worker_trusting_only_the_tokens_ca_is_refused(
        cluster_of_own_pki: tuple[list[str], list[str], str, Path],
        module_sandbox: Sandbox, images: dict[str, str]) -> None:
    head, _, token, _ = cluster_of_own_pki
    result = run_agent("worker", "--data-dir", str(module_sandbox.tmp / "plainw"), "--instance",
                       module_sandbox.instance("plainw"), "--head", ray_tls.local_ipv4()[0],
                       "--ray-image", images["ray"], "--nofile", NOFILE, "--skip-checks",
                       "--token-file", str(Path(head[head.index("--data-dir") + 1]) /
                                           "ray-token"))
    assert result.returncode == 2, result.stderr
    assert "(or the head's CA of your own: --ray-tls-ca-cert or --ray-tls-ca)" in result.stderr
