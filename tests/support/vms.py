"""Simulated VMs: containers of the VM test image (tests/images/vm), each its own Docker engine
(Docker-in-Docker) and sshd, on a private network with fixed addresses; and what a lab of them
needs: the registry's images, the zipapp copied in, files sent in.

Shared by tests/integration/test_vms.py, test_ray_up.py and the soak: one lab for the three
(the `vm_lab` fixture of tests/conftest.py), four new VMs for each.
"""

from __future__ import annotations

import functools
import io
import json
import secrets
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.models.containers

from agent.waits import poll
from tests.integration.agent_helpers import start_registry
from tests.support import reads
from tests.support.constants import REPO, TEST_LABEL
from tests.support.sandbox import Sandbox

USER, PASSWORD = "syntho", "vm-registry-pass-91c2"  # the lab registry's login
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
        return self._run(["sh", "-c", script], env)

    def agent(self, *args: str, env: dict[str, str] | None = None) -> str:
        code, out, err = self._run(["syntho-agent", *args], env)
        assert code == 0, f"{self.name}: syntho-agent {args[0]} exited {code}\n{out}\n{err}"
        return out

    def _run(self, argv: list[str], env: dict[str, str] | None) -> tuple[int, str, str]:
        """(exit code, standard output, standard error) of argv, run once in the VM. Its output
        goes to files there, read back checked end to end (tests/support/reads.py: an exec's
        output may be lost on the way, and argv need not be safe to run twice; a read is)."""
        files = f"/tmp/.vm-exec-{secrets.token_hex(6)}"
        code = self.container.exec_run(
            ["sh", "-c", f'"$@" > {files}.out 2> {files}.err', "sh", *argv],
            environment=env or {}).exit_code
        texts = []
        for stream in ("out", "err"):
            found, text = reads.read(self.container, ["cat", f"{files}.{stream}"])
            assert found == 0, f"{self.name}: the output of {argv[0]} is gone: {text}"
            texts.append(text)
        self.container.exec_run(["rm", "-f", f"{files}.out", f"{files}.err"])
        return int(code), texts[0], texts[1]

    def inner(self, *cmd: str) -> str:
        code, out, err = self.sh(" ".join(cmd))
        assert code == 0, f"{self.name}: {cmd}: {out}{err}"
        return out


NAMES = ("head", "w1", "w2", "app")  # the lab's VMs: vm-NAME at PREFIX.(10 + n)


@dataclass
class Lab:
    """The simulated VMs on their private network, and the registry they pull from.

    One lab serves every module that needs VMs (test_ray_up, test_vms, the short soak): the
    network, the registry with its pushed images and the zipapp are made once; each module
    starts from four new VMs (`fresh()`: new engines, new disks), so none sees another's.
    """

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

    def fresh(self) -> dict[str, VM]:
        """Every VM there is removed (its container and disk) and the four booted anew, as the
        module before found them; the VMs."""
        self.remove_vms()
        for n, name in enumerate(NAMES):
            vm = start_vm(self.sandbox, self.lan, self.registry, self.image, name,
                          f"{self.prefix}.{10 + n}")
            self.vms[name] = vm
        binary = zipapp()
        for vm in self.vms.values():
            if not poll(functools.partial(docker_answers, vm), 120, f"{vm.name} engine"):
                raise RuntimeError(f"vm-{vm.name}: its engine did not start")
            copy_file(vm, binary, "/usr/local/bin", "syntho-agent")
        print(f"lab: four new VMs ({', '.join(NAMES)}) on {self.lan}", flush=True)
        return self.vms

    def remove_vms(self) -> None:
        client = self.sandbox.client
        for name in list(self.vms):
            del self.vms[name]
        for c in client.api.containers(all=True, filters={
                "label": f"{TEST_LABEL}={self.sandbox.id}"}):
            if any(n.startswith(f"/{self.sandbox.id}-vm-") for n in c.get("Names") or []):
                client.api.remove_container(c["Id"], force=True, v=True)
        for v in client.api.volumes(filters={"label": f"{TEST_LABEL}={self.sandbox.id}"}
                                    ).get("Volumes") or []:
            if v["Name"].startswith(f"{self.sandbox.id}-vm-"):
                client.api.remove_volume(v["Name"], force=True)


@contextmanager
def lab_of_vms(client: docker.DockerClient, images: dict[str, str], tmp: Path) -> Iterator[Lab]:
    """The lan, the registry (its images pushed) and the zipapp; no VM until `fresh()`.
    Everything removed afterwards, pass or fail."""
    sandbox = Sandbox(client, tmp)
    registry_proc = None
    try:
        lan, gateway = fixed_lan(client, sandbox)
        prefix = gateway.rsplit(".", 1)[0]
        # The registry, on the host: the VMs reach it at the network's gateway.
        registry_proc, port = start_registry(sandbox.tmp, USER, PASSWORD, listen="0.0.0.0")
        push_images(client, images, port)
        zipapp()
        yield Lab(sandbox, {}, f"{gateway}:{port}", str(lan.name), prefix, images["vm"])
    finally:
        sandbox.cleanup()
        if registry_proc is not None:
            registry_proc.terminate()
            registry_proc.wait(timeout=10)


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


def core_status(app: VM) -> dict[str, Any]:
    """What the app's core (the stand-in) reports of its dependencies; {} while it cannot."""
    code, out, _ = app.sh("docker exec syntho-core curl -fsS http://localhost:8080/api/v1/status")
    return json.loads(out) if code == 0 else {}
