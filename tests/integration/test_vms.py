"""The product as it is used: four simulated VMs, each its own Docker engine (Docker-in-Docker),
nothing in them but Docker and a Python 3, and the zipapp copied in and run as an operator would.

vm-head runs `head`, vm-w1 and vm-w2 `worker --head <vm-head>`, vm-app `app --head <vm-head>`.
Images reach vm-head and vm-w1 from a registry with htpasswd auth, vm-w2 and vm-app from an
offline bundle. Then vm-head reboots (its container restarts: engine and all) and its agent runs
as boot would: the workers rejoin and the app is healthy again with no manual step.
"""

from __future__ import annotations

import functools
import io
import json
import subprocess
import tarfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from agent import cluster
from agent.waits import poll
from tests.integration.agent_helpers import start_registry
from tests.support.constants import NOFILE, REPO, TEST_LABEL
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

USER, PASSWORD = "syntho", "vm-registry-pass-91c2"
RAY_REPO = "syntho/syntho-ray:test"
GCS_REDIS_REPO = "syntho/redis:test"  # the head's GCS Redis (GCS fault tolerance)
DATA = "/var/lib/syntho-agent"


def push_images(client: docker.DockerClient, images: dict[str, str], port: int) -> None:
    """The Ray image and the head's GCS Redis into the lab's registry (on this host's port)."""
    local = f"127.0.0.1:{port}"
    for source, ref in ((images["ray"], RAY_REPO), (images["redis"], GCS_REDIS_REPO)):
        repo, tag = f"{local}/{ref}".rsplit(":", 1)
        client.images.get(source).tag(repo, tag)
        for line in client.images.push(repo, tag, auth_config={"username": USER,
                                                               "password": PASSWORD},
                                       stream=True, decode=True):
            if "error" in line:
                raise RuntimeError(f"pushing {ref}: {line}")
        client.images.remove(f"{local}/{ref}")


@dataclass
class VM:
    name: str
    ip: str
    container: docker.models.containers.Container

    def sh(self, script: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        code, (out, err) = self.container.exec_run(["sh", "-c", script], environment=env or {},
                                                   demux=True)
        return int(code), (out or b"").decode(errors="replace"), (err or b"").decode(
            errors="replace")

    def agent(self, *args: str, env: dict[str, str] | None = None) -> str:
        code, (out, err) = self.container.exec_run(["syntho-agent", *args],
                                                   environment=env or {}, demux=True)
        text = (out or b"").decode(errors="replace")
        assert code == 0, f"{self.name}: syntho-agent {args[0]} exited {code}\n{text}\n{err!r}"
        return text

    def inner(self, *cmd: str) -> str:
        code, out, err = self.sh(" ".join(cmd))
        assert code == 0, f"{self.name}: {cmd}: {out}{err}"
        return out


@dataclass
class Lab:
    """The simulated VMs on their private network, and the registry they pull from."""

    sandbox: Sandbox
    vms: dict[str, VM]
    registry: str
    lan: str  # the network's name
    prefix: str  # its first three octets: VM n is PREFIX.(10 + n)
    image: str  # the VM image

    def boot(self, name: str, ip: str) -> VM:
        """A new VM (its own engine and volume) on the lan, with the zipapp in it."""
        vm = start_vm(self.sandbox, self.lan, self.registry, self.image, name, ip)
        assert poll(functools.partial(docker_answers, vm), 120, f"{vm.name} engine")
        copy_file(vm, zipapp(), "/usr/local/bin", "syntho-agent")
        self.vms[name] = vm
        return vm


def fixed_lan(docker_client: docker.DockerClient,
              sandbox: Sandbox) -> tuple[docker.models.networks.Network, str]:
    """A private network with a fixed subnet, so a rebooted VM keeps its address; and its
    gateway (where the VMs reach the host)."""
    probe = docker_client.networks.create(f"{sandbox.id}-probe", labels=sandbox.labels)
    subnet = probe.attrs["IPAM"]["Config"][0]["Subnet"]
    gateway = str(probe.attrs["IPAM"]["Config"][0]["Gateway"])
    probe.remove()
    ipam = docker.types.IPAMConfig(pool_configs=[
        docker.types.IPAMPool(subnet=subnet, gateway=gateway)])
    lan = docker_client.networks.create(f"{sandbox.id}-lan", ipam=ipam, labels=sandbox.labels)
    return lan, gateway


def start_vm(sandbox: Sandbox, lan: str, registry: str, image: str, name: str, ip: str) -> VM:
    client = sandbox.client
    volume = client.volumes.create(f"{sandbox.id}-vm-{name}", labels=sandbox.labels)
    # The CLI, not the SDK: the SDK has no systempaths=unconfined (masked paths).
    subprocess.run(
        ["docker", "run", "-d", "--name", f"{sandbox.id}-vm-{name}",
         "--hostname", f"vm-{name}", "--label", f"{TEST_LABEL}={sandbox.id}",
         "--network", lan, "--ip", ip,
         "--env", f"DOCKERD_ARGS=--insecure-registry {registry}",
         "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
         "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
         "--security-opt", "systempaths=unconfined",
         "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "-v", f"{volume.name}:/var/lib/docker",
         image], check=True, capture_output=True)
    return VM(name, ip, client.containers.get(f"{sandbox.id}-vm-{name}"))


def docker_answers(vm: VM) -> bool:
    return vm.sh("docker info")[0] == 0


def zipapp() -> Path:
    """The zipapp for this machine, built by build.py (cached by the build itself)."""
    subprocess.run([str(REPO / ".venv/bin/python"), "build.py"], cwd=REPO, check=True,
                   capture_output=True)
    path = REPO / "dist/syntho-agent"
    assert path.is_file(), "build.py did not produce dist/syntho-agent"
    return path


def copy_file(vm: VM, source: Path, target_dir: str, name: str, mode: int = 0o755) -> None:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tar.gettarinfo(str(source), arcname=name)
        info.mode = mode
        with source.open("rb") as f:
            tar.addfile(info, f)
    vm.sh(f"mkdir -p {target_dir}")
    assert vm.container.put_archive(target_dir, data.getvalue())


def send_images(vm: VM, refs: list[str], path: str) -> None:
    """An offline bundle, as an operator would copy it: `docker save` into a file on the VM."""
    vm.sh(f"mkdir -p {Path(path).parent}")
    save = subprocess.Popen(["docker", "save", *refs], stdout=subprocess.PIPE)
    subprocess.run(["docker", "exec", "-i", vm.container.name, "sh", "-c", f"cat > {path}"],
                   stdin=save.stdout, check=True)
    assert save.wait() == 0


@pytest.fixture(scope="module")
def lab(docker_client: docker.DockerClient, images: dict[str, str],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    sandbox = Sandbox(docker_client, tmp_path_factory.mktemp("vms"))
    registry_proc = None
    try:
        lan, gateway = fixed_lan(docker_client, sandbox)
        prefix = gateway.rsplit(".", 1)[0]

        # The registry, on the host: the VMs reach it at the network's gateway.
        registry_proc, port = start_registry(sandbox.tmp, USER, PASSWORD, listen="0.0.0.0")
        registry = f"{gateway}:{port}"
        push_images(docker_client, images, port)

        vms: dict[str, VM] = {}
        for n, name in enumerate(["head", "w1", "w2", "app"]):
            vms[name] = start_vm(sandbox, lan.name, registry, images["vm"], name,
                                 f"{prefix}.{10 + n}")
        app_binary = zipapp()
        for vm in vms.values():
            assert poll(functools.partial(docker_answers, vm), 120, f"{vm.name} engine")
            copy_file(vm, app_binary, "/usr/local/bin", "syntho-agent")
        yield Lab(sandbox, vms, registry, lan.name, prefix, images["vm"])
    finally:
        sandbox.cleanup()
        if registry_proc is not None:
            registry_proc.terminate()
            registry_proc.wait(timeout=10)


def core_status(app: VM) -> dict[str, Any]:
    code, out, _ = app.sh("docker exec syntho-core curl -fsS http://localhost:8080/api/v1/status")
    return json.loads(out) if code == 0 else {}


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_four_vms_form_the_deployment_and_survive_a_head_reboot(
        lab: Lab, images: dict[str, str]) -> None:
    vms, registry = lab.vms, lab.registry
    head, w1, w2, app = vms["head"], vms["w1"], vms["w2"], vms["app"]
    pull = ["--registry", registry, "--registry-user", USER]
    secret = {"SYNTHO_AGENT_REGISTRY_PASSWORD": PASSWORD}
    common = ["--nofile", NOFILE, "--shm-size", "1gb"]

    # The head, from the registry; its boot script is the same command (as `install` sets up).
    head_args = ["head", *common, *pull, "--ray-image", RAY_REPO, "--gcs-redis-image",
                 f"{registry}/{GCS_REDIS_REPO}"]
    out = head.agent(*head_args, env=secret)
    assert f"pulled {registry}/{RAY_REPO}" in out and "ray head ready" in out
    code, token, _ = head.sh(f"cat {DATA}/ray-token")
    token = token.strip()
    assert code == 0 and len(token) == 64

    # Worker 1 from the registry (token in the environment), worker 2 from a bundle (file).
    out = w1.agent("worker", "--head", head.ip, *common, *pull, "--ray-image", RAY_REPO,
                   env={**secret, "SYNTHO_AGENT_TOKEN": token})
    assert "joined the Ray cluster" in out
    send_images(w2, [images["ray"]], "/root/images/ray.tar")
    for vm in (w2, app):
        vm.sh("mkdir -p /etc/syntho-agent && umask 077 && printf '%s\\n' \"$T\" "
              "> /etc/syntho-agent/ray-token", env={"T": token})
    out = w2.agent("worker", "--head", head.ip, *common, "--images", "/root/images",
                   "--ray-image", images["ray"], "--token-file", "/etc/syntho-agent/ray-token")
    assert "loaded " in out and "joined the Ray cluster" in out
    assert len(cluster.alive_nodes(head.ip, token)) == 3

    # The app, from a bundle.
    app_refs = [images[n] for n in ("core", "backend", "frontend", "postgres", "redis")]
    send_images(app, app_refs, "/root/images/app.tar")
    out = app.agent("app", "--head", head.ip, "--images", "/root/images",
                    "--token-file", "/etc/syntho-agent/ray-token",
                    "--core-image", images["core"], "--backend-image", images["backend"],
                    "--frontend-image", images["frontend"], "--postgres-image",
                    images["postgres"], "--redis-image", images["redis"],
                    "--ready-timeout", "300")
    assert "the app is up" in out and token not in out
    status = core_status(app)
    ray = status["dependencies"]["ray"]
    assert ray["task_result"] == 49 and ray["alive_nodes"] == 3
    assert http_ok(f"http://{app.ip}:3000/")  # from outside vm-app
    app.inner("docker exec syntho-postgres psql -U syntho -d syntho-backend -c "
              "\"CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before-reboot')\"")

    # Reboot vm-head: its engine and everything in it restart; boot runs the agent again.
    boot = "#!/bin/sh\nexec syntho-agent " + " ".join(head_args) + "\n"
    head.sh("printf '%s' \"$BOOT\" > /etc/boot.sh && chmod 700 /etc/boot.sh",
            env={"BOOT": boot})
    head.container.restart(timeout=10)
    assert poll(lambda: len(cluster.alive_nodes(head.ip, token)) == 3, 300,
                "both workers rejoined the rebooted head"), cluster.alive_nodes(head.ip, token)
    code, boot_log, _ = head.sh("cat /var/log/boot.log")
    assert "ray head ready" in boot_log, boot_log
    assert head.sh(f"cat {DATA}/ray-token")[1].strip() == token  # never regenerated

    def app_healthy_again() -> bool:
        ray = core_status(app).get("dependencies", {}).get("ray", {})
        return bool(ray.get("ok")) and ray.get("alive_nodes") == 3 and http_ok(
            f"http://{app.ip}:3000/")

    assert poll(app_healthy_again, 300, "the app healthy on the rebooted head"), core_status(app)
    rows = app.inner("docker exec syntho-postgres psql -U syntho -d syntho-backend -Atc "
                     "'SELECT v FROM kept'")
    assert rows.strip() == "before-reboot"


def test_disaster_drill_the_app_vm_is_lost_and_restored_on_a_new_one(
        lab: Lab, images: dict[str, str], tmp_path: Path) -> None:
    """Back up on vm-app, destroy vm-app (its engine, volumes and disk), restore on a new VM
    from the archive and its key alone: the same data, the Ray cluster joined again."""
    head, app = lab.vms["head"], lab.vms["app"]
    app.inner("docker exec syntho-postgres psql -U syntho -d syntho-backend -c "
              "\"INSERT INTO kept VALUES ('before-the-disaster')\"")
    key = "drill-key-0123456789abcdef0123456789"
    app.sh("umask 077 && printf '%s\\n' \"$K\" > /root/backup.key", env={"K": key})
    out = app.agent("backup", "--encrypt-key-file", "/root/backup.key", "--output", "/root")
    name = out.split("wrote /root/", 1)[1].split(" ", 1)[0]
    bits, _ = app.container.get_archive(f"/root/{name}")
    saved = tmp_path / "archive.tar"
    with saved.open("wb") as f:
        for chunk in bits:
            f.write(chunk)
    with tarfile.open(saved) as tar:
        tar.extract(name, tmp_path)
    # The disaster: the VM, its engine and its disk are gone.
    app.container.remove(force=True)
    lab.sandbox.client.volumes.get(f"{lab.sandbox.id}-vm-app").remove(force=True)
    del lab.vms["app"]

    new = lab.boot("app2", f"{lab.prefix}.20")
    app_refs = [images[n] for n in ("core", "backend", "frontend", "postgres", "redis")]
    send_images(new, app_refs, "/root/images/app.tar")
    copy_file(new, tmp_path / name, "/root", name, mode=0o600)
    new.sh("umask 077 && printf '%s\\n' \"$K\" > /root/backup.key", env={"K": key})
    out = new.agent("restore", f"/root/{name}", "--head", head.ip, "--images", "/root/images",
                    "--encrypt-key-file", "/root/backup.key",
                    "--core-image", images["core"], "--backend-image", images["backend"],
                    "--frontend-image", images["frontend"], "--postgres-image",
                    images["postgres"], "--redis-image", images["redis"],
                    "--ready-timeout", "300")
    assert "every checksum matches" in out and "the app is up" in out, out
    rows = new.inner("docker exec syntho-postgres psql -U syntho -d syntho-backend -Atc "
                     "'SELECT v FROM kept ORDER BY v'")
    assert rows.split() == ["before-reboot", "before-the-disaster"]
    ray = core_status(new)["dependencies"]["ray"]
    assert ray["task_result"] == 49 and ray["alive_nodes"] == 3
    assert http_ok(f"http://{new.ip}:3000/")  # from outside the new VM
