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
