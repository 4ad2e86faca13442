"""The host checks' pure parts and Ray's pinned ports (no engine: facts given as values)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from agent import check
from agent.check import FAIL, MB, OK, WARN
from agent.config import RAY_PORTS, AppSettings, HeadSettings, WorkerSettings
from agent.engine import EngineInfo
from agent.errors import UsageError
from agent.roles import ray

GB = 1024**3


def info(mem: int = 16 * GB, api: str = "1.43", cgroup: str = "2") -> EngineInfo:
    return EngineInfo(server_version="24.0.7", api_version=api, cgroup_version=cgroup,
                      mem_total=mem, root_dir="/var/lib/docker", local=True)


# ---- Ray's ports --------------------------------------------------------------------------------

def every_port(role: str) -> set[int]:
    p = ray.node_ports(HeadSettings() if role == "head" else WorkerSettings(head="h"), role)
    ports = set(p.single()) | set(range(p.min_worker_port, p.max_worker_port + 1))
    return ports | ({ray.GCS_PORT, ray.DASHBOARD_PORT, ray.CLIENT_PORT, *ray.HEAD_METRICS_PORTS}
                    if role == "head" else set())


def test_a_head_and_a_worker_share_no_port_nor_the_apps() -> None:
    """One host network may run a head, a worker and the app (frontend 3000, backend 8000)."""
    head, worker = every_port("head"), every_port("worker")
    assert not head & worker
    assert not (head | worker) & {3000, 8000}
    assert len(ray.node_ports(HeadSettings(), "head").single()) == 6


def test_start_command_pins_every_port() -> None:
    head = ray.start_command(None, ray.node_ports(HeadSettings(), "head"))
    worker = ray.start_command("10.0.0.4", ray.node_ports(WorkerSettings(head="h"), "worker"))
    for key, (head_port, worker_port) in RAY_PORTS.items():
        flag = "--" + key.replace("_", "-")
        assert f"{flag}={head_port}" in head and f"{flag}={worker_port}" in worker
    assert "--ray-client-server-port=10001" in head


def test_a_given_port_wins_over_the_roles_default() -> None:
    ports = ray.node_ports(WorkerSettings(head="h", node_manager_port=7000), "worker")
    assert ports.node_manager_port == 7000 and ports.object_manager_port == 6391


@pytest.mark.parametrize("given,role,message", [
    ({"object_manager_port": 6380}, "head",
     "--object-manager-port 6380 collides with --node-manager-port of the head"),
    ({"metrics_export_port": 8265}, "head", "collides with the dashboard (8265) of the head"),
    ({"node_manager_port": 10500}, "head", "collides with the worker range 10002-10999"),
    ({"min_worker_port": 12000}, "worker", "--min-worker-port 12000 is above --max-worker-port "
                                           "11999"),
    ({"min_worker_port": 6000, "max_worker_port": 7000}, "head", "collides with"),
    ({"min_worker_port": 8000, "max_worker_port": 8999}, "head",
     "the worker range 8000-8999 holds the head's port 8265"),
])
def test_colliding_ports_are_refused(given: dict[str, Any], role: str, message: str) -> None:
    settings: HeadSettings | WorkerSettings = (
        HeadSettings(**given) if role == "head" else WorkerSettings(head="h", **given))
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ray.node_ports(settings, role)


# ---- the checks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("api,status", [("1.28", FAIL), ("1.40", WARN), ("1.41", OK),
                                        ("1.45", OK), ("x", WARN)])
def test_docker_version(api: str, status: str) -> None:
    assert check.docker_version(info(api=api)).status == status


def test_cgroup_v1_is_a_warning() -> None:
    assert check.cgroup_version(info(cgroup="1")).status == WARN
    assert check.cgroup_version(info(cgroup="2")).status == OK


@pytest.mark.parametrize("shm,memory,status,advice", [
    (32 * GB, None, FAIL, "lower --shm-size"),
    (16 * GB, None, FAIL, "lower --shm-size"),
    (9 * GB, None, WARN, "lower --shm-size"),
    (4 * GB, None, OK, ""),
    (4 * GB, 64 * GB, FAIL, "lower --memory"),
    (4 * GB, 6 * GB, WARN, "lower --shm-size"),
])
def test_memory_against_shm_size(shm: int, memory: int | None, status: str,
                                 advice: str) -> None:
    result = check.memory(HeadSettings(shm_size=shm, memory=memory), info(mem=16 * GB))
    assert (result.status, advice in result.advice) == (status, True), result


def test_shared_memory_below_the_object_store_is_a_warning_naming_the_size() -> None:
    small = check.shared_memory(HeadSettings(shm_size=GB), info(mem=16 * GB))
    assert small.status == WARN and "raise --shm-size to 5.1gb" in small.advice
    assert check.shared_memory(HeadSettings(shm_size=6 * GB), info(mem=16 * GB)).status == OK


def test_nofile_against_the_engines_limit() -> None:
    assert check.nofile_against(65536, 20000, "").status == FAIL
    assert "lower --nofile to 20000" in check.nofile_against(65536, 20000, "").advice
    assert check.nofile_against(20000, 20000, "").status == OK
    assert check.nofile_against(20000, None, "unknown").status == WARN


def test_a_result_reads_as_one_line() -> None:
    assert check.Result(FAIL, "ports: 3000 taken", "free it").text() == \
        "fail  ports: 3000 taken -- free it"
    assert check.Result(OK, "docker: 24").text() == "ok    docker: 24"


def test_port_taken_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = int(sock.getsockname()[1])
        assert check.port_taken("0.0.0.0", port)
    assert check.port_taken("0.0.0.0", port) is None


def test_the_roles_ports_on_this_host() -> None:
    head = {w.port for w in check.wanted_ports(HeadSettings(gcs_ft=False), quick=True)}
    assert head == {6379, 8265, 10001, 6380, 6381, 6382, 6383, 6384, 6385}
    ft = {w.port for w in check.wanted_ports(HeadSettings(), quick=True)}
    assert ft == head | {6386}  # the GCS Redis, on loopback: on by default
    assert len(check.wanted_ports(HeadSettings(), quick=False)) == len(ft) + 998
    assert check.wanted_ports(WorkerSettings(head="h", network="net"), quick=True) == []
    app = check.wanted_ports(AppSettings(head="h", publish_redis=("127.0.0.1", 6400)), True)
    assert [(w.port, w.host) for w in app] == [(3000, "0.0.0.0"), (8000, "0.0.0.0"),
                                                (6400, "127.0.0.1")]


def test_the_firewall_table_names_every_port_of_the_role() -> None:
    head = "\n".join(check.firewall(HeadSettings()))
    for port in ("6379", "8265", "10001", "6380, 6381", "10002-10999", "6383, 6384", "6382",
                 "6385, 44217, 44227"):
        assert f"  {port} " in head, head
    worker = "\n".join(check.firewall(WorkerSettings(head="h", node_manager_port=7000)))
    assert "  7000, 6391 " in worker and "11000-11999" in worker and "6379 " not in worker
    app = "\n".join(check.firewall(AppSettings(head="h", frontend_port=3100)))
    assert "  3100 " in app and "reaches the head on 6379, 8265 and 10001" in app


def test_ranges() -> None:
    assert check._ranges([6379, 6380, 6381, 8265, 10001, 10002]) == "6379-6381, 8265, 10001-10002"


def test_a_nofile_the_host_refuses_stops_a_run_as_bad_input_as_the_engine_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """README "Exit codes": a nofile limit the host refuses is 2, whether the quick host check
    or the engine (agent.engine.start) catches it; other failed checks stay 3."""
    from agent.errors import EXIT_USAGE, EnvironmentProblem

    class Engine:
        def info(self) -> EngineInfo:
            return info()

    monkeypatch.setattr(check, "nofile_allowed", lambda: 20000)
    monkeypatch.setattr(check, "ports", lambda *args: [])
    monkeypatch.setattr(check, "free_bytes", lambda path: 100 * GB)
    monkeypatch.setattr(check, "used_share", lambda path: 0.5)
    said: list[str] = []
    with pytest.raises(UsageError) as refused:
        check.before_run(Engine(), HeadSettings(nofile=65536), said.append)  # type: ignore[arg-type]
    assert refused.value.exit_code == EXIT_USAGE and "--nofile" in str(refused.value)
    assert said and said[0].startswith("fail  nofile:")
    with pytest.raises(EnvironmentProblem):  # the environment: still 3
        check.before_run(Engine(), HeadSettings(nofile=10000, shm_size=100000 * GB),  # type: ignore[arg-type]
                         said.append)


@pytest.mark.parametrize("full, level", [(0.5, "ok"), (0.79, "ok"), (0.80, "warn"),
                                         (0.949, "warn"), (0.95, "fail"), (1.0, "fail")])
def test_a_disk_is_judged_by_how_full_it_is(monkeypatch: pytest.MonkeyPatch, full: float,
                                            level: str) -> None:
    """80% full warns, 95% fails (a role run then refuses to start), whatever is free."""
    monkeypatch.setattr(check, "free_bytes", lambda path: 100 * GB)
    monkeypatch.setattr(check, "used_share", lambda path: full)
    found = check.disk("the data dir", Path("/x"), 100 * MB, GB, "advice")
    assert found.status == level and f"({full:.0%} full)" in found.line, found


def test_a_disk_with_little_room_fails_however_big(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "free_bytes", lambda path: 50 * MB)
    monkeypatch.setattr(check, "used_share", lambda path: 0.1)
    assert check.disk("the data dir", Path("/x"), 100 * MB, GB, "advice").status == "fail"
