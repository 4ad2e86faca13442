"""What each role command does, start to finish: lock, secrets, spec, reconcile, readiness.

The CLI calls one function here per role; everything below it is settings -> spec -> engine.
"""

from __future__ import annotations

from typing import Callable

from agent import cluster, images, store
from agent.app_setup import (
    ADMIN_PASSWORD,
    app_secrets,
    check_db_password,
    db_password_change,
    write_env_file,
    write_init_script,
)
from agent.config import Settings
from agent.engine import Engine
from agent.errors import ConvergeError, EnvironmentProblem
from agent.lock import data_dir_lock
from agent.ops import redact
from agent.reconcile import apply, preflight, reconcile, wait_all_ready, wait_ready
from agent.roles import app, ray
from agent.spec import Spec
from agent.waits import http_ok, poll, tcp_open

Say = Callable[[str], None]
HEAD_POLL = 0.5  # seconds between looks at the head's port while waiting for it


def report(changes: int, spec: Spec, say: Say) -> None:
    if changes == 0:
        say(f"nothing to do: {len(spec.containers)} container(s) up to date")


def head_address(engine: Engine, settings: Settings) -> str:
    """Where this machine reaches the head it runs."""
    if settings.network != "host":
        ip = engine.container_ip(settings.suffix("ray-head"), settings.network)
        if ip:
            return ip
    return settings.node_ip or "127.0.0.1"


def run_head(engine: Engine, settings: Settings, say: Say) -> Spec:
    store.ensure_dir(settings.data_dir)
    with data_dir_lock(settings.data_dir, settings.lock_wait, say):
        ids = images.ensure(engine, settings, {settings.ray_image: settings.suffix("ray-head")},
                            say)
        token, created = cluster.head_token(settings)
        if not settings.auth:
            say("WARNING: Ray token auth is OFF (--no-auth): anyone who reaches ports 6379, 8265 "
                "and 10001 can run code on this cluster")
        elif created:
            say(f"generated the cluster's Ray token in {cluster.token_path(settings.data_dir)}")
        spec = ray.head_spec(settings, token)
        report(reconcile(engine, spec, say, settings.ready_timeout, ids), spec, say)
        address = head_address(engine, settings)

        advertised: list[str] = []

        def head_ready() -> bool:
            # The GCS answers, and the dashboard lists the head node alive (what workers and
            # the app ask for next), with the address Ray advertises for it.
            if not (tcp_open(address, ray.GCS_PORT) and
                    http_ok(f"http://{address}:{ray.DASHBOARD_PORT}/api/gcs_healthz")):
                return False
            advertised[:] = [str(n.get("node_ip")) for n in cluster.alive_nodes(address, token)
                             if n.get("is_head_node")]
            return bool(advertised)

        ready = poll(head_ready, settings.ready_timeout,
                     f"the Ray head at {address}:{ray.GCS_PORT}", say)
        if not ready:
            raise ConvergeError(
                f"the Ray head did not answer on {address}:{ray.GCS_PORT} within "
                f"{settings.ready_timeout:.0f}s; see `syntho-agent logs`")
        say(f"ray head ready at {address}:{ray.GCS_PORT} "
            f"(dashboard http://{address}:{ray.DASHBOARD_PORT})")
        say("join a worker (on its VM):")
        join = f"  syntho-agent worker --head {advertised[0]}"
        if token:
            join += " --token-file ray-token"
            path = cluster.token_path(settings.data_dir)
            say(f"  copy {path} to the worker as ./ray-token, then")
        say(join)
        return spec


def wait_for_head(settings: Settings, say: Say) -> None:
    """Until the head's GCS port takes a connection. An address that does not answer at all
    (a VM still booting) would hold a connection attempt: each gives up within one interval."""
    assert settings.head

    def gcs_open() -> bool:
        return tcp_open(settings.head or "", ray.GCS_PORT, timeout=HEAD_POLL)

    if gcs_open():
        return
    forever = "forever" if settings.wait == 0 else f"up to {settings.wait:.0f}s"
    say(f"waiting for the Ray head at {settings.head}:{ray.GCS_PORT} ({forever})")
    if not poll(gcs_open, settings.wait, f"the Ray head at {settings.head}:{ray.GCS_PORT}",
                say, ceiling=HEAD_POLL):
        raise EnvironmentProblem(
            f"the Ray head at {settings.head}:{ray.GCS_PORT} did not answer within "
            f"{settings.wait:.0f}s: check that it runs and that ports 6379 and 10001 are open "
            "to this VM (--wait 0 waits forever)")
    say(f"the Ray head at {settings.head}:{ray.GCS_PORT} answers")


def run_worker(engine: Engine, settings: Settings, say: Say) -> Spec:
    assert settings.head
    store.ensure_dir(settings.data_dir)
    with data_dir_lock(settings.data_dir, settings.lock_wait, say):
        # A missing image fails now, before anything is written or waited for.
        ids = images.ensure(engine, settings,
                            {settings.ray_image: settings.suffix("ray-worker")}, say)
        token = cluster.joining_token(settings)
        spec = ray.worker_spec(settings, token)
        wait_for_head(settings, say)
        report(reconcile(engine, spec, say, settings.ready_timeout, ids), spec, say)
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
        return spec


def last_log_line(engine: Engine, name: str, secrets: tuple[str, ...]) -> str:
    obs = engine.observe(name)
    if obs is None:
        return "container missing"
    lines = list(engine.logs(obs.sdk, tail=1))
    return redact(lines[-1] if lines else "(no output)", list(secrets))[:300]


# ---- the app role ----

def app_images(settings: Settings) -> dict[str, str]:
    """Every image the app needs, by reference, with the container that needs it."""
    wanted = {settings.core_image: "core", settings.backend_image: "backend",
              settings.frontend_image: "frontend"}
    if settings.postgres_url is None:
        wanted[settings.postgres_image] = "postgres"
    if settings.redis_url is None:
        wanted[settings.redis_image] = "redis"
    return wanted


def app_ray_host(settings: Settings, token: str | None, say: Say) -> str:
    """The head's address as the app's containers reach it.

    A head given as loopback runs on this VM; containers reach it at the address Ray itself
    advertises for the head node (Ray's client port listens there, not on every address).
    """
    assert settings.head
    if not app.head_is_local(settings.head):
        return settings.head
    found: list[str] = []

    def head_node() -> bool:
        found.extend(str(n["node_ip"]) for n in cluster.alive_nodes(settings.head or "", token)
                     if n.get("is_head_node") and n.get("node_ip"))
        return bool(found)

    if not poll(head_node, settings.ready_timeout, "the Ray head's node address", say):
        raise EnvironmentProblem(
            f"the Ray head at {settings.head} answers on {ray.GCS_PORT} but its dashboard "
            f"(port {ray.DASHBOARD_PORT}) does not list it; check the head with "
            "`syntho-agent status` and the token")
    say(f"the app reaches the Ray head on this VM at {found[0]}")
    return found[0]


def run_app(engine: Engine, settings: Settings, say: Say) -> Spec:
    assert settings.head
    store.ensure_dir(settings.data_dir)
    with data_dir_lock(settings.data_dir, settings.lock_wait, say):
        ids = images.ensure(engine, settings, app_images(settings), say)
        rotate_to = db_password_change(settings, engine)
        token = cluster.joining_token(settings)
        # While a rotation is pending, the stored password is the one the database still has.
        db_supplied = settings.db_password if rotate_to is None else None
        secrets = app_secrets(settings, token, db_supplied, say)
        write_init_script(settings)
        wait_for_head(settings, say)
        ray_host = app_ray_host(settings, token, say)
        spec = app.app_spec(settings, secrets, settings.data_dir, ray_host)
        plan = preflight(engine, spec, ids)
        write_env_file(settings, secrets, ray_host, say)
        # Postgres and Redis first; the app's password is proven before anything uses it.
        infra = {"postgres", "redis"}
        changes = apply(engine, spec, plan, say, settings.ready_timeout,
                        plan.part(infra, removals=True))
        if settings.postgres_url is None:
            postgres = next(c for c in spec.containers if c.service == "postgres")
            if not plan.ready(postgres):
                wait_ready(engine, postgres, settings.ready_timeout, say)
            check_db_password(engine, settings, secrets, rotate_to, say)
            if rotate_to is not None:
                secrets = app_secrets(settings, token, rotate_to, say)
                spec = app.app_spec(settings, secrets, settings.data_dir, ray_host)
                write_env_file(settings, secrets, ray_host, say)
                plan = preflight(engine, spec, ids)
        rest = {c.service for c in spec.containers} - infra
        if rotate_to is not None:
            rest.add("postgres")  # its POSTGRES_PASSWORD follows (unused once initialised)
        changes += apply(engine, spec, plan, say, settings.ready_timeout, plan.part(rest))
        report(changes, spec, say)
        wait_all_ready(engine, spec, plan, settings.ready_timeout, say)
        # Every container left alone and ready when read (the frontend's own health check is
        # an HTTP request): the app is up as it was. Anything else is proven from the host.
        if changes or not all(plan.ready(c) for c in spec.containers):
            host = "127.0.0.1" if settings.bind == "0.0.0.0" else settings.bind
            url = f"http://{host}:{settings.frontend_port}/"
            if not poll(lambda: http_ok(url), settings.ready_timeout, f"the frontend at {url}",
                        say):
                raise ConvergeError(f"the frontend did not answer at {url} within "
                                    f"{settings.ready_timeout:.0f}s; see `syntho-agent logs`")
        say(f"the app is up: open {settings.frontend_protocol}://{app.frontend_host(settings)}/ "
            f"(this VM, port {settings.frontend_port})")
        say(f"admin account: {settings.admin_username}, password in "
            f"{settings.data_dir / 'secrets' / ADMIN_PASSWORD}")
        return spec
