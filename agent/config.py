"""Settings: every option the agent takes, from one table, with one precedence.

    command-line flag  >  SYNTHO_AGENT_<NAME> env variable  >  config file (--config)  >  default

Each option is declared once below (OPTIONS); the CLI turns the table into click options, the
config file is checked against it (an unknown key is an error), and every value, from any source,
goes through the same parser before anything touches the engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

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


def _host_port(v: Any) -> str:
    host, sep, port = str(v).rpartition(":")
    if not sep:
        host, port = str(v), ""
    validate.host(host)
    if port:
        validate.port(port)
    return str(v)


def _protocol(v: Any) -> str:
    if str(v) not in ("http", "https"):
        raise ValueError(f"{v!r} must be http or https")
    return str(v)


def _nonempty(v: Any) -> str:
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
]
CLUSTER = [
    Opt("license-key", "the Syntho license key (LICENSE_KEY_SIGNED)", str, "", secret=True),
    Opt("auth", "Ray token authentication (on by default; --no-auth turns it off)", None, True,
        flag=True),
    Opt("token", "the cluster's Ray token (prefer SYNTHO_AGENT_TOKEN or --token-file: a flag "
        "shows in `ps`)", lambda v: validate.token(str(v)), secret=True),
    Opt("token-file", "a file holding the cluster's Ray token", _existing_file),
    Opt("ready-timeout", "seconds to wait for the containers to become ready (0 = forever)",
        _wait, 180.0),
]
IMAGE_SOURCES = [
    Opt("registry", "the registry to pull missing images from (HOST[:PORT]); Syntho images "
        "without a registry in their reference are looked up there", _registry),
    Opt("registry-user", "the registry user"),
    Opt("registry-password-file", "a file holding the registry password (or set "
        "SYNTHO_AGENT_REGISTRY_PASSWORD, or --registry-password-stdin)", _existing_file),
    Opt("registry-password-stdin", "read the registry password from standard input", None,
        False, flag=True),
    Opt("images", "an offline bundle to load missing images from: a `docker save` archive "
        "(.tar/.tar.gz) or a folder of them", _existing_path),
]
WATCH = [
    Opt("watch", "after converging, keep running: follow the engine's events and heal "
        "within seconds", None, False, flag=True),
]
JOIN = [
    Opt("head", "the Ray head's IP address or hostname", _optional_host),
    Opt("wait", "seconds to wait for the head to answer on 6379 (0 = forever)", _wait, 600.0),
]
APP = [
    Opt("core-image", "the syntho-core-api image", validate.image, "syntho-core-api:latest"),
    Opt("backend-image", "the syntho-backend image", validate.image, "syntho-backend:latest"),
    Opt("frontend-image", "the syntho-frontend image", validate.image, "syntho-frontend:latest"),
    Opt("postgres-image", "the bundled Postgres image", validate.image, "postgres:14.5"),
    Opt("redis-image", "the bundled Redis image", validate.image, "redis:6.2-alpine"),
    Opt("frontend-port", "host port of the web UI (FRONTEND_PORT)", validate.port, 3000),
    Opt("backend-port", "host port of the backend API (BACKEND_PORT)", validate.port, 8000),
    Opt("core-port", "port of the core API inside the app network (CORE_PORT)",
        validate.port, 8080),
    Opt("bind", "host address the frontend and backend ports are published on",
        lambda v: validate.ip(str(v)), "0.0.0.0"),
    Opt("frontend-host", "host[:port] users open (FRONTEND_HOST) [default: "
        "localhost:<frontend-port>]", _host_port),
    Opt("frontend-protocol", "http or https (https turns SECURE_COOKIES on)", _protocol, "http"),
    Opt("backend-host", "host[:port] of the backend as users reach it (BACKEND_HOST) "
        "[default: localhost:<backend-port>]", _host_port),
    Opt("backend-protocol", "http or https", _protocol, "http"),
    Opt("admin-username", "the admin account's user name", _nonempty, "admin"),
    Opt("admin-email", "the admin account's e-mail", _email, "admin@example.com"),
    Opt("admin-password", "the admin account's password [default: generated once]",
        _password, secret=True),
    Opt("db-password", "the database password [default: generated once]", _password,
        secret=True),
    Opt("rotate-db-password", "change the password of an existing database to the one "
        "configured (otherwise a changed password is refused)", None, False, flag=True),
    Opt("postgres-url", "an external Postgres server (postgresql://USER:PASSWORD@HOST[:PORT]) "
        "holding both databases, instead of the bundled container; prefer the env variable",
        _postgres_url, secret=True),
    Opt("core-db-name", "the core's database", _nonempty, "syntho-core"),
    Opt("backend-db-name", "the backend's database", _nonempty, "syntho-backend"),
    Opt("redis-url", "an external Redis (redis://[:PASSWORD@]HOST[:PORT]) instead of the bundled "
        "container", _redis_url, secret=True),
    Opt("publish-postgres", "publish the bundled Postgres on ADDRESS:PORT of the host (off by "
        "default)", _address_port),
    Opt("publish-redis", "publish the bundled Redis on ADDRESS:PORT of the host (off by default)",
        _address_port),
    Opt("max-workers", "the core's MAX_WORKERS", validate.positive_int, 4),
]


def _provider(v: Any) -> str:
    if str(v) not in ("aws", "gcp", "azure", "local"):
        raise ValueError(f"{v!r} is not a provider: aws, gcp, azure or local")
    return str(v)


def _count(v: Any) -> int:
    try:
        number = int(v)
    except (TypeError, ValueError):
        raise ValueError(f"{v!r} is not a whole number") from None
    if number < 0:
        raise ValueError(f"{v!r} must be 0 or more")
    return number


def _user_file(v: Any) -> Path:
    """A local file that may be given as ~/...: config files and env variables are not
    expanded by a shell."""
    path = Path(str(v)).expanduser()
    if not path.is_file():
        raise ValueError(f"{path} is not a readable file")
    return path


# `launcher-config` (Ray's cluster launcher) also takes ray-image, shm-size, nofile, ray-arg,
# the token and registry options above; these are its own.
LAUNCHER = [
    Opt("provider", "where `ray up` makes the cluster: aws, gcp, azure, or local (machines "
        "that already exist)", _provider),
    Opt("cluster-name", "the cluster's name for `ray up` and the cloud's tags",
        lambda v: validate.name(str(v)), "syntho-cluster"),
    Opt("region", "aws/gcp region or azure location [default: aws us-east-1, azure "
        "westeurope; gcp: required]", _nonempty),
    Opt("availability-zone", "the zone in the region (gcp: required)", _nonempty),
    Opt("project-id", "the gcp project (gcp: required)", _nonempty),
    Opt("resource-group", "the azure resource group (azure: required)", _nonempty),
    Opt("subscription-id", "the azure subscription [default: the az CLI's]", _nonempty),
    Opt("head-ip", "local: the head machine's address", _optional_host),
    Opt("worker-ip", "local: a worker machine's address (repeat for each)", _optional_host, (),
        multiple=True),
    Opt("ssh-user", "the user `ray up` logs in to the nodes as", _nonempty, "ubuntu"),
    Opt("ssh-private-key", "the key `ray up` logs in with (local: required; aws: with "
        "--key-name) [default: a key the cloud provider makes]", _user_file),
    Opt("ssh-public-key", "a public key delivered to every node (azure: the login key's public "
        "half) [default: --ssh-private-key's .pub, else ~/.ssh/id_rsa.pub]", _user_file),
    Opt("key-name", "aws: the EC2 key pair of --ssh-private-key", _nonempty),
    Opt("head-instance-type", "the head's VM size [default: aws m5.xlarge, gcp n2-standard-4, "
        "azure Standard_D4s_v4]", _nonempty),
    Opt("worker-instance-type", "the workers' VM size [default: aws m5.8xlarge, gcp "
        "n2-standard-32, azure Standard_D32s_v4]", _nonempty),
    Opt("head-cpus", "CPUs Ray schedules on the head [default: the default size's]",
        validate.positive_int),
    Opt("worker-cpus", "CPUs Ray schedules on a worker [default: the default size's]",
        validate.positive_int),
    Opt("min-worker-nodes", "worker VMs kept running [default: 2; local: every --worker-ip]",
        _count),
    Opt("max-worker-nodes", "worker VMs the autoscaler may run [default: 3; local: every "
        "--worker-ip]", _count),
    Opt("spot", "run the workers on spot (preemptible) VMs: cheaper, but the cloud may take "
        "them back", None, False, flag=True),
    Opt("disk-size", "boot disk of each cloud VM, in GB", validate.positive_int, 100),
    Opt("vm-image", "the VM image, with Docker: aws AMI id, gcp sourceImage, azure "
        "PUBLISHER:OFFER:SKU:VERSION [default: the provider's with Docker]", _nonempty),
    Opt("container-name", "the Ray container's name on every node",
        lambda v: validate.name(str(v)), "syntho-ray"),
    Opt("head-setup-command", "a command run in the head's container before Ray starts "
        "(repeat); replaces Ray's default, which installs the cloud SDK its autoscaler needs",
        str, (), multiple=True),
]

ALL_OPTIONS = {o.key: o for o in COMMON + RAY + CLUSTER + JOIN + APP + IMAGE_SOURCES + WATCH}
ALL_OPTIONS.update({o.key: o for o in LAUNCHER})


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
    core_image: str = "syntho-core-api:latest"
    backend_image: str = "syntho-backend:latest"
    frontend_image: str = "syntho-frontend:latest"
    postgres_image: str = "postgres:14.5"
    redis_image: str = "redis:6.2-alpine"
    frontend_port: int = 3000
    backend_port: int = 8000
    core_port: int = 8080
    bind: str = "0.0.0.0"
    frontend_host: str | None = None
    frontend_protocol: str = "http"
    backend_host: str | None = None
    backend_protocol: str = "http"
    admin_username: str = "admin"
    admin_email: str = "admin@example.com"
    admin_password: str | None = field(default=None, repr=False)
    db_password: str | None = field(default=None, repr=False)
    rotate_db_password: bool = False
    postgres_url: str | None = field(default=None, repr=False)
    core_db_name: str = "syntho-core"
    backend_db_name: str = "syntho-backend"
    redis_url: str | None = field(default=None, repr=False)
    publish_postgres: tuple[str, int] | None = None
    publish_redis: tuple[str, int] | None = None
    max_workers: int = 4
    registry: str | None = None
    registry_user: str | None = None
    registry_password_file: Path | None = None
    registry_password_stdin: bool = False
    images: Path | None = None
    watch: bool = False
    provider: str | None = None
    cluster_name: str = "syntho-cluster"
    region: str | None = None
    availability_zone: str | None = None
    project_id: str | None = None
    resource_group: str | None = None
    subscription_id: str | None = None
    head_ip: str | None = None
    worker_ip: tuple[str, ...] = ()
    ssh_user: str = "ubuntu"
    ssh_private_key: Path | None = None
    ssh_public_key: Path | None = None
    key_name: str | None = None
    head_instance_type: str | None = None
    worker_instance_type: str | None = None
    head_cpus: int | None = None
    worker_cpus: int | None = None
    min_worker_nodes: int | None = None
    max_worker_nodes: int | None = None
    spot: bool = False
    disk_size: int = 100
    vm_image: str | None = None
    container_name: str = "syntho-ray"
    head_setup_command: tuple[str, ...] = ()

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Settings:
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v)
                                  for k, v in params.items() if k in known and v is not None}
        settings = cls(**values)
        if settings.registry:
            # The Syntho images live in the registry; postgres and redis keep their references.
            names = ("ray_image", "core_image", "backend_image", "frontend_image")
            qualified: dict[str, Any] = {
                name: validate.qualify(getattr(settings, name), settings.registry)
                for name in names}
            settings = replace(settings, **qualified)
        return settings

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
            message = str(exc)
            if self.opt.secret:  # say what was expected, never echo the value itself
                message = message.replace(repr(value), "the value").replace(str(value), "***")
            self.fail(message, param, ctx)


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
