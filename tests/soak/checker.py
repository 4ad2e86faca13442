"""The independent checker: a thread that looks at the deployment as a user could, all
through the soak, records every health look, and records a violation whenever something that
must never happen has happened. A second thread writes a row into the backend's database
every few seconds and remembers the ones Postgres acknowledged.

It never asks the agent (no `status`): only the VMs' engines, the head's dashboard, the core's
status JSON, the frontend's URL, Postgres, the files in the data dirs, and the supervisor's
lines in the agent log (as systemd's journal would show them). What counts as a violation is
decided by the pure functions of tests/soak/verdict.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.soak import health, verdict
from tests.soak.faults import Fault
from tests.soak.lab import AGENT_LOG, DATA, SERVICE_LABEL, SoakLab, fresh_client, safe_sh
from tests.support.vms import VM

LINGER = 60.0  # seconds an unexpected agent-labelled container may exist (a throw-away one)
WRITE_EVERY = 3.0
PSQL = "docker exec syntho-postgres psql -U syntho -d syntho-backend -v ON_ERROR_STOP=1 -Atc"


@dataclass(frozen=True)
class Violation:
    """One occurrence: a violation seen again (the next round of checks) is another one."""

    at: float
    what: str


@dataclass
class Record:
    """Everything the checker saw."""

    looks: list[health.Look] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)
    write_failures: int = 0
    attempts: list[verdict.Attempt] = field(default_factory=list)  # every insert, in order
    agent_exits: dict[str, int] = field(default_factory=dict)


END = "#end"  # the listing's last line: without it the answer was cut short, not the files gone


def fingerprints(vm: VM) -> dict[str, str] | None:
    """sha256 of every file under the data dir's secrets/ and of its ray-token; None when the
    VM did not answer in full."""
    code, out, _ = safe_sh(vm, f"cd {DATA} && {{ find secrets ray-token -type f 2>/dev/null "
                           f"| sort | xargs -r sha256sum; echo '{END}'; }}")
    lines = out.splitlines()
    if code != 0 or not lines or lines[-1] != END:
        return None
    return {path: digest for digest, path in (line.split() for line in lines[:-1])}


def start_fingerprints(vms: dict[str, VM], tries: int = 3, pause: float = 5.0,
                       read: Callable[[VM], dict[str, str] | None] = fingerprints,
                       ) -> dict[str, dict[str, str]]:
    """Each VM's fingerprints at the start; a VM that does not answer in full (after a few
    tries) is an error: the secrets of a VM not read at the start would go unchecked."""
    found: dict[str, dict[str, str]] = {}
    for name, vm in vms.items():
        for attempt in range(tries):
            got = read(vm)
            if got is not None:
                found[name] = got
                break
            if attempt + 1 < tries:
                time.sleep(pause)
        else:
            raise RuntimeError(f"vm-{name}: could not read its secrets' fingerprints at the "
                               f"start ({tries} tries): they could not be checked")
    return found


def moment(stamp: str) -> float | None:
    """An engine's RFC 3339 time (2026-12-07T11:00:00.123456789Z) as a Unix time."""
    stamp = stamp.strip()
    if not stamp.endswith("Z"):
        return None
    whole, _, fraction = stamp[:-1].partition(".")
    try:
        at = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(
            tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    return at.timestamp() + float(f"0.{fraction or 0}")


def inspect_held(vm: VM, names: list[str]) -> list[verdict.Held] | None:
    """Name, state, service and creation time of these containers (those that exist); None
    when the engine does not answer."""
    fmt = (f"{{{{.Name}}}}|{{{{.State.Status}}}}|{{{{index .Config.Labels \"{SERVICE_LABEL}\"}}}}"
           f"|{{{{.Created}}}}")
    code, out, _ = safe_sh(vm, "for n in " + " ".join(names) + f"; do docker inspect -f '{fmt}' "
                           "\"$n\" 2>/dev/null; done; docker info >/dev/null 2>&1")
    if code != 0:
        return None
    held = []
    for line in out.splitlines():
        parts = line.split("|")
        created = moment(parts[3]) if len(parts) == 4 else None
        if created is not None:
            held.append(verdict.Held(parts[0].lstrip("/"), parts[1], parts[2], created))
    return held


def worker_token(vm: VM) -> str | None:
    """The Ray token the VM's ray-worker container was created with (None: no container)."""
    code, out, _ = safe_sh(vm, "docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "
                           "ray-worker")
    if code != 0:
        return None
    for line in out.splitlines():
        if line.startswith("RAY_AUTH_TOKEN="):
            return line.split("=", 1)[1]
    return ""


class Checker:
    """Start it once the deployment is healthy; stop() it after the final checks."""

    def __init__(self, lab: SoakLab, every: float = 1.0) -> None:
        self.lab = lab
        self.every = every
        self.record = Record()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], float] = {}  # (vm, name) of unexpected: first seen
        self._kept_seen: dict[tuple[str, str], float] = {}  # (vm, kept name): first seen ready
        self.started = 0.0  # when start() started the threads: the soak's exits are after it
        self.notes: list[str] = []
        vms = lab.on(fresh_client())
        self.secrets = start_fingerprints(vms)
        self._threads = [threading.Thread(target=self._watch, name="soak-checker", daemon=True),
                         threading.Thread(target=self._write, name="soak-writer", daemon=True)]

    def start(self) -> None:
        vms = self.lab.on(fresh_client())
        code, out, err = safe_sh(vms["app"], f"{PSQL} 'CREATE TABLE IF NOT EXISTS soak_rows "
                                 "(id bigint PRIMARY KEY, at double precision)'")
        if code != 0:
            raise RuntimeError(f"could not create the soak table: {out}{err}")
        self.started = time.time()
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def violate(self, what: str, at: float | None = None) -> None:
        """Record one occurrence (the report counts the same text seen again)."""
        with self._lock:
            self.record.violations.append(Violation(time.time() if at is None else at, what))

    # ---- the writer ----

    def _write(self) -> None:
        app = self.lab.on(fresh_client())["app"]
        n = 0
        while not self._stop.wait(WRITE_EVERY):
            n += 1
            began = time.time()
            code, out, _ = safe_sh(app, f"{PSQL} 'INSERT INTO soak_rows VALUES ({n}, "
                                   f"{began}) RETURNING id'", timeout=15)
            # psql prints the returned id, then the command's tag (INSERT 0 1)
            acked = code == 0 and out.split()[:1] == [str(n)]
            with self._lock:
                self.record.attempts.append(verdict.Attempt(n, began, time.time(), acked))
                if acked:
                    self.record.acknowledged.append(n)
                else:
                    self.record.write_failures += 1

    # ---- the watcher ----

    def _watch(self) -> None:
        vms = self.lab.on(fresh_client())
        rounds = 0
        while not self._stop.is_set():
            found = health.look(vms, self.lab.token, self.lab.frontend_url, self.lab.expected)
            with self._lock:
                self.record.looks.append(found)
            if rounds % 5 == 0:
                self.invariants(vms)
            rounds += 1
            self._stop.wait(max(0.0, self.every - (found.ended - found.began)))

    def invariants(self, vms: dict[str, VM]) -> None:
        """Every check of what must never happen, once."""
        for name, vm in vms.items():
            self.containers(name, vm)
            self.same_secrets(name, vm)
            self.agent_alive(name, vm)
        for name in ("w1", "w2"):
            token = worker_token(vms[name])
            if token is not None and token != self.lab.token:
                self.violate(f"vm-{name}: ray-worker runs with another cluster's token")
        self.rows_kept(vms["app"])

    def containers(self, name: str, vm: VM) -> None:
        boxes = health.managed(vm)
        if boxes is None:
            return
        running: dict[str, list[str]] = {}
        for b in boxes:
            if b.state == "running":
                running.setdefault(b.service, []).append(b.name)
        for service, names in running.items():
            if len(names) > 1:
                self.violate(f"vm-{name}: {len(names)} running containers of {service}: "
                             f"{sorted(names)}")
        self.kept(name, vm, boxes)
        now = time.time()
        wanted = self.lab.expected[name]
        expected = set(wanted) | {f"{n}-previous" for n in wanted}
        present = {b.name for b in boxes}
        for gone in [k for k in self._seen if k[0] == name and k[1] not in present]:
            del self._seen[gone]
        for b in boxes:
            if b.name in expected:
                continue
            first = self._seen.setdefault((name, b.name), now)
            if now - first > LINGER:
                self.violate(f"vm-{name}: {b.name} ({b.state}) carries the agent's labels but "
                             f"is none of the role's containers, for over {LINGER:.0f} s")

    def kept(self, name: str, vm: VM, boxes: list[health.Box]) -> None:
        """The VM's `NAME-previous` containers (verdict.kept_problems), and none outliving
        its rollout: there for over KEPT_LINGER s while NAME is ready."""
        suffix = verdict.KEPT_SUFFIX
        kept = [b.name for b in boxes if b.name.endswith(suffix)]
        for key in [k for k in self._kept_seen if k[0] == name and k[1] not in kept]:
            del self._kept_seen[key]
        if not kept:
            return
        held = inspect_held(vm, [*kept, *(k[: -len(suffix)] for k in kept)])
        if held is None:
            return
        ready = {b.name for b in boxes if b.ready}
        held = [dataclasses.replace(h, ready=h.name in ready) for h in held]
        for problem in verdict.kept_problems(f"vm-{name}", held):
            self.violate(problem)
        now = time.time()
        waiting = set(verdict.lingering(held))
        for key in [k for k in self._kept_seen if k[0] == name and k[1] not in waiting]:
            del self._kept_seen[key]
        for k in sorted(waiting):
            first = self._kept_seen.setdefault((name, k), now)
            if now - first > verdict.KEPT_LINGER:
                self.violate(f"vm-{name}: {k} outlived the rollout that made it: still there "
                             f"{verdict.KEPT_LINGER:.0f} s after {k[: -len(suffix)]} was ready")

    def same_secrets(self, name: str, vm: VM) -> None:
        before = self.secrets[name]
        now = fingerprints(vm)
        if now is None:  # the VM does not answer now (a reboot): the next round looks
            return
        for path, digest in before.items():
            if now.get(path) != digest:
                state = "is gone" if path not in now else "changed"
                listing = safe_sh(vm, f"ls -la --full-time {DATA}")[1].strip()
                self.violate(f"vm-{name}: {DATA}/{path} {state} (the data dir then: "
                             f"{listing!r})")

    def agent_alive(self, name: str, vm: VM) -> None:
        """How often the agent exited so far (the supervisor's lines). Which exits are
        violations is judged once the faults are over (judge_exits): an exit is explained by
        a fault the injector may not have recorded yet."""
        text = safe_sh(vm, f"cat {AGENT_LOG}")[1]
        exits = re.findall(r"supervisor: the agent exited (\d+)", text)
        self.record.agent_exits[name] = max(len(exits), self.record.agent_exits.get(name, 0))

    def judge_exits(self, vms: dict[str, VM], faults: list[Fault]) -> None:
        """Every exit the supervisor logged since start() but 0 that no injected fault
        explains is a violation (verdict.unexplained_exits), with the VM, the code, the time
        and the log's tail; a log that cannot be read is one too (its exits would go
        unjudged). Exits before start() (the lab's setup, the first converge) are noted."""
        for name, vm in vms.items():
            code, text, err = safe_sh(vm, f"cat {AGENT_LOG}")
            if code != 0:
                self.violate(f"vm-{name}: its agent log could not be read at the end: "
                             f"{err.strip()[:200]}")
                continue
            exits = verdict.agent_exits(f"vm-{name}", text)
            self.record.agent_exits[name] = len(exits)
            soak = [e for e in exits if e.at >= int(self.started)]
            self.notes += [f"before the soak: {verdict.exit_violation(e)}"
                           for e in verdict.unexplained_exits(
                               [e for e in exits if e not in soak], [])]
            for e in verdict.unexplained_exits(soak, faults):
                self.violate(verdict.exit_violation(e), at=e.at)

    def rows_kept(self, app: VM) -> bool:
        """Every acknowledged row is still there; False when Postgres does not answer."""
        with self._lock:
            acked = list(self.record.acknowledged)
        code, out, _ = safe_sh(app, f"{PSQL} 'SELECT id FROM soak_rows'", timeout=15)
        if code != 0:
            return False
        there = {int(v) for v in out.split() if v.isdigit()}
        lost = [n for n in acked if n not in there]
        if lost:
            self.violate(f"vm-app: acknowledged rows lost: {lost[:10]} ({len(lost)} in all)")
        return True
