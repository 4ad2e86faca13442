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


def test_install_app_schedules_backups_and_uninstall_removes_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """k3s-style: on by default (every 12 h, keep 5); backup.yaml drives the backup command with
    the app's data dir and databases; uninstall removes the timer too."""
    from agent import backup
    from agent.config import BackupSettings

    key = tmp_path / "backup.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    runner = CliRunner()
    args = ["install", "app", "--root", str(tmp_path), "--no-enable", "--head", "10.0.0.4",
            "--data-dir", str(tmp_path / "data"), "--core-db-name", "core-db"]
    result = runner.invoke(cli.cli, [*args, "--backup-every", "6h", "--keep", "3",
                                     "--encrypt-key-file", str(key)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    units = tmp_path / "etc/systemd/system"
    timer = (units / "syntho-agent-backup.timer").read_text()
    service = (units / "syntho-agent-backup.service").read_text()
    assert "OnUnitActiveSec=21600s" in timer and "WantedBy=timers.target" in timer
    assert "backup --config /etc/syntho-agent/backup.yaml" in service
    assert "Type=oneshot" in service
    config = tmp_path / "etc/syntho-agent/backup.yaml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    app_config = (tmp_path / "etc/syntho-agent/app.yaml").read_text()
    assert "keep" not in app_config and "backup" not in app_config  # the app's file stays its own
    seen: list[BackupSettings] = []
    monkeypatch.setattr(backup, "run_backup", lambda e, s, out, say: seen.append(s))
    monkeypatch.setattr(Engine, "connect", classmethod(lambda cls: None))
    result = runner.invoke(cli.cli, ["backup", "--config", str(config)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen[0].keep == 3 and seen[0].encrypt_key_file == key
    assert seen[0].data_dir == tmp_path / "data" and seen[0].core_db_name == "core-db"
    assert runner.invoke(cli.cli, ["uninstall", "--root", str(tmp_path), "--no-enable"]
                         ).exit_code == 0
    assert not any(units.iterdir()) and not config.exists()
    # The default schedule, and none.
    assert runner.invoke(cli.cli, args, catch_exceptions=False).exit_code == 0
    assert "OnUnitActiveSec=43200s" in (units / "syntho-agent-backup.timer").read_text()
    assert "keep: 5" in config.read_text()
    runner.invoke(cli.cli, ["uninstall", "--root", str(tmp_path), "--no-enable"])
    assert runner.invoke(cli.cli, [*args, "--backup-every", "0"]).exit_code == 0
    assert not (units / "syntho-agent-backup.timer").exists() and not config.exists()
    result = runner.invoke(cli.cli, [*args, "--backup-every", "5s"])
    assert result.exit_code == 2 and "from 1m to 366d" in result.output
