"""The Ray container contract, and the head and worker roles built on it (docs/stack.md).

The contract (the `ray start` command, the environment, the ports, the warning when token auth
is off) is written here once: the head and worker specs below, the app's Ray client settings
(roles/app.py) and the cluster launcher's config (launcher.py) all read it.

Pure: settings (and the token) in, a Spec out.
"""

from __future__ import annotations

from agent import spec as s
from agent.config import HeadSettings, RayNodeSettings, WorkerSettings

GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001

# Spread tasks over the nodes instead of packing them onto the first (the vendor's setting).
SCHEDULER_ENV = (("RAY_SCHEDULER_SPREAD_THRESHOLD", "0.0"),)
TOKEN_ENV = "RAY_AUTH_TOKEN"
AUTH_MODE_ENV = ("RAY_AUTH_MODE", "token")
LICENSE_ENV = "LICENSE_KEY_SIGNED"
AUTH_OFF_WARNING = ("WARNING: Ray token auth is OFF (--no-auth): anyone who reaches ports "
                    f"{GCS_PORT}, {DASHBOARD_PORT} and {CLIENT_PORT} of the head can run code on "
                    "this cluster")


def start_command(head_address: str | None, block: bool = True) -> list[str]:
    """`ray start` for the head (head_address None) or a worker joining head_address.

    --block keeps Ray in the foreground, as the container's main process; Ray's launcher runs
    it as a command in a long-lived container instead (block=False)."""
    if head_address is None:
        command = ["ray", "start", "--head", f"--port={GCS_PORT}", "--dashboard-host", "0.0.0.0"]
    else:
        command = ["ray", "start", f"--address={head_address}:{GCS_PORT}"]
    return [*command, *(["--block"] if block else []), "--disable-usage-stats"]


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
                  containers=(_node(settings, "ray-head", start_command(None), token),),
                  networks=_networks(settings), secrets=_secrets(settings, token))


def worker_spec(settings: WorkerSettings, token: str | None) -> s.Spec:
    assert settings.head
    return s.Spec(role="worker", instance=settings.instance,
                  containers=(_node(settings, "ray-worker", start_command(settings.head),
                                    token),),
                  networks=_networks(settings), secrets=_secrets(settings, token))


def _secrets(settings: RayNodeSettings, token: str | None) -> tuple[str, ...]:
    return tuple(v for v in (token, settings.license_key) if v)
