"""Ray's TLS with an image that does not run as root (Ray's own images run as `ray`): the node's
key (0600, root's) is given to the image's user as a copy of its own, so that its Ray reads it;
the worker joins the TLS head. Without the copy its Ray could not read the key and would never
join."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from agent import ray_tls
from tests.integration.agent_helpers import HeadVM, ok
from tests.support.agent_cli import run_agent
from tests.support.constants import NOFILE
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def non_root_ray(docker_client: docker.DockerClient, images: dict[str, str],
                 module_sandbox: Sandbox) -> Iterator[str]:
    """The Ray test image, run as a user by name (as Ray's images do): `ray`, uid 1000."""
    box = docker_client.containers.run(
        images["ray"], ["sh", "-c", "useradd -u 1000 -m ray"], detach=True,
        labels=module_sandbox.labels)
    assert box.wait()["StatusCode"] == 0, box.logs()
    ref = f"syntho-test/ray-as-ray:{module_sandbox.id}"
    box.commit(repository=ref.split(":")[0], tag=ref.split(":")[1],
               changes=["USER ray", "ENV HOME=/home/ray"])
    box.remove()
    try:
        yield ref
    finally:
        docker_client.images.remove(ref, force=True)


def test_a_worker_whose_image_runs_as_ray_reads_its_key_and_joins(
        head_vm: HeadVM, module_sandbox: Sandbox, non_root_ray: str,
        docker_client: docker.DockerClient) -> None:
    data_dir = module_sandbox.tmp / "w"
    instance = module_sandbox.instance("w")
    out = ok(run_agent("worker", "--data-dir", str(data_dir), "--instance", instance,
                       "--head", head_vm.node_ip, "--ray-image", non_root_ray,
                       "--shm-size", "512mb", "--nofile", NOFILE,
                       "--token-file", str(head_vm.data_dir / "ray-token")))
    assert "joined the Ray cluster" in out, out
    copy = ray_tls.folder(data_dir) / "node-1000.key"
    st = copy.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (1000, 0o600)
    env = docker_client.containers.get(f"ray-worker-{instance}").attrs["Config"]["Env"]
    assert "RAY_TLS_SERVER_KEY=/ray-tls/node-1000.key" in env, env
    assert (Path(data_dir) / "image-users.json").exists()  # asked once, kept
