"""The command line: `syntho-agent head | worker | app | status | down | logs | version`.

Thin: it parses options into the command's settings type (agent.config), connects to the
engine, and hands over to agent.deploy or agent.ops. Every expected failure leaves as one line
and a documented exit code.
"""

from __future__ import annotations

import dataclasses
import functools
import os
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
    check,
    deploy,
    forecast,
    history,
    launcher,
    metrics,
    ops,
    preview,
    restore,
    store,
    systemd,
    validate,
    watch,
)
from agent.config import (
    DEFAULT_CONFIG,
    ENV_PREFIX,
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
from agent.images import PASSWORD_ENV
from agent.roles import ray
from agent.sources import click_options, config_option, lenient_config_option
from agent.spec import Spec

R = TypeVar("R", HeadSettings, WorkerSettings, AppSettings)
RESYNC = 30.0  # seconds between a watcher's full looks (agent/watch.py)
FOLLOW_RESYNC = 10.0


def say(line: str) -> None:
    click.echo(line)


def _run(action: Callable[[Engine, R, Callable[[str], None]], Spec], settings: R) -> None:
    # The data dir before the engine: a user who may not write it hears that first, and
    # nothing has changed on the engine.
    if not isinstance(settings, AppSettings):
        ray.node_ports(settings, settings.command)  # ports that collide: bad input, exit 2
    store.ensure_dir(settings.data_dir)
    store.check_writable(settings.data_dir)

    def converge() -> tuple[Engine, Spec]:
        # Every run ends with the metrics file (agent/metrics.py): its result and the state.
        with metrics.recorded(settings.data_dir, settings.instance, settings.command, say):
            engine = Engine.connect()
            if not settings.skip_checks:  # the quick host checks: a fail stops here, unchanged
                check.before_run(engine, settings, say)
            return engine, action(engine, settings, say)

    if not settings.watch:
        converge()
        return
    # A watcher is a daemon: an engine that does not answer yet, or restarts under its first
    # converge, is waited for, and the converge runs again once it answers.
    engine, spec = watch.through_engine_restarts(converge, say)
    try:
        # A worker that follows the head looks at it more often than the resync.
        watch.follow(engine, spec, settings, say,
                     resync=FOLLOW_RESYNC if deploy.follows_head(settings) else RESYNC,
                     refresh=deploy.refresher(engine, settings, spec, say))
    except Interrupted as exc:  # `systemctl stop` or Ctrl-C: a normal end for a watcher
        say(f"stopped watching ({exc.name}); the containers keep running")


def version_text() -> str:
    built = f", built for {buildinfo.BUILT_FOR}" if buildinfo.BUILT_FOR else ""
    return (f"syntho-agent {__version__} (commit {buildinfo.COMMIT}{built}) on Python "
            f"{platform.python_version()}, {platform.system()} {platform.machine()}")


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        say(version_text())
        ctx.exit(0)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Print the version (as `syntho-agent version`).")
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
    _run(deploy.run, HeadSettings.from_params(params))


@cli.command()
@config_option
@click_options(WorkerSettings)
def worker(**params: Any) -> None:
    """Run a Ray worker that joins the head at --head."""
    if not params.get("head"):
        raise click.UsageError("worker needs --head (the Ray head's IP address or hostname)")
    _run(deploy.run, WorkerSettings.from_params(params))


@cli.command()
@config_option
@click_options(AppSettings)
def app(**params: Any) -> None:
    """Run the Syntho application stack, wired to the Ray head at --head."""
    if not params.get("head"):
        raise click.UsageError("app needs --head (the Ray head's IP address or hostname)")
    _run(deploy.run, AppSettings.from_params(params))


ROLES: dict[str, type[RoleSettings]] = {
    "head": HeadSettings, "worker": WorkerSettings, "app": AppSettings}


def _role_settings(command: str, role: str, params: dict[str, Any]) -> RoleSettings:
    """A role's settings for a command that takes its options (check, plan)."""
    if role != "head" and not params.get("head"):
        raise click.UsageError(f"{command} needs --head (the Ray head's IP address or hostname)")
    return ROLES[role].from_params(params)


@cli.group()
def install() -> None:
    """Run a role at every boot (systemd unit + config file), healing with --watch."""


def _install_command(role: str) -> click.Command:
    def command(ctx: click.Context, /, root: Path, enable: bool, **params: Any) -> None:
        given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT,
                 click.core.ParameterSource.DEFAULT_MAP)
        params.pop("watch", None)  # the unit always watches
        if params.get("registry_password_stdin"):
            origin = ctx.get_parameter_source("registry_password_stdin")
            source = ("registry-password-stdin in the config file"
                      if origin is click.core.ParameterSource.DEFAULT_MAP
                      else f"{ENV_PREFIX}REGISTRY_PASSWORD_STDIN"
                      if origin is click.core.ParameterSource.ENVIRONMENT
                      else "--registry-password-stdin")
            raise click.UsageError(
                f"install {role}: {source} cannot work in a unit (systemd gives it no standard "
                f"input): use --registry-password-file FILE (a 0600 file) or set {PASSWORD_ENV} "
                "in the unit's environment")
        schedule = {k: params.pop(k) for k in _SCHEDULE if k in params}
        values = {k: systemd.yaml_value(v) for k, v in params.items()
                  if v is not None and ctx.get_parameter_source(k) in given}
        if role != "head" and not values.get("head"):
            raise click.UsageError(f"install {role} needs --head")
        backups = None
        if role == "app":  # the backup reads the app's database settings and its own
            shared = {k: v for k, v in values.items() if k in _BACKUP_KEYS}
            own = {k: systemd.yaml_value(v) for k, v in schedule.items()
                   if v is not None and k != "backup_every"}
            backups = (int(schedule["backup_every"]), {**shared, **own})
        given_file = ctx.meta.get(_CONFIG_GIVEN)
        read = Path(given_file) if given_file else None
        if read is None and DEFAULT_CONFIG.exists():
            read = DEFAULT_CONFIG  # read without being named, as by every role
        systemd.install(role, values, root, enable, say, backups, read)

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
    made = click.command(role, help=f"Install the {role} role as a boot-time service.")(
        decorated)
    _note_config_given(made)
    return made


_CONFIG_GIVEN = "syntho_agent.install_config"  # ctx.meta: the --config value, or None


def _note_config_given(command: click.Command) -> None:
    """Keep the --config value (config_option reads it, exposes only its values): the unit
    reads ROLE.yaml, and an operator who gave another file must hear which one to edit."""
    option = next(p for p in command.params if p.name == "config")
    load = option.callback
    assert load is not None

    def noted(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        ctx.meta[_CONFIG_GIVEN] = value
        return load(ctx, param, value)

    option.callback = noted


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


_GIVEN = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)


def _day_two(ctx: click.Context, params: dict[str, Any], root: Path) -> Common:
    """status, logs, down: their data dir and instance. Without --config, what neither a flag,
    a variable nor the default config file gives comes from the installed units' config files
    (/etc/syntho-agent/ROLE.yaml or the file install named), as systemd runs the roles."""
    settings = Common.from_params(params)
    if ctx.get_parameter_source("config") in _GIVEN:
        return settings
    open_keys = [k for k in ("data_dir", "instance")
                 if ctx.get_parameter_source(k) is click.core.ParameterSource.DEFAULT]
    found = systemd.installed_values(root, open_keys) if open_keys else {}
    return dataclasses.replace(settings, **found)


@cli.command()
@lenient_config_option
@click_options(Common)
@click.option("--json", "as_json", is_flag=True,
              help="print JSON (its schema: README, \"status --json\")")
@click.option("--root", type=click.Path(file_okay=False, readable=False, path_type=Path),
              default=Path("/"), help="the root install wrote under (without --config, its "
              "units' config files give the data dir and instance)")
@click.pass_context
def status(ctx: click.Context, /, as_json: bool, root: Path, **params: Any) -> None:
    """Show what the agent manages here: containers (image, uptime, restarts), health, the
    Ray cluster as this VM sees it, the app's URL. Exit 1 when something is not ready."""
    settings = _day_two(ctx, params, root)
    show = ops.status_json if as_json else ops.status
    not_ready = show(Engine.connect(), settings.data_dir, settings.instance, say)
    sys.exit(1 if not_ready else 0)


@cli.command()
@lenient_config_option
@click_options(Common)
@click.option("--purge", is_flag=True, help="also remove volumes (the database!) and the data dir")
@click.option("--yes", is_flag=True, help="do not ask before --purge")
@click.option("--root", type=click.Path(file_okay=False, readable=False, path_type=Path),
              default=Path("/"), help="the root install wrote under (its units are stopped "
              "first; without --config, their config files give the data dir and instance)")
@click.pass_context
def down(ctx: click.Context, /, purge: bool, yes: bool, root: Path, **params: Any) -> None:
    """Stop and remove the containers the agent made (volumes and data dir are kept); first
    stop this VM's syntho-agent unit, which would re-create them."""
    settings = _day_two(ctx, params, root)
    if purge and not yes:
        click.confirm(f"remove every volume (the database) and {settings.data_dir}?", abort=True)
    ops.down(Engine.connect(), settings.data_dir, settings.instance, purge, say,
             first=lambda: systemd.stop_watchers(root, say))


@cli.command()
@lenient_config_option
@click_options(Common)
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              default=None, help="file to write, - for standard output  [default: "
              "syntho_logs.log; with --follow: standard output]")
@click.option("--follow", "-f", is_flag=True,
              help="keep printing new lines until Ctrl-C (several containers: each line "
              "prefixed with its service)")
@click.option("--service", "services", multiple=True, metavar="NAME",
              help="only this service's container (ray-head, core, ...); repeatable")
@click.option("--tail", metavar="N", callback=lambda c, p, v: _parsed(validate.count, c, p, v),
              help="only the last N lines of each container")
@click.option("--since", metavar="WHEN", callback=lambda c, p, v: _parsed(validate.since, c, p, v),
              help="only lines since a duration ago (10m, 2h, 1d) or an RFC 3339 time "
              "(2024-05-01T10:00:00Z)")
@click.option("--root", type=click.Path(file_okay=False, readable=False, path_type=Path),
              default=Path("/"), help="the root install wrote under (without --config, its "
              "units' config files give the data dir and instance)")
@click.pass_context
def logs(ctx: click.Context, /, output: Path | None, follow: bool, services: tuple[str, ...],
         tail: int | None, since: float | None, root: Path, **params: Any) -> None:
    """Write the managed containers' logs, timestamped and redacted, into one file (or to
    standard output, or follow them)."""
    settings = _day_two(ctx, params, root)
    if follow and output is not None and str(output) != "-":
        raise click.UsageError("--follow prints to standard output: drop --output (redirect "
                               "with > FILE to keep the lines)")
    if output is None and not follow:
        output = Path("syntho_logs.log")
    options = ops.LogOptions(None if output is None or str(output) == "-" else output,
                             services, tail, since, follow)
    try:
        ops.logs(Engine.connect(), settings.data_dir, settings.instance, options, say, say)
    except Interrupted as exc:
        if not follow:
            raise
        click.echo(f"stopped following ({exc.name})", err=True)  # the normal end of -f
    except BrokenPipeError:  # the reader went away (`| head`): an ordinary end
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _parsed(parse: Callable[[str], Any], ctx: click.Context, param: click.Parameter,
            value: str | None) -> Any:
    """A plain option's value through its agent.validate parser (one line when it is bad)."""
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@cli.command()
def version() -> None:
    """Print the version, the build's commit, and the Python and platform it runs on."""
    say(version_text())


cli.add_command(launcher.command)


@cli.group("check")
def check_group() -> None:
    """Check this host for a role: Docker, cgroups, memory and /dev/shm, the nofile limit,
    disk space, free ports, the head's ports (worker, app); then the firewall rules the role
    needs. Exit 1 when a check fails (every role run does the quick ones first)."""


def _check_command(role: str) -> click.Command:
    def command(**params: Any) -> None:
        settings = _role_settings(f"check {role}", role, params)
        if not isinstance(settings, AppSettings):
            ray.node_ports(settings, role)
        sys.exit(1 if check.report(Engine.connect(), settings, say) else 0)

    decorated = config_option(click_options(ROLES[role])(command))
    return click.command(role, help=f"Check this host for the {role} role (its options as "
                         f"for `syntho-agent {role}`).")(decorated)


for _role in ROLES:
    check_group.add_command(_check_command(_role))


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
    with metrics.recorded(settings.data_dir, settings.instance, "backup", say):
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
    engine = Engine.connect()
    if not settings.skip_checks:  # the app role's quick host checks
        check.before_run(engine, settings, say)
    restore.run_restore(engine, settings, archive, force, say)


@cli.command("token", short_help="Print a new cluster token, for every VM's user-data.")
def token_command() -> None:
    """Print a new cluster token (for a secrets manager, then every VM's user-data).

    A token as the head generates one (64 hex digits), alone on stdout: the one command that
    prints a secret, because that is what it is asked for. Give it to the head, every worker
    and the app (a 0600 file and --token-file)."""
    click.echo(store.token_hex(32)())


@cli.group("plan")
def plan_group() -> None:
    """Show what `syntho-agent ROLE` would do, changing nothing: each container's action and
    why (the fields that changed), the images it would pull, the files it would write (secrets
    by name only). Exit 0; with --exit-code, 1 when the run would change something."""


def _plan_command(role: str) -> click.Command:
    def command(exit_code: bool, **params: Any) -> None:
        settings = _role_settings(f"plan {role}", role, params)
        found = forecast.forecast(Engine.connect(), settings)
        preview.render(found, role, say)
        sys.exit(1 if exit_code and found.changes else 0)

    decorated = config_option(click_options(ROLES[role])(command))
    decorated = click.option(
        "--exit-code", is_flag=True,
        help="exit 1 when the run would change something, 0 when not (as `git diff "
        "--exit-code`)")(decorated)
    return click.command(role, help=f"What `syntho-agent {role}` would do; changes nothing.")(
        decorated)


for _role in ROLES:
    plan_group.add_command(_plan_command(_role))


@cli.command("history")
@lenient_config_option
@click_options(Common)
@click.option("--json", "as_json", is_flag=True, help="as JSON (schema 1)")
def history_command(as_json: bool, **params: Any) -> None:
    """List the releases this VM ran, newest first: references, state, when (the data dir's
    releases.json)."""
    history.show(Common.from_params(params).data_dir, as_json, say)


@cli.group("rollback")
def rollback_group() -> None:
    """Go back to the previous healthy release of a role (or RELEASE, a name or number from
    `syntho-agent history`), with the same health gates; nothing is pulled that is still on
    this engine. Take the role's options as for `syntho-agent ROLE` (or its config file)."""


def _rollback_command(role: str) -> click.Command:
    def command(target: str | None, **params: Any) -> None:
        settings = _role_settings(f"rollback {role}", role, params)

        def action(engine: Engine, chosen: Any, out: Callable[[str], None]) -> Spec:
            return deploy.rollback(engine, chosen, target, out)

        _run(action, settings)  # type: ignore[type-var]

    decorated = config_option(click_options(ROLES[role])(command))
    decorated = click.argument("target", metavar="[RELEASE]", required=False)(decorated)
    return click.command(role, help=f"Go back to an earlier release of the {role} role.")(
        decorated)


for _role in ROLES:
    rollback_group.add_command(_rollback_command(_role))


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
