"""Disks left alone for years (README "Years unattended"): a role run refuses to start on a disk
95% full even with room in absolute terms (exit 3, one line, nothing changed), `check` warns
at 80%; every container the agent makes keeps rotated logs, and a chatty one's log files stay
within --log-max-size x --log-max-files on the engine's disk."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from agent import spec as s
from agent.engine import create_args
from agent.waits import poll
from tests.support import mounts
from tests.support.agent_cli import run_agent
from tests.support.constants import NOFILE
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 3 GiB tmpfs (memory is spent only on what is written)."""
    with mounts.tmpfs(tmp_path / "disk", "3g") as mount:
        yield mount


def fill_to(mount: Path, share: float) -> None:
    """Take the tmpfs to `share` full (fallocate: no bytes written)."""
    total = 3 * 1024**3
    subprocess.run(["fallocate", "-l", str(int(total * share)), str(mount / "filler")],
                   check=True)


@pytest.mark.parametrize("share, refused", [(0.96, True), (0.85, False)])
def test_a_role_refuses_a_disk_95_percent_full_and_check_warns_from_80(
        tmpfs: Path, sandbox: Sandbox, images: dict[str, str], share: float,
        refused: bool) -> None:
    fill_to(tmpfs, share)  # either way more than 100 MB stay free: the share decides
    data_dir = tmpfs / "agent"
    # On a Docker network of its own: no host port is checked (the other tests' are in use).
    args = ["--data-dir", str(data_dir), "--instance", sandbox.instance("disk"),
            "--network", sandbox.create_network(), "--head", "127.0.0.1",
            "--ray-image", images["ray"], "--nofile", NOFILE, "--wait", "1"]
    seen = run_agent("check", "worker", *args)
    level = "fail" if refused else "warn"
    assert f"{level}  disk: " in seen.stdout and f"({share:.0%} full) for the data dir" in \
        seen.stdout, seen.stdout
    result = run_agent("worker", *args)
    if refused:
        assert result.returncode == 3, (result.stdout, result.stderr)
        errors = [x for x in result.stderr.splitlines() if x.startswith("syntho-agent:")]
        assert len(errors) == 1 and f"({share:.0%} full) for the data dir" in errors[0], \
            result.stderr
    else:  # past the checks (then refused for want of a token: no head here)
        assert "host check(s) failed" not in result.stderr, result.stderr
    assert not sandbox.client.containers.list(all=True,
                                              filters={"name": sandbox.instance("disk")})


def test_a_chatty_containers_logs_stay_within_their_bound(
        sandbox: Sandbox, images: dict[str, str], docker_client: docker.DockerClient) -> None:
    """The agent's own create arguments (engine.create_args, what Engine.create sends) with
    1m x 2 files: 8 MB printed, at most about 2 MB kept on the engine's disk."""
    box = s.Container(service="chatty", name=f"{sandbox.id}-chatty", image=images["busybox"],
                      entrypoint=("sh", "-c"),
                      command=("i=0; while [ $i -lt 8000 ]; do "
                               "printf '%01023d\\n' $i; i=$((i+1)); done; sleep 600",),
                      restart="no", log_max_size="1m", log_max_files=2)
    made = docker_client.containers.create(**create_args(box, sandbox.labels))
    made.start()
    config = docker_client.api.inspect_container(made.id)["HostConfig"]["LogConfig"]
    assert config == {"Type": "json-file", "Config": {"max-file": "2", "max-size": "1m"}}
    folder = Path(docker_client.api.inspect_container(made.id)["LogPath"]).parent

    def printed() -> bool:
        return bool(made.logs(tail=1).decode().strip().endswith("7999"))

    assert poll(printed, 120, "8 MB printed")
    kept = sum(p.stat().st_size for p in folder.glob("*-json.log*"))
    assert kept <= 2 * 1024**2 + 64 * 1024, f"{kept} bytes of logs kept"
