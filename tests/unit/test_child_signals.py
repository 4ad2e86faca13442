"""The children the tests start get default signal dispositions, however the suite was started
(tests/support/processes.py, wired in tests/conftest.py's pytest_configure), and started()
leaves nothing of its process group running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.support.constants import REPO
from tests.support.processes import RESTORED, ignored_signals, started

NOT_IGNORED = set(RESTORED)
IGNORING = "trap '' INT QUIT TERM; exec "  # as nohup, cron or `&` in a script start the suite


def test_a_child_of_the_test_process_ignores_none_of_the_signals_tests_send() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        ignored = ignored_signals(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not ignored & NOT_IGNORED, f"a child of the tests ignores {sorted(ignored)}"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_suite_started_with_the_signals_ignored_still_gives_its_children_defaults() -> None:
    """The test above, in a pytest started as a background job of a script starts it."""
    shell = subprocess.run(["bash", "-c", IGNORING + "cat /proc/self/status"],
                           capture_output=True, text=True, check=True)
    assert "SigIgn:" in shell.stdout
    mask = int(shell.stdout.split("SigIgn:")[1].split()[0], 16)
    assert all(mask >> (s - 1) & 1 for s in NOT_IGNORED), "the shell did not ignore them"
    inner = (f"{sys.executable} -m pytest -q -p no:cacheprovider "
             "tests/unit/test_child_signals.py::"
             "test_a_child_of_the_test_process_ignores_none_of_the_signals_tests_send")
    done = subprocess.run(["bash", "-c", IGNORING + inner], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr


def test_started_kills_the_whole_process_group_when_the_block_fails() -> None:
    grandchild_pid = 0
    try:
        with started(["bash", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE,
                     text=True) as proc:
            assert proc.stdout is not None
            grandchild_pid = int(proc.stdout.readline())
            assert os.getpgid(grandchild_pid) == proc.pid
            raise TimeoutError("the test timed out")
    except TimeoutError:
        pass
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # (reaped by init: gone, or a zombie for a moment)
        try:
            with open(f"/proc/{grandchild_pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        os.kill(grandchild_pid, signal.SIGKILL)
        raise AssertionError(f"the grandchild {grandchild_pid} survived its group's kill")
