"""What each role command does, start to finish: lock, secrets, spec, reconcile, readiness.

The CLI calls one function here per role; everything below it is settings -> spec -> engine.
"""

from __future__ import annotations

from typing import Callable

from agent import cluster, store
from agent.config import Settings
from agent.engine import Engine
from agent.errors import ConvergeError, EnvironmentProblem
from agent.lock import data_dir_lock
from agent.reconcile import image_ids, reconcile, require_images
from agent.roles import ray
from agent.waits import http_ok, poll, tcp_open

Say = Callable[[str], None]


def head_address(engine: Engine, settings: Settings) -> str:
    """Where this machine reaches the head it runs."""
    if settings.network != "host":
        ip = engine.container_ip(settings.suffix("ray-head"), settings.network)
        if ip:
            return ip
    return settings.node_ip or "127.0.0.1"


def run_head(engine: Engine, settings: Settings, say: Say) -> None:
    store.ensure_dir(settings.data_dir)
    with data_dir_lock(settings.data_dir, settings.lock_wait, say):
        require_images(engine, {settings.ray_image: settings.suffix("ray-head")})
        token, created = cluster.head_token(settings)
        if not settings.auth:
            say("WARNING: Ray token auth is OFF (--no-auth): anyone who reaches ports 6379, 8265 "
                "and 10001 can run code on this cluster")
        elif created:
            say(f"generated the cluster's Ray token in {cluster.token_path(settings.data_dir)}")
        spec = ray.head_spec(settings, token)
        reconcile(engine, spec, say, settings.ready_timeout)
        address = head_address(engine, settings)
        ready = poll(lambda: tcp_open(address, ray.GCS_PORT) and http_ok(
            f"http://{address}:{ray.DASHBOARD_PORT}/api/gcs_healthz"),
            settings.ready_timeout, f"the Ray head at {address}:{ray.GCS_PORT}", say)
        if not ready:
            raise ConvergeError(
                f"the Ray head did not answer on {address}:{ray.GCS_PORT} within "
                f"{settings.ready_timeout:.0f}s; see `syntho-agent logs`")
        say(f"ray head ready at {address}:{ray.GCS_PORT} "
            f"(dashboard http://{address}:{ray.DASHBOARD_PORT})")
        say("join a worker (on its VM):")
        join = f"  syntho-agent worker --head {settings.node_ip or '<this VM IP>'}"
        if token:
            join += " --token-file ray-token"
            path = cluster.token_path(settings.data_dir)
            say(f"  copy {path} to the worker as ./ray-token, then")
        say(join)


def wait_for_head(settings: Settings, say: Say) -> None:
    assert settings.head
    if tcp_open(settings.head, ray.GCS_PORT):
        return
    forever = "forever" if settings.wait == 0 else f"up to {settings.wait:.0f}s"
    say(f"waiting for the Ray head at {settings.head}:{ray.GCS_PORT} ({forever})")
    if not poll(lambda: tcp_open(settings.head or "", ray.GCS_PORT), settings.wait,
                f"the Ray head at {settings.head}:{ray.GCS_PORT}", say, ceiling=1.0):
        raise EnvironmentProblem(
            f"the Ray head at {settings.head}:{ray.GCS_PORT} did not answer within "
            f"{settings.wait:.0f}s: check that it runs and that ports 6379 and 10001 are open "
            "to this VM (--wait 0 waits forever)")
    say(f"the Ray head at {settings.head}:{ray.GCS_PORT} answers")


def run_worker(engine: Engine, settings: Settings, say: Say) -> None:
    assert settings.head
    store.ensure_dir(settings.data_dir)
    with data_dir_lock(settings.data_dir, settings.lock_wait, say):
        token = cluster.joining_token(settings)
        spec = ray.worker_spec(settings, token)
        image_ids(engine, spec)  # a missing image fails now, not after the wait for the head
        wait_for_head(settings, say)
        reconcile(engine, spec, say, settings.ready_timeout)
        name = settings.suffix("ray-worker")
        if settings.network != "host":
            my_ip = engine.container_ip(name, settings.network) or ""
        else:
            my_ip = settings.node_ip or cluster.source_ip_towards(settings.head)

        def joined() -> bool:
            return any(n.get("node_ip") == my_ip
                       for n in cluster.alive_nodes(settings.head or "", token))

        if not poll(joined, settings.ready_timeout, f"{name} to join the head", say):
            raise ConvergeError(
                f"{name} did not join the Ray head at {settings.head} within "
                f"{settings.ready_timeout:.0f}s (a wrong token is the usual cause); "
                f"last log: {last_log_line(engine, name, spec.secrets)}")
        say(f"{name} joined the Ray cluster at {settings.head} as {my_ip}")


def last_log_line(engine: Engine, name: str, secrets: tuple[str, ...]) -> str:
    obs = engine.observe(name)
    if obs is None:
        return "container missing"
    lines = list(engine.logs(obs.sdk, tail=1))
    line = lines[-1] if lines else "(no output)"
    for secret in secrets:
        line = line.replace(secret, "***")
    return line[:300]
