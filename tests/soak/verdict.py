"""The soak's verdicts, as pure functions over what the soak recorded (faults, looks, the
writer's attempts, the agents' logs, the long job's report): no Docker, no clock, so that
tests/unit/test_soak_verdict.py can show each rule failing on the defect it guards against.

The rules (docs/soak.md, "Verdicts"):

- **Recovery within a fixed limit per kind of fault**, measured from the end of the fault's
  injection, whatever the lab's setup took (a slow machine must not loosen what is measured).
  Faults come faster than some recoveries, so they are judged by *bursts*: a fault joins the
  burst of the one before it when it began before that one's first healthy look (the first
  fully healthy look begun after its injection ended) had ended, or when there was none. Each
  fault of a burst must have its first healthy look end by the burst's deadline, the latest
  of `fault.ended + LIMITS[fault.kind]` over every fault of the burst: a fault that another
  one overlapped is judged by the later one's limit (measured from the later one) when that
  is later than its own, and a slow fault's limit still stands for the faults that came on
  top of it. No fault is skipped: one never healthy again fails, whatever overlapped it.
- **Agent exits**: every exit the supervisor logged ("supervisor: the agent exited N at T")
  other than 0 must be explained by an injected fault that kills the agent: 137 (128 + 9, sh's
  code for a child killed by SIGKILL) by an agent-sigkill of that VM, 137 or 143 by a reboot
  of that VM (the VM's container is killed with everything in it; usually no line is left at
  all). Nothing else explains anything: exit 1, 3, 4 or 5 after an engine restart or a network
  cut is the agent failing where it should have waited or retried, a finding.
- **The long job** (GCS fault tolerance on): its detached actor is never re-created by the job
  (Ray restarting its process when a node under it goes is fine), and it counted at all.
- **The database writer**: of the inserts attempted while no database fault was active, at
  least 90% acknowledged. A database fault: one whose target is vm-app/syntho-postgres, or a
  reboot, engine restart or network cut of vm-app; its window is from the start of its
  injection to the end of its first healthy look (to the end of the soak when never healthy).
- **Kept containers** (`NAME-previous`, agent/reconcile.py move_aside): stopped, of NAME's
  service, created before NAME (the release it replaced is older than the rollout that made
  NAME), and gone once NAME has been ready for KEPT_LINGER seconds.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from tests.soak import health
from tests.soak.faults import Fault
from tests.soak.longjob import JobReport

# ---- recovery limits ----

# Seconds from the end of a fault's injection to the end of the first fully healthy look,
# with GCS fault tolerance on (the short soak's, and the default). What was measured on this
# project's 2-core test machine (docs/soak.md, module docstrings): a fault nothing overlapped
# was healthy again in 3-17 s after container faults (p95 8-14 s, the slowest 17 s, in the
# 30-minute soak), 7-12 s after an agent SIGKILL (no effect of its own: the tail of an earlier
# fault), 6-8 s after an engine restart, 11-13 s after a restart of the head's Ray, 2-13 s
# after a network cut, 12-14 s after a reboot of a worker or vm-app, and ~60-120 s after a
# reboot of vm-head (its engine, the agent's converge, the GCS, both workers' Ray re-created by
# their watchers and rejoined, the core's 10 s Ray probe); in the short soak (a fault every
# 2-5 s) the last fault of a burst was healthy within 38 s at most. A loaded CI machine was
# seen ~2x slower than an idle one (a setup of 208 s against 105 s). So each limit is the
# slowest plausible case of its kind, doubled for such a machine, with room to spare; what it
# still catches is a watcher that misses events and heals only at its 30 s resync several
# times in a row, or never.
LIMITS: dict[str, float] = {
    # the slowest targets are ray-head (the GCS restarts from its Redis; the workers' raylets
    # reconnect) and syntho-postgres (the backend and core reconnect): 17 s at most measured
    # alone, 38 s for the end of a burst in the short soak; 120 s is 3x that
    "container-sigkill": 120.0,
    "container-docker-kill": 120.0,
    "container-rm": 120.0,
    # no effect of its own (the supervisor starts the agent 5 s later): as container faults
    "agent-sigkill": 120.0,
    # the head's Ray container restarted (GCS FT: the workers stay): 11-13 s measured alone,
    # 31 s at most overlapped
    "head-ray-restart": 120.0,
    # every container of the VM restarts with dockerd (on vm-head: the GCS and its Redis too):
    # 6-8 s measured alone, 59 s at most overlapped in the short soak
    "engine-restart": 150.0,
    # a worker cut for 3-8 s may be declared dead by the GCS, its Ray exits, is re-created by
    # the watcher and rejoins: 2-13 s measured alone, 89 s at most overlapped
    "network-cut": 150.0,
    # vm-head's reboot: ~60-120 s on this machine, ~240 s on one 2x slower; test_vms.py
    # allows 300 s for the rejoin alone after one reboot
    "reboot": 300.0,
}
# Without GCS fault tolerance, anything that restarts the head's Ray restarts the whole
# cluster (each worker's Ray exits with the GCS): 55-106 s measured for a head restart or a
# reboot (bench/soak.py --no-gcs-ft), and a container fault, an engine restart or a network
# cut can hit vm-head. Those kinds get 300 s there, a reboot more.
LIMITS_NO_GCS_FT: dict[str, float] = {
    **{kind: 300.0 for kind in LIMITS}, "agent-sigkill": 120.0, "reboot": 360.0}


def limits_for(gcs_ft: bool) -> dict[str, float]:
    return dict(LIMITS if gcs_ft else LIMITS_NO_GCS_FT)


def final_limit(limits: dict[str, float]) -> float:
    """The bound on the time to fully healthy after the faults stop: the largest limit."""
    return max(limits.values())


@dataclass(frozen=True)
class Judged:
    """One fault's recovery against its burst's deadline."""

    fault: Fault
    seconds: float | None  # from the end of its injection to the end of its first healthy look
    allowed: float  # seconds: the burst's deadline less the fault's end
    by: Fault  # the fault of the burst whose limit set the deadline (the fault itself: own)
    burst: int  # the burst's number, from 0

    @property
    def ok(self) -> bool:
        return self.seconds is not None and self.seconds <= self.allowed

    @property
    def own_limit(self) -> bool:
        return self.by is self.fault


def first_healthy(fault: Fault, looks: list[health.Look]) -> health.Look | None:
    return next((lk for lk in looks if lk.began >= fault.ended and lk.healthy), None)


def judge(faults: list[Fault], looks: list[health.Look],
          limits: dict[str, float]) -> list[Judged]:
    """Every fault judged (module docstring). `faults` in the order injected; a kind missing
    from `limits` is a KeyError (a new kind must get its limit)."""
    looks = sorted(looks, key=lambda lk: lk.began)
    healed = [first_healthy(f, looks) for f in faults]
    bursts: list[list[int]] = []
    for i, fault in enumerate(faults):
        before = healed[i - 1] if i else None
        if i and (before is None or fault.began < before.ended):
            bursts[-1].append(i)
        else:
            bursts.append([i])
    judged: list[Judged | None] = [None] * len(faults)
    for number, members in enumerate(bursts):
        by = max((faults[j] for j in members),
                 key=lambda f: f.ended + limits[f.kind])
        deadline = by.ended + limits[by.kind]
        for j in members:
            fault, look = faults[j], healed[j]
            judged[j] = Judged(fault, None if look is None else look.ended - fault.ended,
                               deadline - fault.ended, by, number)
    return [j for j in judged if j is not None]


def slow(judged: list[Judged]) -> list[str]:
    """Each fault not healthy again by its deadline, said plainly."""
    out = []
    for j in judged:
        if j.ok:
            continue
        took = "never healthy again" if j.seconds is None else f"healthy after {j.seconds:.0f} s"
        whose = ("its own limit" if j.own_limit else
                 f"the limit of {j.by.kind} {j.by.target} in the same burst")
        out.append(f"{j.fault.kind} {j.fault.target} (burst {j.burst}): {took}, allowed "
                   f"{j.allowed:.0f} s by {whose}")
    return out


def unjudged_kinds(faults: list[Fault], judged: list[Judged]) -> list[str]:
    """Kinds injected with no recovery judged (never, with judge(): a guard on it)."""
    seen = {j.fault.kind for j in judged}
    return sorted({f.kind for f in faults} - seen)


def judged_per_kind(judged: list[Judged]) -> dict[str, tuple[int, int, int]]:
    """kind: (judged, judged by its own limit, too slow)."""
    out: dict[str, tuple[int, int, int]] = {}
    for kind in sorted({j.fault.kind for j in judged}):
        mine = [j for j in judged if j.fault.kind == kind]
        out[kind] = (len(mine), sum(j.own_limit for j in mine), sum(not j.ok for j in mine))
    return out


# ---- agent exits ----

EXIT_LINE = re.compile(r"^supervisor: the agent exited (\d+) at (\d+)\s*$")
SIGKILLED = 137  # sh's $? for a child killed by signal 9 (128 + 9)
TERMINATED = 143  # ... by signal 15
# seconds allowed between a fault's injection and the supervisor's line about it (the line's
# time is `date +%s`, whole seconds, written once `wait` returns; a loaded machine is slow)
EXIT_SLACK = 30.0
TAIL_LINES = 5
TAIL_CHARS = 400


@dataclass(frozen=True)
class AgentExit:
    vm: str  # vm-NAME
    code: int
    at: float
    tail: str  # the agent's last lines before the exit (supervisor lines left out), short


def agent_exits(vm: str, log: str) -> list[AgentExit]:
    """The supervisor's exit lines in an agent log, each with the log's tail before it."""
    found = []
    lines = log.splitlines()
    for n, line in enumerate(lines):
        m = EXIT_LINE.match(line)
        if m is None:
            continue
        before = [ln for ln in lines[:n] if not ln.startswith("supervisor: ")][-TAIL_LINES:]
        tail = " | ".join(ln.strip() for ln in before if ln.strip())
        if len(tail) > TAIL_CHARS:
            tail = "..." + tail[-TAIL_CHARS:]
        found.append(AgentExit(vm, int(m.group(1)), float(m.group(2)), tail))
    return found


def explains(fault: Fault, e: AgentExit) -> bool:
    """Whether this injected fault explains this exit (module docstring)."""
    if fault.target != e.vm or not fault.began - 1.0 <= e.at <= fault.ended + EXIT_SLACK:
        return False
    if fault.kind == "agent-sigkill":
        return e.code == SIGKILLED
    if fault.kind == "reboot":
        return e.code in (SIGKILLED, TERMINATED)
    return False


def unexplained_exits(exits: list[AgentExit], faults: list[Fault]) -> list[AgentExit]:
    """The exits no injected fault explains; a fault explains one exit at most. Exit 0 is
    never a finding (the agent stopped of itself, cleanly)."""
    used: set[int] = set()
    out = []
    for e in sorted(exits, key=lambda x: x.at):
        if e.code == 0:
            continue
        match = next((i for i, f in enumerate(faults) if i not in used and explains(f, e)), None)
        if match is None:
            out.append(e)
        else:
            used.add(match)
    return out


def exit_violation(e: AgentExit) -> str:
    why = (" (systemd would not restart it)" if e.code == 2 else
           " (no injected SIGKILL or reboot explains it)")
    return f"{e.vm}: the agent exited {e.code} at {e.at:.0f}{why}; its log before: {e.tail!r}"


# ---- the long job ----


def job_problems(job: JobReport, gcs_ft: bool) -> list[str]:
    """With GCS fault tolerance, the detached actor is never lost to the cluster."""
    if not gcs_ft:
        return []
    problems = []
    if not job.counted:
        problems.append(f"the long job never counted during the soak ({job.summary})")
    if job.recreated:
        problems.append(f"the long job's detached actor was lost to the cluster and created "
                        f"again {job.recreated} time(s), with GCS fault tolerance on "
                        f"({job.summary})")
    return problems


# ---- the database writer ----


@dataclass(frozen=True)
class Attempt:
    """One insert by the checker's writer."""

    n: int
    began: float
    ended: float
    acknowledged: bool


WRITE_SHARE = 0.9
MIN_JUDGED_WRITES = 10
DB_CONTAINER = "vm-app/syntho-postgres"


def database_fault(f: Fault) -> bool:
    return f.target == DB_CONTAINER or (
        f.target == "vm-app" and f.kind in ("reboot", "engine-restart", "network-cut"))


def database_windows(faults: list[Fault], looks: list[health.Look],
                     end: float) -> list[tuple[float, float]]:
    """(start, end) of each database fault: from its injection's start to the end of its
    first healthy look; `end` (the soak's) when there was none."""
    looks = sorted(looks, key=lambda lk: lk.began)
    out = []
    for f in faults:
        if database_fault(f):
            look = first_healthy(f, looks)
            out.append((f.began, end if look is None else look.ended))
    return out


def write_share(attempts: list[Attempt],
                windows: list[tuple[float, float]]) -> tuple[int, int]:
    """(acknowledged, attempted) among the attempts that overlapped no database window."""
    clear = [a for a in attempts
             if not any(a.began <= stop and a.ended >= start for start, stop in windows)]
    return sum(a.acknowledged for a in clear), len(clear)


def write_problems(acked: int, attempted: int) -> list[str]:
    if attempted < MIN_JUDGED_WRITES:
        return [f"the writer made only {attempted} insert(s) while no database fault was "
                f"active (at least {MIN_JUDGED_WRITES} needed to judge)"]
    if acked < WRITE_SHARE * attempted:
        return [f"the writer got {acked} of {attempted} inserts acknowledged while no database "
                f"fault was active ({100 * acked / attempted:.0f}%, at least "
                f"{100 * WRITE_SHARE:.0f}% needed)"]
    return []


# ---- kept containers ----

KEPT_SUFFIX = "-previous"  # agent/spec.py KEPT_SUFFIX
# A rollout removes the kept containers once the whole release is healthy (prune_kept), each
# container of it given the app's --ready-timeout (300 s in the lab): twice that at most.
KEPT_LINGER = 600.0


@dataclass(frozen=True)
class Held:
    """A managed container as inspected: name, state, service label, creation time."""

    name: str
    state: str
    service: str
    created: float
    ready: bool = False


def kept_problems(vm: str, held: list[Held]) -> list[str]:
    """What is wrong with the VM's `NAME-previous` containers, each against NAME (module
    docstring); the lingering one is judged by the caller, which knows for how long."""
    by_name = {h.name: h for h in held}
    out = []
    for h in held:
        if not h.name.endswith(KEPT_SUFFIX):
            continue
        if h.state in ("running", "restarting"):
            out.append(f"{vm}: {h.name} is {h.state}: a kept container must stay stopped")
        current = by_name.get(h.name[: -len(KEPT_SUFFIX)])
        if current is None:
            continue  # a revert or a re-creation under way: nothing to compare with
        if h.service != current.service:
            out.append(f"{vm}: {h.name} is of service {h.service!r}, {current.name} of "
                       f"{current.service!r}: not the container it replaced")
        if h.created >= current.created:
            out.append(f"{vm}: {h.name} was created at {h.created:.0f}, not before "
                       f"{current.name} ({current.created:.0f}): not an older release's")
    return out


def lingering(held: list[Held]) -> list[str]:
    """The kept containers whose replacement is ready (their rollout may be over)."""
    by_name = {h.name: h for h in held}
    return sorted(h.name for h in held if h.name.endswith(KEPT_SUFFIX)
                  and (c := by_name.get(h.name[: -len(KEPT_SUFFIX)])) is not None and c.ready)


# ---- violations ----


def tally(whats: list[str]) -> list[tuple[str, int]]:
    """Each distinct violation with how many times it was seen, in the order first seen."""
    counts = Counter(whats)
    return [(w, counts[w]) for w in dict.fromkeys(whats)]
