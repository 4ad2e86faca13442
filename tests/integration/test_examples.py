"""The cloud-init examples: valid user-data, and configs the agent accepts as they are."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agent.config import ALL_OPTIONS

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples/cloud-init").glob("*.yaml"))


def test_there_is_one_example_per_role() -> None:
    assert [p.stem for p in EXAMPLES] == ["app", "head", "worker"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_user_data_is_valid_cloud_config(path: Path) -> None:
    binary = shutil.which("cloud-init")
    if not binary:
        pytest.fail("cloud-init is needed (apt-get install cloud-init; .ci/run does)",
                    pytrace=False)
    result = subprocess.run([binary, "schema", "-c", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_agent_config_in_it_has_only_known_keys_and_runs_install(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    files = {f["path"]: f for f in data["write_files"]}
    config = yaml.safe_load(files["/etc/syntho-agent/config.yaml"]["content"])
    unknown = [k for k in config if k.replace("-", "_") not in ALL_OPTIONS]
    assert not unknown
    # Secrets only in root-only files, never on a command line.
    for f in files.values():
        assert f["permissions"] == "0600"
    commands = " ".join(" ".join(c) if isinstance(c, list) else c for c in data["runcmd"])
    assert f"install {path.stem} --config /etc/syntho-agent/config.yaml" in commands
    assert "password" not in commands.replace("registry-password-file", "")
    assert "--token" not in commands
    # The cluster's token, chosen up front (`syntho-agent token`), the head's included.
    assert config["token-file"] == "/etc/syntho-agent/ray-token"
    assert files["/etc/syntho-agent/ray-token"]["content"] == "CHANGE-ME"


def script(path: Path) -> str:
    runcmd = yaml.safe_load(path.read_text())["runcmd"]
    assert len(runcmd) == 1 and isinstance(runcmd[0], str), "runcmd: one script (set -e)"
    return str(runcmd[0])


def test_the_install_script_is_the_same_in_every_example() -> None:
    """One script, in three files: only the role differs (a fix made in one reaches all)."""
    scripts = {p.stem: script(p).replace(p.stem, "ROLE") for p in EXAMPLES}
    assert scripts["head"] == scripts["worker"] == scripts["app"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_install_script_checks_before_it_installs(path: Path) -> None:
    lines = [line for line in script(path).splitlines() if not line.startswith("#")]
    assert lines[0] == "set -eu"
    # The operator's two variables come first, and nothing else sets them.
    assert lines[1].startswith("SYNTHO_AGENT_URL=https://")
    assert lines[2] == "SYNTHO_AGENT_SHA256=CHANGE-ME"
    assigned = [m.group(1) for m in map(re.compile(r"\s*(\w+)=").match, lines) if m]
    assert [name for name in assigned if name.startswith("SYNTHO_AGENT_")] == \
        ["SYNTHO_AGENT_URL", "SYNTHO_AGENT_SHA256"]
    text = "\n".join(lines)
    order = ["grep -qxE '[0-9a-f]{64}'", "curl ", "sha256sum -c", "syntho-agent\" version",
             "command -v docker", "apt-get install -y -q docker.io",
             "install -m 755 ", f"syntho-agent install {path.stem} "]
    found = [text.find(step) for step in order]
    assert -1 not in found and found == sorted(found), dict(zip(order, found))
    assert lines[-1] == f"/usr/local/bin/syntho-agent install {path.stem} --config " \
        "/etc/syntho-agent/config.yaml"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_install_script_passes_shellcheck(path: Path, tmp_path: Path) -> None:
    binary = shutil.which("shellcheck")
    assert binary, "shellcheck is needed (apt-get install shellcheck; .ci/run does)"
    target = tmp_path / "runcmd"
    target.write_text("#!/bin/sh\n" + script(path))  # as cloud-init writes it (dash runs it)
    result = subprocess.run([binary, "-s", "sh", str(target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
