"""install/uninstall write a unit and a config file that loads back to the same settings."""

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent import cli, deploy
from agent.config import WorkerSettings
from agent.engine import Engine


def test_install_writes_a_unit_and_a_config_that_round_trips(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    result = runner.invoke(cli.cli, [
        "install", "worker", "--root", str(tmp_path), "--no-enable", "--head", "10.0.0.4",
        "--shm-size", "8gb", "--ray-arg=--num-cpus=4", "--token-file", __file__],
        env={"SYNTHO_AGENT_LICENSE_KEY": "lic-123"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = tmp_path / "etc/syntho-agent/worker.yaml"
    unit = tmp_path / "etc/systemd/system/syntho-agent-worker.service"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    text = unit.read_text()
    assert "--config /etc/syntho-agent/worker.yaml --watch" in text
    assert "Restart=always" in text and "After=network-online.target docker.service" in text
    # The config file gives the same settings as the flags did.
    seen: list[WorkerSettings] = []
    monkeypatch.setattr(deploy, "run_worker", lambda e, s, say: seen.append(s))
    monkeypatch.setattr(Engine, "connect", classmethod(lambda cls: None))
    result = runner.invoke(cli.cli, ["worker", "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen[0].head == "10.0.0.4" and seen[0].shm_size == 8 * 1024**3
    assert seen[0].ray_arg == ("--num-cpus=4",) and seen[0].license_key == "lic-123"
    assert seen[0].token_file == Path(__file__)
    result = runner.invoke(cli.cli, ["uninstall", "--root", str(tmp_path), "--no-enable"])
    assert result.exit_code == 0 and not unit.exists() and not config.exists()


def test_install_worker_needs_a_head(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.cli, ["install", "worker", "--root", str(tmp_path),
                                          "--no-enable"], env={"SYNTHO_AGENT_HEAD": ""})
    assert result.exit_code == 2 and "needs --head" in result.output
