"""How a failure leaves the agent: one line that says what and what to do, and an exit code.

An OSError that reaches the CLI (the data dir, --output, --root: agent.store tags it with the
file the operator knows and what was being done) becomes `cannot VERB PATH: REASON; ADVICE`,
exit 3. SIGINT and SIGTERM raise `Interrupted` where the agent is, so every `finally` runs (the
lock released, a temporary file removed, a container being replaced put back), and end in one
line and 130 or 143.
"""

from __future__ import annotations

import errno
import os
import pwd
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from agent import store


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised where the agent was (a BaseException: no `except Exception`
    swallows it), so that every `finally` runs: the lock is released, a temporary file removed,
    a container being replaced put back."""

    def __init__(self, signum: int) -> None:
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports
        super().__init__(self.name)


def interrupted_message(exc: Interrupted, command: str) -> str:
    top = command.split()[0]
    if top in ("status", "version", "syntho-agent"):
        after = "it changes nothing: run it again"
    elif top == "logs":
        after = "nothing is half-written: run it again"
    else:
        after = "nothing is half-written: run the same command again to converge"
    return f"interrupted ({exc.name}) while running `{command}`; {after}"


WRITING = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _option_for(path: str, params: dict[str, Any]) -> str:
    """The option that gave path (the most specific path option that holds it: --data-dir,
    --output, --root, ...), to say what to change."""
    target = os.path.abspath(path)
    found: list[tuple[int, str]] = []
    for name, value in params.items():
        if isinstance(value, Path) or (name == "output" and isinstance(value, str)
                                       and value not in ("", "-")):
            given = os.path.abspath(value)
            if target == given or target.startswith(given.rstrip("/") + "/"):
                found.append((len(given), "--" + name.replace("_", "-")))
    if found:
        return max(found)[1]
    # (a data dir from the config file: its parameter holds the default)
    return "--data-dir" if "data_dir" in params else "path"


def _owner(path: str) -> tuple[int, str] | None:
    """The owner of path or, when it cannot be looked at, of its nearest ancestor that can."""
    for candidate in [Path(path), *Path(path).parents]:
        try:
            uid = candidate.stat().st_uid
        except OSError:
            continue
        try:
            return uid, pwd.getpwuid(uid).pw_name
        except KeyError:
            return uid, f"uid {uid}"
    return None


def os_error_message(exc: OSError, params: dict[str, Any]) -> str:
    """One line for an OSError that reached the CLI: `cannot write PATH: STRERROR; what to do`
    for the file system (the data dir, --output, --root; store.tag names the path)."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:  # not a path: a socket, or a write() outside agent.store
        return (f"the operating system refused: {reason}; fix that, then run the same command "
                "again")[:500]
    path = os.fsdecode(exc.filename) if isinstance(exc.filename, (str, bytes)) else str(
        exc.filename)
    verb = store.verb_of(exc) or ("write" if exc.errno in WRITING else "use")
    purpose = store.purpose_of(exc)
    shown = path if len(path) <= 300 else f"{path[:150]}...({len(path)} characters)"
    what = f"{shown} ({purpose})" if purpose else shown
    option = _option_for(path, params)
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        advice = f"free space on its file system or choose another {option}"
    elif code == errno.EROFS:
        advice = f"its file system is mounted read-only: choose another {option}"
    elif code in (errno.EACCES, errno.EPERM):
        owner = _owner(path)
        if owner is None or owner[0] == os.geteuid():
            advice = "fix its permissions"
        else:
            advice = f"run as the user that owns it ({owner[1]}) or fix its permissions"
    elif code == errno.ENOENT:
        advice = f"{Path(path).parent} does not exist: create it or choose another {option}"
    elif code == errno.ENOTDIR:
        advice = f"a part of it is a file, not a directory: choose another {option}"
    elif code == errno.EEXIST:
        advice = f"a file is in the way: move it or choose another {option}"
    elif code == errno.EISDIR:
        advice = f"it is a directory: choose another {option}"
    elif code == errno.ENAMETOOLONG:
        advice = f"choose a shorter {option}"
    elif code == errno.EIO:
        advice = "the disk reports an error: check it (dmesg), then run the same command again"
    else:
        advice = "fix that, then run the same command again"
    return f"cannot {verb} {what}: {reason}; {advice}"


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def catch_signals() -> dict[int, Any]:
    """SIGINT and SIGTERM raise Interrupted; returns the handlers they had. One the agent was
    started with ignored (nohup, `&` in a script) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # (only the main thread may set them: an embedding caller's business)
    return {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
            if signal.getsignal(sig) is not signal.SIG_IGN}
