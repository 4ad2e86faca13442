"""What the app role keeps in the data dir and checks in the database: the guide's env file
(docs/stack.md, section 3), Postgres' init script, and the database password's proof (its
secrets: agent/secret_files.py).
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
from agent.secret_files import DB_PASSWORD, folder

Say = Callable[[str], None]
PROVEN = ".db-password-proven"  # which run of the Postgres container took the password


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
        store.write_atomic(folder(settings.data_dir) / DB_PASSWORD, new_password + "\n")
        say("changed the database password (rotated in Postgres and in secrets/)")
    password = new_password or secrets.db_password
    code, out = engine.exec(name, ["psql", "-h", "127.0.0.1", "-U", app.DB_USER, "-d",
                                   settings.backend_db_name, "-Atc", "SELECT 1"],
                            env={"PGPASSWORD": password})
    if code != 0:
        raise UsageError(
            f"the database refuses the password in {folder(settings.data_dir) / DB_PASSWORD}"
            " (the volume was initialised with another); restore that file from a backup, or "
            "pass the old one with --db-password and --rotate-db-password")
    if run and new_password is None:
        store.write_atomic(proven, run)
