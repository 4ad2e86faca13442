"""The soak's recovery times (pure logic over the looks it recorded)."""

from __future__ import annotations

from tests.soak.faults import Fault
from tests.soak.health import Look
from tests.soak.run import recoveries

SICK = ("vm-app: not ready: syntho-backend",)


def test_each_fault_heals_at_the_first_healthy_look_begun_after_it() -> None:
    faults = [Fault("container-rm", "vm-app/syntho-backend", 10.0, 11.0),
              Fault("reboot", "vm-w1", 50.0, 60.0)]
    looks = [Look(5.0, 9.0, ()), Look(11.5, 14.0, SICK), Look(20.0, 25.0, ()),
             Look(61.0, 70.0, SICK), Look(80.0, 90.0, ())]
    found = recoveries(faults, looks)
    assert [r.seconds for r in found] == [14.0, 30.0]
    assert [r.overlapped for r in found] == [False, False]


def test_a_fault_not_healthy_before_the_next_one_is_overlapped() -> None:
    faults = [Fault("container-rm", "vm-app/syntho-core", 10.0, 11.0),
              Fault("network-cut", "vm-w2", 20.0, 25.0)]
    looks = [Look(12.0, 19.0, SICK), Look(30.0, 40.0, ())]
    first, second = recoveries(faults, looks)
    assert first.overlapped and first.seconds == 29.0
    assert not second.overlapped and second.seconds == 15.0


def test_the_final_wait_counts_for_the_last_fault() -> None:
    # The last fault ended 1 s before the faults stopped; the checker's only look after it
    # was still sick when the final wait saw the deployment healthy (and the checker stopped).
    faults = [Fault("container-docker-kill", "vm-app/syntho-backend", 298.0, 299.0)]
    checker = [Look(290.0, 297.0, ()), Look(299.5, 306.0, SICK)]
    final = Look(300.0, 301.0, ())
    assert recoveries(faults, checker)[0].seconds is None
    assert recoveries(faults, [*checker, final])[0].seconds == 2.0


def test_a_fault_never_healthy_again_is_reported_as_such() -> None:
    faults = [Fault("reboot", "vm-head", 10.0, 20.0)]
    (found,) = recoveries(faults, [Look(21.0, 30.0, SICK), Look(31.0, 40.0, SICK)])
    assert found.seconds is None and not found.overlapped
