"""Every file-system failure is one line and exit 3; SIGTERM and SIGINT stop a run cleanly.

The table runs each command that writes or reads the data dir or an output path against four
places: a read-only file system, a full one, a directory only root may enter (the agent run as
another user who is in the docker group, so the engine would answer it), and a directory whose
parent does not exist. A refusal is exactly one line on stderr that names the path and says what
to do, exit 3, no traceback, the place unchanged, no temporary file left anywhere, the engine
unchanged. Where there is nothing to refuse (status needs nothing there; a missing data dir or
--root is made, parents and all) the row says what happens instead.

Needs root (mount, chmod that binds others) and the engine.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import pytest
import yaml

from agent import failures, store, systemd
from agent.lock import data_dir_lock
from agent.spec import LABEL_MANAGED
from tests.integration import agent_helpers as helpers
from tests.support.agent_cli import Agent, agent_cmd, agent_env
from tests.support.constants import AGENT_INSTANCE_LABEL, NOFILE, REPO, TEST_LABEL
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

NOBODY = 54321  # a uid with no passwd entry: no access to root's files
NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
CONDITIONS = ("read-only", "full", "unreadable", "missing-parent")
SECRET = "fs-test-secret-7c1d0e"


# ---- the places ------------------------------------------------------------------------------

def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


@dataclass
class Place:
    """The directory a cell points the agent at (a data dir, an output's folder, a --root)."""

    path: Path
    open: Path  # anyone may write here: the command's other paths, HOME
    as_nobody: bool  # run the agent as NOBODY (root passes every permission check)


def fill(folder: Path) -> None:
    """Write into folder until its file system refuses: ENOSPC."""
    fd = os.open(folder / "fill", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


@contextmanager
def place(condition: str, cell: Path) -> Iterator[Place]:
    """The place, with something in it already (a kept file, a secret) where it exists."""
    open_dir = cell / "open"
    open_dir.mkdir(parents=True)
    open_dir.chmod(0o777)
    path = cell / "p"
    mounted = False
    try:
        if condition == "missing-parent":
            path = cell / "missing" / "p"
        else:
            path.mkdir()
        if condition in ("read-only", "full"):
            mount("-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(path))
            mounted = True
        if condition != "missing-parent":
            (path / "keep").write_text("kept\n")
            (path / "secrets").mkdir(mode=0o700)
            (path / "secrets" / "postgres-password").write_text(SECRET + "\n")
        if condition == "read-only":
            mount("-o", "remount,ro", str(path))
        elif condition == "full":
            fill(path)
        elif condition == "unreadable":
            path.chmod(0o700)  # root's, and only root's
        yield Place(path, open_dir, as_nobody=condition == "unreadable")
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=False)


def files(folder: Path) -> dict[str, str]:
    """Every file under folder (as root sees it): relative path -> sha256."""
    found: dict[str, str] = {}
    if folder.exists():
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                found[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def dot_files(folder: Path) -> set[str]:
    """Files whose name starts with a dot: the agent's temporary files look like that
    (`.NAME.xxxxxxxx`, `.write-check.xxxxxxxx`); no test here makes one of its own."""
    return {name for name in files(folder) if Path(name).name.startswith(".")}


def engine_snapshot(sandbox: Sandbox) -> set[tuple[str, str, str]]:
    """Every container, network and volume the agent could have made or touched, with its ID
    and state: `unchanged` is equality. That is everything labelled by an agent (everything it
    makes is) or by this test, but what other tests running meanwhile own (another sandbox's
    label or agent instance)."""
    def ours(labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        instance = labels.get(AGENT_INSTANCE_LABEL)
        test = labels.get(TEST_LABEL)
        if instance is None and test is None:
            return LABEL_MANAGED in labels
        return (instance is None or instance in sandbox.instances) and test in (None, sandbox.id)

    return helpers.engine_snapshot(sandbox.client, keep=ours)


# ---- running the agent -----------------------------------------------------------------------

@dataclass(frozen=True)
class Runner:
    """How NOBODY runs the agent: a Python it may execute, the agent's package it may read."""

    python: str
    pythonpath: str
    docker_gid: int

    def cmd(self, *args: str) -> list[str]:
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                f"--groups={self.docker_gid}", self.python, "-m", "agent", *args]


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A folder anyone may enter (pytest's are under root's 0700 folder)."""
    folder = Path(tempfile.mkdtemp(prefix="syntho-fs-test-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.fixture(scope="module")
def nobody(base: Path) -> Runner:
    """A copy of the agent NOBODY can read, and the first Python that imports it as NOBODY:
    this one (its virtualenv's packages), else the system's with those packages on the path."""
    try:
        docker_gid = grp.getgrnam("docker").gr_gid
    except KeyError:
        pytest.fail("no docker group: the engine's socket must be open to a group "
                    "(.ci/run installs Debian's engine, which makes it)", pytrace=False)
    package = base / "package"
    shutil.copytree(REPO / "agent", package / "agent",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for p in [package, *package.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    site = sysconfig.get_paths()["purelib"]
    tried = []
    for python, path in ((sys.executable, str(package)),
                         ("/usr/bin/python3", f"{package}:{site}")):
        runner = Runner(python, path, docker_gid)
        probe = subprocess.run(runner.cmd("version"), cwd=base, capture_output=True,
                               text=True, env=agent_env({"PYTHONPATH": path}), timeout=60)
        if probe.returncode == 0:
            return runner
        tried.append(f"{python}: {probe.stderr.strip()[-300:]}")
    pytest.fail(f"uid {NOBODY} cannot run the agent with any Python: {tried}", pytrace=False)


def run(place: Place, nobody: Runner, args: list[str], env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    extra = {"HOME": str(place.open), "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    if place.as_nobody:
        return subprocess.run(nobody.cmd(*args), cwd=place.open, capture_output=True, text=True,
                              timeout=120, env=agent_env({**extra,
                                                          "PYTHONPATH": nobody.pythonpath}))
    return subprocess.run(agent_cmd(*args), cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=agent_env(extra))


# ---- the table -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Refused:
    """Exit 3 and this one line (after `syntho-agent: error: `; {p} is the place's path)."""

    line: str


@dataclass(frozen=True)
class Runs:
    """Not refused: this exit code and output, and what must hold afterwards."""

    code: int = 0
    says: str = ""  # in stdout + stderr; {p} is the place's path
    env: dict[str, str] = field(default_factory=dict)
    after: Callable[[Place], None] | None = None


Expect = Union[Refused, Runs]


@dataclass(frozen=True)
class Row:
    name: str
    args: Callable[[Place, str], list[str]]  # (place, instance) -> the command line
    expect: dict[str, Expect]


def data_dir_made(place: Place) -> None:
    assert place.path.is_dir() and place.path.stat().st_mode & 0o777 == 0o700


def logs_written(place: Place) -> None:
    assert (place.open / "logs.log").read_text().endswith("\n")


def logs_not_written(place: Place) -> None:
    assert not (place.open / "logs.log").exists()


def emptied(place: Place) -> None:
    assert place.path.is_dir() and not any(place.path.iterdir())  # a mount point: kept


def installed(place: Place) -> None:
    config = yaml.safe_load((place.path / "etc/syntho-agent/head.yaml").read_text())
    assert isinstance(config, dict)
    unit = (place.path / "etc/systemd/system/syntho-agent-head.service").read_text()
    assert "ExecStart=" in unit and unit.endswith("WantedBy=multi-user.target\n")


def token_made(place: Place) -> None:
    token = place.path / "ray-token"
    assert len(token.read_text().strip()) == 64 and token.stat().st_mode & 0o777 == 0o600


def role(name: str, *more: str) -> Row:
    """A role command: it checks its data dir before it connects to the engine."""
    return Row(name, lambda pl, inst: [name, "--data-dir", str(pl.path), "--instance", inst,
                                       *more], {
        "read-only": Refused("cannot write {p}: Read-only file system; its file system is "
                             "mounted read-only: choose another --data-dir"),
        "full": Refused("cannot write {p}: No space left on device; free space on its file "
                        "system or choose another --data-dir"),
        "unreadable": Refused("cannot write {p}: Permission denied; run as the user that owns "
                              "it (root) or fix its permissions"),
        # made, parents and all, before the engine is asked (here it does not answer)
        "missing-parent": Runs(3, "does not answer", NO_ENGINE, data_dir_made),
    })


def launcher_args(pl: Place, data_dir: Path, output: Path) -> list[str]:
    pub = pl.open / "id.pub"
    pub.write_text("ssh-ed25519 AAAAC3Nza operator\n")
    pub.chmod(0o644)
    return ["launcher-config", "--provider", "aws", "--ssh-public-key", str(pub),
            "--data-dir", str(data_dir), "--output", str(output)]


ROWS = [
    role("head"),
    role("worker", "--head", "127.0.0.1"),
    role("app", "--head", "127.0.0.1"),
    Row("status", lambda pl, inst: ["status", "--data-dir", str(pl.path), "--instance", inst],
        {c: Runs(0, "nothing managed by syntho-agent here") for c in CONDITIONS}),
    Row("down --purge",
        lambda pl, inst: ["down", "--purge", "--yes", "--data-dir", str(pl.path),
                          "--instance", inst], {
            "read-only": Refused("cannot remove {p}: Read-only file system; its file system "
                                 "is mounted read-only: choose another --data-dir"),
            "full": Runs(0, "removed {p}", after=emptied),  # a full disk does not stop a purge
            "unreadable": Refused("cannot remove {p}: Permission denied; run as the user that "
                                  "owns it (root) or fix its permissions"),
            "missing-parent": Runs(0),
        }),
    Row("logs (data dir)",
        lambda pl, inst: ["logs", "--data-dir", str(pl.path), "--instance", inst,
                          "--output", str(pl.open / "logs.log")], {
            "read-only": Runs(0, "wrote the logs of 0 container(s)", after=logs_written),
            "full": Runs(0, "wrote the logs of 0 container(s)", after=logs_written),
            # what it cannot read it cannot redact: it refuses, and writes nothing
            "unreadable": Refused("cannot read {p}/secrets (to redact the secrets in it from "
                                  "the logs): Permission denied; run as the user that owns it "
                                  "(root) or fix its permissions"),
            "missing-parent": Runs(0, "wrote the logs of 0 container(s)", after=logs_written),
        }),
    Row("logs --output",
        lambda pl, inst: ["logs", "--data-dir", str(pl.open / "data"), "--instance", inst,
                          "--output", str(pl.path / "out.log")], {
            "read-only": Refused("cannot write {p}/out.log: Read-only file system; its file "
                                 "system is mounted read-only: choose another --output"),
            "full": Refused("cannot write {p}/out.log: No space left on device; free space on "
                            "its file system or choose another --output"),
            "unreadable": Refused("cannot write {p}/out.log: Permission denied; run as the "
                                  "user that owns it (root) or fix its permissions"),
            "missing-parent": Refused("cannot write {p}/out.log: No such file or directory; {p} "
                                      "does not exist: create it or choose another --output"),
        }),
    Row("install --root",
        lambda pl, inst: ["install", "head", "--no-enable", "--root", str(pl.path)], {
            "read-only": Refused("cannot create {p}/etc/syntho-agent: Read-only file system; "
                                 "its file system is mounted read-only: choose another --root"),
            "full": Refused("cannot write {p}/etc/syntho-agent: No space left on device; free "
                            "space on its file system or choose another --root"),
            "unreadable": Refused("cannot create {p}/etc/syntho-agent: Permission denied; run "
                                  "as the user that owns it (root) or fix its permissions"),
            "missing-parent": Runs(0, "wrote /etc/syntho-agent/head.yaml", after=installed),
        }),
    # launcher-config's own message for its output (agent/launcher.py), the guard's for the
    # data dir, and store.read_secret's for a token it cannot read
    Row("launcher-config --output",
        lambda pl, inst: launcher_args(pl, pl.open / "data", pl.path / "cluster.yaml"), {
            "read-only": Refused("cannot write {p}/cluster.yaml: Read-only file system; choose "
                                 "another --output"),
            "full": Refused("cannot write {p}/cluster.yaml: No space left on device; choose "
                            "another --output"),
            "unreadable": Refused("cannot write {p}/cluster.yaml: Permission denied; choose "
                                  "another --output"),
            "missing-parent": Refused("cannot write {p}/cluster.yaml: No such file or "
                                      "directory; choose another --output"),
        }),
    Row("launcher-config --data-dir",
        lambda pl, inst: launcher_args(pl, pl.path, pl.open / "cluster.yaml"), {
            "read-only": Refused("cannot write {p}/ray-token: Read-only file system; its file "
                                 "system is mounted read-only: choose another --data-dir"),
            "full": Refused("cannot write {p}/ray-token: No space left on device; free space "
                            "on its file system or choose another --data-dir"),
            "unreadable": Refused("cannot read {p}/ray-token: Permission denied; fix its "
                                  "permissions (chmod 600, owned by the user running the "
                                  "agent) or restore it from a backup"),
            "missing-parent": Runs(0, "generated the cluster's Ray token", after=token_made),
        }),
]


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return lines[0]


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_a_file_system_failure_is_one_line_and_exit_3(
        row: Row, condition: str, base: Path, nobody: Runner, sandbox: Sandbox) -> None:
    expect = row.expect[condition]
    cell = Path(tempfile.mkdtemp(dir=base))
    cell.chmod(0o755)
    with place(condition, cell) as pl:
        before = engine_snapshot(sandbox)
        kept = files(pl.path)
        around = dot_files(pl.open)
        args = row.args(pl, sandbox.instance("fs"))
        result = run(pl, nobody, args, expect.env if isinstance(expect, Runs) else None)
        p = str(pl.path)
        if isinstance(expect, Refused):
            assert result.returncode == 3, f"{result.stdout}\n{result.stderr}"
            assert one_line(result) == "syntho-agent: error: " + expect.line.format(p=p)
            assert files(pl.path) == kept, "the place changed"
            assert not pl.path.parent.exists() or condition != "missing-parent"
        else:
            out = result.stdout + result.stderr
            assert result.returncode == expect.code, out
            assert "Traceback" not in out, out
            assert expect.says.format(p=p) in out
            if expect.code == 3:
                one_line(result)
            if expect.after is not None:
                expect.after(pl)
        assert not dot_files(pl.path), "a temporary file was left behind"
        assert dot_files(pl.open) == around, "a temporary file was left behind"
        assert engine_snapshot(sandbox) == before


def test_logs_refuse_a_secret_they_cannot_read(base: Path, nobody: Runner,
                                               sandbox: Sandbox) -> None:
    """A data dir the user may enter but whose secrets/ or one secret it may not read: before,
    the folder's error was swallowed and the logs written unredacted."""
    cell = Path(tempfile.mkdtemp(dir=base))
    cell.chmod(0o755)
    data = cell / "data"
    (data / "secrets").mkdir(parents=True)
    data.chmod(0o755)
    secret = data / "secrets" / "postgres-password"
    secret.write_text(SECRET + "\n")
    pl = Place(data, cell / "open", as_nobody=True)
    pl.open.mkdir(mode=0o777)
    pl.open.chmod(0o777)
    args = ["logs", "--data-dir", str(data), "--instance", sandbox.instance("fs"), "--output",
            str(pl.open / "logs.log")]
    for unreadable, mode in ((data / "secrets", 0o700), (secret, 0o600)):
        (data / "secrets").chmod(0o755)
        secret.chmod(0o644)
        unreadable.chmod(mode)
        result = run(pl, nobody, args)
        assert result.returncode == 3, result.stdout + result.stderr
        assert one_line(result) == (
            f"syntho-agent: error: cannot read {unreadable} (to redact the secrets in it from "
            "the logs): Permission denied; run as the user that owns it (root) or fix its "
            "permissions")
        logs_not_written(pl)
    secret.chmod(0o644)
    assert run(pl, nobody, args).returncode == 0
    logs_written(pl)


def test_a_write_that_fails_leaves_the_old_file_or_the_whole_new_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """store.write_atomic when the file's sync, the directory's sync or a signal fails it: never
    a temporary file, never half a file, and the error names the file (for the CLI's line)."""
    target = tmp_path / "ray-token"
    target.write_text("old\n")
    real_fsync = os.fsync

    def failing_fsync(failing: int) -> Callable[[int], None]:
        """os.fsync failing its `failing`-th call with ENOSPC."""
        calls: list[int] = []

        def fsync(fd: int) -> None:
            calls.append(fd)
            if len(calls) == failing:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        return fsync

    for failing, expected in ((1, "old\n"), (2, "new\n")):  # the file's sync, the folder's
        monkeypatch.setattr(os, "fsync", failing_fsync(failing))
        with pytest.raises(OSError) as raised:
            store.write_atomic(target, "new\n")
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert raised.value.filename == str(target) and raised.value.errno == errno.ENOSPC
        assert failures.os_error_message(raised.value, {}).startswith(
            f"cannot write {target}: No space left on device; free space on its file system")
        assert target.read_text() == expected
        assert not dot_files(tmp_path)
        target.write_text("old\n")

    def interrupted(fd: int) -> None:
        raise failures.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(failures.Interrupted):
        store.write_atomic(target, "new\n")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert target.read_text() == "old\n" and not dot_files(tmp_path)


def test_the_lock_on_a_full_disk_names_its_file(base: Path) -> None:
    """The lock's own write (the holder's pid) on a full file system: the path, not a bare
    `[Errno 28]`; nothing left but the lock file (which is not data)."""
    cell = Path(tempfile.mkdtemp(dir=base))
    with place("full", cell) as pl:
        with pytest.raises(OSError) as raised:
            with data_dir_lock(pl.path, 0, print):
                pass
        assert raised.value.errno == errno.ENOSPC
        assert raised.value.filename == str(pl.path / "agent.lock")
        assert not dot_files(pl.path)


# ---- signals ---------------------------------------------------------------------------------

def test_sigterm_and_sigint_stop_a_run_in_one_line_and_release_the_lock(
        sandbox: Sandbox, images: dict[str, str], tmp_path: Path) -> None:
    """A worker waiting for a head that never answers (TEST-NET-1: nothing is there)."""
    data_dir = tmp_path / "data"
    args = ["worker", "--head", "192.0.2.1", "--wait", "60", "--no-auth", "--lock-wait", "0",
            "--data-dir", str(data_dir), "--instance", sandbox.instance("sig"),
            "--ray-image", images["ray"], "--nofile", NOFILE]
    before = engine_snapshot(sandbox)
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        agent = Agent(*args)
        try:
            # (a lock still held by the one before would make this one refuse, exit 5)
            agent.wait_for("waiting for the Ray head at 192.0.2.1:6379", timeout=60)
            exit_code, out, err = agent.signal(sig)
        finally:
            agent.stop()
        assert exit_code == code, out + err
        assert "Traceback" not in out + err
        assert err == (f"syntho-agent: interrupted ({signal.Signals(sig).name}) while running "
                       "`worker`; nothing is half-written: run the same command again to "
                       "converge\n")
        assert not any("another syntho-agent" in line for line in agent.seen)
        assert not dot_files(data_dir)
    assert engine_snapshot(sandbox) == before


def test_sigterm_stops_a_watch_with_exit_0_and_the_containers_keep_running(
        sandbox: Sandbox, images: dict[str, str], tmp_path: Path) -> None:
    """What `systemctl stop` does to the unit `install` writes."""
    sandbox.create_network()
    instance = sandbox.instance("watch")
    agent = Agent("head", "--watch", "--data-dir", str(tmp_path / "head"), "--instance",
                  instance, "--network", sandbox.network, "--ray-image", images["ray"],
                  "--shm-size", "512mb", "--nofile", NOFILE)
    try:
        # The head and its GCS Redis (GCS fault tolerance, on by default).
        agent.wait_for("watching 2 container(s) of the head role", timeout=240)
        code, out, err = agent.signal(signal.SIGTERM)
    finally:
        agent.stop()
    assert code == 0, out + err
    assert err == ""
    assert out == "stopped watching (SIGTERM); the containers keep running\n"
    container = sandbox.client.containers.get(f"ray-head-{instance}")
    assert container.status == "running"
    # One stopped in its first converge exits 143: the unit counts that as a clean stop.
    unit = systemd.unit_text("head", Path("/etc/syntho-agent/head.yaml"), ["syntho-agent"])
    assert "SuccessExitStatus=143\n" in unit

