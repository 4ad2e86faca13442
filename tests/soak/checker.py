"""The independent checker: a thread that looks at the deployment as a user could, all
through the soak, records every health look, and records a violation whenever something that
must never happen has happened. A second thread writes a row into the backend's database
every few seconds and remembers the ones Postgres acknowledged.

It never asks the agent (no `status`, no agent log): only the VMs' engines, the head's
dashboard, the core's status JSON, the frontend's URL, Postgres, and the files in the data dirs.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from tests.soak import health
from tests.soak.lab import AGENT_LOG, DATA, SoakLab, fresh_client, safe_sh
from tests.support.vms import VM

LINGER = 60.0  # seconds an unexpected agent-labelled container may exist (a throw-away one)
WRITE_EVERY = 3.0
PSQL = "docker exec syntho-postgres psql -U syntho -d syntho-backend -v ON_ERROR_STOP=1 -Atc"


@dataclass(frozen=True)
class Violation:
    at: float
    what: str


@dataclass
class Record:
    """Everything the checker saw."""

    looks: list[health.Look] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)
    write_failures: int = 0
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
        self._flagged: set[str] = set()
        vms = lab.on(fresh_client())
        self.secrets = {name: fingerprints(vm) for name, vm in vms.items()}
        self._threads = [threading.Thread(target=self._watch, name="soak-checker", daemon=True),
                         threading.Thread(target=self._write, name="soak-writer", daemon=True)]

    def start(self) -> None:
        vms = self.lab.on(fresh_client())
        code, out, err = safe_sh(vms["app"], f"{PSQL} 'CREATE TABLE IF NOT EXISTS soak_rows "
                                 "(id bigint PRIMARY KEY, at double precision)'")
        if code != 0:
            raise RuntimeError(f"could not create the soak table: {out}{err}")
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def violate(self, what: str) -> None:
        with self._lock:
            if what not in self._flagged:  # one record per distinct violation
                self._flagged.add(what)
                self.record.violations.append(Violation(time.time(), what))

    # ---- the writer ----

    def _write(self) -> None:
        app = self.lab.on(fresh_client())["app"]
        n = 0
        while not self._stop.wait(WRITE_EVERY):
            n += 1
            code, out, _ = safe_sh(app, f"{PSQL} 'INSERT INTO soak_rows VALUES ({n}, "
                                   f"{time.time()}) RETURNING id'", timeout=15)
            # psql prints the returned id, then the command's tag (INSERT 0 1)
            if code == 0 and out.split()[:1] == [str(n)]:
                with self._lock:
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

    def same_secrets(self, name: str, vm: VM) -> None:
        before = self.secrets.get(name)
        now = fingerprints(vm)
        if before is None or now is None:
            return
        for path, digest in before.items():
            if now.get(path) != digest:
                state = "is gone" if path not in now else "changed"
                listing = safe_sh(vm, f"ls -la --full-time {DATA}")[1].strip()
                self.violate(f"vm-{name}: {DATA}/{path} {state} (the data dir then: "
                             f"{listing!r})")

    def agent_alive(self, name: str, vm: VM) -> None:
        """The supervisor gives up only after exit 2 (a config mistake): never in a soak."""
        text = safe_sh(vm, f"cat {AGENT_LOG}")[1]
        exits = re.findall(r"supervisor: the agent exited (\d+)", text)
        self.record.agent_exits[name] = len(exits)
        if "2" in exits:
            self.violate(f"vm-{name}: the agent exited 2 (systemd would not restart it)")

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
