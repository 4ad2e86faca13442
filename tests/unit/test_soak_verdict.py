"""The soak's verdicts (tests/soak/verdict.py, and the checker's use of them), each shown
failing on the defect it guards against, with fakes of the looks, the logs and the VMs."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.soak import checker as checker_module
from tests.soak import report, verdict
from tests.soak.checker import Checker, Record, start_fingerprints
from tests.soak.faults import KINDS, Fault
from tests.soak.health import Box, Look
from tests.soak.longjob import JobReport, judge
from tests.soak.run import Result, recoveries
from tests.soak.verdict import AgentExit, Attempt, Held

SICK = ("vm-app: not ready: syntho-backend",)
LIMITS = verdict.LIMITS


def healthy_at(ended: float) -> Look:
    return Look(ended - 1.0, ended, ())


# ---- recovery limits ----


def test_every_kind_has_a_fixed_limit_and_the_final_bound_is_the_largest() -> None:
    for limits in (verdict.limits_for(True), verdict.limits_for(False)):
        assert set(limits) == set(KINDS)
    assert verdict.final_limit(LIMITS) == LIMITS["reboot"] == 300.0
    assert verdict.limits_for(True) == LIMITS  # nothing in it depends on the lab's setup


def test_a_lone_fault_within_its_limit_passes() -> None:
    faults = [Fault("container-rm", "vm-app/syntho-backend", 10.0, 11.0)]
    (j,) = verdict.judge(faults, [Look(12.0, 14.0, SICK), healthy_at(30.0)], LIMITS)
    assert j.ok and j.seconds == 19.0 and j.allowed == 120.0 and j.own_limit


def test_a_lone_fault_slower_than_its_limit_fails() -> None:
    # 130 s for a container fault: within the old bound (240 s, more on a slow machine)
    faults = [Fault("container-sigkill", "vm-head/ray-head", 10.0, 11.0)]
    judged = verdict.judge(faults, [Look(12.0, 14.0, SICK), healthy_at(141.0)], LIMITS)
    assert not judged[0].ok
    (problem,) = verdict.slow(judged)
    assert "container-sigkill vm-head/ray-head" in problem and "130 s" in problem


def test_a_fault_never_healthy_again_fails() -> None:
    faults = [Fault("reboot", "vm-head", 10.0, 20.0)]
    judged = verdict.judge(faults, [Look(21.0, 30.0, SICK)], LIMITS)
    assert judged[0].seconds is None and not judged[0].ok
    assert "never healthy again" in verdict.slow(judged)[0]


def test_an_overlapped_fault_is_judged_not_skipped() -> None:
    # Two container faults 5 s apart, healthy 144 s after the second: the old rule judged
    # only the second (not overlapped) against 240 s and passed; both are too slow for 120 s.
    faults = [Fault("container-rm", "vm-app/syntho-core", 0.0, 1.0),
              Fault("container-docker-kill", "vm-app/syntho-backend", 5.0, 6.0)]
    looks = [Look(2.0, 4.0, SICK), Look(140.0, 150.0, ())]
    old = recoveries(faults, looks)
    assert old[0].overlapped and not old[1].overlapped and old[1].seconds is not None
    assert old[1].seconds <= 240.0
    judged = verdict.judge(faults, looks, LIMITS)
    assert [j.burst for j in judged] == [0, 0]
    assert [j.ok for j in judged] == [False, False]
    assert len(verdict.slow(judged)) == 2


def test_an_overlapped_fault_is_judged_by_the_later_ones_limit() -> None:
    # A container fault, then a reboot 9 s later; healthy 180 s after the reboot: too slow
    # for the container fault's own 120 s, within the reboot's 300 s, which sets the deadline.
    faults = [Fault("container-rm", "vm-app/syntho-core", 0.0, 1.0),
              Fault("reboot", "vm-head", 10.0, 20.0)]
    judged = verdict.judge(faults, [Look(2.0, 5.0, SICK), healthy_at(200.0)], LIMITS)
    first, second = judged
    assert first.by is faults[1] and first.allowed == 319.0 and first.ok
    assert second.own_limit and second.ok


def test_a_slow_faults_limit_stands_for_the_faults_on_top_of_it() -> None:
    faults = [Fault("reboot", "vm-head", 0.0, 10.0),
              Fault("agent-sigkill", "vm-w1", 20.0, 21.0)]
    looks = [Look(12.0, 18.0, SICK), Look(22.0, 30.0, SICK), healthy_at(200.0)]
    judged = verdict.judge(faults, looks, LIMITS)
    assert all(j.ok for j in judged)  # by 310 s, the reboot's deadline
    assert judged[1].by is faults[0]
    # ... but not beyond it
    late = verdict.judge(faults, [*looks[:2], healthy_at(320.0)], LIMITS)
    assert [j.ok for j in late] == [False, False]


def test_a_fault_after_a_healthy_look_starts_a_new_burst() -> None:
    faults = [Fault("reboot", "vm-head", 0.0, 10.0),
              Fault("container-rm", "vm-app/syntho-core", 50.0, 51.0)]
    # healthy at 40: the reboot's burst is over; the container fault alone gets 120 s
    looks = [healthy_at(40.0), Look(52.0, 60.0, SICK), healthy_at(200.0)]
    judged = verdict.judge(faults, looks, LIMITS)
    assert [j.burst for j in judged] == [0, 1]
    assert [j.ok for j in judged] == [True, False]


def test_every_kind_injected_is_judged_and_counted() -> None:
    faults = [Fault("container-rm", "vm-app/syntho-core", 0.0, 1.0),
              Fault("reboot", "vm-w1", 10.0, 20.0),
              Fault("network-cut", "vm-w2", 100.0, 105.0)]
    looks = [Look(2.0, 4.0, SICK), healthy_at(40.0), healthy_at(120.0)]
    judged = verdict.judge(faults, looks, LIMITS)
    assert verdict.unjudged_kinds(faults, judged) == []
    assert verdict.unjudged_kinds(faults, judged[:2]) == ["network-cut"]
    assert verdict.judged_per_kind(judged) == {"container-rm": (1, 0, 0), "network-cut": (1, 1, 0),
                                               "reboot": (1, 1, 0)}
    with pytest.raises(KeyError):  # a new kind must get its limit
        verdict.judge([Fault("new-kind", "vm-w1", 0.0, 1.0)], looks, LIMITS)


# ---- agent exits ----

LOG = """supervisor: starting the agent at 100
head: converged
watching the engine's events
supervisor: the agent exited 137 at 200
supervisor: starting the agent at 205
Traceback (most recent call last):
  File "agent/watch.py", line 61, in follow
RuntimeError: boom
supervisor: the agent exited 1 at 300
supervisor: starting the agent at 305
"""


def test_the_exit_lines_are_read_with_their_time_and_the_logs_tail() -> None:
    exits = verdict.agent_exits("vm-w1", LOG)
    assert [(e.code, e.at) for e in exits] == [(137, 200.0), (1, 300.0)]
    assert "RuntimeError: boom" in exits[1].tail and "supervisor" not in exits[1].tail
    assert len(verdict.agent_exits("vm-w1", "x" * 5000 + "\nsupervisor: the agent exited 1 "
                                   "at 3\n")[0].tail) <= verdict.TAIL_CHARS + 3


def test_an_exit_1_is_a_violation_with_the_vm_code_time_and_tail() -> None:
    kill = Fault("agent-sigkill", "vm-w1", 199.5, 199.9)
    exits = verdict.agent_exits("vm-w1", LOG)
    (bad,) = verdict.unexplained_exits(exits, [kill])
    text = verdict.exit_violation(bad)
    assert text.startswith("vm-w1: the agent exited 1 at 300") and "RuntimeError: boom" in text


def test_a_137_is_explained_only_by_a_sigkill_of_that_vm_at_that_time() -> None:
    e = AgentExit("vm-w1", 137, 200.0, "")
    assert verdict.unexplained_exits([e], [Fault("agent-sigkill", "vm-w1", 199.5, 199.9)]) == []
    for other in (Fault("agent-sigkill", "vm-w2", 199.5, 199.9),  # another VM
                  Fault("agent-sigkill", "vm-w1", 100.0, 100.5),  # long before
                  Fault("container-sigkill", "vm-w1/ray-worker", 199.5, 199.9),
                  Fault("engine-restart", "vm-w1", 190.0, 199.0)):
        assert verdict.unexplained_exits([e], [other]) == [e], other
    # a SIGKILL explains only the code a SIGKILL gives
    for code in (1, 3, 4, 143):
        e2 = AgentExit("vm-w1", code, 200.0, "")
        assert verdict.unexplained_exits([e2], [Fault("agent-sigkill", "vm-w1", 199.5,
                                                      199.9)]) == [e2]
    # one SIGKILL explains one exit
    twice = [e, AgentExit("vm-w1", 137, 201.0, "")]
    assert len(verdict.unexplained_exits(twice, [Fault("agent-sigkill", "vm-w1", 199.5,
                                                       199.9)])) == 1


def test_a_reboot_explains_a_kill_but_nothing_explains_a_failed_run() -> None:
    reboot = Fault("reboot", "vm-app", 99.0, 110.0)
    assert verdict.unexplained_exits([AgentExit("vm-app", 137, 105.0, "")], [reboot]) == []
    assert verdict.unexplained_exits([AgentExit("vm-app", 143, 105.0, "")], [reboot]) == []
    for code, fault in ((3, Fault("engine-restart", "vm-app", 99.0, 110.0)),
                        (1, Fault("network-cut", "vm-app", 99.0, 110.0)),
                        (4, reboot), (5, reboot)):
        e = AgentExit("vm-app", code, 105.0, "")
        assert verdict.unexplained_exits([e], [fault]) == [e]


def test_exit_0_is_not_and_exit_2_is_with_its_reason() -> None:
    assert verdict.unexplained_exits([AgentExit("vm-w2", 0, 1.0, "")], []) == []
    (e,) = verdict.unexplained_exits([AgentExit("vm-w2", 2, 1.0, "bad flag")], [])
    assert "systemd would not restart it" in verdict.exit_violation(e)


class FakeVM:
    def __init__(self, name: str) -> None:
        self.name = name


def bare_checker(monkeypatch: pytest.MonkeyPatch, answers: dict[str, tuple[int, str, str]],
                 ) -> Checker:
    """A Checker without a lab: safe_sh answers by the VM's name."""
    c = Checker.__new__(Checker)
    c.record = Record()
    c._lock = threading.Lock()
    c._seen = {}
    c._kept_seen = {}
    c.secrets = {}
    c.started = 0.0
    c.notes = []
    monkeypatch.setattr(checker_module, "safe_sh",
                        lambda vm, script, timeout=30: answers[vm.name])
    return c


def test_the_checker_records_an_unexplained_exit_at_its_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    c = bare_checker(monkeypatch, {"w1": (0, LOG, ""), "w2": (-1, "", "not running")})
    c.started = 150.0
    vms: Any = {"w1": FakeVM("w1"), "w2": FakeVM("w2")}
    c.judge_exits(vms, [Fault("agent-sigkill", "vm-w1", 199.5, 199.9)])
    whats = [(v.at, v.what[:32]) for v in c.record.violations]
    assert whats == [(300.0, "vm-w1: the agent exited 1 at 300"),
                     (pytest.approx(whats[1][0]), "vm-w2: its agent log could not b")]
    assert c.record.agent_exits["w1"] == 2


def test_exits_before_the_soak_are_noted_not_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    c = bare_checker(monkeypatch, {"w1": (0, LOG, "")})
    c.started = 250.0  # the 137 at 200 (no fault explains it) came during the setup
    vms: Any = {"w1": FakeVM("w1")}
    c.judge_exits(vms, [])
    assert [v.what[:32] for v in c.record.violations] == ["vm-w1: the agent exited 1 at 300"]
    assert c.notes and "exited 137 at 200" in c.notes[0]


# ---- the long job ----


def job(recreated: int = 0, counted: bool = True, restarts: int = 3) -> JobReport:
    return JobReport(False, restarts, recreated, 10, 10, 30.0, "summary", counted=counted)


def test_a_recreated_actor_fails_with_gcs_fault_tolerance() -> None:
    assert verdict.job_problems(job(), gcs_ft=True) == []  # restarts by Ray are fine
    (problem,) = verdict.job_problems(job(recreated=1), gcs_ft=True)
    assert "created again 1 time(s)" in problem
    assert verdict.job_problems(job(counted=False), gcs_ft=True)
    assert verdict.job_problems(job(recreated=4), gcs_ft=False) == []


def test_the_jobs_events_count_re_creations_after_its_first_count() -> None:
    def read(t: float, born: float) -> dict[str, Any]:
        return {"event": "read", "t": t, "born": born, "n": int(t - born)}

    start = [{"event": "created", "t": 9.0}, {"event": "error", "t": 9.5},
             {"event": "created", "t": 10.0}, read(11.0, 9.0)]  # twice before its first count
    calm = judge([*start, read(20.0, 9.0), read(60.0, 50.0)], 15.0, 61.0)  # Ray restarted it
    assert (calm.recreated, calm.restarts, calm.counted) == (0, 1, True)
    assert verdict.job_problems(calm, gcs_ft=True) == []
    # created again after its first count, and the reads are of the new one: lost
    lost = judge([*start, {"event": "created", "t": 30.0}, read(35.0, 30.0)], 15.0, 36.0)
    assert lost.recreated == 1 and verdict.job_problems(lost, gcs_ft=True)
    # a "created" after which the old actor answers (get_if_exists found it): not one
    found = judge([*start, {"event": "created", "t": 30.0}, read(35.0, 9.0)], 15.0, 36.0)
    assert found.recreated == 0
    never = judge([{"event": "error", "t": 1.0}], 0.0, 5.0)
    assert not never.counted and verdict.job_problems(never, gcs_ft=True)


# ---- the database writer ----


def attempts(acked: int, refused: int, start: float = 0.0) -> list[Attempt]:
    out = [Attempt(n, start + 3 * n, start + 3 * n + 1, n < acked) for n in range(acked + refused)]
    return out


def test_85_percent_acknowledged_fails_and_90_passes() -> None:
    acked, attempted = verdict.write_share(attempts(17, 3), [])
    assert (acked, attempted) == (17, 20)
    (problem,) = verdict.write_problems(acked, attempted)
    assert "17 of 20" in problem and "85%" in problem
    assert verdict.write_problems(*verdict.write_share(attempts(18, 2), [])) == []


def test_too_few_judged_writes_fail() -> None:
    assert verdict.write_problems(*verdict.write_share(attempts(5, 0), []))


def test_refused_writes_during_a_database_fault_do_not_count() -> None:
    faults = [Fault("container-rm", "vm-app/syntho-postgres", 100.0, 101.0),
              Fault("container-rm", "vm-app/syntho-backend", 300.0, 301.0)]
    looks = [Look(102.0, 110.0, SICK), healthy_at(160.0), healthy_at(320.0)]
    windows = verdict.database_windows(faults, looks, end=1000.0)
    assert windows == [(100.0, 160.0)]
    good = attempts(30, 0, start=200.0)
    during = [Attempt(100 + n, 105.0 + 3 * n, 106.0 + 3 * n, False) for n in range(15)]
    assert verdict.write_share([*good, *during], windows) == (30, 30)
    # the same refusals outside any database fault count against the writer
    assert verdict.write_problems(*verdict.write_share([*good, *during], []))


def test_which_faults_are_database_faults() -> None:
    def db(kind: str, target: str) -> bool:
        return verdict.database_fault(Fault(kind, target, 0.0, 1.0))

    assert db("container-sigkill", "vm-app/syntho-postgres")
    assert db("reboot", "vm-app") and db("engine-restart", "vm-app") and db("network-cut",
                                                                              "vm-app")
    assert not db("agent-sigkill", "vm-app") and not db("reboot", "vm-w1")
    assert not db("container-rm", "vm-app/syntho-backend")
    # never healthy again: the window lasts to the end
    assert verdict.database_windows([Fault("reboot", "vm-app", 5.0, 15.0)], [], 99.0) == [
        (5.0, 99.0)]


def test_the_writer_records_each_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([(0, "1\nINSERT 0 1\n", ""), (1, "", "no such container")])
    c = Checker.__new__(Checker)
    c.record = Record()
    c._lock = threading.Lock()
    stop = threading.Event()
    c._stop = stop
    c.lab = type("Lab", (), {"on": lambda self, client: {"app": FakeVM("app")}})()

    def sh(vm: Any, script: str, timeout: int = 30) -> tuple[int, str, str]:
        found = next(answers)
        if len(c.record.attempts) == 1:
            stop.set()
        return found

    monkeypatch.setattr(checker_module, "safe_sh", sh)
    monkeypatch.setattr(checker_module, "fresh_client", lambda: None)
    monkeypatch.setattr(checker_module, "WRITE_EVERY", 0.0)
    c._write()
    assert [(a.n, a.acknowledged) for a in c.record.attempts] == [(1, True), (2, False)]
    assert all(a.began <= a.ended for a in c.record.attempts)
    assert c.record.acknowledged == [1] and c.record.write_failures == 1


# ---- violations are counted ----


def test_a_violation_seen_again_is_counted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    c = bare_checker(monkeypatch, {})
    for _ in range(3):
        c.violate("vm-app: 2 running containers of backend")
    c.violate("vm-w1: other")
    assert len(c.record.violations) == 4
    assert verdict.tally([v.what for v in c.record.violations]) == [
        ("vm-app: 2 running containers of backend", 3), ("vm-w1: other", 1)]
    result = a_result(violations=c.record.violations)
    assert result.problems()["violations"] == ["vm-app: 2 running containers of backend (x3)",
                                               "vm-w1: other (x1)"]
    table = report.markdown(result, "cmd")
    assert "| violations | 4 (2 distinct) |" in table
    assert "- vm-app: 2 running containers of backend (3)" in table


# ---- kept containers ----


def test_a_kept_container_as_the_agent_leaves_it_passes() -> None:
    held = [Held("syntho-backend-previous", "exited", "backend", 100.0),
            Held("syntho-backend", "running", "backend", 200.0, ready=True)]
    assert verdict.kept_problems("vm-app", held) == []
    assert verdict.lingering(held) == ["syntho-backend-previous"]


def test_a_kept_container_running_of_another_service_or_newer_fails() -> None:
    running = [Held("syntho-backend-previous", "running", "backend", 100.0),
               Held("syntho-backend", "running", "backend", 200.0)]
    assert "must stay stopped" in verdict.kept_problems("vm-app", running)[0]
    other = [Held("syntho-backend-previous", "exited", "core", 100.0),
             Held("syntho-backend", "running", "backend", 200.0)]
    assert "not the container it replaced" in verdict.kept_problems("vm-app", other)[0]
    newer = [Held("syntho-backend-previous", "exited", "backend", 300.0),
             Held("syntho-backend", "running", "backend", 200.0)]
    assert "not an older release's" in verdict.kept_problems("vm-app", newer)[0]


def test_a_kept_container_outliving_its_rollout_is_a_violation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    c = bare_checker(monkeypatch, {})
    held = [Held("syntho-backend-previous", "exited", "backend", 100.0),
            Held("syntho-backend", "running", "backend", 200.0)]
    monkeypatch.setattr(checker_module, "inspect_held", lambda vm, names: held)
    boxes = [Box("syntho-backend-previous", "exited", "Exited (0)", "backend"),
             Box("syntho-backend", "running", "Up 9 minutes (healthy)", "backend")]
    vm: Any = FakeVM("app")
    c.kept("app", vm, boxes)
    assert c.record.violations == []  # just seen: its rollout may not be over
    c._kept_seen[("app", "syntho-backend-previous")] -= verdict.KEPT_LINGER + 1
    c.kept("app", vm, boxes)
    (v,) = c.record.violations
    assert "outlived the rollout that made it" in v.what
    c.kept("app", vm, boxes[1:])  # pruned: forgotten
    assert c._kept_seen == {}


# ---- the secrets' fingerprints at the start ----


def test_a_vm_whose_fingerprints_cannot_be_read_at_the_start_fails() -> None:
    vms: Any = {"head": FakeVM("head"), "w1": FakeVM("w1")}
    read = {"head": {"ray-token": "abc"}, "w1": None}
    with pytest.raises(RuntimeError, match="vm-w1: could not read"):
        start_fingerprints(vms, pause=0.0, read=lambda vm: read[vm.name])
    tries = iter([None, {"ray-token": "def"}])
    assert start_fingerprints({"w1": vms["w1"]}, pause=0.0, read=lambda vm: next(tries)) == {
        "w1": {"ray-token": "def"}}


def test_a_changed_secret_is_a_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    c = bare_checker(monkeypatch, {})
    c.secrets = {"w1": {"ray-token": "abc"}}
    monkeypatch.setattr(checker_module, "fingerprints", lambda vm: {"ray-token": "xyz"})
    monkeypatch.setattr(checker_module, "safe_sh", lambda vm, script, timeout=30: (0, "ls", ""))
    vm: Any = FakeVM("w1")
    c.same_secrets("w1", vm)
    assert "ray-token changed" in c.record.violations[0].what


# ---- the whole verdict ----


def a_result(**given: Any) -> Result:
    faults = [Fault("container-rm", "vm-app/syntho-core", 0.0, 1.0)]
    looks = [healthy_at(20.0)]
    fields: dict[str, Any] = dict(
        seed=1, duration=300.0, setup=100.0, faults=faults, injection_errors=[],
        violations=[], recoveries=recoveries(faults, looks), final_recovery=5.0,
        healthy_share=0.5, rows=20, writes_refused=0, job=job(), agent_exits={"w1": 0},
        judged=verdict.judge(faults, looks, LIMITS), attempts=attempts(20, 0))
    fields.update(given)
    return Result(**fields)


def test_a_clean_result_passes_and_the_report_says_what_was_judged() -> None:
    result = a_result()
    assert not result.failed, result.problems()
    table = report.markdown(result, "cmd")
    assert "| verdict | passed |" in table
    assert "| container-rm | 1 | 19 / 19 / 19 | 19 / 19 / 19 | 0 | 120 | 1 (1) | 0 |" in table
    assert "20 of 20 (100%)" in table


@pytest.mark.parametrize("given, rule", [
    (dict(final_recovery=301.0), "final recovery"),
    (dict(final_recovery=None), "final recovery"),
    (dict(job=job(recreated=1)), "long job"),
    (dict(attempts=attempts(17, 3)), "writes"),
    (dict(judged=[]), "kinds unjudged"),
    (dict(judged=verdict.judge([Fault("container-rm", "vm-app/syntho-core", 0.0, 1.0)],
                               [healthy_at(130.0)], LIMITS)), "recoveries"),
])
def test_each_rule_fails_the_result(given: dict[str, Any], rule: str) -> None:
    result = a_result(**given)
    assert result.failed
    assert [k for k, v in result.problems().items() if v] == [rule]
    assert f"Failed, {rule}:" in report.markdown(result, "cmd")
