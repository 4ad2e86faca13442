"""What each role command does, start to finish: resolve, then converge.

A role run first resolves every input (images on the engine, the token, the secrets, a pending
database password rotation, the head's address) into one value, refusing before anything
changes what would fail; then it builds its spec once, plans once (agent.reconcile), applies
the plan and waits for readiness. The CLI calls one `run_*` function here per role.

`forecast` (`syntho-agent plan ROLE`) runs the same resolution and plan without acting: the
resolve functions take a Preview, which turns what would change the engine or wait (pulls,
loads, waiting for the head) into looks and notes, and they resolve into a scratch copy of the
data dir, so the files they would write are found by comparing it with the real one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, TypeVar

from agent import cluster, history, images, proxy, ray_release, relay, release, store, tls
from agent.app_setup import (
    ADMIN_PASSWORD,
    BACKEND_KEY,
    CORE_KEY,
    DB_PASSWORD,
    app_secrets,
    check_db_password,
    db_password_change,
    write_env_file,
    write_init_script,
)
from agent.config import (
    AppSettings,
    BackupSettings,
    HeadSettings,
    JoinOptions,
    RoleSettings,
    WorkerSettings,
)
from agent.engine import Engine
from agent.errors import ConvergeError, EnvironmentProblem, UsageError
from agent.lock import data_dir_lock
from agent.reconcile import (
    ACTING,
    Action,
    Plan,
    Step,
    apply,
    not_here,
    preflight,
    prune_kept,
    wait_all_ready,
    wait_ready,
)
from agent.recovery import Carrier, SecretFile, recover
from agent.redact import redact
from agent.roles import app, ray
from agent.spec import LABEL_MANAGED, Spec
from agent.waits import http_ok, poll, resolves, tcp_open

Say = Callable[[str], None]
R = TypeVar("R", HeadSettings, WorkerSettings, AppSettings)
HEAD_POLL = 0.5  # seconds between looks at the head's port while waiting for it
INFRA = {"postgres", "redis"}


def report(changes: int, spec: Spec, say: Say) -> None:
    if changes == 0:
        say(f"nothing to do: {len(spec.containers)} container(s) up to date")


def container_ip(engine: Engine, name: str, network: str) -> str | None:
    found = engine.observe(name)
    return found.ip_on(network) if found is not None else None


def head_address(engine: Engine, settings: HeadSettings) -> str:
    """Where this machine reaches the head it runs."""
    if settings.network != "host":
        ip = container_ip(engine, settings.suffix("ray-head"), settings.network)
        if ip:
            return ip
    return settings.node_ip or "127.0.0.1"


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


@dataclass(frozen=True)
class RayInputs:
    """What a head or worker run resolved before changing anything."""

    image_ids: dict[str, str]
    token: str | None
    gcs_password: str | None = None  # the head's GCS Redis (GCS fault tolerance on)


# ---- releases: what each run records (agent/history.py) ----

def release_name(settings: RoleSettings) -> str:
    """--release, the release file's name, or the main image's tag."""
    main = settings.core_image if isinstance(settings, AppSettings) else settings.ray_image
    return settings.release or release.tag_of(main)


def release_images(settings: RoleSettings, ids: dict[str, str]) -> dict[str, history.Image]:
    """The images this run runs, by release key (ray, core, ...), with their IDs."""
    refs = {key: getattr(settings, field) for key, field in release.IMAGE_KEYS.items()
            if hasattr(settings, field)}
    if isinstance(settings, AppSettings):
        refs.pop("ray", None)
        if settings.postgres_url is not None:
            refs.pop("postgres")
        if settings.redis_url is not None:
            refs.pop("redis")
    return {key: history.Image(ref, ids[ref]) for key, ref in refs.items() if ref in ids}


def begin_record(engine: Engine, settings: RoleSettings, found: dict[str, history.Image],
                 reason: str = "") -> history.Record | None:
    """The run's release record: None when it runs what the newest healthy record ran (the
    registry digests are read only for a new record)."""
    newest = history.latest(settings.data_dir, settings.command)
    if newest is not None and newest.state == "healthy" and newest.same_images(found):
        return None
    found = {k: replace(v, digests=engine.repo_digests(v.id)) for k, v in found.items()}
    return history.begin(settings.data_dir, settings.command, release_name(settings), found,
                         reason)


def end_record(settings: RoleSettings, record: history.Record | None, state: str,
               reason: str = "") -> history.Record | None:
    if record is None:
        return None
    return history.update(settings.data_dir, record, state=state,
                          reason=reason or record.reason)


def went_back(engine: Engine, settings: R, found: dict[str, history.Image], say: Say) -> R | None:
    """The settings of the release this role went back to, when the one asked for failed its
    health gate or was rolled back from (a reboot or a restarted unit must not try it again,
    nor undo a rollback); None to run what was asked. --retry-failed asks for it anyway."""
    if settings.retry_failed:
        return None
    found_back = history.went_back_from(settings.data_dir, settings.command, found)
    if found_back is None:
        return None
    bad, good = found_back
    what = "failed its health gate" if bad.state == "failed" else "was rolled back from"
    say(f"release {bad.name} {what} ({bad.finished or bad.started}): running release "
        f"{good.name}, as since (--retry-failed runs {bad.name} again)")
    # What runs instead is chosen: it is not judged again (two releases rolled back from in
    # turn would send each run to the other).
    return replace(with_release(engine, settings, good, say), retry_failed=True)


def with_release(engine: Engine, settings: R, record: history.Record, say: Say) -> R:
    """The settings that run a recorded release: its references, each pointing again at the
    image it ran (a moving tag may have moved since: the tag is put back on this engine; an
    image gone from the engine is pulled by its digest)."""
    changes: dict[str, object] = {}
    for key, image in record.images.items():
        field = release.IMAGE_KEYS[key]
        if not hasattr(settings, field):
            continue
        if engine.image_id(image.ref) != image.id:
            if engine.image_id(image.id) is None:
                pinned = [d for d in image.digests
                          if release.repository(d) == release.repository(image.ref)]
                if not pinned or not settings.registry:
                    raise EnvironmentProblem(
                        f"the image {image.ref} of release {record.name} is no longer on this "
                        f"engine (ID {image.id[7:19]}): load it (`docker load -i FILE` or "
                        "--images PATH) or give --registry to pull it, then run again")
                images.ensure(engine, settings, {pinned[0]: key}, say, "missing")
            say(f"tagged {image.ref} as release {record.name} ran it ({image.id[7:19]})")
            engine.tag(image.id, image.ref)
        changes[field] = image.ref
    return replace(settings, **changes, release=record.name, release_file=None,  # type: ignore[arg-type]
                   pull="missing", given=settings.given | set(changes))


def token_file(settings: RoleSettings, *carriers: Carrier) -> list[SecretFile]:
    """The Ray token file, carried by these containers (none without token auth)."""
    if not settings.auth:
        return []
    supplied = settings.token is not None or settings.token_file is not None
    return [SecretFile(cluster.token_path(settings.data_dir), carriers, supplied)]


def resolve_head(engine: Engine, settings: HeadSettings, say: Say,
                 preview: Preview | None = None) -> RayInputs:
    gcs = settings.data_dir / ray.GCS_PASSWORD_FILE
    files = token_file(settings, Carrier("ray-head", ray.TOKEN_ENV))
    if settings.gcs_ft:  # the Redis's data does not depend on its password: no volume check
        files.append(SecretFile(gcs, (Carrier(ray.GCS_REDIS_SERVICE, ray.GCS_PASSWORD_ENV),
                                      Carrier("ray-head", ray.GCS_PASSWORD_ENV))))
    recover(engine, settings.instance, "head", files, None, say)
    wanted = {settings.ray_image: settings.suffix("ray-head")}
    if settings.gcs_ft:
        wanted[settings.gcs_redis_image] = settings.suffix(ray.GCS_REDIS_SERVICE)
    ids = ensure_images(engine, settings, wanted, say, preview)
    token, done = cluster.head_token(settings, settings.data_dir)
    if not settings.auth:
        say(ray.AUTH_OFF_WARNING)
    elif done:
        say(f"{done} the cluster's Ray token in {cluster.token_path(settings.data_dir)}")
    password = None
    if settings.gcs_ft:
        password, made = store.secret(gcs, store.token_hex(32))
        if made:
            say(f"generated the GCS Redis password in {gcs}")
    return RayInputs(ids, token, password)


def run_head(engine: Engine, settings: HeadSettings, say: Say) -> Spec:
    store.ensure_dir(settings.data_dir)
    with data_dir_lock(settings.data_dir, settings.lock_wait, say):
        return converge_head(engine, settings, say)


def converge_head(engine: Engine, settings: HeadSettings, say: Say, reason: str = "") -> Spec:
    """The head role, the data dir's lock held."""
    inputs = resolve_head(engine, settings, say)
    found = release_images(settings, inputs.image_ids)
    back = went_back(engine, settings, found, say)
    if back is not None:
        return converge_head(engine, back, say)
    spec = ray.head_spec(settings, inputs.token, inputs.gcs_password)
    plan = preflight(engine, spec, inputs.image_ids)
    record = begin_record(engine, settings, found, reason)
    old = plan.observed.get(settings.suffix("ray-head"))
    if old is not None and old.image_id != inputs.image_ids[settings.ray_image]:
        say_upgrade_order(settings, say)
    try:
        _head_up(engine, settings, spec, plan, inputs, say)
    except ConvergeError as exc:
        end_record(settings, record, "failed", str(exc))
        raise
    end_record(settings, record, "healthy")
    return spec


def say_upgrade_order(settings: HeadSettings, say: Say) -> None:
    """A new Ray image on the head: every member of the cluster must run the same Ray."""
    name = release_name(settings)
    option = f"--release {name}" if settings.release else f"--ray-image {settings.ray_image}"
    say(f"the Ray image changes to {settings.ray_image} (release {name}): the head first "
        "(now), then the workers, then the app VM")
    say("  workers with no release of their own follow the head by themselves (at their next "
        f"run, or within seconds with --watch); the others run: syntho-agent worker --head "
        f"HEAD {option}")
    say(f"  the app VM runs: syntho-agent app --head HEAD --release {name} (its core's Ray "
        "must match the head's: it is checked before it starts)")


def _head_up(engine: Engine, settings: HeadSettings, spec: Spec, plan: Plan,
             inputs: RayInputs, say: Say) -> None:
    token = inputs.token
    report(apply(engine, spec, plan, say, settings.ready_timeout), spec, say)
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


# The options that choose a worker's own Ray image; without any, it runs the head's.
OWN_RAY_IMAGE = frozenset({"ray_image", "release", "release_file"})
# The app's: without any, it runs the release the head was given (--release), if any.
OWN_APP_RELEASE = frozenset({"release", "release_file", "core_image", "backend_image",
                             "frontend_image"})
FOLLOW_WAIT = 30.0  # seconds to wait for the head to list its node (it may be starting)


def head_publishes(settings: JoinOptions, token: str | None, say: Say,
                   preview: Preview | None) -> ray_release.Published | None:
    """What the head publishes (its Ray image and release); a preview asks once."""
    found: list[ray_release.Published] = []

    def listed() -> bool:
        nodes = cluster.alive_nodes(settings.head or "", token)
        mine = ray_release.published(nodes)
        if mine is not None:
            found.append(mine)
        return bool(found) or any(n.get("is_head_node") for n in nodes)

    if preview is not None:
        listed()
    else:
        poll(listed, FOLLOW_WAIT, "the head's node list", say)
    return found[0] if found else None


def follow_head(engine: Engine, settings: WorkerSettings, token: str | None, say: Say,
                preview: Preview | None = None) -> WorkerSettings:
    """A worker given no image of its own runs the head's Ray image (and its release). When
    the head does not say (its dashboard is down, or an older agent made it), the worker keeps
    the image it runs (a reboot must not move it), or starts with --ray-image's default."""
    if settings.given & OWN_RAY_IMAGE:
        return settings
    found = head_publishes(settings, token, say, preview)
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
                   preview: Preview | None = None) -> tuple[WorkerSettings, RayInputs]:
    """The worker's inputs, and its settings as resolved (the head's image when it follows
    the head)."""
    recover(engine, settings.instance, "worker",
            token_file(settings, Carrier("ray-worker", ray.TOKEN_ENV)), None, say)
    own = bool(settings.given & OWN_RAY_IMAGE)
    wanted = {settings.ray_image: settings.suffix("ray-worker")}
    # An image of its own that is missing fails now, before anything is written or waited for.
    ids = ensure_images(engine, settings, wanted, say, preview) if own else {}
    token = cluster.joining_token(settings, settings.data_dir)
    wait_for_head(settings, say, preview)
    if not own:
        settings = follow_head(engine, settings, token, say, preview)
        ids = ensure_images(engine, settings, {settings.ray_image: settings.suffix("ray-worker")},
                            say, preview)
    if preview is None:
        assert settings.head
        ray_release.check(engine, "the worker's Ray", settings.ray_image,
                          ids[settings.ray_image], settings.data_dir, settings.head, token,
                          settings.instance)
    return settings, RayInputs(ids, token)


def run_worker(engine: Engine, settings: WorkerSettings, say: Say) -> Spec:
    store.ensure_dir(settings.data_dir)
    with data_dir_lock(settings.data_dir, settings.lock_wait, say):
        return converge_worker(engine, settings, say)


def converge_worker(engine: Engine, settings: WorkerSettings, say: Say,
                    reason: str = "") -> Spec:
    """The worker role, the data dir's lock held."""
    assert settings.head
    settings, inputs = resolve_worker(engine, settings, say)
    found = release_images(settings, inputs.image_ids)
    back = went_back(engine, settings, found, say)
    if back is not None:
        return converge_worker(engine, back, say)
    spec = ray.worker_spec(settings, inputs.token)
    plan = preflight(engine, spec, inputs.image_ids)
    record = begin_record(engine, settings, found, reason)
    try:
        _worker_up(engine, settings, spec, plan, inputs.token, say)
    except ConvergeError as exc:
        end_record(settings, record, "failed", str(exc))
        raise
    end_record(settings, record, "healthy")
    return spec


def _worker_up(engine: Engine, settings: WorkerSettings, spec: Spec, plan: Plan,
               token: str | None, say: Say) -> None:
    assert settings.head
    report(apply(engine, spec, plan, say, settings.ready_timeout), spec, say)
    name = settings.suffix("ray-worker")
    my_ip = cluster.worker_ip(settings.head, settings.node_ip,
                              container_ip(engine, name, settings.network)
                              if settings.network != "host" else None)

    port = ray.node_ports(settings, "worker").node_manager_port  # the head's differs

    def joined() -> bool:  # `status` asks the same question (agent.ops)
        return cluster.has_joined(cluster.summaries_or_none(settings.head or "", token), my_ip,
                                  port)

    if not poll(joined, settings.ready_timeout, f"{name} to join the head", say):
        raise ConvergeError(
            f"{name} did not join the Ray head at {settings.head} within "
            f"{settings.ready_timeout:.0f}s (a wrong token is the usual cause); "
            f"last log: {last_log_line(engine, name, spec.secrets)}")
    say(f"{name} joined the Ray cluster at {settings.head} as {my_ip}")


def last_log_line(engine: Engine, name: str, secrets: tuple[str, ...]) -> str:
    if engine.observe(name) is None:
        return "container missing"
    lines = engine.logs(name, tail=1)
    return redact(lines[-1] if lines else "(no output)", list(secrets))[:300]


# ---- the app role ----

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


def app_ray_host(settings: AppSettings, token: str | None, say: Say,
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
        found.extend(str(n["node_ip"]) for n in cluster.alive_nodes(settings.head or "", token)
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


@dataclass(frozen=True)
class AppInputs:
    """What an app run resolved before changing anything."""

    image_ids: dict[str, str]
    secrets: app.Secrets  # as the containers get them (a pending rotation's new password)
    rotate_to: str | None  # the new database password, when a rotation is pending
    ray_host: str
    site: tls.Site | None  # the HTTPS proxy's site (--tls), checked


def app_secret_files(settings: AppSettings) -> list[SecretFile]:
    """The app's secret files and the containers that carry each value (docs/stack.md)."""
    folder = settings.data_dir / "secrets"
    files = token_file(settings, Carrier("core", ray.TOKEN_ENV),
                       Carrier("core_worker", ray.TOKEN_ENV))
    if settings.postgres_url is None:
        files.append(SecretFile(folder / DB_PASSWORD, (
            Carrier("backend", "DB_PASSWORD"), Carrier("worker", "DB_PASSWORD"),
            Carrier("postgres", "POSTGRES_PASSWORD")), settings.db_password is not None))
    files += [
        SecretFile(folder / CORE_KEY, (Carrier("core", "SECRET_KEY"),
                                       Carrier("core_worker", "SECRET_KEY"))),
        SecretFile(folder / BACKEND_KEY, (Carrier("backend", "SECRET_KEY"),
                                          Carrier("worker", "SECRET_KEY"))),
        SecretFile(folder / ADMIN_PASSWORD, (Carrier("backend", "USER_PASSWORD"),),
                   settings.admin_password is not None),
    ]
    return files


def resolve_app(engine: Engine, settings: AppSettings, say: Say,
                preview: Preview | None = None) -> tuple[AppSettings, AppInputs]:
    """The app's inputs, and its settings as resolved (the head's release when the app has
    none of its own)."""
    site = tls.site(settings)  # the operator's certificate and TLS options: bad input, exit 2
    volume = settings.suffix("syntho-database-data") if settings.postgres_url is None else None
    recover(engine, settings.instance, "app", app_secret_files(settings), volume, say)
    own = bool(settings.given & OWN_APP_RELEASE)
    ids = ensure_images(engine, settings, app_images(settings), say, preview) if own else {}
    rotate_to = db_password_change(settings, engine)
    token = cluster.joining_token(settings, settings.data_dir)
    # While a rotation is pending, the stored password is the one the database still has;
    # the file changes only once Postgres has taken the new one (the db-password step).
    secrets = app_secrets(settings, token, settings.db_password if rotate_to is None else None,
                          say)
    if rotate_to is not None:
        secrets = replace(secrets, db_password=rotate_to)
    write_init_script(settings)
    wait_for_head(settings, say, preview)
    if not own:
        found = head_publishes(settings, token, say, preview)
        good = history.last_healthy(settings.data_dir, "app")
        if found is None and good is not None:  # the head does not say: keep what ran
            say("the head does not say which release it runs (its dashboard does not answer): "
                f"keeping release {good.name}")
            settings = with_release(engine, settings, good, say)
        elif found is not None and found.release:
            say(f"following the head: release {found.release}")
            tag = found.release
            settings = replace(settings, release=tag,
                               core_image=release.with_tag(settings.core_image, tag),
                               backend_image=release.with_tag(settings.backend_image, tag),
                               frontend_image=release.with_tag(settings.frontend_image, tag))
        ids = ensure_images(engine, settings, app_images(settings), say, preview)
    if preview is None:
        assert settings.head
        ray_release.check(engine, "the core's Ray client: the", settings.core_image,
                          ids[settings.core_image], settings.data_dir, settings.head, token,
                          settings.instance)
    return settings, AppInputs(ids, secrets, rotate_to,
                               app_ray_host(settings, token, say, preview), site)


def run_app(engine: Engine, settings: AppSettings, say: Say) -> Spec:
    store.ensure_dir(settings.data_dir)
    with data_dir_lock(settings.data_dir, settings.lock_wait, say):
        return converge_app(engine, settings, say)


def converge_app(engine: Engine, settings: AppSettings, say: Say,
                 restore: Callable[[], int] | None = None, reason: str = "",
                 backup: bool = True) -> Spec:
    """The app role, the data dir's lock held. `restore` (restore.py): a step that fills the
    databases, after Postgres is up and before anything that uses them starts.

    A release change is a rollout: the replaced containers are kept stopped (reconcile's
    KEPT_SUFFIX) until the whole new release is healthy; if any container of it is not, the
    app goes back to the last healthy release as a whole (a start of the kept containers)
    and the run fails with exit 4. A release that failed so is not tried again by a later
    run (a reboot, a restarted unit) unless --retry-failed says so."""
    assert settings.head
    settings, inputs = resolve_app(engine, settings, say)
    found = release_images(settings, inputs.image_ids)
    back = None if restore is not None else went_back(engine, settings, found, say)
    if back is not None:
        return converge_app(engine, back, say)
    site = inputs.site
    values = app.app_values(settings, inputs.secrets, inputs.ray_host, site)
    spec = app.app_spec(settings, values)
    postgres = next((c for c in spec.containers if c.service == "postgres"), None)
    front = next((c for c in spec.containers if c.service == "proxy"), None)
    relay.write_files(settings.data_dir)
    if site is not None:
        proxy.write_files(settings, site)
        if site.cert is not None:
            say(f"HTTPS with the certificate in {settings.tls_cert}: {tls.describe(site.cert)}")

    def db_password(plan: Plan) -> int:
        """Prove the database takes the password before anything uses it (rotate first,
        when asked)."""
        assert postgres is not None
        if not plan.ready(postgres):
            wait_ready(engine, postgres, settings.ready_timeout, say)
        check_db_password(engine, settings, inputs.secrets, inputs.rotate_to, say)
        return 0 if inputs.rotate_to is None else 1

    def env_file(plan: Plan) -> int:
        write_env_file(settings, app.env_file(settings, values), say)
        return 0

    # Postgres and Redis first (the spec's start order); then the password is proven and
    # the env file written; then the services that use them.
    plan = preflight(engine, spec, inputs.image_ids)
    moving = [c.service for c in spec.containers if c.service in release.APP_VERSIONED
              and (o := plan.observed.get(c.name)) is not None
              and o.image_id != inputs.image_ids[c.image]]
    record = begin_record(engine, settings, found, reason)
    if moving:
        plan = dataclasses.replace(plan, keep=frozenset(release.APP_VERSIONED))
        if (backup and record is not None and not record.backup
                and set(moving) & set(release.MIGRATING)):
            taken = backup_before_upgrade(engine, settings, record, say)
            record = history.update(settings.data_dir, record, backup=str(taken))
    if postgres is not None:
        plan = plan.with_step("db-password", "prove the database password", after=INFRA)
    plan = plan.with_step("env-file", "write app.env", after={*INFRA, "db-password"})
    steps: dict[str, Step] = {"db-password": db_password, "env-file": env_file}
    if front is not None:
        plan = plan.with_step("proxy-reload", "reload the HTTPS proxy's configuration",
                              after={"proxy"})
        steps["proxy-reload"] = lambda plan: proxy.reload(
            engine, settings, front.name, plan.verb(front.name) != "unchanged", say)
    if restore is not None:
        plan = plan.with_step("restore-databases", "restore the backup's databases",
                              after={*INFRA, "db-password"})
        steps["restore-databases"] = lambda plan: restore()
    router = None
    if front is not None and site is not None:  # a running proxy: upgrades drop no request
        o = plan.observed.get(front.name)
        router = proxy.Router(engine, settings, site, front.name, running=(
            o is not None and o.status == "running" and plan.verb(front.name) == "unchanged"))
    try:
        _app_up(engine, settings, spec, plan, steps, say, site, router)
    except ConvergeError as exc:
        if record is None:
            raise
        record = history.update(settings.data_dir, record, state="failed", reason=str(exc))
        good = history.last_healthy(settings.data_dir, "app", before=record.number)
        if good is None or good.same_images(record.images) or not (moving or plan.kept):
            raise
        sick = unhealthy(engine, spec)
        say(f"release {record.name} did not become healthy ({sick or exc}): going back to "
            f"release {good.name}")
        # No backup on the way back: time is what counts now, and the failed release's own
        # (taken before it started) is the database as it was.
        back = replace(with_release(engine, settings, good, say), retry_failed=True,
                       ready_timeout=going_back_timeout(settings.ready_timeout))
        converge_app(engine, back, say, backup=False,
                     reason=f"went back from release {record.name}, which failed")
        schema = (f"; the database's schema may have moved: `syntho-agent restore "
                  f"{record.backup}` puts it back as it was before {record.name}"
                  if record.backup else "")
        raise ConvergeError(f"release {record.name} failed and the app went back to release "
                            f"{good.name}: {sick or exc}{schema}") from None
    if moving or plan.kept:  # before the record says healthy: killed between, a re-run prunes
        prune_kept(engine, spec, say)
    end_record(settings, record, "healthy")
    if site is not None and front is not None:
        say(f"the app is up: open {site.url} (the HTTPS proxy, this VM's port "
            f"{site.https_port}; port {site.http_port} redirects to it)")
        if site.mode == "internal":
            root = proxy.copy_internal_root(engine, settings, front.name,
                                            settings.ready_timeout, say)
            say(f"HTTPS by Caddy's internal CA: trust its root certificate, {root}, in the "
                "browsers and systems that open the app" if root else
                "HTTPS by Caddy's internal CA: its root certificate is not made yet; run "
                "again to copy it")
    else:
        say(f"the app is up: open {values.frontend_url}/ (this VM, port "
            f"{settings.frontend_port})")
    say(f"admin account: {settings.admin_username}, password in "
        f"{settings.data_dir / 'secrets' / ADMIN_PASSWORD}")
    return spec


GOING_BACK_WAIT = 180.0  # seconds, at least, for the release the app goes back to


def going_back_timeout(asked: float) -> float:
    """How long the release the app goes back to may take to be healthy: a short
    --ready-timeout judges the new release; the way back must not fail for it (0: forever)."""
    return 0.0 if asked == 0 else max(asked, GOING_BACK_WAIT)


def unhealthy(engine: Engine, spec: Spec) -> str:
    """The containers with a health check that are not healthy now, in start order, each with
    the tail of its health log: the first is where a failed release broke (the later ones
    often wait on it)."""
    found = []
    for c in spec.ordered():
        o = engine.observe(c.name)
        if c.health and (o is None or o.health != "healthy"):
            state = "missing" if o is None else (o.health or o.status)
            found.append(f"{c.name} is {state}, last health output: "
                         f"{engine.health_log_tail(c.name, lines=1)}")
    return "; ".join(found)


def _app_up(engine: Engine, settings: AppSettings, spec: Spec, plan: Plan,
            steps: dict[str, Step], say: Say, site: tls.Site | None = None,
            router: proxy.Router | None = None) -> None:
    """Apply the plan, then wait until every container is healthy and the frontend answers."""
    changes = apply(engine, spec, plan, say, settings.ready_timeout, steps, router)
    report(changes, spec, say)
    wait_all_ready(engine, spec, plan, settings.ready_timeout, say)
    # Every container left alone and ready when read (the frontend's own health check is
    # an HTTP request): the app is up as it was. Anything else is proven from the host.
    if changes or not all(plan.ready(c) for c in spec.containers):
        host = "127.0.0.1" if settings.bind == "0.0.0.0" else settings.bind
        if site is not None:  # through the proxy: its frontend port is not published
            if not poll(lambda: proxy.https_ok(host, site), settings.ready_timeout,
                        f"the app through the HTTPS proxy ({site.url})", say):
                raise ConvergeError(f"the app did not answer through the HTTPS proxy at "
                                    f"{host}:{site.https_port} (for {site.url}) within "
                                    f"{settings.ready_timeout:.0f}s; see `syntho-agent logs "
                                    "--service proxy`")
            return
        url = f"http://{host}:{settings.frontend_port}/"
        if not poll(lambda: http_ok(url), settings.ready_timeout, f"the frontend at {url}",
                    say):
            raise ConvergeError(f"the frontend did not answer at {url} within "
                                f"{settings.ready_timeout:.0f}s; see `syntho-agent logs`")


def backup_before_upgrade(engine: Engine, settings: AppSettings, record: history.Record,
                          say: Say) -> Path:
    """The databases as they are, before images that migrate their schema start (the backup
    command's own archive, in the data dir's backups/)."""
    from agent import backup  # the backup module imports this one's neighbours

    say(f"release {record.name} changes the core's or the backend's image (they migrate the "
        "database's schema at start): backing up the databases first")
    wanted = {f.name for f in dataclasses.fields(BackupSettings) if f.init}
    return backup.run_backup(engine, BackupSettings(**{
        k: getattr(settings, k) for k in wanted if hasattr(settings, k)}), None, say, lock=False)


def rollback(engine: Engine, settings: R, target: str | None, say: Say) -> Spec:
    """`syntho-agent rollback ROLE [RELEASE]`: go back to the previous healthy release (or a
    named one), with the same health gates, pulling nothing that is still on the engine."""
    role = settings.command
    store.ensure_dir(settings.data_dir)
    with data_dir_lock(settings.data_dir, settings.lock_wait, say):
        records = [r for r in history.load(settings.data_dir) if r.role == role]
        if not records:
            raise UsageError(f"no release of the {role} role is recorded in "
                             f"{history.path(settings.data_dir)}: nothing to go back to")
        current = records[-1]
        if current.state == "in-progress" and current.reason.startswith(ROLLBACK_REASON):
            # A rollback killed midway: the same command finishes it.
            say(f"finishing the rollback to release {current.name} (#{current.number}) that "
                "was interrupted")
            return _converge(engine, replace(with_release(engine, settings, current, say),
                                              retry_failed=True), say, current.reason)
        if target is not None:
            chosen = history.find(settings.data_dir, role, target)
            if chosen is None:
                raise UsageError(f"no healthy release {target!r} of the {role} role in the "
                                 "history: `syntho-agent history` lists them")
        else:
            chosen = next((r for r in reversed(records[:-1]) if r.state == "healthy"
                           and not r.same_images(current.images)), None)
            if chosen is None:
                raise UsageError(f"no earlier healthy release of the {role} role to go back "
                                 "to: `syntho-agent history` lists what ran")
        say(f"going back from release {current.name} to release {chosen.name} "
            f"(#{chosen.number}, {chosen.started})")
        reason = f"{ROLLBACK_REASON} {current.name}"
        if current.state == "healthy":
            history.update(settings.data_dir, current, state="rolled-back")
        # The release asked for runs, even one that was rolled back from before.
        spec = _converge(engine, replace(with_release(engine, settings, chosen, say),
                                         retry_failed=True), say, reason)
        # The first backup taken after the release gone back to: the database as it ran it.
        moved = next((r for r in records if r.number > chosen.number and r.backup), None)
        if moved is not None:
            say(f"the database's schema may have moved with release {moved.name}: "
                f"`syntho-agent restore {moved.backup}` puts it back as it was before it")
        return spec


ROLLBACK_REASON = "rollback from release"


def _converge(engine: Engine, settings: RoleSettings, say: Say, reason: str) -> Spec:
    """The role's converge, the data dir's lock held."""
    if isinstance(settings, AppSettings):
        return converge_app(engine, settings, say, reason=reason)
    if isinstance(settings, HeadSettings):
        return converge_head(engine, settings, say, reason)
    return converge_worker(engine, settings, say, reason)


# ---- --watch: when the watcher runs the whole role again ----

def follows_head(settings: RoleSettings) -> bool:
    return isinstance(settings, WorkerSettings) and not settings.given & OWN_RAY_IMAGE


def certificate_files(settings: RoleSettings) -> bytes:
    """--tls cert's files as they are now (b"" without them, or while one is unreadable: the
    run that follows says why)."""
    if not isinstance(settings, AppSettings) or settings.tls != "cert":
        return b""
    try:
        return b"".join(p.read_bytes() for p in (settings.tls_cert, settings.tls_key) if p)
    except OSError:
        return b""


def refresher(engine: Engine, settings: RoleSettings, spec: Spec,
              say: Say) -> Callable[[], Spec | None]:
    """What the watcher asks before each look (agent/watch.py): a new spec when the whole
    role must run again (a rollback changed the history under it; the head a worker follows
    moved to another Ray image), else None."""
    def newest() -> int:
        found = history.latest(settings.data_dir, settings.command)
        return found.number if found is not None else 0

    seen, current = [newest()], [spec]
    certificate = [certificate_files(settings)]

    def refresh() -> Spec | None:
        again = newest() != seen[0]
        if not again and certificate[0] != (now := certificate_files(settings)):
            certificate[0] = now
            again = True
            say("the certificate files changed: running again to reload the HTTPS proxy")
        if not again and isinstance(settings, WorkerSettings) and follows_head(settings):
            token = cluster.joining_token(settings, settings.data_dir)
            found = ray_release.published(cluster.alive_nodes(settings.head or "", token))
            again = found is not None and found.image != current[0].containers[0].image
            if again:
                say(f"the head moved to the Ray image {found.image if found else ''}: "
                    "following it")
        if not again:
            return None
        if isinstance(settings, HeadSettings):
            made = run_head(engine, settings, say)
        elif isinstance(settings, WorkerSettings):
            made = run_worker(engine, settings, say)
        else:
            made = run_app(engine, settings, say)
        seen[0], current[0] = newest(), made
        return made

    return refresh


# ---- the plan: what a run would do, changing nothing ----

@dataclass(frozen=True)
class Forecast:
    """What `syntho-agent plan ROLE` found: the same resolution and plan a run makes, before
    the run would act on them."""

    data_dir: Path
    data_dir_exists: bool
    actions: list[Action]  # the containers, in the order the run would act on them
    networks: list[str]  # that the run would create
    volumes: list[str]
    files: list[tuple[str, str]]  # (path in the data dir, what the run would do to it)
    images: list[str]
    notes: list[str]

    @property
    def changes(self) -> bool:
        return not self.data_dir_exists or bool(
            self.networks or self.volumes or self.files or self.images
            or any(a.verb not in ("unchanged", "step") for a in self.actions))


@contextmanager
def scratch_data_dir(data_dir: Path) -> Iterator[Path]:
    """A private copy (0700, in memory where /dev/shm allows) of what resolution reads in the
    data dir: its files, secrets/, postgres-init/, proxy/ and relay/ (not backups/). A plan resolves
    into it with the run's own functions, so what they would write lands here, never in
    data_dir; it is deleted when the plan ends."""
    shm = Path("/dev/shm")
    where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None
    with tempfile.TemporaryDirectory(prefix="syntho-agent-plan.", dir=where) as tmp:
        scratch = Path(tmp) / "data"
        scratch.mkdir(mode=0o700)
        for source in _resolution_files(data_dir):
            target = scratch / source.relative_to(data_dir)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                shutil.copy2(source, target)
            except OSError as exc:
                raise EnvironmentProblem(
                    f"cannot read {source}: {exc.strerror}; fix its permissions (owned by the "
                    "user running the agent) or restore it from a backup") from None
        yield scratch


def _resolution_files(data_dir: Path) -> list[Path]:
    if not data_dir.is_dir():
        return []
    found = [p for p in data_dir.iterdir() if p.is_file()]
    for sub in ("secrets", "postgres-init", app.PROXY_DIR, relay.DIR):
        if (data_dir / sub).is_dir():
            found += [p for p in (data_dir / sub).iterdir() if p.is_file()]
    return sorted(found)


def _file_changes(scratch: Path, data_dir: Path, said: list[str]) -> list[tuple[str, str]]:
    """What resolution wrote into the scratch copy, as what the run would do to data_dir.
    Names only: a secret's value is never shown."""
    secret_names = {cluster.TOKEN_FILE, ray.GCS_PASSWORD_FILE}
    changes = []
    for path in sorted(p for p in scratch.rglob("*") if p.is_file()):
        name = str(path.relative_to(scratch))
        real = data_dir / name
        if real.is_file() and real.read_bytes() == path.read_bytes():
            continue
        secret = (name.startswith(("secrets/", f"{app.PROXY_DIR}/key-"))
                  or name in secret_names)
        restored = next((line for line in said
                         if line.startswith(f"restored {path} from the container ")), None)
        if restored is not None:
            carrier = restored.split(" from the container ", 1)[1].split()[0]
            what = f"restore it from the container {carrier}"
        elif real.exists():
            what = "rewrite it"
        elif secret and any(line.startswith("generated") and (path.name in line
                                                              or str(path) in line)
                            for line in said):
            what = "generate it"
        else:
            what = "write it"
        changes.append((name, what + (" (a secret: value not shown)" if secret else "")))
    return changes


def forecast(engine: Engine, settings: RoleSettings) -> Forecast:
    """What a run of this role would do: the run's own resolution (into a scratch copy of the
    data dir, images looked at but not pulled, the head asked once) and its own preflight and
    plan; nothing on the engine or in the data dir changes."""
    preview = Preview()
    said: list[str] = []
    with scratch_data_dir(settings.data_dir) as scratch:
        if isinstance(settings, (HeadSettings, WorkerSettings)):
            if isinstance(settings, HeadSettings):
                node = resolve_head(engine, replace(settings, data_dir=scratch), said.append,
                                    preview)
                spec = ray.head_spec(settings, node.token, node.gcs_password)
            else:
                followed, node = resolve_worker(engine, replace(settings, data_dir=scratch),
                                                said.append, preview)
                spec = ray.worker_spec(replace(followed, data_dir=settings.data_dir), node.token)
            ids = node.image_ids
        else:
            assert isinstance(settings, AppSettings)
            dry = replace(settings, data_dir=scratch)
            resolved, inputs = resolve_app(engine, dry, said.append, preview)
            settings = replace(resolved, data_dir=settings.data_dir)
            values = app.app_values(settings, inputs.secrets, inputs.ray_host, inputs.site)
            spec = app.app_spec(settings, values)
            write_env_file(dry, app.env_file(settings, values), said.append)
            relay.write_files(dry.data_dir)
            if inputs.site is not None:
                proxy.write_files(dry, inputs.site)
            if inputs.rotate_to is not None:
                preview.notes.append("the database password would be rotated "
                                     "(--rotate-db-password): in Postgres, then in secrets/")
            ids = inputs.image_ids
        plan = preflight(engine, spec, ids)
        files = _file_changes(scratch, settings.data_dir, said)
    acting = any(a.verb in ACTING for a in plan.actions)
    labels = [f"{LABEL_MANAGED}=true"]
    networks = {n.name for n in engine.networks(labels)} if spec.networks and acting else set()
    return Forecast(
        data_dir=settings.data_dir, data_dir_exists=settings.data_dir.is_dir(),
        actions=plan.actions,
        networks=[n.name for n in spec.networks if acting and n.name not in networks],
        volumes=[v.name for v in spec.volumes
                 if acting and not engine.volume_exists(v.name)],
        files=files, images=preview.images, notes=preview.notes)
