"""The resolve stage of a role run: every read, fetch and wait it needs before it changes
anything (secrets recovered or generated, images loaded or pulled, the token, the head waited
for and followed, the Ray version checked), into one Inputs (agent/inputs.py).

Bad input and a missing prerequisite are refused here, before any container changes. A plan
(`syntho-agent plan ROLE`, agent/forecast.py) resolves with a Preview: what would change the
engine or wait (pulls, loads, waiting for the head) becomes a look and a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from agent import (
    cluster,
    history,
    images,
    ray_release,
    ray_tls,
    release,
    resolve_tls,
    secret_files,
    tls,
)
from agent.config import AppSettings, HeadSettings, JoinOptions, RoleSettings, WorkerSettings
from agent.engine import Engine
from agent.errors import EnvironmentProblem
from agent.inputs import Inputs
from agent.reconcile import not_here
from agent.recovery import recover
from agent.roles import app, ray
from agent.rollout import with_release
from agent.waits import poll, resolves, tcp_open

Say = Callable[[str], None]


HEAD_POLL = 0.5  # seconds between looks at the head's port while waiting for it


@dataclass
class Preview:
    """What a plan (agent.preview) learns while it resolves, besides the files it would write:
    the images a run would load or pull, and what the run would wait for."""

    images: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def ensure_images(engine: Engine, settings: RoleSettings, wanted: dict[str, str], say: Say,
                  preview: Preview | None) -> dict[str, str]:
    """images.ensure, or for a preview a look at what is there: a missing image is noted with
    where the run would get it (an ID that matches nothing stands for it), or refused as the
    run would refuse it when it has nowhere to come from."""
    if preview is None:
        return images.ensure(engine, settings, wanted, say, settings.pull)
    ids = {ref: engine.image_id(ref) for ref in wanted}
    missing = [ref for ref, i in ids.items() if i is None]
    if missing and settings.images is None and not settings.registry:
        images.ensure(engine, settings, wanted, say)  # only looks, then raises the run's error
    how = "load" if settings.images is not None else "pull"
    for ref in missing:
        where = (f"load it from {settings.images}" if settings.images is not None
                 else f"pull it from {settings.registry}")
        if settings.images is not None and settings.registry:
            where += f" (or pull it from {settings.registry})"
        preview.images.append(f"{ref} (for {wanted[ref]}) is not on this engine: the run would "
                              f"{where}")
    # A stand-in ID the planner knows: it does not call the image changed before the run has
    # it (agent.reconcile.plan, verb "pull").
    return {ref: i or not_here(ref, how) for ref, i in ids.items()}


def resolve_head(engine: Engine, settings: HeadSettings, say: Say,
                 preview: Preview | None = None) -> tuple[HeadSettings, Inputs]:
    recover(engine, settings.instance, "head", secret_files.head_files(settings), None, say)
    wanted = {settings.ray_image: settings.suffix("ray-head")}
    if settings.gcs_ft:
        wanted[settings.gcs_redis_image] = settings.suffix(ray.GCS_REDIS_SERVICE)
    ids = ensure_images(engine, settings, wanted, say, preview)
    tls_on = resolve_tls.head_tls_on(settings, say)
    token, done = cluster.head_token(settings, settings.data_dir)
    if not settings.auth:
        say(ray.AUTH_OFF_WARNING)
    elif done:
        say(f"{done} the cluster's Ray token in {cluster.token_path(settings.data_dir)}")
    material = resolve_tls.node_tls(settings, token, say) if tls_on and (
        token or resolve_tls.own_pki(settings)) else None
    material = resolve_tls.readable_key(engine, material, settings.ray_image,
                                        settings.data_dir, settings.instance, preview is not None)
    if material is not None and settings.network == "host":
        material = replace(material, front=ray_tls.write_front(material.folder))
    return settings, Inputs(ids, token, gcs_password=secret_files.gcs_password(settings, say),
                            ray_tls=material)


def wait_for_head(settings: JoinOptions, say: Say, preview: Preview | None = None) -> None:
    """Until the head's GCS port takes a connection. An address that does not answer at all
    (a VM still booting) would hold a connection attempt: each gives up within one interval.
    A preview looks once and notes what the run would wait for."""
    assert settings.head

    def gcs_open() -> bool:
        return tcp_open(settings.head or "", ray.GCS_PORT, timeout=HEAD_POLL)

    if gcs_open():
        return
    if preview is not None:
        dns = "" if resolves(settings.head) else " (its name does not resolve now)"
        preview.notes.append(f"the Ray head at {settings.head}:{ray.GCS_PORT} does not answer "
                             f"now{dns}: the run would wait for it (--wait)")
        return
    forever = "forever" if settings.wait == 0 else f"up to {settings.wait:.0f}s"
    if not resolves(settings.head):  # DNS may come up later at boot: keep trying meanwhile
        say(f"the Ray head's name {settings.head} does not resolve (DNS); trying again "
            f"({forever})")
    say(f"waiting for the Ray head at {settings.head}:{ray.GCS_PORT} ({forever})")
    if not poll(gcs_open, settings.wait, f"the Ray head at {settings.head}:{ray.GCS_PORT}",
                say, ceiling=HEAD_POLL):
        if not resolves(settings.head):
            raise EnvironmentProblem(
                f"the Ray head's name {settings.head} does not resolve (DNS) after "
                f"{settings.wait:.0f}s: check the name, or give the head's IP address with "
                "--head")
        raise EnvironmentProblem(
            f"the Ray head at {settings.head}:{ray.GCS_PORT} did not answer within "
            f"{settings.wait:.0f}s: check that it runs and that ports 6379 and 10001 are open "
            "to this VM (--wait 0 waits forever)")
    say(f"the Ray head at {settings.head}:{ray.GCS_PORT} answers")


OWN_RAY_IMAGE = frozenset({"ray_image", "release", "release_file"})

OWN_APP_RELEASE = frozenset({"release", "release_file", "core_image", "backend_image",
                             "frontend_image"})

FOLLOW_WAIT = 30.0  # seconds to wait for the head to list its node (it may be starting)


def head_publishes(settings: JoinOptions, token: str | None, ca: str | None, say: Say,
                   preview: Preview | None) -> ray_release.Published | None:
    """What the head publishes (its Ray image and release); a preview asks once."""
    found: list[ray_release.Published] = []

    def listed() -> bool:
        nodes = cluster.alive_nodes(settings.head or "", token, ca=ca)
        mine = ray_release.published(nodes)
        if mine is not None:
            found.append(mine)
        return bool(found) or any(n.get("is_head_node") for n in nodes)

    if preview is not None:
        listed()
    else:
        poll(listed, FOLLOW_WAIT, "the head's node list", say)
    return found[0] if found else None


def follow_head(engine: Engine, settings: WorkerSettings, token: str | None, ca: str | None,
                say: Say, preview: Preview | None = None) -> WorkerSettings:
    """A worker given no image of its own runs the head's Ray image (and its release). When
    the head does not say (its dashboard is down, or an older agent made it), the worker keeps
    the image it runs (a reboot must not move it), or starts with --ray-image's default."""
    if settings.given & OWN_RAY_IMAGE:
        return settings
    found = head_publishes(settings, token, ca, say, preview)
    if found is None:
        running = engine.observe(settings.suffix("ray-worker"))
        image = running.image if running is not None else settings.ray_image
        say(f"the head does not say which Ray image it runs (its dashboard does not answer, "
            f"or an older agent made it): running {image}")
        return replace(settings, ray_image=image)
    say(f"following the head: Ray image {found.image}"
        + (f" (release {found.release})" if found.release else ""))
    return replace(settings, ray_image=found.image, release=found.release or None)


def resolve_worker(engine: Engine, settings: WorkerSettings, say: Say,
                   preview: Preview | None = None) -> tuple[WorkerSettings, Inputs]:
    """The worker's inputs, and its settings as resolved (the head's image when it follows
    the head)."""
    recover(engine, settings.instance, "worker", secret_files.worker_files(settings), None, say)
    own = bool(settings.given & OWN_RAY_IMAGE)
    wanted = {settings.ray_image: settings.suffix("ray-worker")}
    # An image of its own that is missing fails now, before anything is written or waited for.
    ids = ensure_images(engine, settings, wanted, say, preview) if own else {}
    token = cluster.joining_token(settings, settings.data_dir)
    wait_for_head(settings, say, preview)
    material = resolve_tls.joining_tls(settings, token, say,
                                       preview.notes if preview is not None else None)
    if not own:
        settings = follow_head(engine, settings, token, ray_tls.ca_pem_of(material), say, preview)
        ids = ensure_images(engine, settings, {settings.ray_image: settings.suffix("ray-worker")},
                            say, preview)
    if preview is None:
        assert settings.head
        ray_release.check(engine, "the worker's Ray", settings.ray_image,
                          ids[settings.ray_image], settings.data_dir, settings.head, token,
                          settings.instance, ray_tls.ca_pem_of(material))
    material = resolve_tls.readable_key(engine, material, settings.ray_image,
                                        settings.data_dir, settings.instance, preview is not None)
    return settings, Inputs(ids, token, ray_tls=material)


def app_images(settings: AppSettings) -> dict[str, str]:
    """Every image the app needs, by reference, with the container that needs it."""
    wanted = {settings.core_image: "core", settings.backend_image: "backend",
              settings.frontend_image: "frontend"}
    if settings.postgres_url is None:
        wanted[settings.postgres_image] = "postgres"
    if settings.redis_url is None:
        wanted[settings.redis_image] = "redis"
    if settings.tls != "off":
        wanted[settings.proxy_image] = "proxy"
    return wanted


def app_ray_host(settings: AppSettings, token: str | None, ca: str | None, say: Say,
                 preview: Preview | None = None) -> str:
    """The head's address as the app's containers reach it.

    A head given as loopback runs on this VM; containers reach it at the address Ray itself
    advertises for the head node (Ray's client port listens there, not on every address).
    A preview asks once.
    """
    assert settings.head
    if not app.head_is_local(settings.head):
        return settings.head
    found: list[str] = []

    def head_node() -> bool:
        found.extend(str(n["node_ip"]) for n in cluster.alive_nodes(settings.head or "", token,
                                                                     ca=ca)
                     if n.get("is_head_node") and n.get("node_ip"))
        return bool(found)

    if preview is not None and not head_node():
        preview.notes.append(
            f"the Ray head at {settings.head} does not list its node now: the app's Ray "
            "address is not known yet (the run would ask until it does)")
        return settings.head
    if preview is None and not poll(head_node, settings.ready_timeout,
                                    "the Ray head's node address", say):
        raise EnvironmentProblem(
            f"the Ray head at {settings.head} answers on {ray.GCS_PORT} but its dashboard "
            f"(port {ray.DASHBOARD_PORT}) does not list it; check the head with "
            "`syntho-agent status` and the token")
    if preview is None:
        say(f"the app reaches the Ray head on this VM at {found[0]}")
    return found[0]


def follow_head_release(engine: Engine, settings: AppSettings, token: str | None,
                        ca: str | None, say: Say, preview: Preview | None) -> AppSettings:
    """An app given no release of its own runs the release the head was given (--release),
    if any; when the head does not say, it keeps the release it last ran healthy."""
    found = head_publishes(settings, token, ca, say, preview)
    good = history.last_healthy(settings.data_dir, "app")
    if found is None and good is not None:  # the head does not say: keep what ran
        say("the head does not say which release it runs (its dashboard does not answer): "
            f"keeping release {good.name}")
        return with_release(engine, settings, good, say,
                            preview.notes if preview is not None else None)
    if found is not None and found.release:
        say(f"following the head: release {found.release}")
        tag = found.release
        return replace(settings, release=tag,
                       core_image=release.with_tag(settings.core_image, tag),
                       backend_image=release.with_tag(settings.backend_image, tag),
                       frontend_image=release.with_tag(settings.frontend_image, tag))
    return settings


def resolve_app(engine: Engine, settings: AppSettings, say: Say,
                preview: Preview | None = None) -> tuple[AppSettings, Inputs]:
    """The app's inputs, and its settings as resolved (the head's release when the app has
    none of its own)."""
    site = tls.site(settings)  # the operator's certificate and TLS options: bad input, exit 2
    volume = settings.suffix("syntho-database-data") if settings.postgres_url is None else None
    recover(engine, settings.instance, "app", secret_files.app_files(settings), volume, say)
    own = bool(settings.given & OWN_APP_RELEASE)
    ids = ensure_images(engine, settings, app_images(settings), say, preview) if own else {}
    rotate_to = secret_files.db_password_change(settings, engine)
    token = cluster.joining_token(settings, settings.data_dir)
    # While a rotation is pending, the stored password is the one the database still has;
    # the file changes only once Postgres has taken the new one (the db-password step).
    secrets = secret_files.app_secrets(settings, token,
                                       settings.db_password if rotate_to is None else None, say)
    if rotate_to is not None:
        secrets = replace(secrets, db_password=rotate_to)
    wait_for_head(settings, say, preview)
    material = resolve_tls.joining_tls(settings, token, say,
                                       preview.notes if preview is not None else None)
    if not own:
        settings = follow_head_release(engine, settings, token, ray_tls.ca_pem_of(material),
                                       say, preview)
        ids = ensure_images(engine, settings, app_images(settings), say, preview)
    if preview is None:
        assert settings.head
        ray_release.check(engine, "the core's Ray client: the", settings.core_image,
                          ids[settings.core_image], settings.data_dir, settings.head, token,
                          settings.instance, ray_tls.ca_pem_of(material))
    material = resolve_tls.readable_key(engine, material, settings.core_image,
                                        settings.data_dir, settings.instance, preview is not None)
    return settings, Inputs(ids, token, secrets=secrets, rotate_to=rotate_to,
                            ray_host=app_ray_host(settings, token, ray_tls.ca_pem_of(material), say,
                                                  preview), site=site,
                            ray_tls=material)
