"""The command line: `syntho-agent head | worker | app | status | down | logs | version`.

Thin: it parses options into the command's settings type (agent.config), connects to the
engine, and hands over to agent.deploy or agent.ops. Every expected failure leaves as one line
and a documented exit code.
"""

from __future__ import annotations

import functools
import platform
import signal
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from agent import (
    __version__,
    backup,
    buildinfo,
    deploy,
    launcher,
    ops,
    restore,
    store,
    systemd,
    watch,
)
from agent.config import (
    AppSettings,
    BackupSchedule,
    BackupSettings,
    Common,
    HeadSettings,
    RestoreSettings,
    RoleSettings,
    WorkerSettings,
)
from agent.engine import Engine
from agent.errors import EXIT_ENVIRONMENT, EXIT_USAGE, AgentError
from agent.failures import Interrupted, catch_signals, interrupted_message, os_error_message
from agent.sources import click_options, config_option, lenient_config_option
from agent.spec import Spec

R = TypeVar("R", HeadSettings, WorkerSettings, AppSettings)


def say(line: str) -> None:
    click.echo(line)


def _run(action: Callable[[Engine, R, Callable[[str], None]], Spec], settings: R) -> None:
    # The data dir before the engine: a user who may not write it hears that first, and
    # nothing has changed on the engine.
    store.ensure_dir(settings.data_dir)
    store.check_writable(settings.data_dir)
    engine = Engine.connect()
    spec = action(engine, settings, say)
    if settings.watch:
        try:
            watch.follow(engine, spec, settings, say)
        except Interrupted as exc:  # `systemctl stop` or Ctrl-C: a normal end for a watcher
            say(f"stopped watching ({exc.name}); the containers keep running")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Stand up a Syntho deployment on plain VMs: the Ray head, its workers, and the app.

    Run the same command again at any time (after a crash, a reboot, a config change): it
    converges to the desired state without losing anything.
    """


@cli.command()
@config_option
@click_options(HeadSettings)
def head(**params: Any) -> None:
    """Run the Ray head on this VM."""
    _run(deploy.run_head, HeadSettings.from_params(params))


@cli.command()
@config_option
@click_options(WorkerSettings)
def worker(**params: Any) -> None:
    """Run a Ray worker that joins the head at --head."""
    if not params.get("head"):
        raise click.UsageError("worker needs --head (the Ray head's IP address or hostname)")
    _run(deploy.run_worker, WorkerSettings.from_params(params))


@cli.command()
@config_option
@click_options(AppSettings)
def app(**params: Any) -> None:
    """Run the Syntho application stack, wired to the Ray head at --head."""
    if not params.get("head"):
        raise click.UsageError("app needs --head (the Ray head's IP address or hostname)")
    _run(deploy.run_app, AppSettings.from_params(params))


ROLES: dict[str, type[RoleSettings]] = {
    "head": HeadSettings, "worker": WorkerSettings, "app": AppSettings}


@cli.group()
def install() -> None:
    """Run a role at every boot (systemd unit + config file), healing with --watch."""


def _yaml_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return f"{value[0]}:{value[1]}"  # ADDRESS:PORT
    if isinstance(value, tuple):
        return list(value)
    return value


def _install_command(role: str) -> click.Command:
    def command(ctx: click.Context, /, root: Path, enable: bool, **params: Any) -> None:
        given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT,
                 click.core.ParameterSource.DEFAULT_MAP)
        params.pop("watch", None)  # the unit always watches
        schedule = {k: params.pop(k) for k in _SCHEDULE if k in params}
        values = {k: _yaml_value(v) for k, v in params.items()
                  if v is not None and ctx.get_parameter_source(k) in given}
        if role != "head" and not values.get("head"):
            raise click.UsageError(f"install {role} needs --head")
        backups = None
        if role == "app":  # the backup reads the app's database settings and its own
            shared = {k: v for k, v in values.items() if k in _BACKUP_KEYS}
            own = {k: _yaml_value(v) for k, v in schedule.items()
                   if v is not None and k != "backup_every"}
            backups = (int(schedule["backup_every"]), {"keep": 5, **shared, **own})
        systemd.install(role, values, root, enable, say, backups)

    decorated = click_options(ROLES[role])(click.pass_context(command))
    if role == "app":  # and its scheduled backups
        decorated = click_options(BackupSchedule)(decorated)
    decorated = config_option(decorated)
    decorated = click.option("--enable/--no-enable", default=True, show_default=True,
                             help="systemctl enable --now the unit")(decorated)
    decorated = click.option(
        "--root", type=click.Path(file_okay=False, readable=False, path_type=Path),
        default=Path("/"), help="write under this root instead of / (for images and tests)",
    )(decorated)
    return click.command(role, help=f"Install the {role} role as a boot-time service.")(
        decorated)


_SCHEDULE = {o.key for o in BackupSchedule.options()}
_BACKUP_KEYS = {o.key for o in BackupSettings.options()} - _SCHEDULE


for _role in systemd.ROLES:
    install.add_command(_install_command(_role))


@cli.command()
@click.argument("roles", nargs=-1, type=click.Choice(systemd.ROLES))
@click.option("--root", type=click.Path(file_okay=False, readable=False, path_type=Path),
              default=Path("/"),
              help="the root install wrote under")
@click.option("--enable/--no-enable", default=True, help="systemctl disable --now the unit")
def uninstall(roles: tuple[str, ...], root: Path, enable: bool) -> None:
    """Remove the boot-time service of ROLES (all installed ones by default)."""
    systemd.uninstall(list(roles or systemd.ROLES), root, enable, say)


@cli.command()
@lenient_config_option
@click_options(Common)
def status(**params: Any) -> None:
    """Show what the agent manages here: containers, health, Ray nodes, the app's URL."""
    settings = Common.from_params(params)
    not_ready = ops.status(Engine.connect(), settings.data_dir, settings.instance, say)
    sys.exit(1 if not_ready else 0)


@cli.command()
@lenient_config_option
@click_options(Common)
@click.option("--purge", is_flag=True, help="also remove volumes (the database!) and the data dir")
@click.option("--yes", is_flag=True, help="do not ask before --purge")
def down(purge: bool, yes: bool, **params: Any) -> None:
    """Stop and remove the containers the agent made (volumes and data dir are kept)."""
    settings = Common.from_params(params)
    if purge and not yes:
        click.confirm(f"remove every volume (the database) and {settings.data_dir}?", abort=True)
    ops.down(Engine.connect(), settings.data_dir, settings.instance, purge, say)


@cli.command()
@lenient_config_option
@click_options(Common)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("syntho_logs.log"), show_default=True, help="file to write")
def logs(output: Path, **params: Any) -> None:
    """Write every managed container's logs, timestamped and redacted, into one file."""
    settings = Common.from_params(params)
    ops.logs(Engine.connect(), settings.data_dir, settings.instance, output, say)


@cli.command()
def version() -> None:
    """Print the version, the build's commit, and the Python and platform it runs on."""
    built = f", built for {buildinfo.BUILT_FOR}" if buildinfo.BUILT_FOR else ""
    say(f"syntho-agent {__version__} (commit {buildinfo.COMMIT}{built}) on Python "
        f"{platform.python_version()}, {platform.system()} {platform.machine()}")


cli.add_command(launcher.command)


@cli.command("backup")
@lenient_config_option
@click_options(BackupSettings)
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="the archive to write, or a directory for it [default: <data-dir>/backups]")
@click.option("--list", "show", is_flag=True, help="list the backups in <data-dir>/backups")
@click.option("--json", "as_json", is_flag=True, help="with --list: as JSON")
def backup_command(output: Path | None, show: bool, as_json: bool, **params: Any) -> None:
    """Back up the app VM: both databases, the secrets and app.env, in one archive."""
    settings = BackupSettings.from_params(params)
    if show:
        backup.show_list(settings, as_json, say)
        return
    if as_json:
        raise click.UsageError("--json goes with --list")
    store.ensure_dir(settings.data_dir)
    store.check_writable(settings.data_dir)
    backup.run_backup(Engine.connect(), settings, output, say)


@cli.command("restore")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@config_option
@click_options(RestoreSettings)
@click.option("--force", is_flag=True, help="replace a database this VM already has (a backup "
              "of it is taken first)")
def restore_command(archive: Path, force: bool, **params: Any) -> None:
    """Restore the app VM from a backup archive, then converge the app (needs --head)."""
    if not params.get("head"):
        raise click.UsageError("restore needs --head (the Ray head's IP address or hostname)")
    settings = RestoreSettings.from_params(params)
    store.ensure_dir(settings.data_dir)
    store.check_writable(settings.data_dir)
    restore.run_restore(Engine.connect(), settings, archive, force, say)


# ---- the edge: one line per failure, a documented exit code ----

_running: list[click.Context] = []  # the command that runs: its name and parameters


def _remember_context(command: click.Command) -> None:
    """Every command records its context as it starts, for the messages below."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _remember_context(sub)
        return
    callback = command.callback
    if callback is None:
        return

    @functools.wraps(callback)
    def remembered(*args: Any, **kwargs: Any) -> Any:
        _running.append(click.get_current_context())
        return callback(*args, **kwargs)

    command.callback = remembered


_remember_context(cli)


def _command() -> str:
    """`head`, `install app`: the command that runs (or the program, before one does)."""
    if not _running:
        return "syntho-agent"
    return " ".join(_running[-1].command_path.split()[1:]) or "syntho-agent"


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors, documented exit codes."""
    _running.clear()
    previous = catch_signals()
    try:
        try:
            cli.main(args=argv, prog_name="syntho-agent", standalone_mode=False)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    except Interrupted as exc:
        click.echo(f"syntho-agent: {interrupted_message(exc, _command())}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("syntho-agent: aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        click.echo(f"syntho-agent: error: {exc.format_message()}", err=True)
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except AgentError as exc:  # the engine's failures too (agent.engine.EngineError)
        click.echo(f"syntho-agent: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # the file system: the data dir, --output, --root
        params = _running[-1].params if _running else {}
        line = " ".join(os_error_message(exc, params).splitlines())
        click.echo(f"syntho-agent: error: {line}", err=True)
        sys.exit(EXIT_ENVIRONMENT)
    except KeyboardInterrupt:
        click.echo("syntho-agent: interrupted", err=True)
        sys.exit(130)
