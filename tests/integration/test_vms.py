"""The product as it is used: four simulated VMs, each its own Docker engine (Docker-in-Docker),
nothing in them but Docker and a Python 3, and the zipapp copied in and run as an operator would.

vm-head runs `head`, vm-w1 and vm-w2 `worker --head <vm-head>`, vm-app `app --head <vm-head>`.
Images reach vm-head and vm-w1 from a registry with htpasswd auth, vm-w2 and vm-app from an
offline bundle. Then vm-head reboots (its container restarts: engine and all) and its agent runs
as boot would: the workers rejoin and the app is healthy again with no manual step.
"""

from __future__ import annotations

import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import cluster, ray_tls
from agent.waits import poll
from tests.support.constants import NOFILE
from tests.support.vms import (
    DATA,
    GCS_REDIS_REPO,
    PASSWORD,
    RAY_REPO,
    USER,
    Lab,
    copy_file,
    core_status,
    send_images,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(vm_lab: Lab) -> Iterator[Lab]:
    vm_lab.fresh()
    yield vm_lab
    vm_lab.remove_vms()


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
    ca = ray_tls.derived_ca(token).pem  # a new cluster's Ray (and dashboard) speak TLS

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
    assert len(cluster.alive_nodes(head.ip, token, ca=ca)) == 3

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
    assert poll(lambda: len(cluster.alive_nodes(head.ip, token, ca=ca)) == 3, 300,
                "both workers rejoined the rebooted head"), cluster.alive_nodes(head.ip, token,
                                                                                ca=ca)
    # With GCS fault tolerance the restored GCS lists the workers alive at once: the boot's
    # agent may still be waiting for the head's own readiness when they show.
    boot_log = ""

    def head_ready_at_boot() -> bool:
        nonlocal boot_log
        boot_log = head.sh("cat /var/log/boot.log")[1]
        return "ray head ready" in boot_log

    assert poll(head_ready_at_boot, 120, "the boot's agent: ray head ready"), boot_log
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
