"""The Ray roles: the head and the worker, as the stack contract defines them.

Pure: settings (and the token) in, a Spec out.
"""

from __future__ import annotations

from agent import spec as s
from agent.config import Settings

GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001


def ray_env(settings: Settings, token: str | None) -> tuple[tuple[str, str], ...]:
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if token else {}
    return s.env_pairs(RAY_SCHEDULER_SPREAD_THRESHOLD="0.0",
                       LICENSE_KEY_SIGNED=settings.license_key, **auth)


def _node(settings: Settings, service: str, command: list[str], token: str | None) -> s.Container:
    if settings.node_ip:
        command += ["--node-ip-address", settings.node_ip]
    return s.Container(
        service=service,
        name=settings.suffix(service),
        image=settings.ray_image,
        command=tuple(command + list(settings.ray_arg)),
        env=ray_env(settings, token),
        network=settings.network,
        restart="always",
        shm_size=settings.shm_size,
        nofile=settings.nofile,
        cpus=settings.cpus,
        memory=settings.memory,
    )


def _networks(settings: Settings) -> tuple[s.Network, ...]:
    return () if settings.network == "host" else (s.Network(settings.network),)


def head_spec(settings: Settings, token: str | None) -> s.Spec:
    command = ["ray", "start", "--head", f"--port={GCS_PORT}", "--dashboard-host", "0.0.0.0",
               "--block", "--disable-usage-stats"]
    return s.Spec(role="head", instance=settings.instance,
                  containers=(_node(settings, "ray-head", command, token),),
                  networks=_networks(settings), secrets=_secrets(settings, token))


def worker_spec(settings: Settings, token: str | None) -> s.Spec:
    assert settings.head
    command = ["ray", "start", f"--address={settings.head}:{GCS_PORT}", "--block",
               "--disable-usage-stats"]
    return s.Spec(role="worker", instance=settings.instance,
                  containers=(_node(settings, "ray-worker", command, token),),
                  networks=_networks(settings), secrets=_secrets(settings, token))


def _secrets(settings: Settings, token: str | None) -> tuple[str, ...]:
    return tuple(v for v in (token, settings.license_key) if v)
