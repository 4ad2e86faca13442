"""The Ray container contract, and the head and worker roles built on it (docs/stack.md).

The contract (the `ray start` command, the environment, the ports, the warning when token auth
is off) is written here once: the head and worker specs below, the app's Ray client settings
(roles/app.py) and the cluster launcher's config (launcher.py) all read it.

Pure: settings (and the token) in, a Spec out.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, fields
from typing import Any

from agent import spec as s
from agent.config import RAY_PORTS, HeadSettings, RayNodeSettings, WorkerSettings
from agent.errors import UsageError

GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
# Fixed by Ray on the head (env variables AUTOSCALER_METRIC_PORT, DASHBOARD_METRIC_PORT), not
# random: Prometheus endpoints, nothing in the cluster connects to them.
HEAD_METRICS_PORTS = (44217, 44227)

# Spread tasks over the nodes instead of packing them onto the first (the vendor's setting).
SCHEDULER_ENV = (("RAY_SCHEDULER_SPREAD_THRESHOLD", "0.0"),)
TOKEN_ENV = "RAY_AUTH_TOKEN"
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
    return ports


def start_command(head_address: str | None, ports: NodePorts, block: bool = True) -> list[str]:
    """`ray start` for the head (head_address None) or a worker joining head_address, every
    port it listens on pinned.

    --block keeps Ray in the foreground, as the container's main process; Ray's launcher runs
    it as a command in a long-lived container instead (block=False)."""
    if head_address is None:
        command = ["ray", "start", "--head", f"--port={GCS_PORT}", "--dashboard-host", "0.0.0.0",
                   f"--ray-client-server-port={CLIENT_PORT}"]
    else:
        command = ["ray", "start", f"--address={head_address}:{GCS_PORT}"]
    return [*command, *ports.args(), *(["--block"] if block else []), "--disable-usage-stats"]


def auth_env(token: str | None) -> dict[str, str]:
    """What a Ray process (a node, or the app's Ray client) needs for token auth."""
    return {AUTH_MODE_ENV[0]: AUTH_MODE_ENV[1], TOKEN_ENV: token} if token else {}


def node_env(license_key: str, token: str | None) -> tuple[tuple[str, str], ...]:
    return s.env_pairs(**dict(SCHEDULER_ENV), **{LICENSE_ENV: license_key}, **auth_env(token))


def _node(settings: RayNodeSettings, service: str, command: list[str],
          token: str | None) -> s.Container:
    if settings.node_ip:
        command += ["--node-ip-address", settings.node_ip]
    return s.Container(
        service=service,
        name=settings.suffix(service),
        image=settings.ray_image,
        command=tuple(command + list(settings.ray_arg)),
        env=node_env(settings.license_key, token),
        network=settings.network,
        restart="always",
        shm_size=settings.shm_size,
        nofile=settings.nofile,
        cpus=settings.cpus,
        memory=settings.memory,
    )


def _networks(settings: RayNodeSettings) -> tuple[s.Network, ...]:
    return () if settings.network == "host" else (s.Network(settings.network),)


def head_spec(settings: HeadSettings, token: str | None) -> s.Spec:
    return s.Spec(role="head", instance=settings.instance,
                  containers=(_node(settings, "ray-head", [
                      *start_command(None, node_ports(settings, "head")),
                      "--labels", head_labels(settings.ray_image, settings.release)], token),),
                  networks=_networks(settings), secrets=_secrets(settings, token))


def worker_spec(settings: WorkerSettings, token: str | None) -> s.Spec:
    assert settings.head
    return s.Spec(role="worker", instance=settings.instance,
                  containers=(_node(settings, "ray-worker", start_command(
                      settings.head, node_ports(settings, "worker")), token),),
                  networks=_networks(settings), secrets=_secrets(settings, token))


def _secrets(settings: RayNodeSettings, token: str | None) -> tuple[str, ...]:
    return tuple(v for v in (token, settings.license_key) if v)
