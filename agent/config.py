"""Settings: every option the agent takes, from one table, with one precedence.

    command-line flag  >  SYNTHO_AGENT_<NAME> env variable  >  config file (--config)  >  default

Each option is declared once below (OPTIONS); the CLI turns the table into click options, the
config file is checked against it (an unknown key is an error), and every value, from any source,
goes through the same parser before anything touches the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from agent import validate

ENV_PREFIX = "SYNTHO_AGENT_"
DEFAULT_CONFIG = Path("/etc/syntho-agent/config.yaml")
DEFAULT_DATA_DIR = Path("/var/lib/syntho-agent")


@dataclass(frozen=True)
class Opt:
    """One option: its name (as a flag without dashes, or a config-file key), parser and help."""

    name: str
    help: str
    parse: Callable[[Any], Any] | None = None
    default: Any = None
    flag: bool = False  # a --name/--no-name switch
    multiple: bool = False
    secret: bool = False  # never echoed back in an error message

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    @property
    def envvar(self) -> str:
        return ENV_PREFIX + self.key.upper()


def _optional_host(v: Any) -> str:
    return validate.host(str(v))


def _instance(v: Any) -> str:
    return validate.name(str(v)) if str(v) else ""


def _network(v: Any) -> str:
    v = str(v)
    return v if v == "host" else validate.name(v)


def _wait(v: Any) -> float:
    try:
        number = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{v!r} is not a number of seconds (0 waits forever)") from None
    if number < 0:
        raise ValueError(f"{v!r} must be 0 (forever) or a positive number of seconds")
    return number


def _existing_file(v: Any) -> Path:
    path = Path(str(v))
    if not path.is_file():
        raise ValueError(f"{path} is not a readable file")
    return path


# The options, grouped by the commands that take them (see COMMON, RAY, ...).
COMMON = [
    Opt("data-dir", "where the agent keeps what it writes (secrets 0600, env file, lock)",
        lambda v: Path(str(v)), DEFAULT_DATA_DIR),
    Opt("instance", "a name that tells several agents on one engine apart (suffix of every "
        "container name); empty on a real VM", _instance, ""),
    Opt("lock-wait", "seconds to wait for another agent working on the same data dir",
        _wait, 30.0),
]
RAY = [
    Opt("ray-image", "the syntho-ray image", validate.image, "syntho-ray:latest"),
    Opt("license-key", "the Syntho license key (LICENSE_KEY_SIGNED)", str, "", secret=True),
    Opt("network", "'host' (as on a VM) or a user-defined Docker network to run Ray on",
        _network, "host"),
    Opt("shm-size", "shared memory for Ray's object store (4gb, 12gb ...)", validate.size, "4gb"),
    Opt("nofile", "open-files limit for the Ray container (the host must allow it)",
        validate.positive_int, 65536),
    Opt("cpus", "CPU limit for the Ray container (cores)", validate.positive_float),
    Opt("memory", "memory limit (and reservation) for the Ray container", validate.size),
    Opt("node-ip", "the IP address Ray advertises for this node (--node-ip-address)",
        lambda v: validate.ip(str(v))),
    Opt("ray-arg", "an extra argument for `ray start` (repeat for several)", str, (),
        multiple=True),
    Opt("auth", "Ray token authentication (on by default; --no-auth turns it off)", None, True,
        flag=True),
    Opt("token", "the cluster's Ray token (prefer SYNTHO_AGENT_TOKEN or --token-file: a flag "
        "shows in `ps`)", str, secret=True),
    Opt("token-file", "a file holding the cluster's Ray token", _existing_file),
    Opt("ready-timeout", "seconds to wait for the containers to become ready (0 = forever)",
        _wait, 180.0),
]
JOIN = [
    Opt("head", "the Ray head's IP address or hostname", _optional_host),
    Opt("wait", "seconds to wait for the head to answer on 6379 (0 = forever)", _wait, 600.0),
]

ALL_OPTIONS = {o.key: o for o in COMMON + RAY + JOIN}


@dataclass(frozen=True)
class Settings:
    """Validated settings for one run. Roles read what they need."""

    data_dir: Path = DEFAULT_DATA_DIR
    instance: str = ""
    lock_wait: float = 30.0
    ray_image: str = "syntho-ray:latest"
    license_key: str = ""
    network: str = "host"
    shm_size: int = 4 * 1024**3
    nofile: int = 65536
    cpus: float | None = None
    memory: int | None = None
    node_ip: str | None = None
    ray_arg: tuple[str, ...] = ()
    auth: bool = True
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    ready_timeout: float = 180.0
    head: str | None = None
    wait: float = 600.0

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Settings:
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: (tuple(v) if isinstance(v, (list, tuple)) else v)
                                  for k, v in params.items() if k in known and v is not None}
        return cls(**values)

    def suffix(self, base: str) -> str:
        """A container or volume name, suffixed with the instance name when there is one."""
        return f"{base}-{self.instance}" if self.instance else base


class Checked(click.ParamType):
    """A click type that runs an option's parser, so flags, env and config file are alike."""

    def __init__(self, opt: Opt) -> None:
        self.opt = opt
        self.name = opt.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if self.opt.parse is None:
            return value
        try:
            return self.opt.parse(value)
        except (ValueError, TypeError) as exc:
            if self.opt.secret:
                self.fail("the value given is not valid", param, ctx)
            self.fail(str(exc), param, ctx)


def options(opts: list[Opt]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a click command with these options (env variables and config file included)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed(opts):
            if opt.flag:
                decl = click.option(f"--{opt.name}/--no-{opt.name}", opt.key, default=opt.default,
                                    envvar=opt.envvar, show_envvar=True, help=opt.help)
            else:
                decl = click.option(f"--{opt.name}", opt.key, type=Checked(opt),
                                    default=opt.default, multiple=opt.multiple,
                                    envvar=opt.envvar, show_envvar=True, help=opt.help,
                                    show_default=opt.default not in (None, "", ())
                                    and not opt.secret)
            fn = decl(fn)
        return fn

    return decorate


def load_config_file(path: Path, explicit: bool) -> dict[str, Any]:
    """The config file's values by option key; {} when the default file does not exist."""
    if not path.exists():
        if explicit:
            raise click.BadParameter(f"{path} does not exist", param_hint="--config")
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}",
                                 param_hint="--config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise click.BadParameter(f"{path} is not valid YAML{where}",
                                 param_hint="--config") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must be a mapping of option: value",
                                 param_hint="--config")
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in ALL_OPTIONS:
            raise click.BadParameter(
                f"{path}: unknown key {raw_key!r} (known keys: see `syntho-agent <role> --help`)",
                param_hint="--config")
        values[key] = value
    return values


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--config: read first (eager), so its values become the defaults of the other options."""

    def load(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        explicit = value is not None
        path = Path(value) if value is not None else DEFAULT_CONFIG
        ctx.default_map = {**(ctx.default_map or {}), **load_config_file(path, explicit)}

    return click.option(
        "--config", "config", envvar=ENV_PREFIX + "CONFIG", show_envvar=True, is_eager=True,
        expose_value=False, callback=load,
        help=f"YAML config file, one key per option [default: {DEFAULT_CONFIG}]")(fn)
