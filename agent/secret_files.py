"""Every secret the agent keeps, in one place: its file in the data dir, the running
containers that carry its value (a lost file is restored from them: agent/recovery.py), how it
is generated, a value the operator supplies, the database password's rotation, and which of
them a backup takes. The other modules ask this one.

A secret is generated once with a cryptographic source, written atomically with mode 0600
(agent/store.py), and never regenerated; a value the operator supplies wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from agent import cluster, store
from agent.config import AppSettings, HeadSettings, RoleSettings, WorkerSettings
from agent.engine import Engine
from agent.errors import UsageError
from agent.recovery import Carrier, SecretFile
from agent.roles import app, ray

Say = Callable[[str], None]
FOLDER = "secrets"  # in the data dir, 0700: the app's secrets
DB_PASSWORD = "postgres-password"  # file names in FOLDER
CORE_KEY = "core-secret-key"
BACKEND_KEY = "backend-secret-key"
ADMIN_PASSWORD = "admin-password"
# What a backup takes (with the Ray token, cluster.TOKEN_FILE) and a restore puts back.
BACKED_UP = (DB_PASSWORD, CORE_KEY, BACKEND_KEY, ADMIN_PASSWORD)
# The secrets outside FOLDER, by their names in the data dir.
OUTSIDE = frozenset({cluster.TOKEN_FILE, ray.GCS_PASSWORD_FILE})


def folder(data_dir: Path) -> Path:
    return data_dir / FOLDER


def is_secret(name: str) -> bool:
    """Whether a path in the data dir (relative to it) holds a secret: a plan names such a
    file, never shows its value. The proxy's copies of the operator's key count too."""
    return name.startswith((f"{FOLDER}/", f"{app.PROXY_DIR}/key-")) or name in OUTSIDE


def token_file(settings: RoleSettings, *carriers: Carrier) -> list[SecretFile]:
    """The Ray token file, carried by these containers (none without token auth)."""
    if not settings.auth:
        return []
    supplied = settings.token is not None or settings.token_file is not None
    return [SecretFile(cluster.token_path(settings.data_dir), carriers, supplied)]


def stored_values(data_dir: Path, purpose: str) -> set[str]:
    """Every value in the data dir's secret files (OUTSIDE and secrets/*), each line of a
    damaged one too (to redact them). A file or folder that cannot be read is an error, tagged
    with `purpose` (store.tag): what cannot be read cannot be redacted. A data dir that does
    not exist holds none."""
    here = folder(data_dir)
    try:
        names = sorted(p.name for p in here.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        names = []
    except OSError as exc:
        raise store.tag(exc, here, "read", purpose) from None
    values: set[str] = set()
    for path in [*(data_dir / name for name in sorted(OUTSIDE)), *(here / name for name in names)]:
        try:
            text = path.read_text(errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            continue
        except OSError as exc:
            raise store.tag(exc, path, "read", purpose) from None
        values.update(line.strip() for line in text.splitlines() if line.strip())
    return values


def head_files(settings: HeadSettings) -> list[SecretFile]:
    """The head's: the Ray token, and with GCS fault tolerance its Redis's password (the
    Redis's data does not depend on it: no volume check)."""
    files = token_file(settings, Carrier("ray-head", ray.TOKEN_ENV))
    if settings.gcs_ft:
        files.append(SecretFile(settings.data_dir / ray.GCS_PASSWORD_FILE, (
            Carrier(ray.GCS_REDIS_SERVICE, ray.GCS_PASSWORD_ENV),
            Carrier("ray-head", ray.GCS_PASSWORD_ENV))))
    return files


def worker_files(settings: WorkerSettings) -> list[SecretFile]:
    return token_file(settings, Carrier("ray-worker", ray.TOKEN_ENV))


def app_files(settings: AppSettings) -> list[SecretFile]:
    """The app's secret files and the containers that carry each value (docs/stack.md)."""
    here = folder(settings.data_dir)
    files = token_file(settings, Carrier("core", ray.TOKEN_ENV),
                       Carrier("core_worker", ray.TOKEN_ENV))
    if settings.postgres_url is None:
        files.append(SecretFile(here / DB_PASSWORD, (
            Carrier("backend", "DB_PASSWORD"), Carrier("worker", "DB_PASSWORD"),
            Carrier("postgres", "POSTGRES_PASSWORD")), settings.db_password is not None))
    files += [
        SecretFile(here / CORE_KEY, (Carrier("core", "SECRET_KEY"),
                                       Carrier("core_worker", "SECRET_KEY"))),
        SecretFile(here / BACKEND_KEY, (Carrier("backend", "SECRET_KEY"),
                                          Carrier("worker", "SECRET_KEY"))),
        SecretFile(here / ADMIN_PASSWORD, (Carrier("backend", "USER_PASSWORD"),),
                   settings.admin_password is not None),
    ]
    return files


def gcs_password(settings: HeadSettings, say: Say) -> str | None:
    """The head's GCS Redis password, generated once (None without GCS fault tolerance)."""
    if not settings.gcs_ft:
        return None
    path = settings.data_dir / ray.GCS_PASSWORD_FILE
    password, made = store.secret(path, store.token_hex(32))
    if made:
        say(f"generated the GCS Redis password in {path}")
    return password


def app_secrets(settings: AppSettings, token: str | None, db_supplied: str | None,
                say: Say) -> app.Secrets:
    """Generated once, reused forever; a value the operator supplies wins (a database
    password only once checked against the database: see db_password_change)."""
    here = store.ensure_dir(folder(settings.data_dir))
    created: list[str] = []

    def kept(name: str, supplied: str | None, generate: Callable[[], str]) -> str:
        path = here / name
        stored = store.read_secret(path)
        if supplied is not None and supplied != stored:
            store.write_atomic(path, supplied + "\n")
            return supplied
        value, new = store.secret(path, generate)
        if new:
            created.append(name)
        return value

    secrets = app.Secrets(
        db_password=kept(DB_PASSWORD, db_supplied, store.token_urlsafe(24)),
        core_secret_key=kept(CORE_KEY, None, store.fernet_key),
        backend_secret_key=kept(BACKEND_KEY, None, store.token_urlsafe(48)),
        admin_password=kept(ADMIN_PASSWORD, settings.admin_password, store.token_urlsafe(15)),
        ray_token=token,
    )
    if created:
        say(f"generated {', '.join(created)} in {here} (mode 0600, kept for every later run)")
    return secrets


def db_password_change(settings: AppSettings, engine: Engine) -> str | None:
    """The new database password the operator asked for, if it differs from the stored one
    and a database already exists (else None). Refused without --rotate-db-password."""
    if settings.postgres_url is not None or settings.db_password is None:
        return None
    stored = store.read_secret(folder(settings.data_dir) / DB_PASSWORD)
    if stored is None or stored == settings.db_password:
        return None
    volume = settings.suffix("syntho-database-data")
    if not engine.volume_exists(volume):
        return None
    if not settings.rotate_db_password:
        raise UsageError(
            f"the database in volume {volume} was created with another password (the one in "
            f"{folder(settings.data_dir) / DB_PASSWORD}); pass --rotate-db-password to "
            "change it for real, or drop --db-password")
    return settings.db_password
