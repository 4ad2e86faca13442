"""`syntho-agent restore ARCHIVE`: the app VM back as the backup had it.

First the whole archive is read and checked (the key, every chunk, every part's checksum) into
a private directory; nothing is applied before that holds. Then:
- a VM whose database volume exists is refused, unless --force: then a backup of the current
  state is taken first, the app's containers and the volume are removed;
- the secrets (and the Ray token) are put in the data dir, atomically, 0600;
- the app role converges as usual, with one more step after Postgres is up and its password
  proven: both databases restored with pg_restore; the other services start after it,
  health-gated, with the same secret keys (sessions and Fernet-encrypted values stay readable).
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from agent import archive, backup, deploy, pgclient, secret_files, store
from agent.config import BackupSettings, RestoreSettings
from agent.engine import Engine
from agent.errors import ConvergeError, EnvironmentProblem, UsageError
from agent.lock import data_dir_lock
from agent.rollout import Extras

Say = Callable[[str], None]
RESTORING = ".restore-in-progress"  # in the data dir: which archive a restore under way restores


def run_restore(engine: Engine, settings: RestoreSettings, path: Path, force: bool,
                say: Say) -> None:
    key = backup.backup_key(settings.encrypt_key_file)
    store.ensure_dir(settings.data_dir)
    with data_dir_lock(settings.data_dir, settings.lock_wait, say), \
            _staging(settings.data_dir) as staging:
        pgclient.clear_leftovers(engine, settings)  # a killed restore's may still be writing
        volume = settings.suffix("syntho-database-data")
        marker = settings.data_dir / RESTORING
        # The same restore killed midway: what it left is its own half-done work, not data to
        # keep (the first run backed up what was here before): finish it, no --force needed.
        resuming = store.read_secret(marker) == _identity(path)
        replacing = (engine.volume_exists(volume) if settings.postgres_url is None
                     else _external_holds_data(engine, settings))
        if replacing and not force and not resuming:
            where = (f"this VM already has a database (volume {volume})"
                     if settings.postgres_url is None else "the external database holds tables")
            raise UsageError(f"{where}: restoring would replace it; pass --force to take a "
                             "backup of it first and replace it")
        started = time.monotonic()
        try:  # the whole archive checked before anything changes
            header = archive.extract(path, key, staging)
        except archive.ArchiveError as exc:
            code = UsageError if "key" in str(exc) else EnvironmentProblem  # a wrong key: 2
            raise code(f"cannot restore {path}: {exc}; nothing was changed") from None
        say(f"checked {path}: {len(archive.parts_of(header))} parts, every checksum "
            f"matches (made {header.get('created')} by syntho-agent {header.get('agent')}); "
            f"checked in {time.monotonic() - started:.1f}s")
        if replacing:
            _set_aside(engine, settings, volume, say, backup_first=not resuming)
        store.write_atomic(marker, _identity(path) + "\n", mode=0o600)  # changes begin
        _put_files(settings, staging, say)
        # The app role's converge, with the databases restored as a step of its plan.
        deploy.converge(engine, settings, say, Extras(restore=lambda: _restore_databases(
            engine, settings, staging, say)))
        marker.unlink()
    say(f"restored the app from {path.name}")


def _identity(path: Path) -> str:
    """Which archive a restore restores: its path and when it was made (its header)."""
    try:
        with path.open("rb") as f:
            header, _ = archive.read_header(f)
    except (OSError, archive.ArchiveError):
        return f"{path.resolve()} ?"
    return f"{path.resolve()} {header.get('created')} {header.get('agent_id')}"


@contextmanager
def _staging(data_dir: Path) -> Iterator[Path]:
    backup.clear_leftovers(data_dir, ".syntho-restore-")  # a restore killed midway left it
    staging = Path(tempfile.mkdtemp(prefix=".syntho-restore-", dir=data_dir))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _external_holds_data(engine: Engine, settings: RestoreSettings) -> bool:
    for database in (settings.core_db_name, settings.backend_db_name):
        out = io.BytesIO()
        code, errors = pgclient.run(engine, settings, [
            "psql", "-d", database, "-Atc",
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"],
            out)
        if code != 0:
            raise EnvironmentProblem(f"cannot look into the external database {database}: "
                                     f"{errors.strip()[-300:]}")
        if out.getvalue().decode().strip() != "0":
            return True
    return False


def _set_aside(engine: Engine, settings: RestoreSettings, volume: str, say: Say,
               backup_first: bool) -> None:
    """--force: a backup of what is here, then the app's containers (and its bundled
    database) removed; an external database is replaced by pg_restore --clean. Resuming a
    killed restore of the same archive: nothing here to back up (its own half-done work)."""
    bundled = settings.postgres_url is None
    if not backup_first:
        say("finishing the restore of this archive that was stopped midway: what it left is "
            "replaced (what was here before it began was backed up then, if anything was)")
    elif not bundled or engine.observe(settings.suffix("syntho-postgres")) is not None:
        taken = backup.run_backup(engine, BackupSettings(
            data_dir=settings.data_dir, instance=settings.instance, lock_wait=0,
            encrypt_key_file=settings.encrypt_key_file, postgres_url=settings.postgres_url,
            postgres_image=settings.postgres_image, core_db_name=settings.core_db_name,
            backend_db_name=settings.backend_db_name), None, say, lock=False)
        say(f"took a backup of the current state first: {taken}")
    else:
        say(f"no Postgres runs here to back up the database in {volume} from: it is replaced")
    for found in engine.managed(settings.instance, "app"):
        engine.remove(found.id)
        say(f"removed {found.name}")
    if bundled:
        engine.remove_volume(volume)
        say(f"removed volume {volume}")


def _put_files(settings: RestoreSettings, staging: Path, say: Say) -> None:
    folder = store.ensure_dir(secret_files.folder(settings.data_dir))
    for name in secret_files.BACKED_UP:
        if (staging / secret_files.FOLDER / name).is_file():
            store.copy_atomic(staging / secret_files.FOLDER / name, folder / name, 0o600)
    if (staging / "ray-token").is_file() and settings.token is None and \
            settings.token_file is None:
        store.copy_atomic(staging / "ray-token", settings.data_dir / "ray-token", 0o600)
    for stale in (".db-password-proven", ".app.env.sha256"):
        (settings.data_dir / stale).unlink(missing_ok=True)
    say(f"put the backup's secrets in {folder} (mode 0600)")


def _restore_databases(engine: Engine, settings: RestoreSettings, staging: Path,
                       say: Say) -> int:
    """Both databases at once, each by pg_restore in its own throw-away client (they are
    independent, and the client's start overlaps the other's work)."""
    restore = ["pg_restore", "--clean", "--if-exists", "--no-owner", "--exit-on-error"]
    started = time.monotonic()
    databases = {"core": settings.core_db_name, "backend": settings.backend_db_name}
    with ThreadPoolExecutor(len(databases)) as pool:
        runs = {database: pool.submit(pgclient.run, engine, settings, [
                    *restore, "-d", database, f"{pgclient.MOUNT}/{label}.dump"], None,
                    dumps=staging)
                for label, database in databases.items()}
        for database, run in runs.items():
            code, out = run.result()
            if code != 0:
                raise ConvergeError(f"pg_restore of {database} failed (exit {code}): "
                                    f"{out.strip()[-300:]}; the archive is intact: run restore "
                                    "again with --force")
    say(f"restored the databases {' and '.join(databases.values())} "
        f"({time.monotonic() - started:.1f}s)")
    return 2
