"""Faults: each is injected into a running deployment on the real engine, the agent runs again
(or its watch mode reacts), and the test checks that the stack converged AND that nothing was
lost: a row in each database, the generated secrets, the Ray token, the database volume.

Run alone with `make faults` (pytest -m faults).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import re
import selectors
import subprocess
import threading
import time
from pathlib import Path
from typing import TypedDict

import docker
import pytest

from agent import cluster
from agent.waits import poll
from tests.integration.agent_helpers import App, Node, http, ip_on, ok
from tests.support.agent_cli import agent_cmd, agent_env, run_agent
from tests.support.constants import REPO
from tests.support.kills import (
    EARLIEST,
    Kill,
    enough_landed,
    fault_seed,
    kill_at,
    kill_points,
)
from tests.support.processes import kill_group, spawn
from tests.support.sandbox import Sandbox

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.head_on_a_network]
SERVICES = ["postgres", "redis", "core", "core_worker", "ray-relay", "backend", "worker",
            "frontend"]


# Hidden files the agent keeps in the data dir (anything else hidden is a temporary file).
KEPT_HIDDEN = {".app.env.sha256", ".db-password-proven"}


class Kept(TypedDict):
    """What remember() read: the app's secrets, the Ray token, the database volume's path."""

    secrets: dict[str, str]
    token: str
    volume: str


def remember(stack: App) -> Kept:
    """What must survive: a row per database, the secrets, the token, the volume."""
    for db in ("syntho-core", "syntho-backend"):
        stack.psql(db, "CREATE TABLE IF NOT EXISTS kept (v text); DELETE FROM kept;"
                       f"INSERT INTO kept VALUES ('{db}-row')")
    volume = stack.sandbox.client.volumes.get(f"syntho-database-data-{stack.instance}")
    return Kept(secrets=stack.secrets(), token=stack.head.token,
                volume=str(volume.attrs["Mountpoint"]))


def assert_nothing_lost(stack: App, before: Kept) -> None:
    for db in ("syntho-core", "syntho-backend"):
        assert stack.psql(db, "SELECT v FROM kept") == f"{db}-row"
    assert stack.secrets() == before["secrets"]
    assert (stack.head.data_dir / "ray-token").read_text().strip() == before["token"]
    volume = stack.sandbox.client.volumes.get(f"syntho-database-data-{stack.instance}")
    assert volume.attrs["Mountpoint"] == before["volume"]  # the same volume, not a new one


def assert_converged(stack: App) -> None:
    def healthy(service: str) -> bool:
        health = stack.container(service).attrs["State"].get("Health")
        return health is None or health["Status"] == "healthy"

    for service in SERVICES:
        c = stack.container(service)
        assert c.status == "running", service
        # A service whose dependency was just replaced (the backend asks the core) may still
        # show its last failed check for one interval (2 s) after the run proved the app up.
        assert poll(functools.partial(healthy, service), 30, f"{service} healthy"), (
            service, stack.container(service).attrs["State"].get("Health"))
    assert http(f"http://127.0.0.1:{stack.frontend_port}/")[0] == 200
    names = [c.name for c in stack.sandbox.client.containers.list(
        all=True, filters={"label": f"io.syntho.agent.instance={stack.instance}"})]
    assert len(names) == len(set(names)) == len(SERVICES), names  # none duplicated, no leftovers


def inject(stack: App, service: str, fault: str) -> None:
    c = stack.container(service)
    if fault == "kill":
        c.kill("SIGKILL")
    elif fault == "stop":
        c.stop(timeout=2)
    elif fault == "remove":
        c.remove(force=True)
    else:  # recreated by hand with other settings (its labels kept, as `docker run` would copy)
        attrs = c.attrs
        c.remove(force=True)
        env = [*attrs["Config"]["Env"], "INJECTED_BY_HAND=1"]
        stack.sandbox.client.containers.run(
            attrs["Config"]["Image"], name=attrs["Name"].lstrip("/"), detach=True,
            environment=env, labels=attrs["Config"]["Labels"],
            network=stack.sandbox.client.networks.get(f"syntho-{stack.instance}").name,
            command=attrs["Config"]["Cmd"], entrypoint=attrs["Config"]["Entrypoint"])


# How long a run took to heal each (service, fault): the test below times its run, and the SIGKILL
# rounds spread their kill points over these durations (timing whatever is missing).
HEAL_SECONDS: dict[tuple[str, str], float] = {}


@pytest.mark.parametrize("fault", ["kill", "stop", "remove", "by-hand"])
@pytest.mark.parametrize("service", SERVICES)
def test_a_container_fault_is_healed_by_a_rerun_and_nothing_is_lost(
        stack: App, service: str, fault: str) -> None:
    before = remember(stack)
    inject(stack, service, fault)
    t0 = time.monotonic()
    out = ok(stack.run())
    HEAL_SECONDS[service, fault] = time.monotonic() - t0  # for the SIGKILL rounds
    assert "the app is up" in out
    if fault == "by-hand":
        assert f"recreated syntho-{service}-{stack.instance}" in out
        env = stack.container(service).attrs["Config"]["Env"]
        assert "INJECTED_BY_HAND=1" not in env
    assert_converged(stack)
    assert_nothing_lost(stack, before)


def test_a_foreign_container_on_a_managed_name_is_refused_untouched(stack: App) -> None:
    """A container the agent did not make is never removed: a clear error instead."""
    stack.container("worker").remove(force=True)
    squatter = stack.sandbox.client.containers.run(
        stack.images["busybox"], ["sleep", "600"], detach=True,
        name=f"syntho-worker-{stack.instance}", labels={"owner": "someone-else"})
    try:
        result = stack.run()
        assert result.returncode == 3
        assert "did not create" in result.stderr and result.stderr.count("\n") == 1
        squatter.reload()
        assert squatter.status == "running"
    finally:
        squatter.remove(force=True)
    ok(stack.run())
    assert_converged(stack)


def round_fault(round_: int) -> tuple[str, str]:
    """The container a kill round breaks first and how, so that each round's run does work."""
    return SERVICES[round_ % len(SERVICES)], "remove" if round_ % 2 else "by-hand"


# A heal's length varies by up to a health-check interval from one run to the next: the kill
# points are spread over this share of the timed duration, so that few come after the end.
KILL_SPAN = 0.85


def test_the_agent_killed_at_random_points_always_converges(stack: App) -> None:
    """SYNTHO_FAULT_KILLS rounds (10 in CI; 30 with `make faults`); at least 80% of the kills
    must land while the agent runs (SYNTHO_FAULT_SEED replays their points).

    How long a run lasts depends on its round's work: healing a container recreated by hand
    takes 4-15 s (the foreign container is stopped first: Redis stops at once, the others take
    their stop timeout), a removed one 1.5-4.5 s (the worker has no health check to wait for).
    So round k of n kills at a point drawn within the k-th of n slices of its own work's
    duration, as timed by test_a_container_fault_is_healed... (or here, when run alone)."""
    before = remember(stack)
    rounds = int(os.environ.get("SYNTHO_FAULT_KILLS", "10"))
    rng = random.Random(fault_seed("SYNTHO_FAULT_SEED"))
    secrets_dir = stack.data_dir / "secrets"
    faults = [round_fault(round_) for round_ in range(rounds)]
    for pair in dict.fromkeys(faults):  # any work not timed yet: one uninterrupted run
        if pair not in HEAL_SECONDS:
            inject(stack, *pair)
            t0 = time.monotonic()
            assert "the app is up" in ok(stack.run())
            HEAL_SECONDS[pair] = time.monotonic() - t0
    print("heals take " + ", ".join(f"{s} {f} {HEAL_SECONDS[s, f]:.1f}s"
                                    for s, f in dict.fromkeys(faults)))
    shares = kill_points(rng, rounds, 1.0, earliest=0.0)  # the k-th slice of [0, 1] for round k
    kills: list[Kill[bytes]] = []
    for round_, ((victim, fault), share) in enumerate(zip(faults, shares)):
        # Something to do each round, so kills land inside real work.
        inject(stack, victim, fault)
        at = EARLIEST + share * (KILL_SPAN * HEAL_SECONDS[victim, fault] - EARLIEST)
        t0 = time.monotonic()
        proc = subprocess.Popen(agent_cmd("app", *stack.args()), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill = kill_at(proc, t0, at)  # a random point of the run, not a synchronisation
        kills.append(kill)
        print(f"round {round_} ({victim} {fault}): kill at {at:.2f}s "
              f"{'landed' if kill.landed else f'came after its end (exit {kill.returncode})'}")
        # A run that ended before its kill ended as any run must.
        assert kill.landed or kill.returncode == 0, (round_, kill)
        # Never a half-written file: no temporary file left, every secret whole.
        leftovers = [p.name for p in stack.data_dir.rglob(".*") if p.name.startswith(".") and
                     p.name not in KEPT_HIDDEN and p.is_file()]
        assert not leftovers, (round_, leftovers)
        assert stack.secrets() == before["secrets"], round_
        out = ok(stack.run())
        assert "the app is up" in out, round_
        assert_converged(stack)
    assert enough_landed(kills) == "", enough_landed(kills)
    assert sorted(p.name for p in secrets_dir.iterdir()) == sorted(before["secrets"])
    assert_nothing_lost(stack, before)


class Stamped:
    """Agent runs whose output lines are stamped (time.monotonic()) as they come, by one
    reader over every pipe: a line written before another one (by any of the runs) never gets
    a later stamp, as each is stamped at the first look that finds it. Each run in a process
    group of its own, killed when the with-block ends."""

    def __init__(self, *cmds: list[str]) -> None:
        self.procs = []
        self.started = []
        for cmd in cmds:
            self.started.append(time.monotonic())
            self.procs.append(spawn(cmd, cwd=REPO, env=agent_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE))
        # (stamp, which run, "out" or "err", the line), in the order read
        self.lines: list[tuple[float, int, str, str]] = []
        self._reader = threading.Thread(target=self._read)
        self._reader.start()

    def _read(self) -> None:
        with selectors.DefaultSelector() as sel:
            for i, proc in enumerate(self.procs):
                assert proc.stdout is not None and proc.stderr is not None
                sel.register(proc.stdout, selectors.EVENT_READ, (i, "out"))
                sel.register(proc.stderr, selectors.EVENT_READ, (i, "err"))
            partial: dict[tuple[int, str], bytes] = {}
            while sel.get_map():
                ready = sel.select(timeout=600)
                stamp = time.monotonic()  # one per look: every line it finds
                for key, _ in ready:
                    data = os.read(key.fd, 65536)
                    if not data:
                        sel.unregister(key.fileobj)
                        data = b"\n" if partial.get(key.data) else b""
                    *whole, partial[key.data] = (partial.get(key.data, b"") + data).split(b"\n")
                    self.lines += [(stamp, *key.data, line.decode(errors="replace"))
                                   for line in whole]

    def __enter__(self) -> Stamped:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:  # each one's process group, however the block ended
            kill_group(proc)
        self._reader.join(timeout=60)

    def wait(self) -> list[int]:
        codes = [proc.wait(timeout=600) for proc in self.procs]
        self._reader.join(timeout=60)
        return codes

    def of(self, i: int, stream: str = "out") -> list[tuple[float, str]]:
        return [(at, line) for at, j, s, line in self.lines if j == i and s == stream]


@pytest.mark.parametrize("lock_wait", ["0", "300"])
def test_two_agents_at_once_one_waits_or_refuses_and_nothing_is_corrupted(
        stack: App, lock_wait: str) -> None:
    """Two agents on one data dir, started together, with a container to recreate so that the
    first one's run lasts. --lock-wait 300 (longer than a run): one waits for the other, says
    for whom and how long, and finds nothing left to do. --lock-wait 0: one is refused, naming
    the other, and does nothing. Their output, stamped as it comes, shows that the two never ran
    the reconcile at the same time."""
    before = remember(stack)
    inject(stack, "backend", "remove")
    with Stamped(*[agent_cmd("app", *stack.args(), "--lock-wait", lock_wait)
                   for _ in range(2)]) as runs:  # (both killed if the wait times out)
        codes = runs.wait()
    dump = "\n".join(f"{at:.3f} {i} {s} {line}" for at, i, s, line in runs.lines)
    assert abs(runs.started[1] - runs.started[0]) < 1, dump  # within one lock-wait
    pids = [p.pid for p in runs.procs]
    waiting = [i for i in (0, 1) if any("waiting for another syntho-agent" in line
                                        for _, line in runs.of(i))]
    data_dir = stack.data_dir
    if lock_wait == "0":
        # Not one after the other (both 0): with a container to recreate, the first one's run
        # outlasts the other's start, so the other is refused, with exit 5.
        assert sorted(codes) == [0, 5], dump
        refused = codes.index(5)
        first = 1 - refused
        err = "".join(f"{line}\n" for _, line in runs.of(refused, "err"))
        assert "another syntho-agent" in err and err.count("\n") == 1, dump
        assert (f"another syntho-agent (pid {pids[first]}) is working on {data_dir}"
                in err), dump
        assert runs.of(refused) == [] and waiting == [], dump  # it did nothing, said nothing
        # It was refused while the other one ran, before that one's last line.
        assert runs.of(refused, "err")[0][0] <= runs.of(first)[-1][0], dump
    else:
        # One waited (the one that printed so), then had the lock once the other let go.
        assert codes == [0, 0], dump
        assert len(waiting) == 1, dump
        waiter = waiting[0]
        first = 1 - waiter
        said = runs.of(waiter)
        assert said[0][1] == (f"waiting for another syntho-agent (pid {pids[first]}) on "
                              f"{data_dir}"), dump
        got_at, got_line = said[1]
        match = re.fullmatch(rf"got the lock on {re.escape(str(data_dir))} after (\d+\.\d) s",
                             got_line)
        assert match, dump
        waited = float(match.group(1))
        assert waited > 0.1 and abs(waited - (got_at - said[0][0])) < 0.5, (waited, dump)
        # Non-overlapping: every line of the first run came before the waiter had the lock
        # (and so before anything the waiter did with it).
        assert runs.of(first)[-1][0] <= got_at, dump
        # It found the other run's work done: nothing left to do.
        after = [line for _, line in said[2:]]
        assert any(line.startswith("nothing to do") for line in after), dump
        assert not any("created" in line for line in after), dump
        assert not any("another syntho-agent" in line for _, line in runs.of(first)), dump
    first_out = [line for _, line in runs.of(first)]
    assert any(f"created syntho-backend-{stack.instance}" in line for line in first_out), dump
    assert any("the app is up" in line for line in first_out), dump
    assert_converged(stack)
    assert_nothing_lost(stack, before)


@pytest.mark.parametrize("damage", ["truncated", "emptied", "unreadable"])
@pytest.mark.parametrize("name", ["secrets/postgres-password", "secrets/core-secret-key",
                                  "ray-token"])
def test_a_damaged_data_dir_file_is_named_and_never_replaced(
        stack: App, name: str, damage: str) -> None:
    path = (stack.head.data_dir if name == "ray-token" else stack.data_dir) / name
    original = path.read_bytes()
    core_id = stack.container("core").id
    try:
        if damage == "truncated":
            path.write_bytes(original[:5] + b"\n" + original[5:9])  # two lines: not a secret
        elif damage == "emptied":
            path.write_bytes(b"")
        else:  # root reads through any mode, so make it a directory instead
            path.unlink()
            path.mkdir()
        damaged = path.read_bytes() if path.is_file() else None
        result = (run_agent("head", *stack.head.args()) if name == "ray-token"
                  else stack.run())
        assert result.returncode == 3, result.stdout + result.stderr
        assert str(path) in result.stderr and result.stderr.count("\n") == 1
        assert ("damaged" in result.stderr) or ("cannot read" in result.stderr)
        assert (path.read_bytes() if path.is_file() else None) == damaged  # never replaced
        assert stack.container("core").id == core_id
    finally:
        if path.is_dir():
            path.rmdir()
        path.write_bytes(original)
        path.chmod(0o600)


def test_a_worker_cut_off_from_the_head_rejoins_when_the_network_returns(
        sandbox: Sandbox, images: dict[str, str], head: Node) -> None:
    token = (head.data_dir / "ray-token").read_text().strip()
    head_ip = ip_on(head.container("ray-head"), sandbox.network)
    worker = Node(sandbox, images, "w1")
    ok(worker.run("worker", "--head", head_ip, env={"SYNTHO_AGENT_TOKEN": token}))
    net = sandbox.client.networks.get(sandbox.network)
    net.disconnect(worker.container("ray-worker"))
    # The head notices the silent node (Ray's health checks), then the network returns.
    assert poll(lambda: len(cluster.alive_nodes(head_ip, token)) == 1, 180, "worker seen dead")
    net.connect(worker.container("ray-worker"))
    ok(worker.run("worker", "--head", head_ip))
    assert poll(lambda: len(cluster.alive_nodes(head_ip, token)) == 2, 180, "worker rejoined")


@pytest.mark.engine_restart  # every container on the engine stops: .ci/run runs it alone
def test_the_engine_restarted_the_deployment_comes_back(stack: App) -> None:
    """dockerd itself restarts (as on a reboot): the agent's rerun converges, nothing lost."""
    before = remember(stack)
    subprocess.run(["pkill", "-TERM", "-x", "dockerd"], check=True)
    client = stack.sandbox.client
    assert poll(lambda: subprocess.run(["pgrep", "-x", "dockerd"]).returncode != 0, 60,
                "dockerd stopped")
    subprocess.run(["bash", str(REPO / ".ci/engine.sh")], check=True, capture_output=True)
    assert poll(lambda: client.ping(), 60, "dockerd answers")
    ok(run_agent("head", *stack.head.args()))
    if stack.head.network:  # the engine may have given the head another address on its network
        ip = ip_on(client.containers.get(f"ray-head-{stack.head.instance}"), stack.head.network)
        stack.head = dataclasses.replace(stack.head, address=ip, node_ip=ip)
    out = ok(stack.run())
    assert "the app is up" in out
    assert_converged(stack)
    assert_nothing_lost(stack, before)
    code, body = http(f"http://localhost:{stack.backend_port}/api/docs/")
    assert code == 200 and body["dependencies"]["core"]["ok"]


def test_secrets_never_appear_on_any_command_line_while_the_agent_runs(stack: App) -> None:
    """Scan every process's argv (containers' included) during a run that does real work."""
    secret_values = [v.strip() for v in stack.secrets().values()] + [stack.head.token]
    stack.container("backend").remove(force=True)
    proc = subprocess.Popen(agent_cmd("app", *stack.args()), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    while proc.poll() is None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace")
            except OSError:
                continue
            seen.add(argv)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert len(seen) > 10
    for value in secret_values:
        assert not any(value in argv for argv in seen)
        assert value not in out + err
    for path in [*(stack.data_dir / "secrets").iterdir(), stack.data_dir / "app.env",
                 stack.head.data_dir / "ray-token"]:
        st = path.stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o600, os.getuid()), path


def test_postgres_and_redis_are_not_reachable_through_the_host_unless_asked(stack: App) -> None:
    for service in ("postgres", "redis"):
        c = stack.container(service)
        assert not c.attrs["HostConfig"]["PortBindings"]
        assert not c.attrs["NetworkSettings"]["Ports"] or not any(
            c.attrs["NetworkSettings"]["Ports"].values())
    proxies = subprocess.run(["pgrep", "-af", "docker-proxy"], capture_output=True,
                             text=True).stdout
    for port in ("-container-port 5432", "-container-port 6379"):
        assert port not in proxies


def test_a_wrong_token_never_joins(sandbox: Sandbox, images: dict[str, str],
                                   head: Node) -> None:
    token = (head.data_dir / "ray-token").read_text().strip()
    head_ip = ip_on(head.container("ray-head"), sandbox.network)
    bad = Node(sandbox, images, "bad")
    result = bad.run("worker", "--head", head_ip, "--ready-timeout", "15",
                     env={"SYNTHO_AGENT_TOKEN": "0" * 64})
    assert result.returncode == 4 and "InvalidAuthToken" in result.stderr
    assert len(cluster.alive_nodes(head_ip, token)) == 1
    assert "0" * 64 not in result.stdout + result.stderr


@pytest.fixture(autouse=True)
def _engine_answers(docker_client: docker.DockerClient) -> None:
    """Every fault test starts against an engine that answers (the restart test stops it)."""
    assert poll(lambda: _ping(docker_client), 60, "engine")


def _ping(client: docker.DockerClient) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False
