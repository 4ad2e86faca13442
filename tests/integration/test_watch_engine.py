"""A watcher (`--watch`, what the systemd unit runs) is a daemon: an engine that does not answer
yet (a boot that starts the agent before dockerd) or restarts under its first converge is waited
for, and the role converged once it answers; a run without --watch still exits 3 at once.

The engine is reached through a socket of the test's own (DOCKER_HOST), which forwards to the
real one only from the moment the test says so: the agent sees no engine, then the engine.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agent_helpers import Node
from tests.support.agent_cli import agent_cmd, agent_env, run_agent
from tests.support.constants import REPO
from tests.support.processes import started
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

ENGINE = "/var/run/docker.sock"


class Forwarder:
    """A unix socket at `path` that relays each connection to the real engine's socket."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine.connect(ENGINE)
            for a, b in ((client, engine), (engine, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()


def lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    found: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            found.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return found


def wait_for(lines: queue.Queue[str], text: str, timeout: float, seen: list[str]) -> bool:
    """Whether a line holding text comes within timeout (each line read is kept in seen)."""
    with contextlib.suppress(queue.Empty):
        while True:
            seen.append(lines.get(timeout=timeout))
            if text in seen[-1]:
                return True
    return False


@pytest.fixture
def no_engine_yet(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "engine.sock"
    yield path
    path.unlink(missing_ok=True)


def test_a_watcher_started_before_the_engine_waits_for_it_then_converges(
        sandbox: Sandbox, images: dict[str, str], no_engine_yet: Path) -> None:
    sandbox.create_network()
    node = Node(sandbox, images, "head")
    env = agent_env({"DOCKER_HOST": f"unix://{no_engine_yet}"})
    # Without --watch: exit 3 at once, as before.
    done = run_agent("head", *node.args(), env=env)
    assert done.returncode == 3 and "does not answer" in done.stderr, done.stderr
    seen: list[str] = []
    with started(agent_cmd("head", *node.args(), "--watch"), cwd=REPO, env=env,
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        lines = lines_of(proc)
        # It waits, saying so, with a growing pause (0.5 s, 1 s, 2 s ...), and does not exit.
        assert wait_for(lines, "trying again in 1.0 s", 30, seen), seen
        assert proc.poll() is None, seen
        forwarder = Forwarder(no_engine_yet)
        try:
            assert wait_for(lines, "watching 2 container(s) of the head role", 240, seen), seen
            assert any("ray head ready" in line for line in seen), seen
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, seen
        finally:
            forwarder.close()
    assert node.container("ray-head").status == "running"
    assert not any("Traceback" in line for line in seen), seen
