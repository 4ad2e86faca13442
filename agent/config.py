"""Settings: every option the agent takes, declared once.

Each option is one field of a frozen dataclass below, declared with `option(...)`: the field's
name gives the flag (--shm-size), the env variable (SYNTHO_AGENT_SHM_SIZE) and the config-file
key (shm-size); the declaration holds the parser, the default and the help. Options come in
groups (Common, RayOptions, ...); each command's settings type is made of the groups it uses
(HeadSettings, WorkerSettings, AppSettings, LauncherSettings), so a role receives only what it
uses. agent/sources.py reads the values (flag > env variable > config file > default) and
validate.py holds the parsers; nothing touches the engine before every value is parsed.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar, Union

from agent import release as releases
from agent import validate
from agent.spec import LOG_MAX_FILES, LOG_MAX_SIZE

ENV_PREFIX = "SYNTHO_AGENT_"
DEFAULT_CONFIG = Path("/etc/syntho-agent/config.yaml")
DEFAULT_DATA_DIR = Path("/var/lib/syntho-agent")
# The Syntho images live in --registry; postgres and redis keep their own references.
REGISTRY_IMAGES = ("ray_image", "core_image", "backend_image", "frontend_image")


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
    # The options given (flag, env variable or config file), as opposed to defaulted: a worker
    # given no image of its own runs the head's (agent/follow.py).
    given: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def options(cls) -> list[Option]:
        """This type's options: its groups' in the order they are listed, then its own."""
        found: dict[str, Option] = {}
        for group in cls.__bases__:
            if issubclass(group, Settings) and group is not Settings:
                for o in group.options():
                    found.setdefault(o.key, o)
        own = cls.__dict__.get("__annotations__", {})
        for f in fields(cls):
            if "opt" in f.metadata and (f.name in own or f.name not in found):
                found[f.name] = _option(f)
        return list(found.values())

    @classmethod
    def from_params(cls: type[S], params: dict[str, Any]) -> S:
        """Settings from the CLI's parsed values (None means: the default)."""
        known = {f.name for f in fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v)
                  for k, v in params.items() if k in known and v is not None}
        defaults = {f.name: f.default for f in fields(cls)}
        # click hands over defaults too: what differs from its default was given.
        given = frozenset(k for k, v in values.items() if v != defaults.get(k))
        if "release" in known:
            values = releases.apply(
                {k: v for k, v in values.items() if k in given or k not in releases.FIELDS},
                {k: v for k, v in defaults.items() if k in releases.FIELDS})
        registry = values.get("registry")
        if registry:
            for key in REGISTRY_IMAGES:
                if key in known:
                    image = str(values.get(key, _default(cls, key)))
                    values[key] = validate.qualify(image, str(registry))
        return cls(**values, given=given)


def _default(cls: type, key: str) -> Any:
    return next(f.default for f in fields(cls) if f.name == key)


def _option(f: Field[Any]) -> Option:
    return Option(f.name, None if f.default is MISSING else f.default, f.metadata["opt"])


# ---- the groups --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Common(Settings):
    """Every command: where the agent keeps its files, and which agent this is."""

    data_dir: Path = option("where the agent keeps what it writes (secrets 0600, env file, lock)",
                            Path, DEFAULT_DATA_DIR)
    instance: str = option("a name that tells several agents on one engine apart (suffix of "
                           "every container name); empty on a real VM", validate.instance, "")
    lock_wait: float = option("seconds to wait for another agent working on the same data dir",
                              validate.wait, 30.0)

    def suffix(self, base: str) -> str:
        """A container or volume name, suffixed with the instance name when there is one."""
        return f"{base}-{self.instance}" if self.instance else base


# Ray's ports, pinned so that a firewall between the VMs can name every one (README
# "Firewall"): option -> (the head's default, a worker's default). A worker's differ from the
# head's so that both fit on one host network (a VM that runs a head and a worker).
RAY_PORTS: dict[str, tuple[int, int]] = {
    "node_manager_port": (6380, 6390),
    "object_manager_port": (6381, 6391),
    "runtime_env_agent_port": (6382, 6392),
    "dashboard_agent_grpc_port": (6383, 6393),
    "dashboard_agent_listen_port": (6384, 6394),
    "metrics_export_port": (6385, 6395),
    "min_worker_port": (10002, 11000),
    "max_worker_port": (10999, 11999),
}


def ray_port(key: str, help: str) -> Any:
    """A Ray port option whose default depends on the role (RAY_PORTS)."""
    head, worker = RAY_PORTS[key]
    return option(f"{help} (`ray start --{key.replace('_', '-')}`)", validate.port,
                  shown=f"head {head}, worker {worker}")


@dataclass(frozen=True)
class RayOptions(Settings):
    """The Ray container of the head and of a worker."""

    ray_image: str = option("the syntho-ray image", validate.image, "syntho-ray:latest")
    network: str = option("'host' (as on a VM) or a user-defined Docker network to run Ray on",
                          validate.network, "host")
    shm_size: int = option("shared memory for Ray's object store (4gb, 12gb ...)",
                           validate.size, 4 * 1024**3, shown="4gb")
    nofile: int = option("open-files limit for the Ray container (the host must allow it)",
                         validate.nofile, 65536)
    cpus: float | None = option("CPU limit for the Ray container (cores)",
                                validate.positive_float)
    memory: int | None = option("memory limit (and reservation) for the Ray container",
                                validate.size)
    node_ip: str | None = option("the IP address Ray advertises for this node "
                                 "(--node-ip-address)", validate.ip)
    ray_arg: tuple[str, ...] = option("an extra argument for `ray start` (repeat for several)",
                                      str, (), multiple=True)
    node_manager_port: int | None = ray_port("node_manager_port", "the raylet's node manager")
    object_manager_port: int | None = ray_port("object_manager_port",
                                               "the raylet's object manager")
    runtime_env_agent_port: int | None = ray_port("runtime_env_agent_port",
                                                  "Ray's runtime-env agent")
    dashboard_agent_grpc_port: int | None = ray_port("dashboard_agent_grpc_port",
                                                     "the dashboard agent's gRPC")
    dashboard_agent_listen_port: int | None = ray_port("dashboard_agent_listen_port",
                                                       "the dashboard agent's HTTP")
    metrics_export_port: int | None = ray_port("metrics_export_port",
                                               "Ray's Prometheus metrics")
    min_worker_port: int | None = ray_port("min_worker_port",
                                           "the lowest port of Ray's worker processes")
    max_worker_port: int | None = ray_port("max_worker_port",
                                           "the highest port of Ray's worker processes")
    gcs_reconnect_timeout: int | None = option(
        "seconds a node waits for the head's GCS to come back before its Ray exits "
        "(RAY_gcs_rpc_server_reconnect_timeout_s; Ray's default: 60)", validate.seconds)


@dataclass(frozen=True)
class RayTempOptions(Settings):
    """Ray's temp dir (/tmp/ray in the node's container), kept bounded (README "Years
    unattended")."""

    ray_log_retention_days: float = option(
        "days the logs of finished Ray processes (and Ray's rotated logs) are kept (0: none)",
        validate.days, 7.0)
    ray_temp_max_size: int = option(
        "the size Ray's temp dir is brought back under, oldest finished logs first (never a "
        "live process's log or a spilled object)", validate.size, 10 * 1024**3, shown="10gb")
    spill_dir: Path | None = option(
        "a host directory (a disk with room, writable by the Ray image's user) Ray spills "
        "objects to when its object store is full, instead of /tmp/ray in the container's own "
        "files; Ray stops spilling there at 95% full [default: /tmp/ray in the container]",
        validate.existing_dir)


@dataclass(frozen=True)
class MonitoringOptions(Settings):
    """The operator's Grafana and Prometheus, for the Ray dashboard's metrics tab (README
    "Years unattended: metrics and alerts")."""

    grafana_url: str | None = option(
        "your Grafana, as the Ray dashboard's metrics tab links and embeds it (sets the head's "
        "RAY_GRAFANA_HOST and RAY_GRAFANA_IFRAME_HOST; import the dashboards the head copies "
        "into <data-dir>/metrics/grafana there)", validate.http_url)
    prometheus_url: str | None = option(
        "the Prometheus that scrapes the cluster, which the Ray dashboard queries (sets the "
        "head's RAY_PROMETHEUS_HOST)", validate.http_url)


@dataclass(frozen=True)
class GcsOptions(Settings):
    """The head's GCS fault tolerance (README, "A head that restarts")."""

    gcs_ft: bool = option("GCS fault tolerance: the head keeps the cluster's state in a Redis "
                          "of its own (loopback only), so a restart of the head's container "
                          "does not take the workers' Ray down (on by default; --no-gcs-ft "
                          "keeps it in memory, Ray's default)", None, True)
    gcs_redis_port: int = option("the port of the GCS's Redis (on loopback)", validate.port,
                                 6386)
    gcs_redis_image: str = option("the Redis image of the GCS's store", validate.image,
                                  "redis:6.2-alpine")


@dataclass(frozen=True)
class ClusterOptions(Settings):
    """What every member of the Ray cluster shares: the token and the license."""

    license_key: str = option("the Syntho license key (LICENSE_KEY_SIGNED)", str, "",
                              secret=True)
    auth: bool = option("Ray token authentication (on by default; --no-auth turns it off)",
                        None, True)
    token: str | None = option("the cluster's Ray token (prefer SYNTHO_AGENT_TOKEN or "
                               "--token-file: a flag shows in `ps`)", validate.token, secret=True)
    token_file: Path | None = option("a file holding the cluster's Ray token",
                                     validate.existing_file)
    ready_timeout: float = option("seconds to wait for the containers to become ready "
                                  "(0 = forever)", validate.wait, 180.0)


@dataclass(frozen=True)
class LogOptions(Settings):
    """Every container's own logs (Docker's json-file driver), rotated."""

    log_max_size: str = option("the size at which a container's log file rotates (10m, 1g); "
                               "the default applies to containers made from now on, another "
                               "value recreates them", validate.log_size, LOG_MAX_SIZE)
    log_max_files: int = option("how many log files each container keeps", validate.positive_int,
                                LOG_MAX_FILES)


@dataclass(frozen=True)
class RayTlsOptions(Settings):
    """Ray's traffic in mutual TLS (docs/security.md)."""

    ray_tls: bool | None = option(
        "Ray's traffic (and the dashboard's between VMs) in mutual TLS with the CA the "
        "cluster's token carries. A new head: on (on the host's network); a head made by an "
        "earlier agent: off until --ray-tls; a worker and the app: as the head speaks",
        None, None, shown="a new head: on; joining: as the head")
    ray_tls_san: tuple[str, ...] = option(
        "another name or address other VMs dial this node at (a DNS name, a NAT address), for "
        "its certificate (repeat for several)", validate.host, (), multiple=True)
    ray_tls_days: int = option("days this node's Ray certificate is valid (a re-run renews it "
                               "30 days before it expires)", validate.positive_int, 365)
    ray_tls_ca_cert: Path | None = option(
        "a CA of your own (PEM) to issue this node's Ray certificate from, instead of the one "
        "the token carries; give every node the same, with --ray-tls-ca-key",
        validate.existing_file)
    ray_tls_ca_key: Path | None = option("--ray-tls-ca-cert's private key (PEM, unencrypted, "
                                         "mode 0600)", validate.existing_file)
    ray_tls_cert: Path | None = option(
        "this node's Ray certificate, issued elsewhere (PEM; its names must cover 127.0.0.1 and "
        "the node's addresses), with --ray-tls-key and --ray-tls-ca", validate.existing_file)
    ray_tls_key: Path | None = option("--ray-tls-cert's private key (PEM, unencrypted, mode "
                                      "0600)", validate.existing_file)
    ray_tls_ca: Path | None = option("the CA certificate (PEM) that issued --ray-tls-cert and "
                                     "every other node's", validate.existing_file)


@dataclass(frozen=True)
class JoinOptions(Settings):
    """Where the head is, for a worker and the app."""

    head: str | None = option("the Ray head's IP address or hostname", validate.host)
    wait: float = option("seconds to wait for the head to answer on 6379 (0 = forever)",
                         validate.wait, 600.0)


@dataclass(frozen=True)
class ImageSources(Settings):
    """Where missing images come from: an offline bundle or a registry."""

    registry: str | None = option(
        "the registry to pull missing images from (HOST[:PORT]); Syntho images without a "
        "registry in their reference are looked up there", validate.registry)
    registry_user: str | None = option("the registry user", str)
    registry_password_file: Path | None = option(
        "a file holding the registry password (or set SYNTHO_AGENT_REGISTRY_PASSWORD, or "
        "--registry-password-stdin)", validate.existing_file)
    registry_password_stdin: bool = option("read the registry password from standard input",
                                           None, False)
    images: Path | None = option("an offline bundle to load missing images from: a `docker "
                                 "save` archive (.tar/.tar.gz) or a folder of them",
                                 validate.existing_path)


@dataclass(frozen=True)
class ReleaseOptions(Settings):
    """Which release runs, and when images are pulled (README, "Upgrades and rollback")."""

    release: str | None = option(
        "the Syntho release: the tag of the syntho-ray, syntho-core-api, syntho-backend and "
        "syntho-frontend images", validate.tag)
    release_file: Path | None = option(
        "a YAML file that pins each image by tag or digest (README, \"Upgrades and rollback\")",
        validate.existing_file)
    pull: str = option("missing: pull what is not on this engine; always: ask the registry "
                       "for each reference's digest and pull what changed; never",
                       validate.pull_policy, "missing")
    retry_failed: bool = option("try again a release that failed its health gate (a run "
                                "otherwise keeps the release it went back to)", None, False)


@dataclass(frozen=True)
class CheckOption(Settings):
    skip_checks: bool = option("do not run the host checks (`syntho-agent check ROLE`) that "
                               "stop a run before it changes anything", None, False)


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
    bind: str = option("host address the frontend and backend ports are published on", validate.ip,
                       "0.0.0.0")
    frontend_host: str | None = option("host[:port] users open (FRONTEND_HOST) [default: "
                                       "localhost:<frontend-port>]", validate.host_port)
    frontend_protocol: str = option("http or https (https turns SECURE_COOKIES on)",
                                    validate.protocol, "http")
    backend_host: str | None = option("host[:port] of the backend as users reach it "
                                      "(BACKEND_HOST) [default: localhost:<backend-port>]",
                                      validate.host_port)
    backend_protocol: str = option("http or https", validate.protocol, "http")
    admin_username: str = option("the admin account's user name", validate.word, "admin")
    admin_email: str = option("the admin account's e-mail", validate.email, "admin@example.com")
    admin_password: str | None = option("the admin account's password [default: generated "
                                        "once]", validate.password, secret=True)
    db_password: str | None = option("the database password [default: generated once]",
                                     validate.password, secret=True)
    rotate_db_password: bool = option("change the password of an existing database to the one "
                                      "configured (otherwise a changed password is refused)",
                                      None, False)
    postgres_url: str | None = option(
        "an external Postgres server (postgresql://USER:PASSWORD@HOST[:PORT]) holding both "
        "databases, instead of the bundled container; prefer the env variable",
        validate.postgres_url, secret=True)
    core_db_name: str = option("the core's database", validate.word, "syntho-core")
    backend_db_name: str = option("the backend's database", validate.word, "syntho-backend")
    redis_url: str | None = option("an external Redis (redis://[:PASSWORD@]HOST[:PORT]) instead "
                                   "of the bundled container", validate.redis_url, secret=True)
    publish_postgres: tuple[str, int] | None = option(
        "publish the bundled Postgres on ADDRESS:PORT of the host (off by default)",
        validate.address_port)
    publish_redis: tuple[str, int] | None = option(
        "publish the bundled Redis on ADDRESS:PORT of the host (off by default)",
        validate.address_port)
    max_workers: int = option("the core's MAX_WORKERS", validate.positive_int, 4)


@dataclass(frozen=True)
class ProxyOptions(Settings):
    """The HTTPS front door: a Caddy proxy before the frontend and the backend (README
    "HTTPS")."""

    tls: str = option("HTTPS through a proxy in front of the UI and API: off, cert (your "
                      "certificate: --tls-cert, --tls-key), acme (Let's Encrypt or --acme-ca for "
                      "--frontend-host) or internal (Caddy's own CA, for trials)",
                      validate.tls_mode, "off")
    tls_cert: Path | None = option("--tls cert: the certificate chain, PEM, leaf first",
                                   validate.existing_file)
    tls_key: Path | None = option("--tls cert: its private key, PEM, unencrypted, mode 0600",
                                  validate.existing_file)
    acme_email: str | None = option("--tls acme: the e-mail of the CA account (expiry notices)",
                                    validate.email)
    acme_ca: str | None = option("--tls acme: the ACME directory of a private CA [default: "
                                 "Let's Encrypt]", validate.https_url)
    acme_ca_root: Path | None = option("--tls acme: the root certificate (PEM) that --acme-ca's "
                                       "HTTPS is signed by, when no public CA signs it",
                                       validate.existing_file)
    proxy_image: str = option("the HTTPS proxy's image (Caddy 2)", validate.image, "caddy:2")
    https_port: int = option("with --tls: the host port of HTTPS", validate.port, 443)
    http_port: int = option("with --tls: the host port of plain HTTP (it redirects to HTTPS "
                            "and answers ACME challenges)", validate.port, 80)
    publish_frontend: tuple[str, int] | None = option(
        "with --tls: also publish the frontend's own HTTP on ADDRESS:PORT (off: only the proxy "
        "is reachable)", validate.address_port)
    publish_backend: tuple[str, int] | None = option(
        "with --tls: also publish the backend's own HTTP on ADDRESS:PORT (off: only the proxy "
        "is reachable)", validate.address_port)


@dataclass(frozen=True)
class LauncherOptions(Settings):
    """Ray's cluster launcher (`ray up`): the machines and their sizes."""

    provider: str | None = option("where `ray up` makes the cluster: aws, gcp, azure, or local "
                                  "(machines that already exist)", validate.provider)
    cluster_name: str = option("the cluster's name for `ray up` and the cloud's tags",
                               validate.name, "syntho-cluster")
    region: str | None = option("aws/gcp region or azure location [default: aws us-east-1, "
                                "azure westeurope; gcp: required]", validate.word)
    availability_zone: str | None = option("the zone in the region (gcp: required)", validate.word)
    project_id: str | None = option("the gcp project (gcp: required)", validate.word)
    resource_group: str | None = option("the azure resource group (azure: required)", validate.word)
    subscription_id: str | None = option("the azure subscription [default: the az CLI's]",
                                         validate.word)
    head_ip: str | None = option("local: the head machine's address", validate.host)
    worker_ip: tuple[str, ...] = option("local: a worker machine's address (repeat for each)",
                                        validate.host, (), multiple=True)
    ssh_user: str = option("the user `ray up` logs in to the nodes as", validate.word, "ubuntu")
    ssh_private_key: Path | None = option(
        "the key `ray up` logs in with (local: required; aws: with --key-name) [default: a key "
        "the cloud provider makes]", validate.user_file)
    ssh_public_key: Path | None = option(
        "a public key delivered to every node (azure: the login key's public half) [default: "
        "--ssh-private-key's .pub, else ~/.ssh/id_rsa.pub]", validate.user_file)
    key_name: str | None = option("aws: the EC2 key pair of --ssh-private-key", validate.word)
    head_instance_type: str | None = option(
        "the head's VM size [default: aws m5.xlarge, gcp n2-standard-4, azure "
        "Standard_D4s_v4]", validate.word)
    worker_instance_type: str | None = option(
        "the workers' VM size [default: aws m5.8xlarge, gcp n2-standard-32, azure "
        "Standard_D32s_v4]", validate.word)
    head_cpus: int | None = option("CPUs Ray schedules on the head [default: the default "
                                   "size's]", validate.positive_int)
    worker_cpus: int | None = option("CPUs Ray schedules on a worker [default: the default "
                                     "size's]", validate.positive_int)
    min_worker_nodes: int | None = option("worker VMs kept running [default: 2; local: every "
                                          "--worker-ip]", validate.count)
    max_worker_nodes: int | None = option("worker VMs the autoscaler may run [default: 3; "
                                          "local: every --worker-ip]", validate.count)
    spot: bool = option("run the workers on spot (preemptible) VMs: cheaper, but the cloud may "
                        "take them back", None, False)
    idle_timeout_minutes: int | None = option(
        "the autoscaler removes a worker VM idle this many minutes (never below "
        "--min-worker-nodes) [default: 5, Ray's]", validate.positive_int)
    disk_size: int = option("boot disk of each cloud VM, in GB", validate.positive_int, 100)
    vm_image: str | None = option(
        "the VM image, with Docker: aws AMI id, gcp sourceImage, azure "
        "PUBLISHER:OFFER:SKU:VERSION [default: the provider's with Docker]", validate.word)
    container_name: str = option("the Ray container's name on every node", validate.name,
                                 "syntho-ray")
    head_setup_command: tuple[str, ...] = option(
        "a command run in the head's container before Ray starts (repeat); replaces Ray's "
        "default, which installs the cloud SDK its autoscaler needs", str, (), multiple=True)


# ---- what each command takes -------------------------------------------------------------------

@dataclass(frozen=True)
class HeadSettings(Common, RayOptions, GcsOptions, ClusterOptions, RayTlsOptions, ImageSources,
                   ReleaseOptions, LogOptions, RayTempOptions, MonitoringOptions, WatchOption,
                   CheckOption):
    command: ClassVar[str] = "head"


@dataclass(frozen=True)
class WorkerSettings(Common, JoinOptions, RayOptions, ClusterOptions, RayTlsOptions,
                     ImageSources, ReleaseOptions, LogOptions, RayTempOptions, WatchOption,
                     CheckOption):
    command: ClassVar[str] = "worker"


@dataclass(frozen=True)
class AppSettings(Common, JoinOptions, ClusterOptions, RayTlsOptions, AppOptions, ProxyOptions,
                  ImageSources, ReleaseOptions, LogOptions, WatchOption, CheckOption):
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
    node_manager_port: int | None = reuse(RayOptions, "node_manager_port")
    object_manager_port: int | None = reuse(RayOptions, "object_manager_port")
    runtime_env_agent_port: int | None = reuse(RayOptions, "runtime_env_agent_port")
    dashboard_agent_grpc_port: int | None = reuse(RayOptions, "dashboard_agent_grpc_port")
    dashboard_agent_listen_port: int | None = reuse(RayOptions, "dashboard_agent_listen_port")
    metrics_export_port: int | None = reuse(RayOptions, "metrics_export_port")
    min_worker_port: int | None = reuse(RayOptions, "min_worker_port")
    max_worker_port: int | None = reuse(RayOptions, "max_worker_port")
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
    ray_tls: bool | None = reuse(
        RayTlsOptions, "ray_tls", "Ray's traffic (and the dashboard's) in mutual TLS with the "
        "CA the token carries: each node issues itself a certificate when Ray starts there "
        "(on with token auth)")
    ray_tls_san: tuple[str, ...] = reuse(
        RayTlsOptions, "ray_tls_san", "another name or address the nodes are dialled at (a DNS "
        "name, a NAT address), for their certificates (repeat for several)")
    ray_tls_days: int = reuse(RayTlsOptions, "ray_tls_days", "days a node's Ray certificate is "
                              "valid (each start of Ray there issues a new one)")
    ray_tls_ca_cert: Path | None = reuse(
        RayTlsOptions, "ray_tls_ca_cert", "a CA of your own (PEM) for the nodes to issue their "
        "Ray certificates from, instead of the one the token carries; its key goes to every "
        "node, as the token does, with --ray-tls-ca-key")
    ray_tls_ca_key: Path | None = reuse(RayTlsOptions, "ray_tls_ca_key")

    @classmethod
    def options(cls) -> list[Option]:
        own = {f.name for f in fields(LauncherOptions)}
        shared = [_option(f) for f in fields(cls) if f.name not in own and "opt" in f.metadata]
        return shared + [_option(f) for f in fields(LauncherOptions) if "opt" in f.metadata]


@dataclass(frozen=True)
class BackupOptions(Settings):
    """Backups of the app VM: where they go, how long they are kept, their key."""

    encrypt_key_file: Path | None = option(
        "a file holding the key that encrypts backups (or set SYNTHO_AGENT_BACKUP_KEY); keep "
        "the key off this VM", validate.existing_file)
    keep: int | None = option("after a successful backup, delete the oldest of this agent's "
                              "backups beyond N", validate.positive_int)
    backup_target: Path | None = option("also copy each finished backup into this directory "
                                        "(a mounted share), verified by checksum",
                                        validate.existing_dir)


@dataclass(frozen=True)
class BackupSchedule(BackupOptions):
    """install app: scheduled backups (k3s' etcd snapshots: on by default, every 12 hours,
    the newest 5 kept)."""

    backup_every: int = option("take a backup this often (a systemd timer running `syntho-agent "
                               "backup`; 0 = no schedule; keeps --keep, default 5)",
                               validate.duration, 12 * 3600, shown="12h")


@dataclass(frozen=True)
class BackupSettings(Common, BackupOptions):
    """backup: the app's databases (as the app role reaches them) and its data dir."""

    command: ClassVar[str] = "backup"
    postgres_url: str | None = reuse(AppOptions, "postgres_url")
    postgres_image: str = reuse(AppOptions, "postgres_image", "the Postgres image whose client "
                                "(pg_dump) backs up an external --postgres-url")
    core_db_name: str = reuse(AppOptions, "core_db_name")
    backend_db_name: str = reuse(AppOptions, "backend_db_name")


@dataclass(frozen=True)
class RestoreSettings(AppSettings):
    """restore: the app role's settings (it converges the app), and the backup's key."""

    command: ClassVar[str] = "restore"
    encrypt_key_file: Path | None = reuse(BackupOptions, "encrypt_key_file")


# Every settings type a command reads, by command; and every option any of them takes.
COMMANDS: dict[str, type[Settings]] = {
    "head": HeadSettings, "worker": WorkerSettings, "app": AppSettings,
    "launcher-config": LauncherSettings, "backup": BackupSettings, "restore": RestoreSettings,
}
ALL_OPTIONS: dict[str, Option] = {o.key: o for t in COMMANDS.values() for o in t.options()}


def commands_taking(key: str) -> list[str]:
    return [name for name, t in COMMANDS.items() if any(o.key == key for o in t.options())]


