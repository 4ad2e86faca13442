"""install/uninstall write a unit and a config file that loads back to the same settings."""

import hashlib
import io
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent import check, cli, deploy, systemd
from agent.config import WorkerSettings
from agent.engine import Engine
from agent.errors import EXIT_USAGE, EnvironmentProblem


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
    # A config mistake exits 2 (README "Exit codes"): restarting every 5 s cannot fix it.
    assert EXIT_USAGE == 2 and "\nRestartPreventExitStatus=2\n" in text
    # The config file gives the same settings as the flags did.
    seen: list[WorkerSettings] = []
    monkeypatch.setattr(deploy, "run", lambda e, s, say: seen.append(s))
    monkeypatch.setattr(Engine, "connect", classmethod(lambda cls: None))
    monkeypatch.setattr(check, "before_run", lambda *args: None)  # a fake engine: no checks
    result = runner.invoke(cli.cli, ["worker", "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen[0].head == "10.0.0.4" and seen[0].shm_size == 8 * 1024**3
    assert seen[0].ray_arg == ("--num-cpus=4",) and seen[0].license_key == "lic-123"
    assert seen[0].token_file == Path(__file__)
    result = runner.invoke(cli.cli, ["uninstall", "--root", str(tmp_path), "--no-enable"])
    assert result.exit_code == 0 and not unit.exists() and not config.exists()
    assert result.output == (
        "removed /etc/systemd/system/syntho-agent-worker.service\n"
        "removed /etc/syntho-agent/worker.yaml\n"
        "kept the containers, volumes and data dir (`syntho-agent down` removes the containers)\n")
    result = runner.invoke(cli.cli, ["uninstall", "--root", str(tmp_path)])  # and --enable
    assert result.exit_code == 0
    assert result.output == f"nothing was installed here (no syntho-agent units under {tmp_path})\n"


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
    assert systemd.backup_schedule(tmp_path) == 21600  # what the metrics' backup alert reads
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
    assert systemd.backup_schedule(tmp_path) is None
    result = runner.invoke(cli.cli, [*args, "--backup-every", "5s"])
    assert result.exit_code == 2 and "from 1m to 366d" in result.output


def test_install_keeps_the_operators_config_and_says_what_differs(tmp_path: Path) -> None:
    """The unit reads the operator's config file, or /etc/syntho-agent/ROLE.yaml written once
    from the options given. A second install changes nothing in it and lists what was given
    that it does not hold."""
    runner = CliRunner()
    args = ["install", "worker", "--root", str(tmp_path), "--no-enable"]
    assert runner.invoke(cli.cli, [*args, "--head", "10.0.0.4", "--ray-arg=--num-cpus=4"],
                         catch_exceptions=False).exit_code == 0
    config = tmp_path / "etc/syntho-agent/worker.yaml"
    edited = config.read_text().replace("10.0.0.4", "10.0.0.9") + "# my note\nnofile: 20000\n"
    config.write_text(edited)
    result = runner.invoke(cli.cli, [
        *args, "--head", "10.0.0.5", "--ray-arg=--num-cpus=4", "--nofile", "20000",
        "--shm-size", "1gb"], env={"SYNTHO_AGENT_LICENSE_KEY": "lic-secret-9"},
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert config.read_text() == edited
    assert result.output.splitlines()[:4] == [
        "kept /etc/syntho-agent/worker.yaml as it is (the unit reads it); 3 value(s) given "
        "differ from it, so edit it to apply them, then `systemctl restart "
        "syntho-agent-worker.service`:",
        "  head: 10.0.0.5 (the file has 10.0.0.9)",
        "  license-key: given (not in the file; secret, not shown)",
        "  shm-size: 1073741824 (not in the file)"]
    assert "lic-secret-9" not in result.output
    assert "wrote /etc/systemd/system/syntho-agent-worker.service" in result.output
    # The file itself given with --config: nothing differs; a flag over it does.
    result = runner.invoke(cli.cli, [*args, "--config", str(config)], catch_exceptions=False)
    assert result.output.startswith("kept /etc/syntho-agent/worker.yaml as it is (the unit reads"
                                    " it; it holds every value given)\n"), result.output
    # The operator's own file (config.yaml, as the cloud-init examples write it) given with
    # --config: the unit reads it, so a later edit of it applies; nothing is copied.
    own = tmp_path / "etc/syntho-agent/config.yaml"
    own.write_text("head: 10.0.0.6\n")
    config.unlink()
    result = runner.invoke(cli.cli, [*args, "--config", str(own)], catch_exceptions=False)
    assert result.output.startswith("kept /etc/syntho-agent/config.yaml as it is (the unit "
                                    "reads it; it holds every value given)\n"), result.output
    assert not config.exists() and own.read_text() == "head: 10.0.0.6\n"
    unit = (tmp_path / "etc/systemd/system/syntho-agent-worker.service").read_text()
    assert "--config /etc/syntho-agent/config.yaml --watch" in unit
    # A file from outside the root (an image's build machine) seeds the role's file once; the
    # unit reads the role's.
    other = tmp_path.parent / f"{tmp_path.name}-other.yaml"
    other.write_text("head: 10.0.0.7\n")
    result = runner.invoke(cli.cli, [*args, "--config", str(other)], catch_exceptions=False)
    assert result.output.startswith(
        f"wrote /etc/syntho-agent/worker.yaml from {other} and the options given (the unit "
        f"reads it, not {other}: edit it, then `systemctl restart syntho-agent-worker.service`)"
        "\n"), result.output
    result = runner.invoke(cli.cli, [*args, "--config", str(other), "--head", "10.0.0.8"],
                           catch_exceptions=False)
    assert result.output.startswith(
        f"kept /etc/syntho-agent/worker.yaml as it is (the unit reads it, not {other}); 1 "
        "value(s) given differ from it, so edit it to apply them, then `systemctl restart "
        "syntho-agent-worker.service`:\n  head: 10.0.0.8 (the file has 10.0.0.7)\n"
        ), result.output
    assert "head: 10.0.0.7" in config.read_text() and other.read_text() == "head: 10.0.0.7\n"
    other.unlink()
    unit = (tmp_path / "etc/systemd/system/syntho-agent-worker.service").read_text()
    assert "--config /etc/syntho-agent/worker.yaml --watch" in unit


def test_install_refuses_a_kept_config_it_cannot_read_before_writing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "etc/syntho-agent/head.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("head: [\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["install", "head", "--root", str(tmp_path), "--no-enable"])
    assert exit_.value.code == 2
    assert capsys.readouterr() == ("", (
        f"syntho-agent: error: {config}: is not valid YAML at line 2, column 1: expected the "
        "node content, but found '<stream end>' (while parsing a flow node at line 2, column "
        "1); install keeps that file as it is and the unit "
        "reads it: fix it or remove it, then run install again\n"))
    assert not (tmp_path / "etc/systemd").exists() or not any(
        (tmp_path / "etc/systemd").rglob("*.service"))


def test_install_app_keeps_backup_yaml_and_drops_the_timer_with_backup_every_0(
        tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["install", "app", "--root", str(tmp_path), "--no-enable", "--head", "10.0.0.4"]
    assert runner.invoke(cli.cli, [*args, "--keep", "3"], catch_exceptions=False).exit_code == 0
    backup_yaml = tmp_path / "etc/syntho-agent/backup.yaml"
    written = backup_yaml.read_text()
    assert "keep: 3" in written
    result = runner.invoke(cli.cli, [*args, "--keep", "7"], catch_exceptions=False)
    assert result.exit_code == 0 and backup_yaml.read_text() == written
    assert ("kept /etc/syntho-agent/backup.yaml as it is (the unit reads it); 1 value(s) given "
            "differ from it, so edit it to apply them, the next backup reads it:\n"
            "  keep: 7 (the file has 3)\n") in result.output
    assert ", the newest 3 kept\n" in result.output  # what the file says, not the flag
    timer = tmp_path / "etc/systemd/system/syntho-agent-backup.timer"
    result = runner.invoke(cli.cli, [*args, "--backup-every", "0"], catch_exceptions=False)
    assert result.exit_code == 0 and not timer.exists() and backup_yaml.exists()
    assert ("removed /etc/systemd/system/syntho-agent-backup.timer and .service (--backup-every "
            "0: no scheduled backups; /etc/syntho-agent/backup.yaml kept)") in result.output


# ---- systemd's own quoting ---------------------------------------------------------------------

def test_command_lines_and_environment_are_escaped_for_systemd_not_a_shell() -> None:
    """systemd.service(5) "Command lines", systemd.syntax(7) "Quoting": % doubled everywhere,
    $ doubled in the arguments (not in the program's path: given again as argv[0]), C-style
    escapes inside double quotes; a lone ; would separate two commands."""
    value = "/etc/my %i \"conf\" $HOME 'x'\\y"
    assert systemd.command_line(["/opt/agent %n/py", "app", "--config", value, ";", ""]) == (
        '"/opt/agent %%n/py" app --config "/etc/my %%i \\"conf\\" $$HOME \'x\'\\\\y" ";" ""')
    assert systemd.command_line(["/opt/$v/py", "a$b"]) == "@/opt/$v/py /opt/$$v/py a$$b"
    assert systemd.command_line(["/usr/local/bin/syntho-agent", "head", "--watch"]) == (
        "/usr/local/bin/syntho-agent head --watch")  # plain words stay plain
    assert systemd.command_line(["/x", "a\nb\tc"]) == '/x "a\\x0ab\\x09c"'
    assert systemd.environment_line("PYTHONPATH", '/a b/%x$y"z\\') == (
        'Environment="PYTHONPATH=/a b/%%x$y\\"z\\\\"')
    for program in ('/opt/"q"/py', "/opt/a\\b/py", "/opt/new\nline"):
        with pytest.raises(EnvironmentProblem, match="systemd cannot run"):
            systemd.command_line([program, "head"])


def _verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    if not binary:
        pytest.fail("systemd-analyze is needed (apt-get install systemd)", pytrace=False)
    return subprocess.run([binary, "verify", *map(str, paths)], capture_output=True, text=True,
                          timeout=60)


def _stub_docker(units: Path) -> None:
    """The units need docker.service; verify finds units next to the one it checks."""
    (units / "docker.service").write_text("[Unit]\nDescription=stub\n[Service]\n"
                                          "ExecStart=/bin/true\n")


def test_systemd_analyze_verify_accepts_what_install_writes(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.cli, ["install", "app", "--root", str(tmp_path),
                                          "--no-enable", "--head", "10.0.0.4"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    units = tmp_path / "etc/systemd/system"
    _stub_docker(units)
    written = sorted(units.glob("syntho-agent-*"))
    assert [p.name for p in written] == ["syntho-agent-app.service",
                                         "syntho-agent-backup.service",
                                         "syntho-agent-backup.timer"]
    done = _verify(written)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_systemd_analyze_verify_reads_percent_dollar_spaces_and_quotes_as_meant(
        tmp_path: Path) -> None:
    """verify checks that the program's path exists and resolves every %-specifier: the path
    (with %, $ and a space) is found, and the argument's %Z (no such specifier) is no error."""
    folder = tmp_path / "bin %Z $HOME"
    folder.mkdir()
    program = folder / "syntho agent"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    _stub_docker(units)
    config = Path("/etc/my %Z \"conf\" $HOME 'x'/app.yaml")
    text = systemd.unit_text("app", config, [str(program)]).replace(
        "[Service]\n", "[Service]\n" + systemd.environment_line("X", "%Z $y \"q\" a b") + "\n")
    unit = units / "syntho-agent-app.service"
    unit.write_text(text)
    done = _verify([unit])
    assert (done.returncode, done.stdout + done.stderr) == (0, ""), text
    # The same unit with one % not doubled, or the path's $ doubled, is refused: verify sees it.
    unit.write_text(text.replace("%%Z \\\"conf", "%Z \\\"conf"))
    done = _verify([unit])
    assert done.returncode != 0 and "Failed to resolve unit specifiers" in done.stderr
    unit.write_text(text.replace("@", "").replace("$HOME/syntho agent\"", "$$HOME/syntho agent\"",
                                                  1))
    done = _verify([unit])
    assert done.returncode != 0 and "is not executable" in done.stderr


# ---- down stops the unit that would re-create what it removes ----------------------------------

FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$FAKE_SYSTEMCTL_LOG"
case "$1" in
    is-active) [ -n "$FAKE_ACTIVE" ] ;;
    is-enabled) [ -n "$FAKE_ENABLED" ] ;;
    stop) if [ -n "$FAKE_STOP_FAILS" ]; then echo "Job for $2 failed." >&2; exit 1; fi ;;
esac
"""


def test_stop_watchers_stops_an_installed_active_unit_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "systemctl.log"
    monkeypatch.setenv("FAKE_SYSTEMCTL_LOG", str(log))
    root = tmp_path / "root"
    said: list[str] = []

    def calls() -> list[str]:
        found = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        said.clear()
        return found

    monkeypatch.setenv("PATH", str(bin_dir))  # no systemctl at all: nothing to do
    systemd.stop_watchers(root, said.append)
    assert said == []
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("FAKE_ACTIVE", "1")
    systemd.stop_watchers(root, said.append)  # nothing installed under root
    assert (calls(), said) == ([], [])
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / "syntho-agent-app.service").write_text("[Unit]\n")
    monkeypatch.setenv("FAKE_ACTIVE", "")
    systemd.stop_watchers(root, said.append)  # installed, not running
    assert (calls(), said) == (["is-active --quiet syntho-agent-app.service"], [])
    monkeypatch.setenv("FAKE_ACTIVE", "1")
    monkeypatch.setenv("FAKE_ENABLED", "1")
    systemd.stop_watchers(root, said.append)
    assert said == ["stopped syntho-agent-app.service first (it would have re-created what down "
                    "removes); `systemctl start syntho-agent-app.service` brings it back (and "
                    "so will the next boot: it is enabled)"]
    assert calls() == ["is-active --quiet syntho-agent-app.service",
                       "stop syntho-agent-app.service",
                       "is-enabled --quiet syntho-agent-app.service"]
    monkeypatch.setenv("FAKE_STOP_FAILS", "1")
    with pytest.raises(EnvironmentProblem, match="^systemctl stop syntho-agent-app.service "
                       "failed: Job for syntho-agent-app.service failed.$"):
        systemd.stop_watchers(root, said.append)
    assert said == []


@pytest.mark.parametrize("source", ["flag", "env"])
def test_install_refuses_registry_password_stdin_naming_the_alternatives(
        tmp_path: Path, source: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A unit has no standard input to read a password from: one line, exit 2, nothing
    written."""
    from agent.images import PASSWORD_ENV

    args = ["install", "head", "--root", str(tmp_path), "--no-enable",
            "--registry", "registry.example.com"]
    env = {}
    if source == "flag":
        args.append("--registry-password-stdin")
    else:
        env["SYNTHO_AGENT_REGISTRY_PASSWORD_STDIN"] = "true"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    assert exited.value.code == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    named = "_REGISTRY_PASSWORD_STDIN" if source == "env" else "--registry-password-stdin"
    assert named in err
    assert "--registry-password-file" in err and PASSWORD_ENV in err
    assert "s3cret" not in err
    assert not (tmp_path / "etc").exists() or not any((tmp_path / "etc").rglob("*.*"))


def _installed(tmp_path: Path, role: str, *more: str) -> None:
    head = [] if role == "head" else ["--head", "10.0.0.4"]
    result = CliRunner().invoke(cli.cli, ["install", role, "--root", str(tmp_path),
                                          "--no-enable", *head, *more],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", ["status", "logs", "down"])
def test_day_two_commands_read_what_install_wrote(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """`syntho-agent status` on a VM installed with --data-dir /srv/syntho looks there (and at
    the --instance installed), as the unit does, without --config; flags still win."""
    from agent import ops

    data = tmp_path / "srv/syntho"
    _installed(tmp_path, "worker", "--data-dir", str(data), "--instance", "blue")
    seen: list[tuple[Path, str]] = []
    monkeypatch.setattr(Engine, "connect", classmethod(lambda cls: None))

    def status(engine: Engine, data_dir: Path, instance: str, say: object) -> int:
        seen.append((data_dir, instance))
        return 0

    monkeypatch.setattr(ops, "status", status)
    monkeypatch.setattr(ops, "logs", lambda e, d, i, *a: seen.append((d, i)))
    monkeypatch.setattr(ops, "down", lambda e, d, i, *a, **k: seen.append((d, i)))
    monkeypatch.delenv("SYNTHO_AGENT_DATA_DIR", raising=False)
    monkeypatch.delenv("SYNTHO_AGENT_INSTANCE", raising=False)
    runner = CliRunner()
    result = runner.invoke(cli.cli, [command, "--root", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen == [(data, "blue")]
    # A flag wins over the installed file.
    result = runner.invoke(cli.cli, [command, "--root", str(tmp_path), "--instance", "red"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen[-1] == (data, "red")
    # The app installed too, with the same data dir and instance: one place still.
    _installed(tmp_path, "app", "--data-dir", str(data), "--instance", "blue",
               "--backup-every", "0")
    result = runner.invoke(cli.cli, [command, "--root", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0 and seen[-1] == (data, "blue"), result.output


def test_installed_roles_that_disagree_are_named_and_nothing_is_guessed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SYNTHO_AGENT_DATA_DIR", raising=False)
    monkeypatch.delenv("SYNTHO_AGENT_INSTANCE", raising=False)
    _installed(tmp_path, "head", "--data-dir", str(tmp_path / "a"))
    _installed(tmp_path, "app", "--data-dir", str(tmp_path / "b"), "--backup-every", "0")
    with pytest.raises(SystemExit) as exited:
        cli.main(["status", "--root", str(tmp_path)])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data-dir" in err and "--config" in err
    assert "head.yaml" in err and "app.yaml" in err


def test_install_records_the_agent_it_runs_and_status_says_whether_it_is_this_one(
        tmp_path: Path) -> None:
    """k3s-style upgrades need to know which agent each VM runs: install records the file the
    units run (its version, commit and SHA-256), status compares it with the running one."""
    from agent import ops

    binary = tmp_path / "usr/local/bin/syntho-agent"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"PK a zipapp's bytes")
    record = systemd.record_agent(tmp_path, ["/usr/local/bin/syntho-agent"])
    assert record["sha256"] == hashlib.sha256(b"PK a zipapp's bytes").hexdigest()
    assert systemd.installed_agent(tmp_path) == record
    assert stat.S_IMODE((tmp_path / "etc/syntho-agent/agent.json").stat().st_mode) == 0o644
    found = {"version": record["version"], "commit": record["commit"], "installed": record}
    assert ops._agent_lines(found)[0].endswith(
        f"the units run /usr/local/bin/syntho-agent: this one, sha256 {record['sha256'][:16]}...")
    older = {**found, "installed": {**record, "version": "0.0.1"}}
    assert "0.0.1 (commit" in ops._agent_lines(older)[0]
    assert "NOT this one" in ops._agent_lines(older)[0]
    assert "the units run" not in ops._agent_lines({**found, "installed": None})[0]
    (tmp_path / "etc/syntho-agent/agent.json").write_text("[]")
    assert systemd.installed_agent(tmp_path) is None
    # install (from a checkout: the units run this Python's module, no file to hash)
    result = CliRunner().invoke(cli.cli, ["install", "worker", "--root", str(tmp_path),
                                          "--no-enable", "--head", "10.0.0.4"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    installed = systemd.installed_agent(tmp_path)
    assert installed is not None and installed["sha256"] is None
    assert installed["path"].endswith(" -m agent")
