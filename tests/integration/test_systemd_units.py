"""`down` on a VM where `install` put a watching unit: the unit is stopped first (it would
re-create what down removes), then the real containers go. systemd cannot run in this
container: a stand-in `systemctl`, first on PATH, records what it is asked and reports the unit
running; the containers are real, on the real engine."""

from __future__ import annotations

from pathlib import Path

from agent import spec as s
from agent.engine import Engine
from agent.reconcile import reconcile
from tests.support.agent_cli import run_agent
from tests.support.sandbox import Sandbox

FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$FAKE_SYSTEMCTL_LOG"
case "$1" in
    is-active|is-enabled) exit 0 ;;
esac
"""


def managed_container(sandbox: Sandbox, image: str, name: str) -> tuple[str, str]:
    """One sleeping container the agent manages (its labels), as the reconciler makes it:
    (its instance, its name)."""
    instance = sandbox.instance(name)
    container = s.Container(service="s0", name=f"{instance}-s0", image=image,
                            command=("sleep", "86400"), network=sandbox.network)
    spec = s.Spec(role="test", instance=instance, containers=(container,),
                  networks=(s.Network(sandbox.network),))
    reconcile(Engine(sandbox.client), spec, lambda line: None, ready_timeout=60)
    return instance, container.name


def test_down_stops_the_installed_unit_before_it_removes_the_containers(
        sandbox: Sandbox, images: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "root"
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / "syntho-agent-app.service").write_text("[Unit]\n")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "systemctl").write_text(FAKE_SYSTEMCTL)
    (fake / "systemctl").chmod(0o755)
    log = tmp_path / "systemctl.log"
    instance, name = managed_container(sandbox, images["busybox"], "down")
    done = run_agent("down", "--instance", instance, "--data-dir", str(tmp_path / "data"),
                     "--root", str(root), env={"PATH": f"{fake}:/usr/bin:/bin",
                                               "FAKE_SYSTEMCTL_LOG": str(log)})
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == [
        "stopped syntho-agent-app.service first (it would have re-created what down removes); "
        "`systemctl start syntho-agent-app.service` brings it back (and so will the next boot: "
        "it is enabled)",
        f"removed {name}"], done.stdout
    assert log.read_text().splitlines() == ["is-active --quiet syntho-agent-app.service",
                                            "stop syntho-agent-app.service",
                                            "is-enabled --quiet syntho-agent-app.service"]
    assert not sandbox.client.containers.list(all=True, filters={"name": name})

    # No systemctl on this machine: down goes on as it always did.
    instance, name = managed_container(sandbox, images["busybox"], "nosd")
    log.unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_agent("down", "--instance", instance, "--data-dir", str(tmp_path / "data"),
                     "--root", str(root), env={"PATH": str(empty)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == f"removed {name}"
    assert not log.exists()
    assert not sandbox.client.containers.list(all=True, filters={"name": name})
