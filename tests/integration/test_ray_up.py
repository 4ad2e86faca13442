"""Ray's own cluster launcher (`ray up`, local provider) with what `launcher-config` writes, as an
on-premises operator runs it.

Four simulated VMs (tests/support/vms.py: Docker-in-Docker, sshd, a user `ubuntu` with sudo and
the docker group) and an operator machine (the Ray test image: the same Ray, an SSH client and
rsync). The operator makes an SSH key (its public half goes into each VM's authorized_keys, as a
cloud does), writes the config with the zipapp and runs `ray up`: Ray logs in to the lab's
registry on every VM with the password file, runs the syntho-ray image with token auth and in
mutual TLS (a local cluster's default), and the head's autoscaler brings up both workers. The app
role joins from a fourth VM with the launcher's token (and follows the head's TLS). Then the head
VM reboots (its container restarts), `ray up` brings the cluster back, and `ray down` removes the
Ray containers.

About 5 minutes: four new VMs of the shared lab ~20 s (tests/conftest.py `vm_lab`: its registry
and images are there already), each `ray up` and its workers ~1.5 min, the app ~35 s, `ray down`
~25 s.
"""

from __future__ import annotations

import functools
import http.client
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from agent import cluster, ray_tls
from agent.waits import http_ok, poll, tcp_open
from tests.support.constants import NOFILE
from tests.support.vms import (
    PASSWORD,
    RAY_REPO,
    USER,
    VM,
    Lab,
    copy_file,
    core_status,
    docker_answers,
    send_images,
    zipapp,
)

pytestmark = pytest.mark.integration

CONTAINER = "syntho-ray"  # launcher-config's default --container-name
KEY = "/root/.ssh/id_ed25519"  # the operator's login key
CONFIG = "/root/cluster.yaml"
DATA_DIR = "/root/syntho"  # launcher-config's --data-dir: the Ray token is kept there
APP_TOKEN = "/etc/syntho-agent/ray-token"
# Ray's launcher as an operator runs it: no cached config, no usage stats prompt.
RAY_UP = ["ray", "up", "-y", CONFIG, "--no-config-cache", "--disable-usage-stats"]
APP_IMAGES = ("core", "backend", "frontend", "postgres", "redis")


@dataclass
class LauncherLab:
    vms: dict[str, VM]  # head, w1, w2 (the launcher's) and app
    operator: VM  # where `launcher-config` and `ray up` run
    registry: str  # HOST:PORT, as the VMs reach it

    def on_operator(self, *cmd: str, stdin: str = "", timeout: float = 600,
                    check: bool = True) -> str:
        """A command on the operator machine; its output, asserted to succeed unless `check`
        is False (then a failure's output is returned after a line that says it failed)."""
        proc = subprocess.run(["docker", "exec", "-i", self.operator.container.name, *cmd],
                              input=stdin, capture_output=True, text=True, timeout=timeout)
        out = proc.stdout + proc.stderr
        failed = f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-6000:]}"
        assert proc.returncode == 0 or not check, failed
        return out if proc.returncode == 0 else failed


@pytest.fixture(scope="module")
def lab(vm_lab: Lab, images: dict[str, str]) -> Iterator[LauncherLab]:
    vms = vm_lab.fresh()
    operator = vm_lab.sandbox.run(images["ray"], "operator", command=["sleep", "infinity"],
                                  network=vm_lab.lan)
    try:
        operator.reload()
        op = VM("operator", operator.attrs["NetworkSettings"]["Networks"][vm_lab.lan][
            "IPAddress"], operator)
        copy_file(op, zipapp(), "/usr/local/bin", "syntho-agent")
        for vm in vms.values():
            assert poll(functools.partial(tcp_open, vm.ip, 22), 60, f"{vm.name} sshd")
        yield LauncherLab(vms, op, vm_lab.registry)
    finally:
        operator.remove(force=True)
        vm_lab.remove_vms()


def give_operator_access(lab: LauncherLab) -> None:
    """The operator's key pair, made on the operator; its public half authorized on each VM."""
    lab.on_operator("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator", "-f", KEY)
    public = lab.on_operator("cat", f"{KEY}.pub").strip()
    for name in ("head", "w1", "w2"):
        lab.vms[name].inner(f"printf '%s\\n' '{public}' > /home/ubuntu/.ssh/authorized_keys && "
                            "chown ubuntu:ubuntu /home/ubuntu/.ssh/authorized_keys && "
                            "chmod 600 /home/ubuntu/.ssh/authorized_keys")


def node_ips(head: VM, token: str) -> set[str]:
    """The live nodes, from the head's dashboard through its TLS front (the token's CA)."""
    ca = ray_tls.derived_ca(token).pem
    return {str(n.get("node_ip")) for n in cluster.alive_nodes(head.ip, token, ca=ca)}


def ray_container(vm: VM) -> str:
    """The image of the VM's Ray container, or "" when there is none."""
    code, out, _ = vm.sh(f"docker inspect -f '{{{{.Config.Image}}}}' {CONTAINER}")
    return out.strip() if code == 0 else ""


def active_nodes(status: str) -> int:
    """The nodes `ray status` lists as active (pending ones are named by their address)."""
    counts = re.findall(r"^\s+(\d+) local\.cluster\.node\s*$", status, re.MULTILINE)
    return sum(map(int, counts))


def raylet_env(vm: VM) -> str:
    return vm.inner(f"docker exec {CONTAINER} sh -c "
                    "'tr \"\\0\" \"\\n\" < /proc/$(pgrep -o raylet)/environ'")


@contextmanager
def phase(times: dict[str, float], name: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        times[name] = time.monotonic() - start
        print(f"phase {name}: {times[name]:.0f}s", flush=True)


def test_ray_up_runs_the_cluster_the_app_joins_and_it_survives_a_reboot(
        lab: LauncherLab, images: dict[str, str]) -> None:
    times: dict[str, float] = {}
    head, w1, w2, app = (lab.vms[n] for n in ("head", "w1", "w2", "app"))
    ray_image = f"{lab.registry}/{RAY_REPO}"
    give_operator_access(lab)

    # The config, as the operator writes it: the registry password as a file.
    lab.on_operator("sh", "-c", "umask 077 && cat > /root/registry-password",
                    stdin=PASSWORD + "\n")
    lab.on_operator(
        "syntho-agent", "launcher-config", "--provider", "local", "--head-ip", head.ip,
        "--worker-ip", w1.ip, "--worker-ip", w2.ip, "--ssh-private-key", KEY,
        "--ssh-user", "ubuntu", "--registry", lab.registry, "--registry-user", USER,
        "--registry-password-file", "/root/registry-password", "--ray-image", ray_image,
        "--data-dir", DATA_DIR, "--nofile", NOFILE, "--shm-size", "1gb", "--output", CONFIG)
    token = lab.on_operator("cat", f"{DATA_DIR}/ray-token").strip()
    written = lab.on_operator("cat", CONFIG)
    assert len(token) == 64 and token not in written and PASSWORD not in written

    with ThreadPoolExecutor(1) as pool:  # the app's offline bundle goes over meanwhile
        bundle = pool.submit(send_images, app, [images[n] for n in APP_IMAGES],
                             "/root/images/app.tar")
        with phase(times, "ray up (head)"):
            lab.on_operator(*RAY_UP)
        with phase(times, "workers joined"):
            assert poll(lambda: node_ips(head, token) == {head.ip, w1.ip, w2.ip}, 300,
                        "the head and both workers alive"), node_ips(head, token)
        bundle.result()

    # Ray runs in the registry's image on every VM (pulled after the login with the password
    # file: the registry refuses anonymous pulls), with token auth and in mutual TLS with the
    # token's CA (a local cluster's default): the head's GCS port completes a handshake
    # verified against that CA; the dashboard is served in TLS alone (its front; a plain
    # request gets no HTTP answer) and refuses a request without the token; the token is in
    # no process's command line.
    ca = ray_tls.derived_ca(token).pem
    assert ray_tls.head_speaks(head.ip, 6379, ca) == ray_tls.HEAD_TLS
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"https://{head.ip}:8265/api/v0/nodes", timeout=10,
                               context=ssl.create_default_context(cadata=ca))
    assert refused.value.code == 401
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://{head.ip}:8265/api/v0/nodes", timeout=10)
    for vm in (head, w1, w2):
        assert ray_container(vm) == ray_image, vm.name
        env = raylet_env(vm).splitlines()
        assert "RAY_AUTH_MODE=token" in env and "RAY_USE_TLS=1" in env, vm.name
        # Counted inside the VM: the whole list through the engine's exec stream once broke
        # the SDK's framing ("46 is not a valid stream").
        code, out, err = vm.sh(f"docker exec {CONTAINER} ps -eo args > /tmp/ps.txt && "
                               'grep -c raylet /tmp/ps.txt; grep -cF "$T" /tmp/ps.txt; true',
                               env={"T": token})
        counts = out.split()
        assert code == 0 and int(counts[0]) > 0 and counts[1] == "0", (vm.name, out, err)

    # What the guide tells the operator to run for the cluster's state (docs/launcher.md): the
    # autoscaler lists the workers as active once its updaters have finished on them (they may
    # still be "setting-up" there for a moment after their raylets joined). A `ray exec` that
    # fails meanwhile (its SSH to a busy head) is asked again.
    status = ""

    def three_active() -> bool:
        nonlocal status
        status = lab.on_operator("ray", "exec", CONFIG, 'RAY_AUTH_MODE=token '
                                 'RAY_AUTH_TOKEN="$(cat /etc/syntho/ray-token)" ray status',
                                 check=False)
        return active_nodes(status) == 3

    assert poll(three_active, 300, "`ray status` showing 3 active nodes"), status[-3000:]

    # The app VM joins with the launcher's token, as the guide says (its --token-file).
    code, _, err = app.sh(f"mkdir -p /etc/syntho-agent && umask 077 && printf '%s\\n' \"$T\" "
                          f"> {APP_TOKEN}", env={"T": token})
    assert code == 0, err
    with phase(times, "app up"):
        out = app.agent("app", "--head", head.ip, "--images", "/root/images",
                        "--token-file", APP_TOKEN,
                        "--core-image", images["core"], "--backend-image", images["backend"],
                        "--frontend-image", images["frontend"], "--postgres-image",
                        images["postgres"], "--redis-image", images["redis"],
                        "--ready-timeout", "300")
    assert "the app is up" in out and token not in out
    assert "issued this node's Ray TLS certificate" in out  # it followed the head's TLS
    ray = core_status(app)["dependencies"]["ray"]
    assert ray["task_result"] == 49 and ray["alive_nodes"] == 3, ray

    # The head VM reboots: its engine restarts and the Ray container (`docker run --rm`) is gone;
    # `ray up` again (docs/launcher.md) brings the cluster back, and the app with it.
    with phase(times, "reboot"):
        head.container.restart(timeout=10)
        assert poll(functools.partial(docker_answers, head), 300, "the head's engine")
        assert poll(functools.partial(tcp_open, head.ip, 22), 120, "the head's sshd")
    assert ray_container(head) == "", ray_container(head)
    assert not node_ips(head, token), node_ips(head, token)
    with phase(times, "ray up again"):
        lab.on_operator(*RAY_UP)
        assert poll(lambda: node_ips(head, token) == {head.ip, w1.ip, w2.ip}, 300,
                    "the cluster back after the reboot"), node_ips(head, token)

    def app_healthy_again() -> bool:
        ray = core_status(app).get("dependencies", {}).get("ray", {})
        return bool(ray.get("ok")) and ray.get("alive_nodes") == 3 and http_ok(
            f"http://{app.ip}:3000/")

    assert poll(app_healthy_again, 300, "the app healthy on the cluster again"), core_status(app)

    with phase(times, "ray down"):
        lab.on_operator("ray", "down", "-y", CONFIG)
    assert [vm.name for vm in (head, w1, w2) if ray_container(vm)] == []
    assert not node_ips(head, token)
    print("phases:", ", ".join(f"{k} {v:.0f}s" for k, v in times.items()), flush=True)
