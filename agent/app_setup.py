"""What the app role keeps in the data dir and checks in the database: its secrets (generated
once, reused forever), the guide's env file (docs/stack.md, section 3), Postgres' init script,
and the database password.
"""

from __future__ import annotations

import hashlib
import time
from importlib import resources
from typing import Callable

from agent import store
from agent.config import AppSettings
from agent.engine import Engine
from agent.errors import ConvergeError, UsageError
from agent.redact import redact
from agent.roles import app

Say = Callable[[str], None]
DB_PASSWORD = "postgres-password"  # file names in <data-dir>/secrets
CORE_KEY = "core-secret-key"
BACKEND_KEY = "backend-secret-key"
ADMIN_PASSWORD = "admin-password"
PROVEN = ".db-password-proven"  # which run of the Postgres container took the password


def app_secrets(settings: AppSettings, token: str | None, db_supplied: str | None,
                say: Say) -> app.Secrets:
    """Generated once, reused forever; a value the operator supplies wins (a database
    password only once checked against the database: see db_password_change)."""
    folder = store.ensure_dir(settings.data_dir / "secrets")
    created: list[str] = []

    def kept(name: str, supplied: str | None, generate: Callable[[], str]) -> str:
        path = folder / name
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
        say(f"generated {', '.join(created)} in {folder} (mode 0600, kept for every later run)")
    return secrets


def write_env_file(settings: AppSettings, values: dict[str, str], say: Say) -> None:
    """The guide's .env in the data dir (0600). It is output: the config wins over hand edits,
    and a hand-edited file is kept aside, never silently lost."""
    path = settings.data_dir / "app.env"
    stamp = settings.data_dir / ".app.env.sha256"
    content = app.render_env(values)
    if path.exists():
        current = path.read_bytes()
        recorded = stamp.read_text().strip() if stamp.exists() else None
        if current.decode(errors="replace") == content:
            return
        if recorded is not None and hashlib.sha256(current).hexdigest() != recorded:
            aside = path.with_name(f"app.env.edited-{int(time.time())}")
            store.write_atomic(aside, current.decode(errors="replace"))
            say(f"{path} was edited by hand: kept as {aside.name}; put lasting changes in the "
                "config file or flags")
    store.write_atomic(path, content)
    store.write_atomic(stamp, hashlib.sha256(content.encode()).hexdigest() + "\n")
    say(f"wrote {path}")


def write_init_script(settings: AppSettings) -> None:
    folder = store.ensure_dir(settings.data_dir / "postgres-init", 0o755, exact=True)
    script = (resources.files("agent") / "assets" / app.INIT_SCRIPT).read_text()
    target = folder / app.INIT_SCRIPT
    if not target.exists() or target.read_text() != script:
        store.write_atomic(target, script, mode=0o755)


def db_password_change(settings: AppSettings, engine: Engine) -> str | None:
    """The new database password the operator asked for, if it differs from the stored one
    and a database already exists (else None). Refused without --rotate-db-password."""
    if settings.postgres_url is not None or settings.db_password is None:
        return None
    stored = store.read_secret(settings.data_dir / "secrets" / DB_PASSWORD)
    if stored is None or stored == settings.db_password:
        return None
    volume = settings.suffix("syntho-database-data")
    if not engine.volume_exists(volume):
        return None
    if not settings.rotate_db_password:
        raise UsageError(
            f"the database in volume {volume} was created with another password (the one in "
            f"{settings.data_dir / 'secrets' / DB_PASSWORD}); pass --rotate-db-password to "
            "change it for real, or drop --db-password")
    return settings.db_password


def check_db_password(engine: Engine, settings: AppSettings, secrets: app.Secrets,
                      new_password: str | None, say: Say) -> None:
    """Prove the bundled database takes the password the app will use; rotate it if asked.

    Once proven for a run of the Postgres container (its id and start time, recorded in the
    data dir), later runs skip the probe: the password reaches Postgres only through the
    container's environment, so a new one always comes with a new container, and a volume
    swapped underneath needs a restart.
    """
    name = settings.suffix("syntho-postgres")
    proven = settings.data_dir / PROVEN
    current = engine.observe(name)
    run = f"{current.id} {current.started_at}\n" if current is not None else ""
    if new_password is None and run and proven.exists() and proven.read_text() == run:
        return
    if new_password is not None:
        # Inside the container the local socket trusts its own user (as the official image
        # sets it up); the SQL travels in the environment, never on a command line.
        literal = new_password.replace("'", "''")
        sql = f"ALTER ROLE \"{app.DB_USER}\" PASSWORD '{literal}'"
        code, out = engine.exec(name, ["sh", "-c", 'printf "%s\\n" "$ROTATE_SQL" | psql -v '
                                       f'ON_ERROR_STOP=1 -q -U {app.DB_USER} -d postgres'],
                                env={"ROTATE_SQL": sql})
        if code != 0:
            raise ConvergeError(f"could not change the database password: "
                                f"{redact(out, [new_password]).strip()[:200]}")
        store.write_atomic(settings.data_dir / "secrets" / DB_PASSWORD, new_password + "\n")
        say("changed the database password (rotated in Postgres and in secrets/)")
    password = new_password or secrets.db_password
    code, out = engine.exec(name, ["psql", "-h", "127.0.0.1", "-U", app.DB_USER, "-d",
                                   settings.backend_db_name, "-Atc", "SELECT 1"],
                            env={"PGPASSWORD": password})
    if code != 0:
        raise UsageError(
            f"the database refuses the password in {settings.data_dir / 'secrets' / DB_PASSWORD}"
            " (the volume was initialised with another); restore that file from a backup, or "
            "pass the old one with --db-password and --rotate-db-password")
    if run and new_password is None:
        store.write_atomic(proven, run)
