"""The one precedence: flag > SYNTHO_AGENT_* env > config file > default, and its errors."""

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agent import check, cli, deploy
from agent.config import HeadSettings
from agent.engine import Engine


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[HeadSettings]:
    seen: list[HeadSettings] = []
    monkeypatch.setattr(deploy, "run", lambda engine, settings, say: seen.append(settings))
    monkeypatch.setattr(Engine, "connect", classmethod(lambda cls: None))
    monkeypatch.setattr(check, "before_run", lambda *args: None)  # a fake engine: no checks
    return seen


def run(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli.cli, args, env=env, catch_exceptions=False)


def test_precedence(captured: list[HeadSettings], tmp_path: Path) -> None:
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


def test_config_file_from_env(captured: list[HeadSettings], tmp_path: Path) -> None:
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
def test_bad_config_file(captured: list[HeadSettings], tmp_path: Path, content: str,
                         message: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(content)
    result = run(["head", "--config", str(config)])
    assert result.exit_code == 2
    assert message in result.output
    assert not captured


def test_bad_values_never_reach_the_engine(captured: list[HeadSettings]) -> None:
    for args in (["--shm-size", "4 lots"], ["--ray-image", "Bad Image"], ["--nofile", "x"],
                 ["--node-ip", "10.0.0.300"], ["--instance", "Has Spaces"]):
        result = run(["head", *args])
        assert result.exit_code == 2, (args, result.output)
    assert not captured


def test_a_bad_token_is_refused_without_echoing_it(
        captured: list[HeadSettings], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["worker", "--head", "10.0.0.4", "--data-dir", str(tmp_path),
                  "--token", "short secret"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "token given is not valid" in err
    assert "short secret" not in err
    assert not (tmp_path / "ray-token").exists()


# ---- one declaration, read the same from every source -----------------------------------------

def test_each_role_gets_only_its_own_settings() -> None:
    from agent.config import AppSettings, LauncherSettings, WorkerSettings

    assert not hasattr(HeadSettings(), "core_image") and not hasattr(HeadSettings(), "head")
    assert not hasattr(AppSettings(), "shm_size") and not hasattr(AppSettings(), "provider")
    assert hasattr(WorkerSettings(), "head") and hasattr(AppSettings(), "core_image")
    launcher = {o.key for o in LauncherSettings.options()}
    assert {"data_dir", "ray_image", "token", "registry", "provider"} <= launcher
    assert not launcher & {"instance", "network", "cpus", "core_image", "watch"}


@pytest.mark.parametrize("flag,env,key,text,field,value", [
    ("--admin-username", "SYNTHO_AGENT_ADMIN_USERNAME", "admin-username", "yes",
     "admin_username", "yes"),
    ("--license-key", "SYNTHO_AGENT_LICENSE_KEY", "license-key", "012", "license_key", "012"),
    ("--core-db-name", "SYNTHO_AGENT_CORE_DB_NAME", "core-db-name", "1.5", "core_db_name",
     "1.5"),
    ("--max-workers", "SYNTHO_AGENT_MAX_WORKERS", "max-workers", "012", "max_workers", 12),
    ("--rotate-db-password", "SYNTHO_AGENT_ROTATE_DB_PASSWORD", "rotate-db-password", "yes",
     "rotate_db_password", True),
])
def test_flag_env_and_file_give_the_same_settings(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flag: str, env: str, key: str,
        text: str, field: str, value: object) -> None:
    """A value is read from its text by the option's own parser, whatever the source: YAML's
    typing (yes -> True, 012 -> 10, 1.5 -> float) never changes it."""
    from agent.config import AppSettings

    seen: list[AppSettings] = []
    monkeypatch.setattr(deploy, "run", lambda engine, settings, say: seen.append(settings))
    monkeypatch.setattr(Engine, "connect", classmethod(lambda cls: None))
    monkeypatch.setattr(check, "before_run", lambda *args: None)  # a fake engine: no checks
    config = tmp_path / "c.yaml"
    config.write_text(f"{key}: {text}\n")
    switch = field == "rotate_db_password"
    for args, environ in (([flag] if switch else [flag, text], {}),
                          ([], {env: text}),
                          (["--config", str(config)], {})):
        result = CliRunner().invoke(cli.cli, ["app", "--head", "10.0.0.4", *args], env=environ,
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert len(seen) == 3 and seen[0] == seen[1] == seen[2]
    assert getattr(seen[0], field) == value


@pytest.mark.parametrize("args,env,content,where", [
    (["--shm-size", "lots"], {}, None, "'--shm-size'"),
    ([], {"SYNTHO_AGENT_SHM_SIZE": "lots"}, None, "SYNTHO_AGENT_SHM_SIZE"),
    ([], {}, "nofile: 100\nshm-size: lots\n", "key 'shm-size' at line 2"),
    ([], {}, "auth: maybe\n", "key 'auth' at line 1"),
    ([], {"SYNTHO_AGENT_AUTH": "maybe"}, None, "SYNTHO_AGENT_AUTH"),
])
def test_a_bad_value_names_its_source(captured: list[HeadSettings], tmp_path: Path,
                                      args: list[str], env: dict[str, str],
                                      content: str | None, where: str) -> None:
    if content is not None:
        config = tmp_path / "config.yaml"
        config.write_text(content)
        args = [*args, "--config", str(config)]
    result = run(["head", *args], env=env)
    assert result.exit_code == 2 and where in result.output, result.output
    assert not captured


@pytest.mark.parametrize("content,message", [
    ("nofile: 100\nshm-size: 1gb\nnofile: 200\n", "key 'nofile' is given twice (lines 1 and 3)"),
    ("nofile: 100\nnofile: 100\n", "given twice"),
    ("core-image: x/core:1\n", "key 'core-image' at line 1 does not apply to `syntho-agent "
     "head`; it is an option of `syntho-agent app | restore`"),
    ("provider: aws\n", "option of `syntho-agent launcher-config`"),
    ("nofile: [1, 2]\n", "takes one value, not a list"),
    ("nofile:\n  a: 1\n", "not a mapping"),
    ("nofile: [1\n", "not valid YAML at line"),
])
def test_the_config_file_is_read_as_written(captured: list[HeadSettings], tmp_path: Path,
                                            content: str, message: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(content)
    result = run(["head", "--config", str(config)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not captured


def test_a_bad_value_is_reported_as_written(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    """An e-mail written 0x1F is refused as '0x1F', not as YAML's 31."""
    monkeypatch.setattr(Engine, "connect", classmethod(lambda cls: None))
    monkeypatch.setattr(check, "before_run", lambda *args: None)  # a fake engine: no checks
    config = tmp_path / "c.yaml"
    config.write_text("admin-email: 0x1F\n")
    result = CliRunner().invoke(cli.cli, ["app", "--head", "10.0.0.4", "--config", str(config)])
    assert result.exit_code == 2
    assert "'0x1F' is not an e-mail address" in result.output and "'31'" not in result.output


def test_lists_and_empty_values_in_the_config_file(captured: list[HeadSettings],
                                                   tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("ray-arg: [--num-cpus=4, '--resources={\"a\": 1}']\nnode-ip:\n"
                      "license-key: \"0x1F\"\n")
    assert run(["head", "--config", str(config)]).exit_code == 0
    assert captured[0].ray_arg == ("--num-cpus=4", '--resources={"a": 1}')
    assert captured[0].node_ip is None and captured[0].license_key == "0x1F"
    config.write_text("ray-arg: --num-cpus=2\n")
    assert run(["head", "--config", str(config)]).exit_code == 0
    assert captured[1].ray_arg == ("--num-cpus=2",)


def test_day_two_commands_accept_a_role_config_file(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """status, down and logs read the role's own config file (its data dir and instance) and
    leave the role's other keys alone."""
    from agent import ops

    seen: list[tuple[Path, str]] = []

    def status(engine: object, data_dir: Path, instance: str, say: object) -> int:
        seen.append((data_dir, instance))
        return 0

    monkeypatch.setattr(ops, "status", status)
    monkeypatch.setattr(Engine, "connect", classmethod(lambda cls: None))
    monkeypatch.setattr(check, "before_run", lambda *args: None)  # a fake engine: no checks
    config = tmp_path / "app.yaml"
    config.write_text(f"head: 10.0.0.4\ncore-image: x/core:1\ndata-dir: {tmp_path}\n"
                      "instance: blue\n")
    result = CliRunner().invoke(cli.cli, ["status", "--config", str(config)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen == [(tmp_path, "blue")]
    config.write_text("head-sise: 1\n")
    result = CliRunner().invoke(cli.cli, ["status", "--config", str(config)])
    assert result.exit_code == 2 and "unknown key 'head-sise'" in result.output


# ---- found by tests/unit/test_fuzz_cli.py: one line, exit 2, its source named ----

def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[Any, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("content,message", [
    ("nofile: " + "[" * 600 + "]" * 600 + "\n", "nest too deep"),  # was a RecursionError
    ("? [a, b]\n: x\n", "the key at line 1 is a list or a mapping"),  # was PyYAML's node repr
])
def test_a_config_file_cannot_crash_the_reading(
        captured: list[HeadSettings], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        content: str, message: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(content)
    code, err = _main(["head", "--data-dir", str(tmp_path), "--config", str(config)], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not captured


def test_a_bad_config_path_is_one_line_naming_its_source(
        captured: list[HeadSettings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for path in ("x" * 5000, str(tmp_path / "no\nsuch.yaml")):  # was an OSError; two lines
        code, err = _main(["head", "--data-dir", str(tmp_path), "--config", path], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith("syntho-agent: error: Invalid value for --config: "), err
    monkeypatch.setenv("SYNTHO_AGENT_CONFIG", str(tmp_path / "missing.yaml"))
    code, err = _main(["head", "--data-dir", str(tmp_path)], capsys)
    assert code == 2 and "Invalid value for SYNTHO_AGENT_CONFIG: " in err, err  # was --config
    assert not captured


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_secret_is_refused_with_a_readable_message(
        captured: list[HeadSettings], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        value: str) -> None:
    """The redaction of a secret's value replaced "" between every character: ***t***h***e."""
    code, err = _main(["head", "--data-dir", str(tmp_path), "--token", value], capsys)
    assert code == 2 and "***" not in err and "the Ray token given is not valid" in err, err
