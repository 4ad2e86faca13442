"""Fixtures shared by the integration suites: a head 'VM' and a whole deployment."""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest

from agent import cluster
from tests.integration.agent_helpers import (
    App,
    HeadVM,
    Node,
    head_role_args,
    ip_on,
    ok,
    start_registry,
    why_unhealthy,
)
from tests.support.agent_cli import run_agent
from tests.support.constants import NOFILE
from tests.support.releases import PASSWORD, USER, ReleaseRegistry, remove_local
from tests.support.sandbox import Sandbox


@pytest.fixture(scope="session")
def release_registry(docker_client: docker.DockerClient, images: dict[str, str],
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReleaseRegistry]:
    """The registry of the release tests (test_release_faults, test_release_images,
    test_releases): each release built and pushed once per run."""
    proc, port = start_registry(tmp_path_factory.mktemp("release-registry"), USER, PASSWORD)
    shared = ReleaseRegistry(docker_client, images, f"127.0.0.1:{port}")
    try:
        yield shared
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        remove_local(docker_client, shared.refs())


@pytest.fixture(scope="module")
def module_sandbox(docker_client: docker.DockerClient,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(docker_client, tmp_path_factory.mktemp("app")) as box:
        yield box


@pytest.fixture(scope="module")
def head_vm(request: pytest.FixtureRequest, module_sandbox: Sandbox,
            images: dict[str, str]) -> HeadVM:
    """The Ray head on the host network, as on a VM; on the module's own Docker network when
    the module is marked `head_on_a_network` (so that it can run beside the other shard, whose
    heads use the host's ports)."""
    data_dir = module_sandbox.tmp / "head"
    instance = module_sandbox.instance("head")
    own = request.node.get_closest_marker("head_on_a_network") is not None
    if not own and os.environ.get("SYNTHO_TEST_SHARD") == "isolated":
        pytest.fail("a Ray head on the host network in the isolated shard: mark the module "
                    "head_on_a_network, or take it out of tests/shards.py's ISOLATED")
    if own:  # the app's network and the head's route to each other, as VMs' would
        module_sandbox.route_network()
    network = module_sandbox.network if own else ""
    ok(run_agent("head", *head_role_args(data_dir, instance, images["ray"], network)))
    address = (ip_on(module_sandbox.client.containers.get(f"ray-head-{instance}"),
                     module_sandbox.network) if own else "127.0.0.1")
    token = (data_dir / "ray-token").read_text().strip()
    heads = [n for n in cluster.alive_nodes(address, token) if n.get("is_head_node")]
    assert heads, "the head lists itself"
    return HeadVM(data_dir, str(heads[0]["node_ip"]), token, instance, images["ray"], address,
                  network)


@pytest.fixture(scope="module")
def stack(module_sandbox: Sandbox, images: dict[str, str], head_vm: HeadVM) -> App:
    """head + a worker + the app, converged. The worker shares the head's network (the
    host's, as on a VM that runs both: its ports differ from the head's), or the module's
    Docker network with a head there: a head on the host's network speaks TLS (a new
    cluster's default), which Ray on a Docker network cannot."""
    module_sandbox.create_network()
    worker_dir = module_sandbox.tmp / "worker"
    ok(run_agent("worker", "--data-dir", str(worker_dir), "--instance",
                 module_sandbox.instance("w1"), "--network", head_vm.network or "host",
                 "--head", head_vm.node_ip, "--ray-image", images["ray"], "--shm-size", "512mb",
                 "--nofile", NOFILE, "--token-file", str(head_vm.data_dir / "ray-token")))
    app = App(module_sandbox, images, head_vm, "app")
    result = app.run()
    if result.returncode != 0:
        pytest.fail(f"the app did not come up: exit {result.returncode}\n{result.stderr}\n"
                    f"{why_unhealthy(app)}")
    out = result.stdout
    assert "the app is up" in out
    app.first_output = out
    return app


@pytest.fixture
def head(sandbox: Sandbox, images: dict[str, str]) -> Node:
    """A Ray head on the test's own bridge network (each node its own IP)."""
    sandbox.create_network()
    node = Node(sandbox, images, "head")
    out = ok(node.run("head"))
    assert f"created ray-head-{node.instance}" in out
    assert "ray head ready" in out
    return node


@pytest.fixture
def nobody(sandbox: Sandbox, images: dict[str, str]) -> str:
    """The address of a host of the test's own where nothing listens (on 6379 or elsewhere):
    a worker pointed at it gets its image, then waits for a head that never answers."""
    sandbox.create_network()
    box = sandbox.run(images["busybox"], "nobody", network=sandbox.network,
                      command=["sleep", "600"])
    box.reload()
    return str(box.attrs["NetworkSettings"]["Networks"][sandbox.network]["IPAddress"])
