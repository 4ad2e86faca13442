"""The cloud-init examples run for real in a simulated VM (the image of test_vms.py): the
zipapp downloaded from an HTTP server on this host, checked against SHA256SUMS, installed.

What runs as cloud-init would run it: write_files (path, content, permissions: the only keys
the examples use, checked), then runcmd turned into its script by cloud-init's own `shellify`
(the host's cloud-init) and executed as root with systemd's PATH and no HOME. What does not:
cloud-init itself (the VM image lacks its dependencies), systemd (the VM has none: a stub
`systemctl` records its calls) and a package mirror (the branch that installs docker.io runs
against a stub `apt-get` that records its arguments and puts the hidden docker back).
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from agent.waits import poll
from tests.support.constants import REPO
from tests.support.ports import free_port
from tests.support.sandbox import Sandbox
from tests.support.vms import VM, fixed_lan, start_vm, zipapp

pytestmark = pytest.mark.integration

EXAMPLES = REPO / "examples" / "cloud-init"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's, cloud-final's
SCRIPT = "/var/lib/cloud/instance/scripts/runcmd"  # where cloud-init writes runcmd
STUBS = {
    # No systemd in the VM: record what `install` asks of it.
    "systemctl": 'echo "$*" >> /var/log/systemctl.calls\n',
    # No mirror: record the arguments; an install "installs" the docker hidden by the test.
    "apt-get": 'echo "$*" >> /var/log/apt-get.calls\n'
               'case "$*" in *install*) mv /usr/bin/docker.hidden /usr/bin/docker ;; esac\n',
}
LEFTOVERS = ("/usr/local/bin/syntho-agent /etc/syntho-agent /etc/systemd/system/syntho-agent-* "
             "/var/lib/cloud /var/log/systemctl.calls /var/log/apt-get.calls /var/lib/syntho-agent")


@dataclass
class Site:
    vm: VM
    url: str  # where the HTTP server serves the build's files, as the VM reaches it
    sums: dict[str, str]  # SHA256SUMS: name -> digest
    log: Path  # the HTTP server's request log


def put(vm: VM, path: str, content: bytes, mode: int) -> None:
    """One file into the VM, owned by root, with its mode (cloud-init's write_files)."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo(Path(path).name)
        info.size, info.mode = len(content), mode
        tar.addfile(info, io.BytesIO(content))
    parent = str(Path(path).parent)
    assert vm.sh(f"mkdir -p {parent}")[0] == 0
    assert vm.container.put_archive(parent, data.getvalue())


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def site(docker_client: docker.DockerClient, images: dict[str, str],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One VM on a private network; the build's files served from this host at its gateway."""
    tmp = tmp_path_factory.mktemp("cloud-init")
    sandbox = Sandbox(docker_client, tmp)
    served = tmp / "www"
    served.mkdir()
    zipapp()  # build.py: the zipapps and SHA256SUMS (a copy: other builds may rewrite dist/)
    for path in (REPO / "dist").iterdir():
        if path.is_file() and (path.name == "SHA256SUMS" or path.name.startswith("syntho-agent")):
            shutil.copy2(path, served / path.name)
    sums = {name: digest for digest, name in
            (line.split("  ", 1) for line in (served / "SHA256SUMS").read_text().splitlines())}
    port = free_port()
    log = tmp / "http.log"
    server = None
    try:
        with log.open("w") as out:
            server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "0.0.0.0",
                                       "--directory", str(served), str(port)],
                                      stdout=out, stderr=subprocess.STDOUT)
        lan, gateway = fixed_lan(docker_client, sandbox)
        vm = start_vm(sandbox, lan.name, f"{gateway}:5000", images["vm"], "ci",
                      gateway.rsplit(".", 1)[0] + ".10")
        for name, body in STUBS.items():
            put(vm, f"/usr/local/sbin/{name}", f"#!/bin/sh\n{body}".encode(), 0o755)
        url = f"http://{gateway}:{port}"
        assert poll(functools.partial(answers, f"http://127.0.0.1:{port}/SHA256SUMS"), 30,
                    "the HTTP server")
        yield Site(vm, url, sums, log)
    finally:
        sandbox.cleanup()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)


def user_data(role: str, url: str, sha256: str, token: str) -> dict[str, Any]:
    """The example, filled in as the operator would: the two variables and the token."""
    data: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{role}.yaml").read_text())
    script = data["runcmd"][0]
    for name, value in (("SYNTHO_AGENT_URL", url), ("SYNTHO_AGENT_SHA256", sha256)):
        lines = [line for line in script.splitlines() if line.startswith(f"{name}=")]
        assert len(lines) == 1, f"{role}.yaml: one line {name}=... at the top of runcmd"
        script = script.replace(lines[0] + "\n", f"{name}={value}\n")
    data["runcmd"][0] = script
    for entry in data["write_files"]:
        if entry["path"] == "/etc/syntho-agent/ray-token":
            entry["content"] = token
    return data


def boot(vm: VM, data: dict[str, Any], hide_docker: bool = False) -> tuple[int, str, str]:
    """What cloud-init does with this user-data at first boot: write_files, then runcmd."""
    assert vm.sh(f"rm -rf {LEFTOVERS}")[0] == 0
    if hide_docker:
        assert vm.sh("mv /usr/bin/docker /usr/bin/docker.hidden")[0] == 0
    for entry in data["write_files"]:
        assert set(entry) <= {"path", "content", "permissions"}, f"emulate {set(entry)} too"
        put(vm, entry["path"], entry["content"].encode(), int(entry.get("permissions", "0644"), 8))
    cloud_init_python = Path(shutil.which("cloud-init") or "cloud-init").read_text().split(
        "\n", 1)[0].removeprefix("#!").strip()
    shellified = subprocess.run(
        [cloud_init_python, "-c", "import json, sys; from cloudinit.util import shellify; "
         "sys.stdout.write(shellify(json.load(sys.stdin)))"],
        input=json.dumps(data["runcmd"]), capture_output=True, text=True, check=True).stdout
    assert shellified.startswith("#!/bin/sh\n")
    put(vm, SCRIPT, shellified.encode(), 0o700)
    code, (out, err) = vm.container.exec_run(["env", "-i", f"PATH={PATH}", SCRIPT], demux=True)
    return int(code), (out or b"").decode(), (err or b"").decode()


def new_token() -> str:
    done = subprocess.run([sys.executable, "-m", "agent", "token"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def calls(vm: VM, tool: str) -> list[str]:
    code, out, _ = vm.sh(f"cat /var/log/{tool}.calls")
    return out.splitlines() if code == 0 else []


def nothing_installed(vm: VM) -> None:
    code, out, _ = vm.sh("ls -d /usr/local/bin/syntho-agent /etc/systemd/system/syntho-agent-* "
                         "/etc/syntho-agent/*.yaml /usr/bin/docker /usr/bin/docker.hidden "
                         "/tmp/tmp.* 2>/dev/null")
    # the user-data's own files, docker where it was (never installed), no download left over
    assert out.split() == ["/etc/syntho-agent/config.yaml", "/usr/bin/docker"], out
    assert calls(vm, "systemctl") == [] and calls(vm, "apt-get") == []


def requests_of(site: Site, name: str) -> int:
    return site.log.read_text().count(f"GET /{name} ")


def test_a_wrong_checksum_installs_nothing(site: Site) -> None:
    name = "syntho-agent-x86_64"
    wrong = site.sums["syntho-agent-aarch64"]  # a real checksum, of another file
    before = requests_of(site, name)
    code, _, err = boot(site.vm, user_data("head", f"{site.url}/{name}", wrong, new_token()),
                        hide_docker=True)
    assert code == 1, err
    assert f"{site.url}/{name} does not match SYNTHO_AGENT_SHA256" in err
    assert err.strip().splitlines()[-1].endswith("nothing installed"), err
    assert requests_of(site, name) == before + 1
    assert site.vm.sh("mv /usr/bin/docker.hidden /usr/bin/docker")[0] == 0
    nothing_installed(site.vm)


def test_the_placeholder_checksum_is_refused_before_any_download(site: Site) -> None:
    before = site.log.read_text()
    code, _, err = boot(site.vm, user_data("head", f"{site.url}/syntho-agent-x86_64",
                                           "CHANGE-ME", new_token()))
    assert code == 1
    assert err.strip() == ("syntho-agent user-data: SYNTHO_AGENT_SHA256 must be the 64 hex "
                           "digits of SHA256SUMS; nothing installed")
    assert site.log.read_text() == before
    nothing_installed(site.vm)


@pytest.mark.parametrize("role", ["head", "worker", "app"])
def test_the_example_installs_the_role(site: Site, role: str) -> None:
    name = "syntho-agent-x86_64"
    token = new_token()
    hide = role == "head"  # once: a VM without Docker gets docker.io
    code, out, err = boot(site.vm, user_data(role, f"{site.url}/{name}", site.sums[name], token),
                          hide_docker=hide)
    assert code == 0, out + err
    vm = site.vm
    digest = vm.inner("sha256sum", "/usr/local/bin/syntho-agent").split()[0]
    assert digest == site.sums[name]
    assert vm.inner("stat", "-c", "%a", "/usr/local/bin/syntho-agent").strip() == "755"
    assert vm.inner("stat", "-c", "%a", "/etc/syntho-agent/ray-token",
                    "/etc/syntho-agent/config.yaml").split() == ["600", "600"]
    assert vm.inner("cat", "/etc/syntho-agent/ray-token") == token
    config = yaml.safe_load(vm.inner("cat", "/etc/syntho-agent/config.yaml"))
    assert config["token-file"] == "/etc/syntho-agent/ray-token"
    # The unit reads the operator's file itself (a later edit of it applies): no copy.
    assert vm.sh(f"test ! -e /etc/syntho-agent/{role}.yaml")[0] == 0
    unit = vm.inner("cat", f"/etc/systemd/system/syntho-agent-{role}.service")
    assert (f"ExecStart=/usr/local/bin/syntho-agent {role} --config "
            "/etc/syntho-agent/config.yaml --watch") in unit
    started = [f"syntho-agent-{role}.service"]
    if role == "app":
        started.append("syntho-agent-backup.timer")
    asked = calls(vm, "systemctl")
    wanted = ["daemon-reload", *(f"enable --now {unit}" for unit in started)]
    assert [c for c in asked if c in wanted] == wanted, asked  # in this order, among others
    expected_apt = ["update -q", "install -y -q docker.io"] if hide else []
    assert calls(vm, "apt-get") == expected_apt
    assert vm.sh("test -x /usr/bin/docker && ! ls -d /tmp/tmp.*")[0] == 0
    assert token not in out + err
