"""Every error is one line with its documented exit code: the known defects, pinned.

Each case runs the real entry point (agent.cli.main, as the zipapp does) in process and checks
what an operator sees: exactly one line on stderr, nothing on stdout, the exit code, and that
nothing was made (the data dir). None of these reaches an engine: DOCKER_HOST points at a port
nothing listens on, or the input is refused before the agent connects.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import cli
from agent.config import HeadSettings
from tests.support.agent_cli import run_agent
from tests.support.ports import free_port


def agent(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `syntho-agent ARGV`."""
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
        raise SystemExit(0)  # a command that returns normally exits 0
    out, err = capsys.readouterr()
    code = done.value.code
    return (code if isinstance(code, int) else 0), out, err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("syntho-agent: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(autouse=True)
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that is not there: a case that got as far as connecting would say so."""
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}")


@pytest.mark.parametrize("head", ["::1", "[::1]", "fe80::1%eth0", "2001:db8::4"])
@pytest.mark.parametrize("role", ["worker", "app", "plan worker"])
def test_an_ipv6_head_is_refused_before_anything_changes(
        head: str, role: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    code, out, err = agent([*role.split(), "--head", head, "--data-dir", str(data)], capsys)
    line = one_line(err)
    assert code == 2 and not out
    assert f"Invalid value for '--head': {head} is an IPv6 address" in line
    assert "give an IPv4 address or a hostname" in line
    assert not data.exists()  # refused before the data dir is made


@pytest.mark.parametrize("head,alone", [("10.0.0.4:6379", "10.0.0.4"),
                                        ("ray-head.internal:6379", "ray-head.internal")])
def test_a_head_with_a_port_is_told_to_drop_it(
        head: str, alone: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = agent(["worker", "--head", head, "--data-dir", str(tmp_path / "d")], capsys)
    line = one_line(err)
    assert code == 2 and not out
    assert f"has a port: give the address alone ({alone}); Ray's port on the head is always " \
           "6379" in line


def test_a_head_from_the_env_or_the_file_names_its_source(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHO_AGENT_HEAD", "::1")
    code, _, err = agent(["worker", "--data-dir", str(tmp_path / "d")], capsys)
    assert code == 2 and "Invalid value for SYNTHO_AGENT_HEAD: ::1 is an IPv6" in one_line(err)
    monkeypatch.delenv("SYNTHO_AGENT_HEAD")
    config = tmp_path / "worker.yaml"
    config.write_text("nofile: 1000\nhead: 10.0.0.4:6379\n")
    code, _, err = agent(["worker", "--config", str(config)], capsys)
    assert code == 2
    assert f"Invalid value for {config} key 'head' at line 2: 10.0.0.4:6379 has a port" \
        in one_line(err)


@pytest.mark.parametrize("content,where", [
    ("shm-size: 4gb\n  nofile: 1000\n", "is not valid YAML at line 2, column 9: mapping values "
     "are not allowed here"),
    ("nofile: [1\n", "is not valid YAML at line 2, column 1: expected ',' or ']', but got "
     "'<stream end>' (while parsing a flow sequence at line 1, column 9)"),
    ("license-key: \"abc\n", "is not valid YAML at line 2, column 1: found unexpected end of "
     "stream (while scanning a quoted scalar at line 1, column 14)"),
    ("nofile:\t1000\n", "is not valid YAML at line 1, column 8: found "
     "character '\\t' that cannot start any token (while scanning for the next token)"),
])
def test_a_yaml_syntax_error_says_what_and_where(
        content: str, where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "head.yaml"
    config.write_text(content)
    code, out, err = agent(["head", "--config", str(config)], capsys)
    assert code == 2 and not out
    assert one_line(err) == f"syntho-agent: error: Invalid value for --config: {config}: {where}"


def test_version_is_a_top_level_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, by_option, err = agent(["--version"], capsys)
    assert code == 0 and not err
    code, by_command, _ = agent(["version"], capsys)
    assert code == 0
    assert by_option == by_command and by_option.startswith("syntho-agent ")
    assert run_agent("--version").stdout == by_command  # the process, as an operator runs it


def test_a_remote_engine_that_does_not_answer_is_not_told_to_start_docker(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    host = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("DOCKER_HOST", host)
    code, out, err = agent(["status", "--data-dir", str(tmp_path)], capsys)
    assert code == 3 and not out
    assert one_line(err) == (
        f"syntho-agent: error: the Docker engine at DOCKER_HOST={host} does not answer: check "
        "that it runs and that this machine reaches it, or fix DOCKER_HOST (unset it to use "
        "this machine's engine)")


@pytest.mark.parametrize("host,code,says", [
    ("unix:///nonexistent/docker.sock", 3, "the Docker engine at unix:///nonexistent/docker.sock "
     "does not answer: start it (systemctl start docker) (or fix DOCKER_HOST) and try again"),
    ("not-an-address", 2, "DOCKER_HOST=not-an-address cannot be used (Invalid bind address "
     "format: port is required: not-an-address): fix it, or unset it to use this machine's "
     "engine"),
])
def test_a_local_or_malformed_docker_host(host: str, code: int, says: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", host)
    found, _, err = agent(["status", "--data-dir", str(tmp_path)], capsys)
    assert found == code and one_line(err) == f"syntho-agent: error: {says}"


def test_a_ray_arg_list_in_the_config_file_reaches_the_role(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Once "Value must be an iterable": a YAML list (block or flow) is the repeated option."""
    seen: list[HeadSettings] = []
    monkeypatch.setattr(cli, "_run", lambda action, settings: seen.append(settings))
    config = tmp_path / "head.yaml"
    for listed in ("ray-arg:\n  - --num-cpus=4\n  - --num-gpus=0\n",
                   "ray-arg: [--num-cpus=4, --num-gpus=0]\n"):
        config.write_text(listed)
        code, _, err = agent(["head", "--config", str(config)], capsys)
        assert code == 0, err
        assert seen.pop().ray_arg == ("--num-cpus=4", "--num-gpus=0")


@pytest.mark.parametrize("env,content,source", [
    ({"SYNTHO_AGENT_SHM_SIZE": "lots"}, None, "SYNTHO_AGENT_SHM_SIZE"),
    ({}, "nofile: 1000\nshm-size: lots\n", "key 'shm-size' at line 2"),
])
def test_a_bad_value_names_its_source_in_one_line(
        env: dict[str, str], content: str | None, source: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = ["head", "--data-dir", str(tmp_path / "d")]
    if content is not None:
        (tmp_path / "head.yaml").write_text(content)
        args += ["--config", str(tmp_path / "head.yaml")]
    code, out, err = agent(args, capsys)
    assert code == 2 and not out
    line = one_line(err)
    assert source in line and "'lots' is not a size" in line
    assert not (tmp_path / "d").exists()
