"""agent/lock.py under contention, between real processes: the one that waits says so and for
how long, gets the lock once the holder lets go, gives up with LockedError after a short wait,
and no two are ever inside at once.

Whoever is inside appends an enter and a leave mark (its pid, the system-wide monotonic clock)
to one file; the tests read the marks back and assert that the insides never overlap.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.errors import LockedError
from agent.lock import data_dir_lock
from tests.support.constants import REPO

# A process that takes the lock (waiting up to argv[3] seconds), marks its inside, and leaves:
# "hold" leaves when a line comes on its stdin; "churn N" goes in and out N times.
CHILD = """
import os, sys, time
from pathlib import Path
from agent.lock import data_dir_lock

def mark(what):
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, f"{os.getpid()} {what} {time.monotonic():.6f}\\n".encode())
    os.close(fd)

def say(line):
    print(line, flush=True)

if sys.argv[4] == "hold":
    with data_dir_lock(Path(sys.argv[1]), float(sys.argv[3]), say):
        mark("enter")
        print("inside", flush=True)
        sys.stdin.readline()
        mark("leave")
else:
    for _ in range(int(sys.argv[5])):
        with data_dir_lock(Path(sys.argv[1]), float(sys.argv[3]), say):
            mark("enter")
            time.sleep(0.02)
            mark("leave")
"""


def mark(marks: Path, what: str) -> None:
    with marks.open("a") as f:
        f.write(f"{os.getpid()} {what} {time.monotonic():.6f}\n")


def read_marks(marks: Path) -> list[tuple[int, str, float]]:
    rows = [line.split() for line in marks.read_text().splitlines()]
    return [(int(pid), what, float(at)) for pid, what, at in rows]


def overlaps(marks: list[tuple[int, str, float]]) -> list[str]:
    """What shows two processes inside at once, [] when every enter is followed by the same
    process's leave before anyone else enters (in the file's order and in time)."""
    problems = []
    inside: tuple[int, float] | None = None
    last_leave = 0.0
    for pid, what, at in marks:
        if what == "enter":
            if inside is not None:
                problems.append(f"{pid} entered at {at:.3f} while {inside[0]} was inside")
            if at < last_leave:
                problems.append(f"{pid} entered at {at:.3f}, before the last leave at "
                                f"{last_leave:.3f}")
            inside = (pid, at)
        else:
            if inside is None or inside[0] != pid:
                problems.append(f"{pid} left at {at:.3f} while {inside} was inside")
            inside = None
            last_leave = at
    return problems


def child(data_dir: Path, marks: Path, wait: float, *mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir), str(marks), str(wait),
                             *mode], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def holder(data_dir: Path, marks: Path) -> subprocess.Popen[str]:
    """A child inside the lock, until a line on its stdin."""
    proc = child(data_dir, marks, 10, "hold")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "inside\n", (line, proc.stderr.read() if proc.stderr else "")
    return proc


def release(proc: subprocess.Popen[str]) -> None:
    out, err = proc.communicate("go\n", timeout=30)
    assert proc.returncode == 0, err


def test_the_second_waits_says_how_long_and_gets_the_lock_once_the_first_leaves(
        tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    first = holder(tmp_path, marks)
    said: list[str] = []
    letting_go = threading.Timer(1.0, release, [first])
    started = time.monotonic()
    letting_go.start()
    try:
        with data_dir_lock(tmp_path, 30, said.append):
            mark(marks, "enter")
            mark(marks, "leave")
    finally:
        letting_go.join()
    took = time.monotonic() - started
    assert first.returncode == 0  # (release's own asserts ran in the timer's thread)
    assert said[0] == f"waiting for another syntho-agent (pid {first.pid}) on {tmp_path}"
    assert len(said) == 2, said
    got = re.fullmatch(rf"got the lock on {re.escape(str(tmp_path))} after (\d+\.\d) s",
                       said[1])
    assert got, said
    rows = read_marks(marks)
    assert [(pid, what) for pid, what, _ in rows] == [
        (first.pid, "enter"), (first.pid, "leave"), (os.getpid(), "enter"),
        (os.getpid(), "leave")]
    assert overlaps(rows) == []
    # The time it says: from its start to the holder's leaving, at most its whole wait.
    held_after_start = rows[1][2] - started
    assert held_after_start - 0.05 <= float(got.group(1)) <= took + 0.05, (said, rows)
    assert (tmp_path / "agent.lock").read_text() == str(os.getpid())  # the new holder's pid


def test_a_short_wait_gives_up_with_lockederror_naming_the_holder(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    first = holder(tmp_path, marks)
    try:
        said: list[str] = []
        started = time.monotonic()
        with pytest.raises(LockedError, match=rf"another syntho-agent \(pid {first.pid}\) is "
                                              "working on"):
            with data_dir_lock(tmp_path, 0.5, said.append):
                mark(marks, "enter")  # never reached
        assert 0.5 <= time.monotonic() - started < 5
        assert said == [f"waiting for another syntho-agent (pid {first.pid}) on {tmp_path}"]
        said.clear()
        with pytest.raises(LockedError):  # no wait at all: refused at once, nothing said
            with data_dir_lock(tmp_path, 0, said.append):
                mark(marks, "enter")
        assert said == []
    finally:
        release(first)
    assert [(pid, what) for pid, what, _ in read_marks(marks)] == [
        (first.pid, "enter"), (first.pid, "leave")]
    with data_dir_lock(tmp_path, 0, said.append):  # free again once the holder is gone
        assert said == []


def test_never_two_inside_at_once(tmp_path: Path) -> None:
    """Four processes go in and out 10 times each, all at once."""
    marks = tmp_path / "marks"
    procs = [child(tmp_path, marks, 30, "churn", "10") for _ in range(4)]
    said = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        said += out.splitlines()
    rows = read_marks(marks)
    assert len(rows) == 4 * 10 * 2
    assert overlaps(rows) == []
    # They did contend: some waited, and each wait ended with the time it took.
    waits = [line for line in said if line.startswith("waiting for another syntho-agent")]
    gots = [line for line in said if line.startswith("got the lock on")]
    assert waits and len(gots) == len(waits), said


def test_overlaps_sees_two_inside_at_once() -> None:
    """The checker itself: an interleaving is reported, a sequence is not."""
    assert overlaps([(1, "enter", 1.0), (1, "leave", 2.0), (2, "enter", 2.1),
                     (2, "leave", 3.0)]) == []
    assert overlaps([(1, "enter", 1.0), (2, "enter", 1.5), (1, "leave", 2.0),
                     (2, "leave", 3.0)])
    assert overlaps([(1, "enter", 1.0), (1, "leave", 2.0), (2, "enter", 1.9),
                     (2, "leave", 3.0)])


def test_the_holders_pid_is_named_once_it_is_written(tmp_path: Path) -> None:
    """The holder writes its pid just after it got the lock: one that looks in between reads
    an empty file or the previous holder's pid (gone). It looks again for a moment instead of
    naming that one; '?' when no live pid comes."""
    marks = tmp_path / "marks"
    first = holder(tmp_path, marks)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    lock_file = tmp_path / "agent.lock"
    try:
        for before in ("", gone):
            lock_file.write_text(before)
            writing = threading.Timer(0.03, lock_file.write_text, [str(first.pid)])
            writing.start()
            with pytest.raises(LockedError, match=rf"\(pid {first.pid}\)"):
                with data_dir_lock(tmp_path, 0, print):
                    pass
            writing.join()
        lock_file.write_text(gone)  # and it never comes
        with pytest.raises(LockedError, match=r"\(pid \?\)"):
            with data_dir_lock(tmp_path, 0, print):
                pass
    finally:
        release(first)
