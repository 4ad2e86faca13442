"""The tests' child processes: default signal dispositions, and none left running.

A suite started in the background of a non-interactive shell (nohup, cron, a CI runner, `&` in
a script) starts with SIGINT and SIGQUIT ignored, and an ignored disposition survives fork and
exec: every child would ignore the SIGINT a test sends it (the agent keeps an inherited ignore,
as README promises for nohup). A handler, by contrast, is reset to the default at exec, so
default_signals() in the test process (tests/conftest.py's pytest_configure) gives every child
default dispositions.

started() runs a long-lived child (`--watch`, `logs -f`, a worker waiting for its head) in a
session of its own and kills that whole process group when the block ends, pass or fail: a
still-running `--watch` agent would re-create the containers the sandbox removes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

# The signals a child must not inherit as ignored (the ones tests send, and the shell's).
RESTORED = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)


def default_signals() -> None:
    """SIGINT to Python's default_int_handler (KeyboardInterrupt), SIGQUIT and SIGTERM to
    SIG_DFL, in this process: its children start with default dispositions."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("default_signals() must run in the main thread")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def ignored_signals(pid: int | str = "self") -> set[signal.Signals]:
    """The signals a process ignores (its SigIgn in /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigIgn:"):
                mask = int(line.split()[1], 16)
                return {s for s in signal.Signals if mask >> (s.value - 1) & 1}
    raise RuntimeError(f"no SigIgn in /proc/{pid}/status")


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """subprocess.Popen in a session (and so a process group) of its own: kill_group() ends it
    and whatever it started. Stop it with kill_group(), or use started()."""
    return subprocess.Popen(args, start_new_session=True, **kwargs)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL to the child's process group (it leads it: spawn()), then reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the child and everything it started have exited
    proc.wait()


@contextlib.contextmanager
def started(args: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[Any]]:
    """spawn(args, **kwargs), its process group killed when the block ends, however it ends
    (a test that already stopped it cleanly loses nothing)."""
    proc = spawn(args, **kwargs)
    try:
        yield proc
    finally:
        kill_group(proc)
