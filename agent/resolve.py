"""The resolve stage of a role run: every read, fetch and wait it needs before it changes
anything (secrets recovered or generated, images loaded or pulled, the token, the head waited
for and followed, the Ray version checked), into one Inputs (agent/inputs.py).

Bad input and a missing prerequisite are refused here, before any container changes. A plan
(`syntho-agent plan ROLE`, agent/forecast.py) resolves with a Preview: what would change the
engine or wait (pulls, loads, waiting for the head) becomes a look and a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Union

from agent import cluster, history, images, ray_release, ray_tls, release, secret_files, store, tls
from agent.config import AppSettings, HeadSettings, JoinOptions, RoleSettings, WorkerSettings
from agent.engine import Engine
from agent.errors import EnvironmentProblem, UsageError
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
    tls_on = head_tls_on(settings)
    token, done = cluster.head_token(settings, settings.data_dir)
    if not settings.auth:
        say(ray.AUTH_OFF_WARNING)
    elif done:
        say(f"{done} the cluster's Ray token in {cluster.token_path(settings.data_dir)}")
    material = node_tls(settings, token, say) if tls_on and (
        token or own_pki(settings)) else None
    if material is not None and settings.network == "host":
        material = replace(material, front=ray_tls.write_front(material.folder))
    return settings, Inputs(ids, token, gcs_password=secret_files.gcs_password(settings, say),
                            ray_tls=material)


def head_tls_on(settings: HeadSettings) -> bool:
    """Whether the head's Ray speaks TLS: --ray-tls/--no-ray-tls, else as the data dir says
    (the folder ray-tls is the switch: a new head makes it; one made by an earlier agent has
    none and stays as it is). Made here, before the token, so that a run killed between the
    two still finds a new cluster's choice."""
    folder = ray_tls.folder(settings.data_dir)
    wanted = bool(settings.ray_tls or own_pki(settings))
    if wanted and settings.network != "host":
        raise UsageError(f"--ray-tls needs the head on the host's network (it runs on the Docker "
                         f"network {settings.network}, whose addresses are known only once a "
                         "container starts, and which other VMs cannot reach anyway)")
    if wanted and not settings.auth and not own_pki(settings):
        raise UsageError("--ray-tls needs token auth (the cluster's CA comes from its token) "
                         "or a CA of your own: drop --no-auth")
    if settings.ray_tls is False:
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                store.remove(path)
            if not store.dry_running():
                folder.rmdir()
        return False
    new = not cluster.token_path(settings.data_dir).exists() and settings.ray_tls is None
    if wanted or (new and settings.network == "host" and settings.auth):
        store.ensure_dir(folder, 0o755, exact=True)
        return True
    return folder.is_dir()


TlsSettings = Union[HeadSettings, WorkerSettings, AppSettings]


def own_pki(settings: TlsSettings) -> str:
    """Which PKI the operator gave: "" (the CA the token carries), "ca" (a CA of theirs to
    issue from) or "cert" (this node's certificate, issued elsewhere). UsageError for a half
    given pair, both kinds at once, or either with --no-ray-tls."""
    ca = (settings.ray_tls_ca_cert, settings.ray_tls_ca_key)
    cert = (settings.ray_tls_cert, settings.ray_tls_key, settings.ray_tls_ca)
    if any(ca) and not all(ca):
        raise UsageError("--ray-tls-ca-cert and --ray-tls-ca-key go together: give both (a CA "
                         "of your own and its key)")
    if any(cert) and not all(cert):
        raise UsageError("--ray-tls-cert, --ray-tls-key and --ray-tls-ca go together: give all "
                         "three (this node's certificate, its key, the CA that issued it)")
    if all(ca) and all(cert):
        raise UsageError("give either a CA to issue from (--ray-tls-ca-cert/--ray-tls-ca-key) "
                         "or this node's certificate (--ray-tls-cert/--ray-tls-key/"
                         "--ray-tls-ca), not both")
    given = "ca" if all(ca) else "cert" if all(cert) else ""
    if given and settings.ray_tls is False:
        raise UsageError("--no-ray-tls with a certificate or CA of your own: drop one of them")
    return given


def trusted_ca(settings: TlsSettings, token: str | None) -> str | None:
    """The CA this node trusts for the cluster's Ray: the operator's, else the token's."""
    if settings.ray_tls_ca_cert is not None:
        return ray_tls.operator_ca(settings.ray_tls_ca_cert,
                                   settings.ray_tls_ca_key or Path()).pem
    if settings.ray_tls_ca is not None:
        return ray_tls.client_ca(settings.ray_tls_ca)
    return ray_tls.derived_ca(token).pem if token else None


def node_tls(settings: TlsSettings, token: str | None, say: Say) -> ray_tls.Material:
    """This node's TLS files, made or renewed (a renewal restarts only this node's Ray)."""
    node_ip = getattr(settings, "node_ip", None)
    names = ray_tls.host_names((*settings.ray_tls_san, *((node_ip,) if node_ip else ())))
    pki = own_pki(settings)
    if pki == "cert":
        assert settings.ray_tls_cert and settings.ray_tls_key and settings.ray_tls_ca
        material = ray_tls.provided_material(settings.data_dir, settings.ray_tls_cert,
                                             settings.ray_tls_key, settings.ray_tls_ca, names)
    else:
        issuer: str | ray_tls.CA
        if pki == "ca":
            assert settings.ray_tls_ca_cert and settings.ray_tls_ca_key
            issuer = ray_tls.operator_ca(settings.ray_tls_ca_cert, settings.ray_tls_ca_key)
        else:
            assert token, "the CA the token carries needs a token"
            issuer = token
        material = ray_tls.node_material(settings.data_dir, issuer, names,
                                         settings.ray_tls_days)
    material = replace(material, listen=tuple(ray_tls.local_ipv4()))
    if material.renewed:
        verb = "took" if pki == "cert" else "issued"
        say(f"{verb} this node's Ray TLS certificate ({material.renewed}): "
            f"{ray_tls.folder(settings.data_dir) / material.cert_file}")
    return material


HEAD_TLS_LOOK = 15.0  # seconds to keep asking a head that closes before its handshake


def joining_tls(settings: WorkerSettings | AppSettings, token: str | None, say: Say,
                preview: Preview | None) -> ray_tls.Material | None:
    """A worker's or the app's Ray speaks as the head does: a TLS handshake with the head's GCS
    port, trusting only the CA this token carries, tells which (and refuses a head that
    another CA vouches for before anything secret is sent). --ray-tls/--no-ray-tls, when
    given, must agree: Ray cannot mix TLS and plain nodes."""
    assert settings.head
    pki = own_pki(settings)
    ca = trusted_ca(settings, token)
    if ca is None:  # no token, no CA of the operator's: the head cannot speak TLS with us
        if settings.ray_tls:
            raise UsageError("--ray-tls needs token auth (the cluster's CA comes from its "
                             "token) or a CA of your own: drop --no-auth")
        return None
    heard: list[str] = []

    def look() -> bool:
        try:
            heard.append(ray_tls.head_speaks(settings.head or "", ray.GCS_PORT, ca,
                                             own_ca=bool(pki)))
        except OSError:
            return False
        return True

    if not (look() if preview is not None else poll(look, HEAD_TLS_LOOK,
                                                      "the head's TLS handshake", say)):
        if preview is not None:
            preview.notes.append(f"the Ray head at {settings.head} does not answer now: "
                                 "whether it speaks TLS is not known yet")
            return None
        raise EnvironmentProblem(f"the Ray head at {settings.head}:{ray.GCS_PORT} closes every "
                                 "connection: check that its Ray runs (syntho-agent status on "
                                 "the head)")
    tls_on = heard[0] == ray_tls.HEAD_TLS
    role = "worker" if isinstance(settings, WorkerSettings) else "app"
    if settings.ray_tls is not None and settings.ray_tls != tls_on:
        said, does = ("--ray-tls", "plain") if settings.ray_tls else ("--no-ray-tls", "TLS")
        raise UsageError(f"the Ray head at {settings.head} speaks {does} and this {role} was "
                         f"given {said}: Ray cannot mix TLS and plain nodes; drop the flag, or "
                         "switch the head first (docs/security.md)")
    if tls_on and isinstance(settings, WorkerSettings) and settings.network != "host":
        raise UsageError(f"the Ray head speaks TLS and this worker runs on the Docker network "
                         f"{settings.network}, whose address is known only once it starts: run "
                         "it on the host's network (--network host, as on a VM)")
    return node_tls(settings, token, say) if tls_on else None


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
    material = joining_tls(settings, token, say, preview)
    if not own:
        settings = follow_head(engine, settings, token, ray_tls.ca_pem_of(material), say, preview)
        ids = ensure_images(engine, settings, {settings.ray_image: settings.suffix("ray-worker")},
                            say, preview)
    if preview is None:
        assert settings.head
        ray_release.check(engine, "the worker's Ray", settings.ray_image,
                          ids[settings.ray_image], settings.data_dir, settings.head, token,
                          settings.instance, ray_tls.ca_pem_of(material))
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
    material = joining_tls(settings, token, say, preview)
    if not own:
        settings = follow_head_release(engine, settings, token, ray_tls.ca_pem_of(material),
                                       say, preview)
        ids = ensure_images(engine, settings, app_images(settings), say, preview)
    if preview is None:
        assert settings.head
        ray_release.check(engine, "the core's Ray client: the", settings.core_image,
                          ids[settings.core_image], settings.data_dir, settings.head, token,
                          settings.instance, ray_tls.ca_pem_of(material))
    return settings, Inputs(ids, token, secrets=secrets, rotate_to=rotate_to,
                            ray_host=app_ray_host(settings, token, ray_tls.ca_pem_of(material), say,
                                                  preview), site=site,
                            ray_tls=material)
