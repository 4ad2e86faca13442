"""The agent's real CLI in a subprocess (`python -m agent` from this interpreter, in the repo):
real exit codes, real output."""

from __future__ import annotations

import functools
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Mapping

import pytest

from tests.support.constants import REPO
from tests.support.processes import kill_group, spawn


class AgentFailed(RuntimeError):
    """A run_agent(..., check=True) that exited non-zero."""

    def __init__(self, args: tuple[str, ...], done: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"syntho-agent {args[0] if args else ''} exited {done.returncode}:\n"
                         f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        self.done = done


def agent_cmd(*args: str) -> list[str]:
    """The command line of the CLI with these arguments (cwd: REPO)."""
    return [sys.executable, "-m", "agent", *args]


def agent_env(extra: Mapping[str, str] | None = None, *,
              write_bytecode: bool = False) -> dict[str, str]:
    """This process's environment without the agent's own variables (SYNTHO_AGENT_*), plus
    `extra`.

    write_bytecode: also drop PYTHONDONTWRITEBYTECODE, so that Python caches bytecode as it
    does on a VM (CI may set it; the benchmarks time starts against a dpkg-compiled compose).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHO_AGENT_")
           and not (write_bytecode and k == "PYTHONDONTWRITEBYTECODE")}
    # The head's GCS Redis (GCS fault tolerance, on by default) from the test images, as the
    # app's Redis is: nothing here pulls the official image.
    env[GCS_REDIS_IMAGE_ENV] = test_redis_image()
    env.update(extra or {})
    return env


GCS_REDIS_IMAGE_ENV = "SYNTHO_AGENT_GCS_REDIS_IMAGE"


@functools.lru_cache(maxsize=1)
def test_redis_image() -> str:
    """The test images' Redis (tests/images/build.py: its reference, a hash of its recipe)."""
    from tests.images.build import image_refs

    return image_refs()["redis"]


def run_agent(*args: str, env: Mapping[str, str] | None = None, timeout: float = 600,
              stdin: str | None = None, check: bool = False,
              write_bytecode: bool = False) -> subprocess.CompletedProcess[str]:
    """The CLI with these arguments, to its exit; its output captured as text.

    env: added to agent_env()'s; check: raise AgentFailed (with the output's tails) on a
    non-zero exit instead of returning it; write_bytecode: see agent_env.
    """
    done = subprocess.run(agent_cmd(*args), cwd=REPO,
                          env=agent_env(env, write_bytecode=write_bytecode),
                          capture_output=True, text=True, timeout=timeout, input=stdin)
    if check and done.returncode != 0:
        raise AgentFailed(args, done)
    return done


class Agent:
    """The agent in a subprocess (a watcher, a run to interrupt), its output read line by line
    as it comes.

    In a process group of its own: stop() (or the end of a `with` block) kills the group, so a
    failed test leaves no watcher re-creating what the sandbox removes.
    """

    def __init__(self, *args: str) -> None:
        self.proc: subprocess.Popen[str] = spawn(
            agent_cmd(*args), cwd=REPO, env=agent_env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float) -> None:
        """Until a line of its standard output holds text (its output so far on failure)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                self.stop()
                pytest.fail(f"no {text!r} within {timeout}s: {self.seen}")
            if line is None:
                pytest.fail(f"exited {self.proc.wait()} before {text!r}: {self.seen}\n"
                            f"{self.proc.stderr.read() if self.proc.stderr else ''}")
            self.seen.append(line)
            if text in line:
                return

    def signal(self, sig: int) -> tuple[int, str, str]:
        """Send sig; (exit code, the rest of stdout, stderr)."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        rest = []
        while (line := self.lines.get(timeout=10)) is not None:
            rest.append(line)
        assert self.proc.stderr is not None
        return code, "".join(rest), self.proc.stderr.read()

    def stop(self) -> None:
        """Kill its process group (whatever it started too), if it is still there."""
        kill_group(self.proc)

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
