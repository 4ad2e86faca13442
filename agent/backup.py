"""`syntho-agent backup`: one archive of the app VM, listed and kept k3s-style.

An archive (agent/archive.py) holds a consistent dump of both databases (pg_dump's custom
format, taken inside the running Postgres container: each dump is one transaction's view),
the data dir's secrets and app.env, the release that ran (each service's image and image
ID), and a manifest with each part's size and SHA-256. It is written to a temporary file,
fsynced and renamed, mode 0600: a final name never holds half an archive. Encrypted with a
key from --encrypt-key-file or SYNTHO_AGENT_BACKUP_KEY, it holds nothing readable without it.

Retention (--keep N) deletes only archives this data dir's agent made (their header carries
its id), oldest first, never the one just made.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

from agent import __version__, archive, pgclient, secret_files, store
from agent.config import BackupSettings
from agent.engine import Engine, Observed, OutputLost
from agent.errors import EnvironmentProblem, UsageError
from agent.lock import data_dir_lock

Say = Callable[[str], None]
KEY_ENV = "SYNTHO_AGENT_BACKUP_KEY"
SUFFIX = ".syntho-backup"
DUMP_ATTEMPTS = 3  # a dump the engine garbled on its way here is made again (engine.OutputLost)
AGENT_ID = ".agent-id"  # in the data dir: tells this agent's backups from copied-in ones


def backups_dir(data_dir: Path) -> Path:
    return data_dir / "backups"


def backup_key(key_file: Path | None) -> bytes | None:
    """The encryption key, from the file or the env variable; None: not encrypted."""
    if key_file is not None:
        value = key_file.read_bytes().strip()
    elif os.environ.get(KEY_ENV):
        value = os.environ[KEY_ENV].strip().encode()
    else:
        return None
    if len(value) < 16:
        source = str(key_file) if key_file is not None else KEY_ENV
        raise UsageError(f"the backup key in {source} is too short: use at least 16 characters "
                         "(for example `openssl rand -hex 32`)")
    return value


def agent_id(data_dir: Path) -> str:
    value, _ = store.secret(data_dir / AGENT_ID, store.token_hex(16))
    return value


@dataclass(frozen=True)
class Listed:
    path: Path
    header: dict[str, Any]
    size: int

    def row(self) -> dict[str, Any]:
        release = self.header.get("release") or {}
        return {"name": self.path.name, "created": self.header.get("created"),
                "size": self.size, "encrypted": self.header.get("encrypted"),
                "core_image": (release.get("core") or {}).get("image"),
                "agent": self.header.get("agent"), "path": str(self.path)}


def listed(folder: Path) -> list[Listed]:
    """The backups in a folder, oldest first (files that are not backups are left out)."""
    found = []
    for path in sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []:
        try:
            with path.open("rb") as f:
                header, _ = archive.read_header(f)
        except (OSError, archive.ArchiveError):
            continue
        found.append(Listed(path, header, path.stat().st_size))
    # By creation time (to the second), then by name (this agent's names carry milliseconds).
    return sorted(found, key=lambda b: str(b.header.get("created", "")))


def show_list(settings: BackupSettings, as_json: bool, say: Say) -> None:
    rows = [b.row() for b in reversed(listed(backups_dir(settings.data_dir)))]
    if as_json:
        say(json.dumps(rows, indent=2))
        return
    if not rows:
        say(f"no backups in {backups_dir(settings.data_dir)}")
        return
    say(f"{'NAME':<52} {'CREATED':<21} {'SIZE':>10}  ENCRYPTED  CORE IMAGE")
    for r in rows:
        say(f"{r['name']:<52} {r['created']:<21} {r['size']:>10}  "
            f"{'yes' if r['encrypted'] else 'no':<9}  {r['core_image'] or '-'}")


# ---- taking one ------------------------------------------------------------------------------

def run_backup(engine: Engine, settings: BackupSettings, output: Path | None, say: Say,
               lock: bool = True) -> Path:
    """Take a backup; its path. lock=False: the caller holds the data dir's lock."""
    key = backup_key(settings.encrypt_key_file)
    store.ensure_dir(settings.data_dir)
    with data_dir_lock(settings.data_dir, settings.lock_wait, say) if lock else nullcontext():
        me = agent_id(settings.data_dir)
        folder, name = _destination(settings, output, me)
        store.ensure_dir(folder)
        # What this agent's killed runs left here (its id in their names: another agent may
        # share the folder, and its runs are not ours to clear).
        clear_leftovers(folder, f".syntho-staging-{me[:8]}-", f"-{me[:8]}{SUFFIX}.",
                        f".{name}.")
        pgclient.clear_leftovers(engine, settings)
        with _staging(folder, me) as staging:
            parts = _dump_databases(engine, settings, staging, say)
            parts += _data_dir_files(settings)
            manifest = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "agent": __version__, "agent_id": me, "instance": settings.instance,
                        "databases": {"core": settings.core_db_name,
                                      "backend": settings.backend_db_name},
                        "release": release_of(engine.managed(settings.instance, "app"))}
            final = folder / name
            _write_atomic(final, manifest, parts, key)
        size = final.stat().st_size
        say(f"wrote {final} ({size / 1e6:.1f} MB{', encrypted' if key else ''}, mode 0600)")
        if settings.backup_target is not None:
            copy_to_target(final, settings.backup_target, say)
        if settings.keep is not None:
            prune(folder, me, settings.keep, final, say)
        return final


def release_of(found: list[Observed]) -> dict[str, dict[str, str]]:
    """What ran: each service's image reference and image ID."""
    return {o.service: {"image": o.image, "image_id": o.image_id}
            for o in sorted(found, key=lambda o: o.service) if o.service and not o.kept}


def _destination(settings: BackupSettings, output: Path | None, me: str) -> tuple[Path, str]:
    # Milliseconds in the name: two backups in one second (they take less than one for a small
    # database; the lock keeps them apart) must not share a name, or the second replaces the
    # first. Names of one agent sort by time.
    now = time.time()
    stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{int(now * 1000) % 1000:03d}Z"
    name = f"syntho-{stamp}-{me[:8]}{SUFFIX}"
    if output is None:
        return backups_dir(settings.data_dir), name
    if output.is_dir():
        return output, name
    return output.parent, output.name


def clear_leftovers(folder: Path, staging: str, *temporary: str) -> None:
    """What this agent's runs killed midway (SIGKILL, a power cut) left in folder: private
    staging directories (named starting with `staging`) and temporary archives (names holding
    one of `temporary`). Only a run holding the data dir's lock makes them, and the caller
    holds it: any found is stale."""
    for path in folder.glob(".*"):
        if path.name.startswith(staging) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif any(t in path.name for t in temporary) and path.is_file():
            path.unlink(missing_ok=True)


@contextmanager
def _staging(folder: Path, me: str) -> Iterator[Path]:
    """A private directory beside the archive for the dumps; removed whatever happens (but
    SIGKILL: the next run clears it)."""
    staging = Path(tempfile.mkdtemp(prefix=f".syntho-staging-{me[:8]}-", dir=folder))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _dump_databases(engine: Engine, settings: BackupSettings, staging: Path,
                    say: Say) -> list[tuple[archive.Part, Path]]:
    parts = []
    for label, database in (("core", settings.core_db_name),
                            ("backend", settings.backend_db_name)):
        target = staging / f"{label}.dump"
        started = time.monotonic()
        code, errors, hashing = _dump(engine, settings, database, target, say)
        if code != 0:
            raise EnvironmentProblem(f"pg_dump of {database} failed (exit {code}): "
                                     f"{errors.strip()[-300:]}")
        say(f"dumped {database} ({hashing.size / 1e6:.1f} MB in "
            f"{time.monotonic() - started:.1f}s)")
        parts.append((archive.Part(f"{label}.dump", hashing.size,
                                   hashing.digest.hexdigest()), target))
    return parts


def _dump(engine: Engine, settings: BackupSettings, database: str, target: Path,
          say: Say) -> tuple[int, str, _Hashing]:
    """pg_dump of one database into target, hashed as it arrives (no second read; not synced:
    the archive is). Dumped again from the start when the engine lost part of it on the way."""
    for attempt in range(1, DUMP_ATTEMPTS + 1):
        try:
            with target.open("wb") as raw:
                hashing = _Hashing(raw)
                with io.BufferedWriter(hashing, archive.COPY) as out:
                    code, errors = pgclient.run(engine, settings,
                                                ["pg_dump", "-Fc", "-d", database], out)
            return code, errors, hashing
        except OutputLost:
            if attempt == DUMP_ATTEMPTS:
                raise
            say(f"the engine lost part of the dump of {database} on its way here: dumping it "
                "again")
        except OSError as exc:  # a full disk, most likely: name the folder the operator chose
            raise store.tag(exc, target.parent.parent, "write", f"the dump of {database}") \
                from None
    raise AssertionError("unreachable")


class _Hashing(io.RawIOBase):
    """A file written through it, its SHA-256 and size kept on the way."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._f.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def _data_dir_files(settings: BackupSettings) -> list[tuple[archive.Part, Path]]:
    files = [(f"{secret_files.FOLDER}/{n}", secret_files.folder(settings.data_dir) / n)
             for n in secret_files.BACKED_UP]
    files += [("ray-token", settings.data_dir / "ray-token"),
              ("app.env", settings.data_dir / "app.env")]
    return [(archive.file_part(name, path), path) for name, path in files if path.is_file()]


def _write_atomic(final: Path, manifest: dict[str, Any],
                  parts: list[tuple[archive.Part, Path]], key: bytes | None) -> None:
    """The archive under its final name whole, or not at all (store's atomic write)."""
    store.write_with(final, 0o600, lambda out: archive.write(out, manifest, parts, key))


def copy_to_target(source: Path, target: Path, say: Say) -> None:
    """Copy a finished backup into the target directory, atomically, verified by checksum
    before it takes its final name."""
    final = target / source.name
    expected = archive.file_part(source.name, source).sha256

    def copy(out: BinaryIO) -> None:
        digest = hashlib.sha256()
        with source.open("rb") as src:
            while block := src.read(archive.COPY):
                out.write(block)
                digest.update(block)
        out.flush()
        os.fsync(out.fileno())
        with open(out.fileno(), "rb", closefd=False) as check:  # read back what is on disk
            check.seek(0)
            again = hashlib.sha256()
            while block := check.read(archive.COPY):
                again.update(block)
        if digest.hexdigest() != expected or again.hexdigest() != expected:
            raise EnvironmentProblem(f"the copy of {source.name} in {target} does not match "
                                     "the original: check the share, then run backup again")

    store.write_with(final, 0o600, copy)
    say(f"copied it to {final} (checksum verified)")


def prune(folder: Path, me: str, keep: int, just_made: Path, say: Say) -> None:
    """Delete this agent's oldest backups beyond `keep` (never the one just made)."""
    mine = [b for b in listed(folder) if b.header.get("agent_id") == me]
    for old in mine[:max(0, len(mine) - keep)]:
        if old.path != just_made:
            old.path.unlink()
            say(f"removed {old.path.name} (keeping the newest {keep})")
