"""The cloud-init examples: valid user-data, and configs the agent accepts as they are."""

from __future__ import annotations

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
