"""The data directory: secrets and generated files, written atomically with mode 0600.

A secret is generated once with a cryptographic source and read back on every later run; it is
never regenerated. A file that exists but is empty or unreadable is an error that names the file,
never a reason to make a new secret.

The agent's file-system edge: an OSError raised here names the file the operator knows and what
was being done to it (tag), and the CLI turns it into one line (agent.cli).

Inside dry_run() (`syntho-agent plan`), the writes of this module are held in the process's
memory instead of made, and its reads see them: the run's own code computes what it would
write, and nothing is written anywhere, not even a copy of a secret.
"""

from __future__ import annotations

import contextlib
import io
import locale
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Literal

from agent.errors import EnvironmentProblem

Verb = Literal["read", "write", "create", "remove"]
_VERB = "syntho_agent_verb"  # the attribute tag() sets on an OSError
_PURPOSE = "syntho_agent_purpose"


def tag(exc: OSError, path: Path, verb: Verb, purpose: str = "") -> OSError:
    """exc, naming the path the agent was working on and what it was doing to it.

    A write()'s error names no file and mkstemp's names the temporary one: the CLI's one-line
    message (agent.cli) names the file the operator knows, with this verb, and why the agent
    needed it (`purpose`, when that is not obvious).
    """
    exc.filename = str(path)
    setattr(exc, _VERB, verb)
    if purpose:
        setattr(exc, _PURPOSE, purpose)
    return exc


def verb_of(exc: OSError) -> str | None:
    verb = getattr(exc, _VERB, None)
    return verb if isinstance(verb, str) else None


def purpose_of(exc: OSError) -> str:
    purpose = getattr(exc, _PURPOSE, "")
    return purpose if isinstance(purpose, str) else ""


@dataclass
class Pending:
    """A write held by dry_run: the file's content, and how the run would come by it when
    that is more than writing it ("generate it", "restore it from the container X")."""

    content: bytes
    how: str = ""


@dataclass
class DryRun:
    files: dict[Path, Pending] = field(default_factory=dict)


_DRY: list[DryRun] = []  # the dry run in progress, if any


@contextlib.contextmanager
def dry_run() -> Iterator[DryRun]:
    """Writes held in memory (DryRun.files) instead of made, read back by read_secret;
    directories not made, files not removed. For `syntho-agent plan`."""
    held = DryRun()
    _DRY.append(held)
    try:
        yield held
    finally:
        _DRY.remove(held)


def dry_running() -> bool:
    return bool(_DRY)


def ensure_dir(path: Path, mode: int = 0o700, exact: bool = False) -> Path:
    """path as a directory, made (with its parents) if missing, and with `exact` given this
    mode even when it exists; OSError tagged otherwise."""
    if _DRY:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        if exact:
            path.chmod(mode)
    except OSError as exc:
        raise tag(exc, path, "create") from None
    return path


def remove(path: Path) -> None:
    """Delete a file this agent wrote (a stale copy); gone already is fine."""
    if _DRY:
        return
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise tag(exc, path, "remove") from None


def check_writable(directory: Path, space: bool = True) -> None:
    """Refuse now what a write into directory would fail with later, naming the directory: no
    permission, a read-only file system, and (space) a full one. The probe is a temporary file
    without a name (O_TMPFILE: nothing is left even if the agent is killed; elsewhere
    `.write-check.*`, removed at once), written one byte (an empty file takes no block), synced
    and closed.
    """
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".write-check.", buffering=0) as probe:
            if space:
                probe.write(b"\n")
                os.fsync(probe.fileno())
    except OSError as exc:
        raise tag(exc, directory, "write") from None


def write_atomic(path: Path, content: str, mode: int = 0o600, how: str = "") -> None:
    """Write a file so that it is either the old one or the whole new one, never half.

    Whatever stops it (an error, a full disk, SIGTERM or Ctrl-C), no temporary file is left. An
    OSError names path (see tag). `how`: what a plan says the run would do (Pending).
    """
    encoding = locale.getpreferredencoding(False)  # what open(path, "w") would use
    _atomic(path, mode, lambda f: f.write(content.encode(encoding)), how)


def copy_atomic(source: Path, path: Path, mode: int) -> None:
    """Copy a file as write_atomic writes one: the old one or the whole copy, never half."""
    def copy(f: BinaryIO) -> None:
        with source.open("rb") as src:
            shutil.copyfileobj(src, f)

    _atomic(path, mode, copy)


def write_with(path: Path, mode: int, fill: Callable[[BinaryIO], object]) -> None:
    """Write a file of any size with fill(f), as write_atomic writes one: the old file or the
    whole new one (synced), never half; no temporary file left whatever stops it."""
    _atomic(path, mode, fill)


def _atomic(path: Path, mode: int, fill: Callable[[BinaryIO], object], how: str = "") -> None:
    if _DRY:
        held = io.BytesIO()
        fill(held)
        _DRY[-1].files[path] = Pending(held.getvalue(), how)
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise tag(exc, path, "write") from None
    try:
        with os.fdopen(fd, "wb") as f:  # closes fd, whatever happens
            os.fchmod(fd, mode)
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise tag(exc, path, "write") from None
        raise
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        raise tag(exc, path, "write") from None


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in directory durable (its entry, not only its content)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise tag(exc, directory, "write") from None


def read_secret(path: Path) -> str | None:
    """The secret stored at path; None if there is none yet. Raises on a damaged file."""
    held = _DRY[-1].files.get(path) if _DRY else None
    try:
        text = held.content.decode() if held is not None else path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot read {path}: {exc.strerror}; fix its permissions (chmod 600, owned by the "
            "user running the agent) or restore it from a backup") from None
    value = text.strip()
    if not value or "\n" in value:
        raise EnvironmentProblem(
            f"{path} is damaged (empty or more than one line); restore it from a backup, or "
            "delete it: a re-run restores it from the container that carries it")
    return value


def read_text(path: Path) -> str | None:
    """A file this agent wrote (as a dry run would have it); None when there is none."""
    held = _DRY[-1].files.get(path) if _DRY else None
    if held is not None:
        return held.content.decode()
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise tag(exc, path, "read") from None


def secret(path: Path, generate: Callable[[], str]) -> tuple[str, bool]:
    """The secret at path, generating and storing it if absent; (value, created)."""
    value = read_secret(path)
    if value is not None:
        return value, False
    value = generate()
    write_atomic(path, value + "\n", how="generate it")
    return value, True


def token_hex(nbytes: int = 32) -> Callable[[], str]:
    return lambda: secrets.token_hex(nbytes)


def token_urlsafe(nbytes: int = 48) -> Callable[[], str]:
    return lambda: secrets.token_urlsafe(nbytes)


def fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()
