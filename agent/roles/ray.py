"""The Ray container contract, and the head and worker roles built on it (docs/stack.md).

The contract (the `ray start` command, the environment, the ports, the warning when token auth
is off) is written here once: the head and worker specs below, the app's Ray client settings
(roles/app.py) and the cluster launcher's config (launcher.py) all read it.

Pure: settings (and the token) in, a Spec out.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import shlex
from dataclasses import dataclass, fields
from typing import Any

from agent import spec as s
from agent.config import RAY_PORTS, HeadSettings, RayNodeSettings, WorkerSettings
from agent.errors import UsageError
from agent.ray_tls import INSIDE as TLS_INSIDE
from agent.ray_tls import Material

GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
# Fixed by Ray on the head (env variables AUTOSCALER_METRIC_PORT, DASHBOARD_METRIC_PORT), not
# random: Prometheus endpoints, nothing in the cluster connects to them.
HEAD_METRICS_PORTS = (44217, 44227)

# Spread tasks over the nodes instead of packing them onto the first (the vendor's setting).
SCHEDULER_ENV = (("RAY_SCHEDULER_SPREAD_THRESHOLD", "0.0"),)
TOKEN_ENV = "RAY_AUTH_TOKEN"
GCS_REDIS_SERVICE = "gcs-redis"
GCS_PASSWORD_ENV = "GCS_REDIS_PASSWORD"
GCS_PASSWORD_FILE = "gcs-redis-password"
AUTH_MODE_ENV = ("RAY_AUTH_MODE", "token")
LICENSE_ENV = "LICENSE_KEY_SIGNED"
AUTH_OFF_WARNING = ("WARNING: Ray token auth is OFF (--no-auth): anyone who reaches ports "
                    f"{GCS_PORT}, {DASHBOARD_PORT} and {CLIENT_PORT} of the head can run code on "
                    "this cluster")


# What the head publishes as labels of its Ray node (agent/ray_release.py reads them). A label
# value is at most 63 characters of [A-Za-z0-9_.-]: the image reference travels base32-encoded
# in numbered pieces.
IMAGE_LABEL = "syntho.ai/ray-image-"
RELEASE_LABEL = "syntho.ai/release"
_PIECE = 60
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")


def head_labels(image: str, release: str | None) -> str:
    """`ray start --labels`' value: the image reference in pieces, and the release's name
    when it can be a label value as it is."""
    encoded = base64.b32encode(image.encode()).decode().rstrip("=")
    pairs = [f"{IMAGE_LABEL}{i}={encoded[at:at + _PIECE]}"
             for i, at in enumerate(range(0, len(encoded), _PIECE))]
    if release and _LABEL_VALUE.match(release):
        pairs.append(f"{RELEASE_LABEL}={release}")
    return ",".join(pairs)


@dataclass(frozen=True)
class NodePorts:
    """Every port a Ray node listens on besides the head's fixed ones (GCS, dashboard, client),
    pinned: no random listener, so a firewall can name them (README "Firewall")."""

    node_manager_port: int
    object_manager_port: int
    runtime_env_agent_port: int
    dashboard_agent_grpc_port: int
    dashboard_agent_listen_port: int
    metrics_export_port: int
    min_worker_port: int
    max_worker_port: int

    def args(self) -> list[str]:
        return [f"--{f.name.replace('_', '-')}={getattr(self, f.name)}" for f in fields(self)]

    def single(self) -> tuple[int, ...]:
        """The ports of one listener each (the worker range aside)."""
        return tuple(getattr(self, f.name) for f in fields(self)
                     if f.name not in ("min_worker_port", "max_worker_port"))


def node_ports(settings: Any, role: str) -> NodePorts:
    """The ports of a head or worker: the options given, else the role's defaults (RAY_PORTS).
    UsageError when two of them collide (with each other, or with the head's fixed ports) or
    the worker range is upside down. `settings` has the port options (a role's, or the
    launcher's)."""
    pick = 0 if role == "head" else 1
    chosen = {key: getattr(settings, key) if getattr(settings, key) is not None
              else defaults[pick] for key, defaults in RAY_PORTS.items()}
    ports = NodePorts(**chosen)
    low, high = ports.min_worker_port, ports.max_worker_port
    if low > high:
        raise UsageError(f"--min-worker-port {low} is above --max-worker-port {high}: give a "
                         "range low to high")
    taken: dict[int, str] = {}
    if role == "head":
        taken = {GCS_PORT: "the GCS (6379)", DASHBOARD_PORT: "the dashboard (8265)",
                 CLIENT_PORT: "the Ray client server (10001)"}
    for key in RAY_PORTS:
        if key in ("min_worker_port", "max_worker_port"):
            continue
        port = chosen[key]
        flag = "--" + key.replace("_", "-")
        if port in taken or low <= port <= high:
            other = taken.get(port, f"the worker range {low}-{high}")
            raise UsageError(f"{flag} {port} collides with {other} of the {role}: give each "
                             "Ray port its own number")
        taken[port] = flag
    for port, what in ((GCS_PORT, "6379"), (DASHBOARD_PORT, "8265"), (CLIENT_PORT, "10001")):
        if role == "head" and low <= port <= high:
            raise UsageError(f"the worker range {low}-{high} holds the head's port {what}: "
                             "move --min-worker-port/--max-worker-port")
    redis = int(getattr(settings, "gcs_redis_port", 0) or 0)
    if role == "head" and getattr(settings, "gcs_ft", False) and (
            redis in taken or low <= redis <= high):
        other = taken.get(redis, f"the worker range {low}-{high}")
        raise UsageError(f"--gcs-redis-port {redis} collides with {other} of the head: give "
                         "it a port of its own")
    return ports


def start_command(head_address: str | None, ports: NodePorts, block: bool = True,
                  dashboard_host: str = "0.0.0.0") -> list[str]:
    """`ray start` for the head (head_address None) or a worker joining head_address, every
    port it listens on pinned.

    --block keeps Ray in the foreground, as the container's main process; Ray's launcher runs
    it as a command in a long-lived container instead (block=False). With TLS the dashboard
    keeps the loopback and its TLS front the host's other addresses (dashboard_front)."""
    if head_address is None:
        command = ["ray", "start", "--head", f"--port={GCS_PORT}", "--dashboard-host",
                   dashboard_host, f"--ray-client-server-port={CLIENT_PORT}"]
    else:
        command = ["ray", "start", f"--address={head_address}:{GCS_PORT}"]
    return [*command, *ports.args(), *(["--block"] if block else []), "--disable-usage-stats"]


def auth_env(token: str | None) -> dict[str, str]:
    """What a Ray process (a node, or the app's Ray client) needs for token auth."""
    return {AUTH_MODE_ENV[0]: AUTH_MODE_ENV[1], TOKEN_ENV: token} if token else {}


def node_env(license_key: str, token: str | None) -> tuple[tuple[str, str], ...]:
    return s.env_pairs(**dict(SCHEDULER_ENV), **{LICENSE_ENV: license_key}, **auth_env(token))


def tls_mounts(material: Material | None) -> tuple[s.Mount, ...]:
    """The node's TLS folder, read-only, where Ray's TLS environment names its files."""
    return (s.Mount(str(material.folder), TLS_INSIDE, read_only=True),) if material else ()


SPILL_INSIDE = "/ray-spill"  # where a node's container sees --spill-dir
# With --spill-dir: the share of its file system past which Ray neither spills nor makes
# objects there (Ray's own default, said where the dir is given): check's failure mark.
SPILL_CAPACITY = "0.95"


def _spill(settings: RayNodeSettings) -> tuple[list[str], tuple[s.Mount, ...],
                                               tuple[tuple[str, str], ...]]:
    """--spill-dir: Ray's flag, the directory mounted, its capacity threshold."""
    if settings.spill_dir is None:
        return [], (), ()
    return (["--object-spilling-directory", SPILL_INSIDE],
            (s.Mount(str(settings.spill_dir), SPILL_INSIDE),),
            (("RAY_local_fs_capacity_threshold", SPILL_CAPACITY),))


def _node(settings: RayNodeSettings, service: str, command: list[str],
          token: str | None, material: Material | None = None) -> s.Container:
    if settings.node_ip:
        command += ["--node-ip-address", settings.node_ip]
    spill_args, spill_mounts, spill_env = _spill(settings)
    command += spill_args
    return s.Container(
        service=service,
        name=settings.suffix(service),
        image=settings.ray_image,
        command=tuple(command + list(settings.ray_arg)),
        env=node_env(settings.license_key, token) + (
            (("RAY_gcs_rpc_server_reconnect_timeout_s", str(settings.gcs_reconnect_timeout)),)
            if settings.gcs_reconnect_timeout else ()) + (material.env() if material else ())
        + spill_env,
        mounts=tls_mounts(material) + spill_mounts,
        network=settings.network,
        restart="always",
        shm_size=settings.shm_size,
        nofile=settings.nofile,
        cpus=settings.cpus,
        memory=settings.memory,
    )


def _networks(settings: RayNodeSettings) -> tuple[s.Network, ...]:
    return () if settings.network == "host" else (s.Network(settings.network),)


def monitoring_env(settings: HeadSettings) -> tuple[tuple[str, str], ...]:
    """The operator's Grafana and Prometheus, where the dashboard's metrics tab finds them
    (nothing when not given: the head's container as before)."""
    pairs = []
    if settings.grafana_url:
        pairs += [("RAY_GRAFANA_HOST", settings.grafana_url),
                  ("RAY_GRAFANA_IFRAME_HOST", settings.grafana_url)]
    if settings.prometheus_url:
        pairs.append(("RAY_PROMETHEUS_HOST", settings.prometheus_url))
    return tuple(pairs)


DASHBOARD_FRONT = "ray-dashboard-tls"


def dashboard_front(settings: HeadSettings, material: Material) -> s.Container:
    """The TLS front of the head's dashboard (assets/tls-front.py on the Ray image's python3):
    the dashboard keeps 127.0.0.1:8265 in plain, the front serves 8265 on the host's other
    addresses with the node's certificate, so the token never crosses a wire in clear."""
    return s.Container(
        service=DASHBOARD_FRONT, name=settings.suffix(DASHBOARD_FRONT), image=settings.ray_image,
        entrypoint=("python3", f"{TLS_INSIDE}/{material.front}"), network="host", restart="always",
        env=s.env_pairs(FRONT_CERT=f"{TLS_INSIDE}/{material.cert_file}",
                        FRONT_KEY=f"{TLS_INSIDE}/{material.key_file}",
                        FRONT_LISTEN=",".join(material.listen),
                        FRONT_PORT=str(DASHBOARD_PORT), BACKEND=f"127.0.0.1:{DASHBOARD_PORT}",
                        PYTHONUNBUFFERED="1"),
        mounts=tls_mounts(material),
        health=s.Health(test=("CMD", "python3", f"{TLS_INSIDE}/{material.front}", "--check"),
                        interval=2.0, timeout=5.0, retries=30, start_period=2.0),
    )


def head_spec(settings: HeadSettings, token: str | None,
              gcs_password: str | None = None, material: Material | None = None) -> s.Spec:
    """The head; with GCS fault tolerance (gcs_password given), the Redis that keeps the
    GCS's state first, and the head started on it; with TLS (material), its dashboard on
    loopback and the dashboard's TLS front."""
    front_of = material if material is not None and material.listen and material.front else None
    command = [*start_command(None, node_ports(settings, "head"),
                              dashboard_host="127.0.0.1" if front_of else "0.0.0.0"),
               "--labels", head_labels(settings.ray_image, settings.release)]
    head = _node(settings, "ray-head", command, token, material)
    head = dataclasses.replace(head, env=head.env + monitoring_env(settings))
    front = (dashboard_front(settings, front_of),) if front_of else ()
    if gcs_password is None:
        return s.Spec(role="head", instance=settings.instance, containers=(head, *front),
                      networks=_networks(settings), secrets=_secrets(settings, token))
    redis = gcs_redis(settings, gcs_password)
    # On a network, the Redis's own container name: every head on that network has a
    # gcs-redis, so a shared alias would let one head's GCS reach another head's Redis.
    address = "127.0.0.1" if settings.network == "host" else redis.name
    # Ray takes the Redis password as a flag only: the shell puts it there from the
    # environment, so that it is on no command line the engine records.
    shell = f'{shlex.join([*(head.command or ()), "--redis-password"])} "${GCS_PASSWORD_ENV}"'
    env = (*head.env, (GCS_PASSWORD_ENV, gcs_password),
           ("RAY_REDIS_ADDRESS", f"{address}:{settings.gcs_redis_port}"),
           # One cluster's state per Redis; stable across restarts, so a new head finds it.
           ("RAY_external_storage_namespace", f"syntho-agent{settings.instance}"))
    head = dataclasses.replace(head, command=("sh", "-c", "exec " + shell), env=env,
                               after=(GCS_REDIS_SERVICE,))
    return s.Spec(role="head", instance=settings.instance, containers=(redis, head, *front),
                  networks=_networks(settings),
                  volumes=(s.Volume(settings.suffix("syntho-gcs-redis-data")),),
                  secrets=(*_secrets(settings, token), gcs_password))


def gcs_redis(settings: HeadSettings, password: str) -> s.Container:
    """The Redis that keeps the GCS's state: append-only on a named volume, a password, and on
    the host's network bound to loopback only (nothing outside the head's VM reaches it)."""
    bind = "127.0.0.1" if settings.network == "host" else "0.0.0.0"
    port = settings.gcs_redis_port
    # The password reaches redis-server on its standard input (`redis-server -` reads its
    # config there; a here-document, so that redis-server is the container's first process
    # and stops cleanly), not on its command line.
    script = (f"exec redis-server - --port {port} --bind {bind} --protected-mode yes "
              "--appendonly yes --appendfsync everysec --dir /data <<EOF\n"
              f"requirepass ${GCS_PASSWORD_ENV}\nEOF")
    return s.Container(
        service=GCS_REDIS_SERVICE, name=settings.suffix(GCS_REDIS_SERVICE),
        image=settings.gcs_redis_image, entrypoint=("sh", "-c"), command=(script,),
        env=((GCS_PASSWORD_ENV, password),), network=settings.network,
        mounts=(s.Mount(settings.suffix("syntho-gcs-redis-data"), "/data"),),
        restart="always",
        health=s.Health(test=("CMD-SHELL", f"REDISCLI_AUTH=\"${GCS_PASSWORD_ENV}\" redis-cli "
                              f"-h 127.0.0.1 -p {port} ping | grep -q PONG"),
                        interval=1.0, start_period=2.0),
    )


def worker_spec(settings: WorkerSettings, token: str | None,
                material: Material | None = None) -> s.Spec:
    assert settings.head
    return s.Spec(role="worker", instance=settings.instance,
                  containers=(_node(settings, "ray-worker", start_command(
                      settings.head, node_ports(settings, "worker")), token, material),),
                  networks=_networks(settings), secrets=_secrets(settings, token))


def _secrets(settings: RayNodeSettings, token: str | None) -> tuple[str, ...]:
    return tuple(v for v in (token, settings.license_key) if v)
