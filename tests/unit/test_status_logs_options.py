"""`logs --since` parsing and the `status` lines no running cluster shows (a dashboard that
does not answer), on plain values."""

from __future__ import annotations

from typing import Any

import pytest

from agent import ops, validate

NOW = 1_700_000_000.0


@pytest.mark.parametrize("value,expected", [
    ("10m", NOW - 600), ("2h", NOW - 7200), ("1d", NOW - 86400), ("30s", NOW - 30),
    ("45", NOW - 45), ("0", NOW),
    ("2023-11-14T22:13:20Z", NOW), ("2023-11-14T23:13:20+01:00", NOW),
    ("2023-11-14T22:13:20.5Z", NOW + 0.5),
    ("2023-11-14t22:13:20.123456789z", NOW + 0.123456),  # the engine's StartedAt: nanoseconds
])
def test_since_accepts(value: str, expected: float) -> None:
    assert validate.since(value, now=NOW) == pytest.approx(expected)


@pytest.mark.parametrize("value", [
    "", "5x", "-10m", "10 minutes", "2023-11-14", "2023-11-14T22:13:20", "2023-13-01T00:00:00Z",
    "0001-01-01T00:00:00Z", "9" * 400 + "d"])
def test_since_rejects_in_one_line(value: str) -> None:
    with pytest.raises(ValueError) as exc:
        validate.since(value, now=NOW)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("seconds,shown", [
    (None, "-"), (0, "0s"), (59, "59s"), (60, "1m"), (61, "1m01s"), (3600, "1h"),
    (3 * 3600 + 5 * 60, "3h05m"), (86400 * 2 + 3600 * 4, "2d04h")])
def test_uptime_is_short(seconds: int | None, shown: str) -> None:
    assert ops._age(seconds) == shown


def test_a_dashboard_that_does_not_answer_is_named_with_why() -> None:
    refused = {"answers": False, "error": "[Errno 111] Connection refused"}
    ray: dict[str, Any] = {
        "head": {"address": "10.0.0.4", "alive": 0, "nodes": [], **refused},
        "worker": {"head": "10.0.0.4", "node_ip": "10.0.0.5", "joined": False, **refused},
        "app": {"head": "10.0.0.4", "alive": 0, **refused},
    }
    assert ops._ray_lines(ray) == [
        "ray cluster at 10.0.0.4:6379: the dashboard on port 8265 does not answer ([Errno 111] "
        "Connection refused)",
        "ray worker: cannot tell whether it joined the head at 10.0.0.4: its dashboard on port "
        "8265 does not answer ([Errno 111] Connection refused)",
        "the app's ray cluster at 10.0.0.4:6379: its dashboard on port 8265 does not answer "
        "([Errno 111] Connection refused)",
    ]


def test_dead_nodes_are_counted_and_listed_unless_back_alive() -> None:
    def node(ip: str, state: str, head: bool = False) -> dict[str, Any]:
        return {"node_ip": ip, "node_id": ip, "head": head, "state": state, "cpus": 2}

    ray = {"head": {"address": "10.0.0.4", "answers": True, "error": None, "alive": 2, "nodes": [
        node("10.0.0.6", "ALIVE"), node("10.0.0.4", "ALIVE", head=True),
        node("10.0.0.6", "DEAD"), node("10.0.0.7", "DEAD")]}}
    assert ops._ray_lines(ray) == [
        "ray cluster at 10.0.0.4:6379: 2 node(s) alive, 1 dead",
        "  head    10.0.0.4         2 CPU",
        "  worker  10.0.0.6         2 CPU",
        "  worker  10.0.0.7         2 CPU  dead",
    ]


# ---- a killed backup's throw-away client ----------------------------------------------------

def _observed(name: str, labels: dict[str, str], status: str = "running") -> Any:
    from agent.engine import Observed

    return Observed(
        id=f"id-{name}", name=name, labels=tuple(sorted(labels.items())), status=status,
        health=None, health_log=(), image_id="sha256:1", image="postgres:14.5", env=(),
        command=(), entrypoint=(), restart_policy="no", network_mode="syntho", endpoints=(),
        published=(), started_at="2023-11-14T22:13:20Z", restart_count=0)


class _Engine:
    """What status and down ask of the engine: the containers the agent labelled."""

    def __init__(self, found: list[Any]) -> None:
        self.found = found
        self.removed: list[str] = []

    def managed(self, instance: str, role: str | None = None) -> list[Any]:
        return [o for o in self.found if role is None or o.role == role]

    def remove(self, cid: str) -> None:
        self.removed.append(cid)

    def networks(self, labels: list[str]) -> list[Any]:
        return []

    def info(self) -> Any:  # the disks: a remote engine's, whose root is not on this machine
        from agent.engine import EngineInfo

        return EngineInfo("20.10", "1.41", "1", 0, "", local=False)

    def disk_usage(self, instance: str) -> Any:
        from agent.engine import DiskUsage

        return DiskUsage({}, {})


def _client(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The labels pgclient.run gives the client container of a backup."""
    from agent import pgclient
    from agent.config import BackupSettings

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "postgres-password").write_text("pw-0123456789\n")
    given: dict[str, Any] = {}

    class Running:
        def observe(self, name: str) -> Any:
            return _observed(name, {})

        def run_to(self, image: str, cmd: list[str], network: str, out: Any,
                   **kw: Any) -> tuple[int, str]:
            given.update(kw)
            return 0, ""

    settings = BackupSettings(data_dir=tmp_path)
    pgclient.run(Running(), settings, ["pg_restore", "-l"], None, dumps=tmp_path)  # type: ignore[arg-type]
    return _observed(given.get("name") or "festive_turing", given["labels"], status="exited")


def test_a_killed_backups_client_is_named_as_such_not_as_a_service(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.spec import LABEL_INSTANCE, LABEL_MANAGED, LABEL_ROLE, LABEL_SERVICE

    leftover = _client(tmp_path, monkeypatch)
    core = _observed("core", {LABEL_MANAGED: "true", LABEL_INSTANCE: "", LABEL_ROLE: "app",
                              LABEL_SERVICE: "core"})
    engine = _Engine([leftover, core])
    said: list[str] = []
    not_ready = ops.status(engine, tmp_path, "", said.append)  # type: ignore[arg-type]
    assert not_ready == 0, said  # an exited leftover is not a service that is down
    table = [line for line in said if leftover.name in line]
    assert table == [f"{leftover.name}: a backup's leftover client container (exited), removed "
                     "by the next backup or down"], said
    report = ops.status_report(ops.managed(engine, ""), tmp_path, "")  # type: ignore[arg-type]
    assert report["roles"] == ["app"]
    assert [c["name"] for c in report["containers"]] == ["core"]
    # down removes it, as before, and says what it was.
    said.clear()
    ops.down(engine, tmp_path, "", False, said.append)  # type: ignore[arg-type]
    assert set(engine.removed) == {leftover.id, core.id}
    assert f"removed {leftover.name} (a backup's leftover client container)" in said
