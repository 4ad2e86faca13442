"""Settings: every option the agent takes, declared once, with one precedence.

    command-line flag  >  SYNTHO_AGENT_<NAME> env variable  >  config file (--config)  >  default

Each option is one field of a frozen dataclass below, declared with `option(...)`: the field's
name gives the flag (--shm-size), the env variable (SYNTHO_AGENT_SHM_SIZE) and the config-file
key (shm-size); the declaration holds the parser, the default and the help. Options come in
groups (Common, RayOptions, ...); each command's settings type is made of the groups it uses
(HeadSettings, WorkerSettings, AppSettings, LauncherSettings), so a role receives only what it
uses. The CLI turns a settings type into click options; every value, from any source, goes
through the same parser before anything touches the engine, and an error names its source.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar, Union
from urllib.parse import urlsplit

import click
import yaml

from agent import validate

ENV_PREFIX = "SYNTHO_AGENT_"
DEFAULT_CONFIG = Path("/etc/syntho-agent/config.yaml")
DEFAULT_DATA_DIR = Path("/var/lib/syntho-agent")
# The Syntho images live in --registry; postgres and redis keep their own references.
REGISTRY_IMAGES = ("ray_image", "core_image", "backend_image", "frontend_image")


# ---- parsers: text in (from a flag, an env variable or the config file), a value out ----------

def _path(v: Any) -> Path:
    return Path(str(v))


def _host(v: Any) -> str:
    return validate.host(str(v))


def _ip(v: Any) -> str:
    return validate.ip(str(v))


def _name(v: Any) -> str:
    return validate.name(str(v))


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


def _host_port(v: Any) -> str:
    host, sep, port = str(v).rpartition(":")
    if not sep:
        host, port = str(v), ""
    validate.host(host)
    if port:
        validate.port(port)
    return str(v)


def _registry(v: Any) -> str:
    if "/" in str(v):
        raise ValueError(f"{v!r} must be a registry host[:port], without a path")
    return _host_port(v)


def _existing_path(v: Any) -> Path:
    path = Path(str(v))
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    return path


def _existing_file(v: Any) -> Path:
    path = Path(str(v))
    if not path.is_file():
        raise ValueError(f"{path} is not a readable file")
    return path


def _user_file(v: Any) -> Path:
    """A local file that may be given as ~/...: config files and env variables are not
    expanded by a shell."""
    return _existing_file(Path(str(v)).expanduser())


def _protocol(v: Any) -> str:
    if str(v) not in ("http", "https"):
        raise ValueError(f"{v!r} must be http or https")
    return str(v)


def _word(v: Any) -> str:
    if not str(v).strip() or any(ch.isspace() for ch in str(v)):
        raise ValueError("must be one word, not empty")
    return str(v)


def _email(v: Any) -> str:
    if not re.fullmatch(r"[^@\s]+@[^@\s]+", str(v)):
        raise ValueError(f"{v!r} is not an e-mail address")
    return str(v)


def _password(v: Any) -> str:
    if len(str(v)) < 8 or "\n" in str(v):
        raise ValueError("a password must be one line of at least 8 characters")
    return str(v)


def _token(v: Any) -> str:
    return validate.token(str(v))


def _url(v: Any, schemes: tuple[str, ...], example: str) -> str:
    parts = urlsplit(str(v))
    try:
        ok = parts.scheme in schemes and bool(parts.hostname)
        if ok:
            validate.host(parts.hostname or "")
            parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"not a URL of the form {example}")
    return str(v)


def _postgres_url(v: Any) -> str:
    return _url(v, ("postgresql", "postgres"), "postgresql://USER:PASSWORD@HOST[:PORT]")


def _redis_url(v: Any) -> str:
    return _url(v, ("redis",), "redis://[:PASSWORD@]HOST[:PORT]")


def _address_port(v: Any) -> tuple[str, int]:
    address, sep, port = str(v).rpartition(":")
    if not sep:
        raise ValueError(f"{v!r} must be ADDRESS:PORT, for example 127.0.0.1:5432")
    return validate.ip(address), validate.port(port)


def _provider(v: Any) -> str:
    if str(v) not in ("aws", "gcp", "azure", "local"):
        raise ValueError(f"{v!r} is not a provider: aws, gcp, azure or local")
    return str(v)


def _count(v: Any) -> int:
    try:
        number = int(str(v))
    except (TypeError, ValueError):
        raise ValueError(f"{v!r} is not a whole number") from None
    if number < 0:
        raise ValueError(f"{v!r} must be 0 or more")
    return number


# ---- the declaration ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Opt:
    """How one option is read: its parser (None for a --x/--no-x switch), help and kind."""

    help: str
    parse: Callable[[Any], Any] | None = None
    multiple: bool = False
    secret: bool = False  # never echoed back in an error message, never in repr()
    shown: str | None = None  # the default as --help shows it, when not str(default)


def option(help: str, parse: Callable[[Any], Any] | None = None, default: Any = None, *,
           multiple: bool = False, secret: bool = False, shown: str | None = None) -> Any:
    """Declare an option as a settings field: its default is written here and nowhere else.
    `parse=None` declares a switch (--x/--no-x)."""
    return field(default=default, repr=not secret,
                 metadata={"opt": Opt(help, parse, multiple, secret, shown)})


def reuse(group: type, key: str, help: str | None = None) -> Any:
    """The same option in another settings type (launcher-config takes some of the roles'),
    with other help text where it means something else there."""
    declared = next(f for f in fields(group) if f.name == key)
    opt: Opt = declared.metadata["opt"]
    return field(default=declared.default, repr=declared.repr,
                 metadata={"opt": replace(opt, help=help or opt.help)})


@dataclass(frozen=True)
class Option:
    """An option as the CLI and the config file see it, derived from its field."""

    key: str  # the field's name: shm_size
    default: Any
    opt: Opt

    @property
    def name(self) -> str:  # the flag without dashes, and the config-file key: shm-size
        return self.key.replace("_", "-")

    @property
    def envvar(self) -> str:
        return ENV_PREFIX + self.key.upper()

    @property
    def flag(self) -> bool:
        return self.opt.parse is None


S = TypeVar("S", bound="Settings")


@dataclass(frozen=True)
class Settings:
    """The base of every settings type: how one is made from parsed options."""

    command: ClassVar[str] = ""

    @classmethod
    def options(cls) -> list[Option]:
        """This type's options, in the order its groups are listed."""
        seen: dict[str, Option] = {}
        for group in (*cls.__bases__, cls):
            if not isinstance(group, type) or group is Settings or not hasattr(
                    group, "__dataclass_fields__"):
                continue
            for f in fields(group):
                if f.name not in seen and "opt" in f.metadata:
                    seen[f.name] = _option(f)
        return list(seen.values())

    @classmethod
    def from_params(cls: type[S], params: dict[str, Any]) -> S:
        """Settings from the CLI's parsed values (None means: the default)."""
        known = {f.name for f in fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v)
                  for k, v in params.items() if k in known and v is not None}
        registry = values.get("registry")
        if registry:
            for key in REGISTRY_IMAGES:
                if key in known:
                    image = str(values.get(key, _default(cls, key)))
                    values[key] = validate.qualify(image, str(registry))
        return cls(**values)


def _default(cls: type, key: str) -> Any:
    return next(f.default for f in fields(cls) if f.name == key)


def _option(f: Field[Any]) -> Option:
    return Option(f.name, None if f.default is MISSING else f.default, f.metadata["opt"])


# ---- the groups --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Common(Settings):
    """Every command: where the agent keeps its files, and which agent this is."""

    data_dir: Path = option("where the agent keeps what it writes (secrets 0600, env file, lock)",
                            _path, DEFAULT_DATA_DIR)
    instance: str = option("a name that tells several agents on one engine apart (suffix of "
                           "every container name); empty on a real VM", _instance, "")
    lock_wait: float = option("seconds to wait for another agent working on the same data dir",
                              _wait, 30.0)

    def suffix(self, base: str) -> str:
        """A container or volume name, suffixed with the instance name when there is one."""
        return f"{base}-{self.instance}" if self.instance else base


@dataclass(frozen=True)
class RayOptions(Settings):
    """The Ray container of the head and of a worker."""

    ray_image: str = option("the syntho-ray image", validate.image, "syntho-ray:latest")
    network: str = option("'host' (as on a VM) or a user-defined Docker network to run Ray on",
                          _network, "host")
    shm_size: int = option("shared memory for Ray's object store (4gb, 12gb ...)",
                           validate.size, 4 * 1024**3, shown="4gb")
    nofile: int = option("open-files limit for the Ray container (the host must allow it)",
                         validate.positive_int, 65536)
    cpus: float | None = option("CPU limit for the Ray container (cores)",
                                validate.positive_float)
    memory: int | None = option("memory limit (and reservation) for the Ray container",
                                validate.size)
    node_ip: str | None = option("the IP address Ray advertises for this node "
                                 "(--node-ip-address)", _ip)
    ray_arg: tuple[str, ...] = option("an extra argument for `ray start` (repeat for several)",
                                      str, (), multiple=True)


@dataclass(frozen=True)
class ClusterOptions(Settings):
    """What every member of the Ray cluster shares: the token and the license."""

    license_key: str = option("the Syntho license key (LICENSE_KEY_SIGNED)", str, "",
                              secret=True)
    auth: bool = option("Ray token authentication (on by default; --no-auth turns it off)",
                        None, True)
    token: str | None = option("the cluster's Ray token (prefer SYNTHO_AGENT_TOKEN or "
                               "--token-file: a flag shows in `ps`)", _token, secret=True)
    token_file: Path | None = option("a file holding the cluster's Ray token", _existing_file)
    ready_timeout: float = option("seconds to wait for the containers to become ready "
                                  "(0 = forever)", _wait, 180.0)


@dataclass(frozen=True)
class JoinOptions(Settings):
    """Where the head is, for a worker and the app."""

    head: str | None = option("the Ray head's IP address or hostname", _host)
    wait: float = option("seconds to wait for the head to answer on 6379 (0 = forever)",
                         _wait, 600.0)


@dataclass(frozen=True)
class ImageSources(Settings):
    """Where missing images come from: an offline bundle or a registry."""

    registry: str | None = option(
        "the registry to pull missing images from (HOST[:PORT]); Syntho images without a "
        "registry in their reference are looked up there", _registry)
    registry_user: str | None = option("the registry user", str)
    registry_password_file: Path | None = option(
        "a file holding the registry password (or set SYNTHO_AGENT_REGISTRY_PASSWORD, or "
        "--registry-password-stdin)", _existing_file)
    registry_password_stdin: bool = option("read the registry password from standard input",
                                           None, False)
    images: Path | None = option("an offline bundle to load missing images from: a `docker "
                                 "save` archive (.tar/.tar.gz) or a folder of them",
                                 _existing_path)


@dataclass(frozen=True)
class WatchOption(Settings):
    watch: bool = option("after converging, keep running: follow the engine's events and heal "
                         "within seconds", None, False)


@dataclass(frozen=True)
class AppOptions(Settings):
    """The Syntho application stack."""

    core_image: str = option("the syntho-core-api image", validate.image,
                             "syntho-core-api:latest")
    backend_image: str = option("the syntho-backend image", validate.image,
                                "syntho-backend:latest")
    frontend_image: str = option("the syntho-frontend image", validate.image,
                                 "syntho-frontend:latest")
    postgres_image: str = option("the bundled Postgres image", validate.image, "postgres:14.5")
    redis_image: str = option("the bundled Redis image", validate.image, "redis:6.2-alpine")
    frontend_port: int = option("host port of the web UI (FRONTEND_PORT)", validate.port, 3000)
    backend_port: int = option("host port of the backend API (BACKEND_PORT)", validate.port,
                               8000)
    core_port: int = option("port of the core API inside the app network (CORE_PORT)",
                            validate.port, 8080)
    bind: str = option("host address the frontend and backend ports are published on", _ip,
                       "0.0.0.0")
    frontend_host: str | None = option("host[:port] users open (FRONTEND_HOST) [default: "
                                       "localhost:<frontend-port>]", _host_port)
    frontend_protocol: str = option("http or https (https turns SECURE_COOKIES on)", _protocol,
                                    "http")
    backend_host: str | None = option("host[:port] of the backend as users reach it "
                                      "(BACKEND_HOST) [default: localhost:<backend-port>]",
                                      _host_port)
    backend_protocol: str = option("http or https", _protocol, "http")
    admin_username: str = option("the admin account's user name", _word, "admin")
    admin_email: str = option("the admin account's e-mail", _email, "admin@example.com")
    admin_password: str | None = option("the admin account's password [default: generated "
                                        "once]", _password, secret=True)
    db_password: str | None = option("the database password [default: generated once]",
                                     _password, secret=True)
    rotate_db_password: bool = option("change the password of an existing database to the one "
                                      "configured (otherwise a changed password is refused)",
                                      None, False)
    postgres_url: str | None = option(
        "an external Postgres server (postgresql://USER:PASSWORD@HOST[:PORT]) holding both "
        "databases, instead of the bundled container; prefer the env variable", _postgres_url,
        secret=True)
    core_db_name: str = option("the core's database", _word, "syntho-core")
    backend_db_name: str = option("the backend's database", _word, "syntho-backend")
    redis_url: str | None = option("an external Redis (redis://[:PASSWORD@]HOST[:PORT]) instead "
                                   "of the bundled container", _redis_url, secret=True)
    publish_postgres: tuple[str, int] | None = option(
        "publish the bundled Postgres on ADDRESS:PORT of the host (off by default)",
        _address_port)
    publish_redis: tuple[str, int] | None = option(
        "publish the bundled Redis on ADDRESS:PORT of the host (off by default)", _address_port)
    max_workers: int = option("the core's MAX_WORKERS", validate.positive_int, 4)


@dataclass(frozen=True)
class LauncherOptions(Settings):
    """Ray's cluster launcher (`ray up`): the machines and their sizes."""

    provider: str | None = option("where `ray up` makes the cluster: aws, gcp, azure, or local "
                                  "(machines that already exist)", _provider)
    cluster_name: str = option("the cluster's name for `ray up` and the cloud's tags", _name,
                               "syntho-cluster")
    region: str | None = option("aws/gcp region or azure location [default: aws us-east-1, "
                                "azure westeurope; gcp: required]", _word)
    availability_zone: str | None = option("the zone in the region (gcp: required)", _word)
    project_id: str | None = option("the gcp project (gcp: required)", _word)
    resource_group: str | None = option("the azure resource group (azure: required)", _word)
    subscription_id: str | None = option("the azure subscription [default: the az CLI's]",
                                         _word)
    head_ip: str | None = option("local: the head machine's address", _host)
    worker_ip: tuple[str, ...] = option("local: a worker machine's address (repeat for each)",
                                        _host, (), multiple=True)
    ssh_user: str = option("the user `ray up` logs in to the nodes as", _word, "ubuntu")
    ssh_private_key: Path | None = option(
        "the key `ray up` logs in with (local: required; aws: with --key-name) [default: a key "
        "the cloud provider makes]", _user_file)
    ssh_public_key: Path | None = option(
        "a public key delivered to every node (azure: the login key's public half) [default: "
        "--ssh-private-key's .pub, else ~/.ssh/id_rsa.pub]", _user_file)
    key_name: str | None = option("aws: the EC2 key pair of --ssh-private-key", _word)
    head_instance_type: str | None = option(
        "the head's VM size [default: aws m5.xlarge, gcp n2-standard-4, azure "
        "Standard_D4s_v4]", _word)
    worker_instance_type: str | None = option(
        "the workers' VM size [default: aws m5.8xlarge, gcp n2-standard-32, azure "
        "Standard_D32s_v4]", _word)
    head_cpus: int | None = option("CPUs Ray schedules on the head [default: the default "
                                   "size's]", validate.positive_int)
    worker_cpus: int | None = option("CPUs Ray schedules on a worker [default: the default "
                                     "size's]", validate.positive_int)
    min_worker_nodes: int | None = option("worker VMs kept running [default: 2; local: every "
                                          "--worker-ip]", _count)
    max_worker_nodes: int | None = option("worker VMs the autoscaler may run [default: 3; "
                                          "local: every --worker-ip]", _count)
    spot: bool = option("run the workers on spot (preemptible) VMs: cheaper, but the cloud may "
                        "take them back", None, False)
    disk_size: int = option("boot disk of each cloud VM, in GB", validate.positive_int, 100)
    vm_image: str | None = option(
        "the VM image, with Docker: aws AMI id, gcp sourceImage, azure "
        "PUBLISHER:OFFER:SKU:VERSION [default: the provider's with Docker]", _word)
    container_name: str = option("the Ray container's name on every node", _name, "syntho-ray")
    head_setup_command: tuple[str, ...] = option(
        "a command run in the head's container before Ray starts (repeat); replaces Ray's "
        "default, which installs the cloud SDK its autoscaler needs", str, (), multiple=True)


# ---- what each command takes -------------------------------------------------------------------

@dataclass(frozen=True)
class HeadSettings(Common, RayOptions, ClusterOptions, ImageSources, WatchOption):
    command: ClassVar[str] = "head"


@dataclass(frozen=True)
class WorkerSettings(Common, JoinOptions, RayOptions, ClusterOptions, ImageSources,
                     WatchOption):
    command: ClassVar[str] = "worker"


@dataclass(frozen=True)
class AppSettings(Common, JoinOptions, ClusterOptions, AppOptions, ImageSources, WatchOption):
    command: ClassVar[str] = "app"


# The Ray node roles, and every role (typing.Union: Python 3.9 cannot evaluate `A | B` of
# two classes at run time).
RayNodeSettings = Union[HeadSettings, WorkerSettings]
RoleSettings = Union[HeadSettings, WorkerSettings, AppSettings]


@dataclass(frozen=True)
class LauncherSettings(LauncherOptions):
    """launcher-config: the head role's container settings, the token and license, the
    registry login, and the machines."""

    command: ClassVar[str] = "launcher-config"
    data_dir: Path = reuse(Common, "data_dir", "where the Ray token and license key files are "
                           "kept (0600), as for the head")
    ray_image: str = reuse(RayOptions, "ray_image")
    shm_size: int = reuse(RayOptions, "shm_size")
    nofile: int = reuse(RayOptions, "nofile")
    ray_arg: tuple[str, ...] = reuse(RayOptions, "ray_arg")
    license_key: str = reuse(ClusterOptions, "license_key")
    auth: bool = reuse(ClusterOptions, "auth")
    token: str | None = reuse(ClusterOptions, "token")
    token_file: Path | None = reuse(ClusterOptions, "token_file")
    registry: str | None = reuse(
        ImageSources, "registry", "the registry every node logs in to before it pulls the Ray "
        "image (HOST[:PORT]); an image reference without a registry is looked up there")
    registry_user: str | None = reuse(ImageSources, "registry_user")
    registry_password_file: Path | None = reuse(
        ImageSources, "registry_password_file", "a local file holding the registry password: "
        "`ray up` copies it to the nodes, which log in with it on standard input")

    @classmethod
    def options(cls) -> list[Option]:
        own = {f.name for f in fields(LauncherOptions)}
        shared = [_option(f) for f in fields(cls) if f.name not in own]
        return shared + [_option(f) for f in fields(LauncherOptions)]


# Every settings type a command reads, by command; and every option any of them takes.
COMMANDS: dict[str, type[Settings]] = {
    "head": HeadSettings, "worker": WorkerSettings, "app": AppSettings,
    "launcher-config": LauncherSettings,
}
ALL_OPTIONS: dict[str, Option] = {o.key: o for t in COMMANDS.values() for o in t.options()}


def commands_taking(key: str) -> list[str]:
    return [name for name, t in COMMANDS.items() if any(o.key == key for o in t.options())]


# ---- the CLI and the config file ---------------------------------------------------------------

_SOURCE_META = "syntho_agent.config_lines"  # ctx.meta: option key -> "FILE key 'k' at line N"


def source_hint(ctx: click.Context | None, param: click.Parameter | None) -> str | None:
    """Where a value came from, in the words an operator can act on."""
    if ctx is None or param is None or param.name is None:
        return None
    source = ctx.get_parameter_source(param.name)
    if source == click.core.ParameterSource.ENVIRONMENT:
        return ENV_PREFIX + param.name.upper()
    if source == click.core.ParameterSource.DEFAULT_MAP:
        where: dict[str, str] = ctx.meta.get(_SOURCE_META, {})
        return where.get(param.name)
    return None


class Checked(click.ParamType):
    """A click type that runs an option's parser, so flags, env and config file are alike."""

    def __init__(self, option: Option) -> None:
        self.option = option
        self.name = option.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        parse = self.option.opt.parse
        if parse is None or not isinstance(value, str):
            return value  # a default, already a value
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            message = str(exc)
            if self.option.opt.secret:  # say what was expected, never echo the value itself
                message = message.replace(repr(value), "the value").replace(str(value), "***")
            raise click.BadParameter(message, ctx, param, source_hint(ctx, param)) from None


class CheckedSwitch(click.types.BoolParamType):
    """A --x/--no-x switch whose env or config-file value names its source when it is bad."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as exc:
            raise click.BadParameter(f"{value!r} is not a switch value (true/false, yes/no, "
                                     "on/off, 1/0)", ctx, param,
                                     source_hint(ctx, param)) from exc


def click_options(settings_type: type[Settings]) -> Callable[[Callable[..., Any]],
                                                            Callable[..., Any]]:
    """Decorate a click command with a settings type's options (env variables included)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for o in reversed(settings_type.options()):
            if o.flag:
                decl = click.option(f"--{o.name}/--no-{o.name}", o.key, default=o.default,
                                    type=CheckedSwitch(), envvar=o.envvar, show_envvar=True,
                                    help=o.opt.help)
            else:
                decl = click.option(f"--{o.name}", o.key, type=Checked(o), default=o.default,
                                    multiple=o.opt.multiple, envvar=o.envvar, show_envvar=True,
                                    help=o.opt.help, show_default=_shown(o))
            fn = decl(fn)
        return fn

    return decorate


def _shown(o: Option) -> bool | str:
    if o.default in (None, "", ()) or o.opt.secret:
        return False
    return o.opt.shown or True


def _bad(path: Path, message: str) -> click.BadParameter:
    return click.BadParameter(f"{path}: {message}", param_hint="--config")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader; only its composer is used (nodes keep their text and line)."""


def read_config_file(path: Path) -> dict[str, tuple[Any, int, str]]:
    """The config file as written: option key -> (text or list of texts, line, key as written).

    Scalars keep their text exactly (`yes`, `012`, `0x1F` stay strings): each option's own
    parser reads it, as it reads a flag or an env variable. A key given twice is an error.
    """
    try:
        node = yaml.compose(path.read_text(), Loader=_Loader)
    except OSError as exc:
        raise _bad(path, f"cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise _bad(path, "is not a text file (UTF-8)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        raise _bad(path, f"is not valid YAML{where}" + (f": {problem}" if problem else "")
                   ) from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise _bad(path, "must be a mapping of option: value")
    values: dict[str, tuple[Any, int, str]] = {}
    for key_node, value_node in node.value:
        raw = str(key_node.value)
        line = key_node.start_mark.line + 1
        key = raw.replace("-", "_")
        if key in values:
            raise _bad(path, f"key {raw!r} is given twice (lines {values[key][1]} and {line}); "
                       "keep one")
        if isinstance(value_node, yaml.MappingNode):
            raise _bad(path, f"key {raw!r} at line {line} must be a value or a list, not a "
                       "mapping")
        if isinstance(value_node, yaml.SequenceNode):
            items = []
            for item in value_node.value:
                if not isinstance(item, yaml.ScalarNode):
                    raise _bad(path, f"key {raw!r} at line {line}: each item must be a value")
                items.append(str(item.value))
            values[key] = (items, line, raw)
        elif _is_null(value_node):
            values[key] = (None, line, raw)
        else:
            values[key] = (str(value_node.value), line, raw)
    return values


def _is_null(node: yaml.Node) -> bool:
    return (isinstance(node, yaml.ScalarNode) and node.style is None
            and node.value in ("", "~", "null", "Null", "NULL"))


def config_values(path: Path, explicit: bool, command: click.Command,
                  lenient: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """The file's values for this command (as click's default_map) and where each came from.

    A key no command knows is an error; a key of another command is an error that names it,
    unless `lenient` (status, down, logs: one VM's file may configure several roles).
    """
    if not path.exists():
        if explicit:
            raise click.BadParameter(f"{path} does not exist", param_hint="--config")
        return {}, {}
    takes = {p.name: p for p in command.params if p.name}
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for key, (value, line, raw) in read_config_file(path).items():
        if key not in ALL_OPTIONS:
            raise _bad(path, f"unknown key {raw!r} at line {line} (known keys: see "
                       "`syntho-agent <role> --help`)")
        param = takes.get(key)
        if param is None:
            if lenient:
                continue
            raise _bad(path, f"key {raw!r} at line {line} does not apply to `syntho-agent "
                       f"{command.name}`; it is an option of `syntho-agent "
                       f"{' | '.join(commands_taking(key))}`")
        if value is None:
            continue
        multiple = isinstance(param, click.Option) and param.multiple
        if isinstance(value, list) and not multiple:
            raise _bad(path, f"key {raw!r} at line {line} takes one value, not a list")
        values[key] = (value if isinstance(value, list) else [value]) if multiple else value
        where[key] = f"{path} key {raw!r} at line {line}"
    return values, where


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--config: read first (eager), so its values become the defaults of the other options.
    A key that does not apply to this command is an error."""
    return _config_option(fn, lenient=False)


def lenient_config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--config for status, down and logs: keys of the roles are accepted (and not used), so
    the role's own config file serves them too."""
    return _config_option(fn, lenient=True)


def _config_option(fn: Callable[..., Any], lenient: bool) -> Callable[..., Any]:

    def load(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        explicit = value is not None
        path = Path(value) if value is not None else DEFAULT_CONFIG
        values, where = config_values(path, explicit, ctx.command, lenient)
        ctx.default_map = {**(ctx.default_map or {}), **values}
        ctx.meta[_SOURCE_META] = where

    return click.option(
        "--config", "config", envvar=ENV_PREFIX + "CONFIG", show_envvar=True,
        is_eager=True, expose_value=False, callback=load,
        help=f"YAML config file, one key per option [default: {DEFAULT_CONFIG}]")(fn)
