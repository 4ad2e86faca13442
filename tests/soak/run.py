"""One soak: the deployment converged, the checker and the long job started, faults for the
set time, then the time to fully healthy, the final checks, and the result."""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.waits import poll
from tests.soak import health, longjob, verdict
from tests.soak.checker import Checker, Violation
from tests.soak.faults import Fault, Injector
from tests.soak.lab import AGENT_LOG, SoakLab, fresh_client, safe_sh

Say = Callable[[str], None]
SETTLE_TIMEOUT = 900.0  # the first converge: images loaded and pulled into 4 engines


def choose_seed(given: int | None) -> int:
    """SYNTHO_SOAK_SEED wins, then the given seed, then a random one."""
    env = os.environ.get("SYNTHO_SOAK_SEED")
    if env:
        return int(env)
    return given if given is not None else random.SystemRandom().randrange(2**31)


@dataclass
class Recovery:
    """A fault and the time from the end of its injection to the next fully healthy look."""

    fault: Fault
    seconds: float | None  # None: never healthy again within the soak
    overlapped: bool  # another fault came before it was healthy again


@dataclass
class Result:
    seed: int
    duration: float  # the faults' time, seconds
    setup: float
    faults: list[Fault]
    injection_errors: list[str]
    violations: list[Violation]
    recoveries: list[Recovery]
    final_recovery: float | None  # after the faults stopped
    healthy_share: float  # of the looks during the faults
    rows: int
    writes_refused: int  # inserts not acknowledged (Postgres down or busy): never checked
    job: longjob.JobReport
    agent_exits: dict[str, int]
    notes: list[str] = field(default_factory=list)
    gcs_ft: bool = True
    limits: dict[str, float] = field(default_factory=lambda: dict(verdict.LIMITS))
    judged: list[verdict.Judged] = field(default_factory=list)  # every fault's recovery
    attempts: list[verdict.Attempt] = field(default_factory=list)  # the writer's inserts
    db_windows: list[tuple[float, float]] = field(default_factory=list)

    @property
    def writes(self) -> tuple[int, int]:
        """(acknowledged, attempted) while no database fault was active."""
        return verdict.write_share(self.attempts, self.db_windows)

    @property
    def final_limit(self) -> float:
        return verdict.final_limit(self.limits)

    def problems(self) -> dict[str, list[str]]:
        """What fails the run, by rule (an empty list: the rule holds)."""
        took = "never" if self.final_recovery is None else f"{self.final_recovery:.0f} s"
        final = ([] if self.final_recovery is not None and self.final_recovery <= self.final_limit
                 else [f"not fully healthy within {self.final_limit:.0f} s after the faults "
                       f"stopped ({took})"])
        return {
            "violations": [f"{what} (x{n})" for what, n in
                           verdict.tally([v.what for v in self.violations])],
            "recoveries": verdict.slow(self.judged),
            "kinds unjudged": verdict.unjudged_kinds(self.faults, self.judged),
            "final recovery": final,
            "long job": verdict.job_problems(self.job, self.gcs_ft),
            "writes": verdict.write_problems(*self.writes),
        }

    @property
    def failed(self) -> bool:
        return any(self.problems().values())


def keep_logs(lab: SoakLab, into: Path) -> None:
    """Each VM's agent log (supervisor lines included) into `into`, for a look afterwards."""
    into.mkdir(parents=True, exist_ok=True)
    for name, vm in lab.vms.items():
        (into / f"agent-{name}.log").write_text(safe_sh(vm, f"cat {AGENT_LOG}")[1])


def wait_healthy(lab: SoakLab, timeout: float, say: Say) -> tuple[bool, health.Look]:
    vms = lab.on(fresh_client())
    last: list[health.Look] = []

    def ok() -> bool:
        last[:] = [health.look(vms, lab.token, lab.frontend_url, lab.expected)]
        return last[0].healthy

    done = poll(ok, timeout, "the deployment fully healthy", progress=say, ceiling=2.0)
    return done, last[0]


def recoveries(faults: list[Fault], looks: list[health.Look]) -> list[Recovery]:
    """For each fault, the first healthy look begun after its injection ended. `looks`: the
    checker's and the final wait's (a fault injected in the last seconds may have no checker
    look after it: the final wait saw it healed, and the checker stopped then)."""
    looks = sorted(looks, key=lambda lk: lk.began)
    found = []
    for i, fault in enumerate(faults):
        healthy = next((lk for lk in looks if lk.began >= fault.ended and lk.healthy), None)
        seconds = healthy.ended - fault.ended if healthy else None
        nxt = faults[i + 1].began if i + 1 < len(faults) else None
        overlapped = nxt is not None and (healthy is None or healthy.ended > nxt)
        found.append(Recovery(fault, seconds, overlapped))
    return found


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[int(q) - 1]


def soak(lab: SoakLab, seed: int, duration: float, say: Say,
         weights: dict[str, float] | None = None,
         pause: tuple[float, float] = (2.0, 5.0), final_timeout: float = 900.0,
         logs: Path | None = None) -> Result:
    say(f"soak seed {seed} (SYNTHO_SOAK_SEED={seed} repeats it)")
    began = time.time()
    settled, look = wait_healthy(lab, SETTLE_TIMEOUT, say)
    if not settled:
        raise RuntimeError(f"the deployment never became healthy: {look.problems}")
    longjob.start(lab)
    lab.setup_seconds += time.time() - began  # soak_lab counted the VMs' own setup
    say(f"healthy after setup ({lab.setup_seconds:.0f} s); faults for {duration:.0f} s")
    checker = Checker(lab)
    checker.start()
    injector = Injector(lab, seed, duration, weights, pause, say)
    fault_start = time.time()
    injector.start()
    injector.join()
    faults_end = time.time()
    done, last = wait_healthy(lab, final_timeout, say)
    final = time.time() - faults_end if done else None
    say(f"after the faults: healthy in {final:.0f} s" if final is not None
        else f"after the faults: still not healthy: {last.problems}")
    # the final checks: every acknowledged row, then one more round of every invariant
    checker.stop()
    vms = lab.on(fresh_client())
    if not poll(lambda: checker.rows_kept(vms["app"]), 120, "the backend database"):
        checker.violate("vm-app: the backend database does not answer after the soak")
    checker.invariants(vms)
    checker.judge_exits(vms, injector.faults)
    job = longjob.report(lab, fault_start, time.time())
    if logs is not None:
        keep_logs(lab, logs)
    during = [lk for lk in checker.record.looks if fault_start <= lk.began <= faults_end]
    looks = [*checker.record.looks, last]
    limits = verdict.limits_for(lab.gcs_ft)
    return Result(
        seed=seed, duration=faults_end - fault_start, setup=lab.setup_seconds,
        faults=injector.faults, injection_errors=injector.errors,
        violations=checker.record.violations,
        recoveries=recoveries(injector.faults, looks),
        final_recovery=final,
        healthy_share=sum(lk.healthy for lk in during) / max(1, len(during)),
        rows=len(checker.record.acknowledged), writes_refused=checker.record.write_failures,
        job=job,
        agent_exits=checker.record.agent_exits, notes=list(checker.notes),
        gcs_ft=lab.gcs_ft, limits=limits, judged=verdict.judge(injector.faults, looks, limits),
        attempts=list(checker.record.attempts),
        db_windows=verdict.database_windows(injector.faults, looks, time.time()))
