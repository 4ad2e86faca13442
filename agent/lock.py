"""One agent at a time per data directory: an flock held for the whole run.

The kernel releases it when the process ends, however it ends; the file stays (it is the lock,
not data) and holds the last holder's pid.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from agent import store
from agent.errors import LockedError


@contextmanager
def data_dir_lock(data_dir: Path, wait: float, say: Callable[[str], None]) -> Iterator[None]:
    path = data_dir / "agent.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise store.tag(exc, path, "write") from None
    try:
        started = time.monotonic()
        deadline = started + wait
        told = False
        unknown = 0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(fd)
                if not holder and unknown < 10:  # it has the lock, its pid not written yet
                    unknown += 1
                    time.sleep(0.01)
                    continue
                holder = holder or "?"
                if time.monotonic() >= deadline:
                    raise LockedError(
                        f"another syntho-agent (pid {holder}) is working on {data_dir}; wait "
                        "for it to finish, or pass --lock-wait SECONDS to wait longer") from None
                if not told:
                    say(f"waiting for another syntho-agent (pid {holder}) on {data_dir}")
                    told = True
                time.sleep(0.2)
        if told:  # how long this run stood still, for whoever reads its output
            say(f"got the lock on {data_dir} after {time.monotonic() - started:.1f} s")
        try:  # who holds it, for the message of the one that waits
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError as exc:
            raise store.tag(exc, path, "write") from None
        yield
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    """The holder's pid from the lock file; '' when it is not there yet: a holder writes it
    just after it got the lock, so for a moment the file is empty, or holds the pid of the
    previous holder, gone since."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    if not text.isdigit():
        return ""
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return ""
    except PermissionError:  # alive, another user's
        pass
    return text
