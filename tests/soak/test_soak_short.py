"""The short chaos soak for CI: 5 minutes of fast faults (a fixed seed) across the four
simulated VMs, every agent with --watch; nothing that must never happen happens, and the
deployment is fully healthy again within a bound after each burst of faults.

The full soak (30 minutes by default, any seed, a table of recovery times) is bench/soak.py.
"""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from tests.soak import report
from tests.soak.lab import soak_lab
from tests.soak.run import choose_seed, soak
from tests.support.vms import Lab

pytestmark = [pytest.mark.integration, pytest.mark.soak]

SEED = 1717
DURATION = 300.0
# Fast faults: a pause of 2-5 s, container faults most often. The slow kinds (reboot, engine
# restart, the head's Ray container) keep a small weight so that 40 faults fit in 5 minutes
# (a reboot alone takes ~10 s to inject: vm-init ignores SIGTERM, so the stop times out).
WEIGHTS = {"container-sigkill": 3, "container-docker-kill": 3, "container-rm": 3,
           "agent-sigkill": 2, "network-cut": 1.5, "engine-restart": 0.6, "reboot": 0.6,
           "head-ray-restart": 0.6}
# Each fault must be fully healthy again within a fixed limit for its kind, measured from the
# end of its injection, whatever the lab's setup took; a fault overlapped by others is judged
# with its burst (a slow fault's limit stands for the faults on top of it, a later fault's
# limit for those it overlapped): tests/soak/verdict.py says how, and why each limit.
LONGEST = 900.0  # how long the soak waits for the final recovery at most


def test_short_soak(docker_client: docker.DockerClient, images: dict[str, str],
                    tmp_path: Path, vm_lab: Lab) -> None:
    seed = choose_seed(SEED)
    with soak_lab(docker_client, images, tmp_path, lab=vm_lab) as lab:
        result = soak(lab, seed, DURATION, print, WEIGHTS, pause=(2.0, 5.0),
                      final_timeout=LONGEST, logs=tmp_path / "logs")
        print(report.markdown(result, f"SYNTHO_SOAK_SEED={seed} pytest "
                              "tests/soak/test_soak_short.py"))
    assert len(result.faults) >= 40, result.injection_errors
    problems = result.problems()
    assert not result.violations, problems["violations"]
    assert result.rows >= 10, "the writer got (almost) no row acknowledged: nothing was checked"
    assert not problems["writes"], problems["writes"]
    assert not problems["long job"], problems["long job"]
    assert result.final_recovery is not None, "not fully healthy after the faults stopped"
    assert not problems["final recovery"], problems["final recovery"]
    assert not problems["kinds unjudged"], problems["kinds unjudged"]
    assert {j.fault.kind for j in result.judged} == {f.kind for f in result.faults}
    assert not problems["recoveries"], problems["recoveries"]
    assert not result.failed, problems
