"""The resolve stage's part for Ray's TLS (docs/security.md): whether this node's Ray speaks
TLS, which CA it trusts, and its files made or taken (agent/ray_tls.py holds the certificates
themselves). resolve_head and the joining roles' resolvers call these; nothing here changes a
container.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, Union

from agent import cluster, ray_tls, store
from agent.config import AppSettings, HeadSettings, LauncherSettings, WorkerSettings
from agent.engine import Engine, EngineError
from agent.errors import EnvironmentProblem, UsageError
from agent.roles import ray
from agent.spec import LABEL_INSTANCE, LABEL_TEMPORARY
from agent.waits import poll

Say = Callable[[str], None]


def head_tls_on(settings: HeadSettings, say: Say) -> bool:
    """Whether the head's Ray speaks TLS: --ray-tls/--no-ray-tls, else as the data dir says
    (the folder ray-tls is the switch: a new head makes it; one made by an earlier agent has
    none and stays as it is). Made here, before the token, so that a run killed between the
    two still finds a new cluster's choice."""
    folder = ray_tls.folder(settings.data_dir)
    pki = own_pki(settings)
    wanted = bool(settings.ray_tls or pki)
    if wanted and settings.network != "host":
        raise UsageError(f"--ray-tls needs the head on the host's network (it runs on the Docker "
                         f"network {settings.network}, whose addresses are known only once a "
                         "container starts, and which other VMs cannot reach anyway)")
    if wanted and not settings.auth and not pki:
        raise UsageError("--ray-tls needs token auth (the cluster's CA comes from its token) "
                         "or a CA of your own: drop --no-auth")
    if settings.ray_tls is False:
        forget(settings, say)
        return False
    new = not cluster.token_path(settings.data_dir).exists() and settings.ray_tls is None
    if wanted or (new and settings.network == "host" and settings.auth):
        store.ensure_dir(folder, 0o755, exact=True)
        return True
    return folder.is_dir()


TlsSettings = Union[HeadSettings, WorkerSettings, AppSettings]
# launcher-config's nodes issue their certificates from the same CAs.
PkiSettings = Union[HeadSettings, WorkerSettings, AppSettings, LauncherSettings]


def own_pki(settings: PkiSettings) -> str:
    """Which PKI the operator gave: "" (the CA the token carries), "ca" (a CA of theirs to
    issue from) or "cert" (this node's certificate, issued elsewhere). UsageError for a half
    given pair, both kinds at once, or either with --no-ray-tls."""
    ca = (settings.ray_tls_ca_cert, settings.ray_tls_ca_key)
    cert = tuple(getattr(settings, key, None)  # launcher-config has no node certificate
                 for key in ("ray_tls_cert", "ray_tls_key", "ray_tls_ca"))
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
                notes: list[str] | None) -> ray_tls.Material | None:
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

    if not (look() if notes is not None else poll(look, HEAD_TLS_LOOK,
                                                      "the head's TLS handshake", say)):
        if notes is not None:
            notes.append(f"the Ray head at {settings.head} does not answer now: "
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
    if not tls_on and notes is None:
        forget(settings, say)  # the head went (back) to plain: its files would mislead status
    return node_tls(settings, token, say) if tls_on else None


def forget(settings: TlsSettings, say: Say) -> None:
    """This node's Ray TLS files removed (Ray here speaks plain now)."""
    folder = ray_tls.folder(settings.data_dir)
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        store.remove(path)
    if not store.dry_running():
        folder.rmdir()
    say(f"removed {folder}: the cluster's Ray speaks plain")


USERS_CACHE = "image-users.json"  # in the data dir: image ID -> [uid, gid] its processes run as
ROOT_USERS = ("", "0", "root", "0:0", "root:root")


def readable_key(engine: Engine, material: ray_tls.Material | None, ref: str, data_dir: Path,
                 instance: str, preview: bool) -> ray_tls.Material | None:
    """material with its key readable by the user the image `ref` runs as (ray_tls.readable_by);
    a plan that does not have the image yet takes root's."""
    if material is None:
        return None
    try:
        uid, gid = image_user_ids(engine, ref, data_dir, instance)
    except (EngineError, EnvironmentProblem):
        if preview:
            return material
        raise
    return ray_tls.readable_by(material, uid, gid)


def image_user_ids(engine: Engine, ref: str, data_dir: Path, instance: str) -> tuple[int, int]:
    """The uid and gid an image's processes run as: root, or its numeric Config.User, else
    asked of the image itself (`id -u; id -g` in a throw-away container with no network),
    once per image ID (cached in the data dir)."""
    user = engine.image_user(ref)
    if user in ROOT_USERS:
        return 0, 0
    uid, _, gid = user.partition(":")
    if uid.isdigit() and (not gid or gid.isdigit()):
        return int(uid), int(gid or 0)
    image_id = engine.image_id(ref) or ref
    cache = data_dir / USERS_CACHE
    try:
        known = json.loads(store.read_text(cache) or "{}")
    except ValueError:
        known = {}
    found = known.get(image_id) if isinstance(known, dict) else None
    if isinstance(found, list) and len(found) == 2 and all(isinstance(n, int) for n in found):
        return found[0], found[1]
    out = io.BytesIO()
    try:
        code, errors = engine.run_to(ref, ["sh", "-c", "id -u; id -g"], "none", out, labels={
            LABEL_INSTANCE: instance, LABEL_TEMPORARY: "image-user"})
    except EngineError as exc:
        raise EnvironmentProblem(f"cannot tell which user {ref} runs as (user {user}): "
                                 f"{exc.explanation}") from None
    ids = out.getvalue().decode(errors="replace").split()
    if code != 0 or len(ids) != 2 or not all(i.isdigit() for i in ids):
        raise EnvironmentProblem(f"cannot tell which user {ref} runs as (user {user}; `id` "
                                 f"exited {code}: {errors.strip()[-200:]})")
    pair = [int(ids[0]), int(ids[1])]
    known = {**(known if isinstance(known, dict) else {}), image_id: pair}
    store.write_atomic(cache, json.dumps(known, indent=1) + "\n", mode=0o600)
    return pair[0], pair[1]
