"""What `launcher-config` writes, judged by Ray itself, in the Ray test image (Ray 2.60).

`ray up` fills in Ray's defaults and validates the result before it touches a cloud
(`prepare_config`, then `validate_config` against ray/autoscaler/ray-schema.json); the same two
calls run here on each provider's file, so a config Ray would refuse fails. Deliberately broken
configs prove the check can fail. Then the start commands run in that image as Ray's launcher runs
them in each node's container: a head and a worker with token auth form a cluster.
"""

from __future__ import annotations

import copy
import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from click.testing import CliRunner

from agent import cli, cluster
from agent.waits import poll
from tests.integration.agent_helpers import ip_on
from tests.support import reads
from tests.support.constants import TEST_LABEL
from tests.support.engine import tar
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

PROVIDERS = {
    "aws": ["--region", "eu-central-1", "--spot"],
    "gcp": ["--region", "europe-west4", "--availability-zone", "europe-west4-b",
            "--project-id", "syntho-test"],
    "azure": ["--resource-group", "syntho-rg"],
    "local": ["--head-ip", "10.0.0.2", "--worker-ip", "10.0.0.3", "--worker-ip", "10.0.0.4"],
}
# What `ray up` does with the file before any provider call, and a shell syntax check of every
# command it will run on the nodes.
CHECK = r'''
import json, subprocess, sys, yaml
from ray.autoscaler._private.util import prepare_config, validate_config
LISTS = ("initialization_commands", "setup_commands", "head_setup_commands",
         "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
results = {}
for path in sys.argv[1:]:
    config = yaml.safe_load(open(path))
    try:
        validate_config(prepare_config(config))
        verdict = "valid"
    except BaseException as exc:  # Ray aborts some checks with click exceptions
        verdict = f"{type(exc).__name__}: {exc}"
    bad_shell = [c for key in LISTS for c in config.get(key, [])
                 if subprocess.run(["bash", "-n", "-c", c]).returncode]
    results[path] = {"ray": verdict, "bad_shell": bad_shell}
print("RESULTS" + json.dumps(results))
'''
# What `ray up` uploads to the head as ~/ray_bootstrap_config.yaml: the prepared config, its
# file mounts at their node paths, the login key at ~/ray_bootstrap_key.pem. No machines for the
# autoscaler here (no sshd): the test starts the worker as the launcher would.
BOOTSTRAP = r'''
import yaml
from ray.autoscaler._private.util import prepare_config
config = yaml.safe_load(open("/root/launcher.yaml"))
config["provider"]["worker_ips"] = []
config["max_workers"] = 0
config = prepare_config(config)
config["file_mounts"] = {path: path for path in config["file_mounts"]}
config["auth"]["ssh_private_key"] = "~/ray_bootstrap_key.pem"
yaml.safe_dump(config, open("/root/ray_bootstrap_config.yaml", "w"))
'''


def generate(root: Path, provider: str, *more: str, name: str = "") -> Path:
    """The real command, with only test files and no SYNTHO_AGENT_* from the environment."""
    (root / "id").write_text("not a real key\n")
    (root / "id.pub").write_text("ssh-ed25519 AAAAC3Nza test\n")
    (root / "registry-password").write_text("not-a-real-password\n")
    out = root / f"{name or provider}.yaml"
    args = ["launcher-config", "--provider", provider, *PROVIDERS[provider], *more, "--data-dir",
            str(root / "data"), "--ssh-public-key", str(root / "id.pub"), "--output", str(out),
            "--registry", "registry.example.com", "--registry-user", "syntho",
            "--registry-password-file", str(root / "registry-password")]
    if provider == "local":
        args += ["--ssh-private-key", str(root / "id")]
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("SYNTHO_AGENT_")}
    env["SYNTHO_AGENT_LICENSE_KEY"] = "test-license"
    result = CliRunner().invoke(cli.cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def broken(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Configs Ray must refuse: the negative controls of the check."""
    bad = {name: copy.deepcopy(configs[source]) for name, source in (
        ("docker-key", "aws"), ("min-over-max", "gcp"), ("local-node-types", "local"),
        ("fractional-cpu", "azure"))}
    bad["docker-key"]["docker"]["restart"] = "always"
    bad["min-over-max"]["available_node_types"]["ray.worker.default"]["min_workers"] = 9
    bad["local-node-types"]["available_node_types"] = configs["aws"]["available_node_types"]
    bad["local-node-types"]["head_node_type"] = "ray.head.default"
    bad["fractional-cpu"]["available_node_types"]["ray.head.default"]["resources"]["CPU"] = 2.5
    return bad


REFUSALS = {
    "docker-key": "Additional properties are not allowed ('restart' was unexpected)",
    "min-over-max": "max_workers` is smaller than the sum of `min_workers",
    "local-node-types": "available_node_types is not supported for on-premise clusters",
    "fractional-cpu": "2.5 is not of type 'integer'",
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("launcher")
    files = {provider: generate(root, provider) for provider in PROVIDERS}
    # For the start commands' test: the local cluster with Ray in plain (its two containers
    # are not the machines the certificate names; test_ray_up runs Ray's TLS live).
    files["local-plain"] = generate(root, "local", "--no-ray-tls", name="local-plain")
    return files


@pytest.fixture(scope="module")
def verdicts(docker_client: docker.DockerClient, images: dict[str, str],
             generated: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Every file through Ray's checks in one container, removed whatever happens."""
    configs = {name: yaml.safe_load(path.read_text()) for name, path in generated.items()}
    files = {f"/work/{name}.yaml": path.read_bytes() for name, path in generated.items()}
    files.update({f"/work/{name}.yaml": yaml.safe_dump(config).encode()
                  for name, config in broken(configs).items()})
    files["/work/check.py"] = CHECK.encode()
    paths = sorted(p for p in files if p.endswith(".yaml"))
    container = docker_client.containers.create(
        images["ray"], ["python", "/work/check.py", *paths],
        name=f"launcher-check-{uuid.uuid4().hex[:6]}", labels={TEST_LABEL: "launcher-schema"})
    try:
        container.put_archive("/", tar(files))
        container.start()
        status = container.wait(timeout=300)
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert status["StatusCode"] == 0, logs
    line = next(ln for ln in logs.splitlines() if ln.startswith("RESULTS"))
    results: dict[str, dict[str, Any]] = json.loads(line[len("RESULTS"):])
    return {Path(path).stem: verdict for path, verdict in results.items()}


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_ray_accepts_the_config(verdicts: dict[str, dict[str, Any]], provider: str) -> None:
    assert verdicts[provider] == {"ray": "valid", "bad_shell": []}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_ray_refuses_a_broken_config(verdicts: dict[str, dict[str, Any]], name: str) -> None:
    assert REFUSALS[name] in verdicts[name]["ray"]


def node_files(config: dict[str, Any]) -> dict[str, bytes]:
    """The file mounts where Ray's launcher puts them in the container (~ is root's home)."""
    return {node.replace("~/", "/root/"): Path(local).read_bytes()
            for node, local in config["file_mounts"].items()}


def run_commands(container: Any, commands: list[str], prefix: str = "") -> None:
    """As Ray's docker command runner does: ~/ expanded to the container's home, one bash each."""
    for command in commands:
        code, out = container.exec_run(["bash", "-c", prefix + command.replace("~/", "/root/")])
        assert code == 0, f"{command}: {out.decode(errors='replace')[-2000:]}"


@pytest.fixture
def local_config(generated: dict[str, Path]) -> Iterator[dict[str, Any]]:
    yield yaml.safe_load(generated["local-plain"].read_text())


def test_the_start_commands_form_an_authenticated_cluster(
        sandbox: Sandbox, images: dict[str, str], local_config: dict[str, Any]) -> None:
    network = sandbox.create_network()
    files = node_files(local_config)
    token = files["/etc/syntho/ray-token"].decode().strip()
    head = sandbox.run(images["ray"], "head", command=["sleep", "infinity"], network=network,
                       shm_size="1g")
    head.put_archive("/", tar({**files, "/root/launcher.yaml": yaml.safe_dump(
        local_config).encode(), "/root/bootstrap.py": BOOTSTRAP.encode(),
        "/root/ray_bootstrap_key.pem": b"unused\n"}))
    run_commands(head, ["python /root/bootstrap.py", *local_config["head_start_ray_commands"]])
    head_ip = ip_on(head, network)
    worker = sandbox.run(images["ray"], "worker", command=["sleep", "infinity"],
                         network=network, shm_size="1g")
    worker.put_archive("/", tar(files))
    # Ray's launcher prefixes a worker's commands with the head's address.
    run_commands(worker, local_config["worker_start_ray_commands"],
                 f"export RAY_HEAD_IP={head_ip}; ")

    assert poll(lambda: len(cluster.alive_nodes(head_ip, token)) == 2, 60, "2 nodes alive")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://{head_ip}:8265/api/v0/nodes", timeout=10)
    assert refused.value.code == 401  # token auth is on
    # The autoscaler on the head (started by `ray start --autoscaling-config`) reaches the GCS
    # with the token and runs its loop.
    monitor = "/tmp/ray/session_latest/logs/monitor.log"
    assert poll(lambda: head.exec_run(["grep", "-q", "update iteration", monitor]).exit_code
                == 0, 60, "the autoscaler's loop")
    # The token is in no process's command line, on either node.
    for node in (head, worker):
        code, out = reads.read(node, ["ps", "-eo", "args"])
        assert code == 0 and "raylet" in out  # the check sees Ray's processes
        assert token not in out
    # The license key reached Ray's processes from its file.
    code, out = reads.read(head, ["bash", "-c", "cat /proc/$(pgrep -f raylet | head -1)/environ"])
    assert code == 0 and "LICENSE_KEY_SIGNED=test-license" in out
