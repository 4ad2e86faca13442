"""Postgres' client tools against the app's databases, for backup and restore.

A dump of the bundled database runs inside its own container, over the local socket (which
trusts its owner there: no password travels). Everything else runs in a throw-away container
of the Postgres image on the app's network, which reaches the server exactly as the app's
containers do: a dump of an external --postgres-url, and every restore (the dumps to read are
bind-mounted into it, read-only: nothing is copied into the database's container). The
password goes in that container's environment, never on a command line.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import IO, Union
from urllib.parse import unquote, urlsplit

from agent import store
from agent.config import BackupSettings, RestoreSettings
from agent.engine import Engine
from agent.errors import EnvironmentProblem
from agent.roles.app import DB_USER
from agent.secret_files import DB_PASSWORD, folder
from agent.spec import LABEL_INSTANCE, LABEL_MANAGED, LABEL_ROLE, LABEL_TEMPORARY

Settings = Union[BackupSettings, RestoreSettings]
MOUNT = "/syntho-restore"  # where a throw-away container sees the dumps to restore
ROLE = "client"  # the throw-away containers' role label: a killed run's are found by it
# They carry LABEL_TEMPORARY too (backup-client, restore-client), which `status` reads.


def connection(settings: Settings) -> tuple[list[str], dict[str, str]]:
    """The connection arguments and environment for the app's database server."""
    if settings.postgres_url is None:  # the bundled one, by its name on the app's network
        password = store.read_secret(folder(settings.data_dir) / DB_PASSWORD)
        if password is None:
            raise EnvironmentProblem(
                f"no database password in {folder(settings.data_dir) / DB_PASSWORD}: run "
                "`syntho-agent app` first (or pass the data dir the app role uses)")
        return ["-h", "postgres", "-p", "5432", "-U", DB_USER], {"PGPASSWORD": password}
    url = urlsplit(settings.postgres_url)
    args = ["-h", url.hostname or "", "-p", str(url.port or 5432), "-U",
            unquote(url.username or DB_USER)]
    return args, {"PGPASSWORD": unquote(url.password or "")}


def run(engine: Engine, settings: Settings, tool: list[str], out: IO[bytes] | None,
        dumps: Path | None = None) -> tuple[int, str]:
    """tool (pg_dump ..., pg_restore ...) against the app's database server; with `dumps`,
    a directory of dump files the tool reads as MOUNT/NAME."""
    if settings.postgres_url is None and dumps is None:
        postgres = settings.suffix("syntho-postgres")
        _require_running(engine, postgres)
        return engine.exec_to(postgres, [tool[0], "-U", DB_USER, *tool[1:]], out)
    if settings.postgres_url is None:
        _require_running(engine, settings.suffix("syntho-postgres"))
    args, env = connection(settings)
    network = settings.suffix("syntho")
    purpose = "restore" if isinstance(settings, RestoreSettings) else "backup"
    labels = {LABEL_MANAGED: "true", LABEL_INSTANCE: settings.instance, LABEL_ROLE: ROLE,
              LABEL_TEMPORARY: f"{purpose}-client"}
    # Named for what it is (a restore runs two at once: a random tail).
    name = f"{settings.suffix(f'syntho-{purpose}-client')}-{secrets.token_hex(3)}"
    binds = {str(dumps.resolve()): MOUNT} if dumps is not None else None
    try:
        return engine.run_to(settings.postgres_image, [tool[0], *args, *tool[1:]], network,
                             out, env=env, binds=binds, labels=labels, name=name)
    except EnvironmentProblem as exc:
        raise EnvironmentProblem(
            f"cannot run {tool[0]} against {args[1]} from the network {network} (run "
            f"`syntho-agent app` first; image {settings.postgres_image}): {exc}") from None


def _require_running(engine: Engine, postgres: str) -> None:
    found = engine.observe(postgres)
    if found is None or found.status != "running":
        raise EnvironmentProblem(
            f"the app's Postgres ({postgres}) is not running here: run `syntho-agent app` "
            "first (or run this on the app VM)")


def clear_leftovers(engine: Engine, settings: Settings) -> None:
    """Remove the throw-away clients a killed run left (a restore's may still be writing).
    Only a run holding the data dir's lock makes them, and the caller holds it."""
    for found in engine.managed(settings.instance, ROLE):
        engine.remove(found.id)
