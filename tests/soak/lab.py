"""The soak lab: the four VMs of tests/integration/test_vms.py, each running its role with
`--watch` under a supervisor that behaves as the installed systemd unit does.

The supervisor is /etc/boot.sh in each VM, so the VM image's init (vm-init.sh) runs it again
at every reboot, exactly as a boot would run the unit. It restarts the agent 5 s after any exit
but 2 (the unit's Restart=always, RestartSec=5, RestartPreventExitStatus=2) and keeps the
agent's pid in /run/syntho-agent.pid, so a fault can SIGKILL it.
"""

from __future__ import annotations

import secrets
import shlex
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from tests.support.constants import NOFILE
from tests.support.engine import connect
from tests.support.sandbox import Sandbox
from tests.support.vms import (
    DATA,
    GCS_REDIS_REPO,
    PASSWORD,
    RAY_REPO,
    USER,
    VM,
    Lab,
    lab_of_vms,
    send_images,
)

AGENT_PID = "/run/syntho-agent.pid"
AGENT_LOG = "/var/log/agent.log"
TOKEN_FILE = "/etc/syntho-agent/ray-token"
REGISTRY_PASSWORD_FILE = "/etc/syntho-agent/registry-password"
MANAGED = "io.syntho.agent.managed=true"
SERVICE_LABEL = "io.syntho.agent.service"
# What each role runs (README, "Roles"): a VM with anything else labelled by the agent for
# long has a container the agent lost track of.
EXPECTED = {
    "head": ("ray-head", "ray-dashboard-tls"),  # a new cluster's Ray speaks TLS
    "w1": ("ray-worker",),
    "w2": ("ray-worker",),
    "app": ("syntho-postgres", "syntho-redis", "syntho-core", "syntho-core_worker",
            "syntho-ray-relay", "syntho-backend", "syntho-worker", "syntho-frontend"),
}
SUPERVISOR = """#!/bin/sh
# As the systemd unit of `syntho-agent install`: Restart=always, RestartSec=5,
# RestartPreventExitStatus=2. vm-init.sh runs this file at every boot.
while true; do
    echo "supervisor: starting the agent at $(date +%s)" >> {log}
    {command} >> {log} 2>&1 &
    echo $! > {pid}
    wait $!
    rc=$?
    echo "supervisor: the agent exited $rc at $(date +%s)" >> {log}
    [ "$rc" = 2 ] && exit 2
    sleep 5
done
"""


def safe_sh(vm: VM, script: str, timeout: int = 30) -> tuple[int, str, str]:
    """vm.sh bounded in time, and (-1, "", why) when the VM is not running (a reboot)."""
    try:
        return vm.sh(f"timeout {timeout} sh -c {shlex.quote(script)}")
    except docker.errors.APIError as exc:
        return -1, "", str(exc)


@dataclass
class SoakLab:
    """The VMs, the cluster token, and the network they are on."""

    sandbox: Sandbox
    vms: dict[str, VM]
    lan: str
    token: str
    ray_image: str  # the Ray image's reference on vm-w2's engine (any Ray image will do)
    gcs_ft: bool
    setup_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def expected(self) -> dict[str, tuple[str, ...]]:
        """What each VM runs: EXPECTED, and the head's GCS Redis with GCS fault tolerance."""
        if not self.gcs_ft:
            return EXPECTED
        return {**EXPECTED, "head": ("gcs-redis", *EXPECTED["head"])}

    def on(self, client: docker.DockerClient) -> dict[str, VM]:
        """The same VMs through another client (one per thread: the SDK's is not shared)."""
        return {name: VM(vm.name, vm.ip, client.containers.get(vm.container.id))
                for name, vm in self.vms.items()}

    @property
    def frontend_url(self) -> str:
        return f"http://{self.vms['app'].ip}:3000/"


def role_args(name: str, vms: dict[str, VM], registry: str, images: dict[str, str],
              gcs_ft: bool) -> list[str]:
    """Each VM's command line, as its config file would give it (secrets in files)."""
    head = vms["head"].ip
    common = ["--nofile", NOFILE, "--shm-size", "1gb", "--token-file", TOKEN_FILE]
    pull = ["--registry", registry, "--registry-user", USER,
            "--registry-password-file", REGISTRY_PASSWORD_FILE, "--ray-image", RAY_REPO]
    if name == "head":
        gcs = ["--gcs-redis-image", f"{registry}/{GCS_REDIS_REPO}"] if gcs_ft else ["--no-gcs-ft"]
        return ["head", *common, *pull, *gcs]
    if name == "w1":
        return ["worker", "--head", head, *common, *pull]
    if name == "w2":
        return ["worker", "--head", head, *common, "--images", "/root/images",
                "--ray-image", images["ray"]]
    return ["app", "--head", head, "--token-file", TOKEN_FILE, "--images", "/root/images",
            "--core-image", images["core"], "--backend-image", images["backend"],
            "--frontend-image", images["frontend"], "--postgres-image", images["postgres"],
            "--redis-image", images["redis"], "--ready-timeout", "300"]


def install_supervisor(vm: VM, args: list[str]) -> None:
    command = " ".join(shlex.quote(a) for a in ["syntho-agent", *args, "--watch"])
    script = SUPERVISOR.format(command=command, log=AGENT_LOG, pid=AGENT_PID)
    vm.sh("printf '%s' \"$BOOT\" > /etc/boot.sh && chmod 700 /etc/boot.sh", env={"BOOT": script})


def boot_agent(vm: VM) -> None:
    """Start the supervisor as vm-init.sh does at boot (in the background, detached)."""
    vm.container.exec_run(["sh", "-c", "/etc/boot.sh >> /var/log/boot.log 2>&1 < /dev/null"],
                          detach=True)


def start_engine(vm: VM) -> None:
    """dockerd started again the way vm-init.sh starts it (DOCKERD_ARGS from the VM's env)."""
    vm.container.exec_run(
        ["sh", "-c", "rm -f /var/run/docker.pid /run/docker/containerd/containerd.pid; "
         "exec dockerd --host unix:///var/run/docker.sock ${DOCKERD_ARGS:-} "
         ">>/var/log/dockerd.log 2>&1 < /dev/null"], detach=True)


def agent_log(vm: VM) -> str:
    return safe_sh(vm, f"cat {AGENT_LOG}")[1]


@contextmanager
def soak_lab(client: docker.DockerClient, images: dict[str, str], tmp: Path,
             gcs_ft: bool = True, lab: Lab | None = None) -> Iterator[SoakLab]:
    """Four new VMs with every role started (not yet converged: see healthy.wait_healthy), in
    `lab` (the tests' shared one) or in a lab of its own (bench/soak.py); the VMs removed
    afterwards, pass or fail, and a lab of its own with them."""
    began = time.time()
    with ExitStack() as own:
        if lab is None:
            lab = own.enter_context(lab_of_vms(client, images, tmp))
        try:
            vms = lab.fresh()
            token = secrets.token_hex(32)  # chosen up front, as the cloud-init examples do
            for name, vm in vms.items():
                vm.sh(f"mkdir -p /etc/syntho-agent && umask 077 && printf '%s\\n' \"$T\" > "
                      f"{TOKEN_FILE} && printf '%s\\n' \"$P\" > {REGISTRY_PASSWORD_FILE}",
                      env={"T": token, "P": PASSWORD})
                install_supervisor(vm, role_args(name, vms, lab.registry, images, gcs_ft))
            bundles = [threading.Thread(target=send_images, args=(vms["w2"], [images["ray"]],
                                                                  "/root/images/ray.tar")),
                       threading.Thread(target=send_images, args=(
                           vms["app"], [images[n] for n in ("core", "backend", "frontend",
                                                            "postgres", "redis")],
                           "/root/images/app.tar"))]
            for t in bundles:
                t.start()
            for t in bundles:
                t.join()
            for vm in vms.values():
                boot_agent(vm)
            yield SoakLab(lab.sandbox, vms, lab.lan, token, images["ray"], gcs_ft,
                          setup_seconds=time.time() - began)
        finally:
            lab.remove_vms()


def fresh_client() -> docker.DockerClient:
    return connect(timeout=120)


__all__ = ["DATA", "SoakLab", "agent_log", "boot_agent", "fresh_client", "safe_sh",
           "soak_lab", "start_engine"]
