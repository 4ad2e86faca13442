"""The one precedence: flag > SYNTHO_AGENT_* env > config file > default, and its errors."""

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agent import cli, deploy
from agent.config import Settings


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    seen: list[Settings] = []
    monkeypatch.setattr(deploy, "run_head", lambda engine, settings, say: seen.append(settings))
    monkeypatch.setattr(cli.Engine, "connect", classmethod(lambda cls: None))
    for key in list(__import__("os").environ):
        if key.startswith("SYNTHO_AGENT_"):
            monkeypatch.delenv(key)
    return seen


def run(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli.cli, args, env=env, catch_exceptions=False)


def test_precedence(captured: list[Settings], tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("shm-size: 2gb\nnofile: 1000\nray_image: file/ray:1\ncpus: 3\n")
    result = run(["head", "--config", str(config), "--nofile", "3000"],
                 env={"SYNTHO_AGENT_NOFILE": "2000", "SYNTHO_AGENT_RAY_IMAGE": "env/ray:2"})
    assert result.exit_code == 0, result.output
    settings = captured[0]
    assert settings.nofile == 3000  # flag beats env and file
    assert settings.ray_image == "env/ray:2"  # env beats file
    assert settings.shm_size == 2 * 1024**3  # file beats default
    assert settings.cpus == 3.0
    assert settings.memory is None  # default
    assert settings.auth is True


def test_config_file_from_env(captured: list[Settings], tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("auth: false\n")
    assert run(["head"], env={"SYNTHO_AGENT_CONFIG": str(config)}).exit_code == 0
    assert captured[0].auth is False


@pytest.mark.parametrize("content,message", [
    ("shm_sise: 4gb\n", "unknown key 'shm_sise'"),
    ("nofile: [1\n", "not valid YAML"),
    ("- a\n- b\n", "must be a mapping"),
    ("shm-size: lots\n", "not a size"),
])
def test_bad_config_file(captured: list[Settings], tmp_path: Path, content: str,
                         message: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(content)
    result = run(["head", "--config", str(config)])
    assert result.exit_code == 2
    assert message in result.output
    assert not captured


def test_bad_values_never_reach_the_engine(captured: list[Settings]) -> None:
    for args in (["--shm-size", "4 lots"], ["--ray-image", "Bad Image"], ["--nofile", "x"],
                 ["--node-ip", "10.0.0.300"], ["--instance", "Has Spaces"]):
        result = run(["head", *args])
        assert result.exit_code == 2, (args, result.output)
    assert not captured


def test_a_bad_token_is_refused_without_echoing_it(
        captured: list[Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["worker", "--head", "10.0.0.4", "--data-dir", str(tmp_path),
                  "--token", "short secret"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "token given is not valid" in err
    assert "short secret" not in err
    assert not (tmp_path / "ray-token").exists()
