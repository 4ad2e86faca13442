"""The data directory: secrets and generated files, written atomically with mode 0600.

A secret is generated once with a cryptographic source and read back on every later run; it is
never regenerated. A file that exists but is empty or unreadable is an error that names the file,
never a reason to make a new secret.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from typing import Callable

from agent.errors import EnvironmentProblem


def ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot create the data directory {path}: {exc.strerror}; "
            "choose another with --data-dir or fix its permissions") from None
    return path


def write_atomic(path: Path, content: str, mode: int = 0o600) -> None:
    """Write a file so that it is either the old one or the whole new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_secret(path: Path) -> str | None:
    """The secret stored at path; None if there is none yet. Raises on a damaged file."""
    try:
        text = path.read_text()
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
            "delete it to generate a new value (anything that used the old one must then be "
            "reconfigured)")
    return value


def secret(path: Path, generate: Callable[[], str]) -> tuple[str, bool]:
    """The secret at path, generating and storing it if absent; (value, created)."""
    value = read_secret(path)
    if value is not None:
        return value, False
    value = generate()
    write_atomic(path, value + "\n")
    return value, True


def token_hex(nbytes: int = 32) -> Callable[[], str]:
    return lambda: secrets.token_hex(nbytes)


def token_urlsafe(nbytes: int = 48) -> Callable[[], str]:
    return lambda: secrets.token_urlsafe(nbytes)


def fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()
