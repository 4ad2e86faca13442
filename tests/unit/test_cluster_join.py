"""A worker's join: the head's node list as its dashboard gives it, matched on the node's
address and its node-manager port (a worker on the head's own host network shares its IP)."""

from __future__ import annotations

import io
import json
import urllib.request
from typing import Any

import pytest

from agent import cluster
from agent.config import HeadSettings, WorkerSettings
from agent.roles import ray

HEAD_PORT = ray.node_ports(HeadSettings(), "head").node_manager_port
WORKER_PORT = ray.node_ports(WorkerSettings(head="h"), "worker").node_manager_port


def summary_entry(ip: str, port: int, node_id: str, head: bool,
                  state: str = "ALIVE") -> dict[str, Any]:
    """One node of the dashboard's /nodes?view=summary, as Ray 2.60 answers (trimmed)."""
    return {"hostname": "vm", "ip": ip, "raylet": {
        "nodeId": node_id, "nodeManagerAddress": ip, "nodeManagerPort": port,
        "isHeadNode": head, "state": state, "labels": {"ray.io/node-id": node_id}}}


def answer(monkeypatch: pytest.MonkeyPatch, entries: list[dict[str, Any]]) -> list[str]:
    asked: list[str] = []

    def urlopen(request: Any, timeout: float) -> io.BytesIO:
        asked.append(request.full_url)
        body = {"result": True, "msg": "Node summary fetched.", "data": {"summary": entries}}
        return io.BytesIO(json.dumps(body).encode())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return asked


def test_a_worker_on_the_heads_host_network_has_not_joined_while_only_the_head_is_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert HEAD_PORT != WORKER_PORT
    asked = answer(monkeypatch, [summary_entry("10.0.0.4", HEAD_PORT, "a" * 56, True)])
    listed = cluster.node_summaries("10.0.0.4", None)
    assert asked == ["http://10.0.0.4:8265/nodes?view=summary"]
    assert not cluster.has_joined(listed, "10.0.0.4", WORKER_PORT)
    # Its raylet registers: the same IP, its own node-manager port.
    answer(monkeypatch, [summary_entry("10.0.0.4", HEAD_PORT, "a" * 56, True),
                         summary_entry("10.0.0.4", WORKER_PORT, "b" * 56, False)])
    assert cluster.has_joined(cluster.node_summaries("10.0.0.4", None), "10.0.0.4", WORKER_PORT)


def test_a_dead_node_or_another_address_is_no_join(monkeypatch: pytest.MonkeyPatch) -> None:
    answer(monkeypatch, [summary_entry("10.0.0.5", WORKER_PORT, "b" * 56, False, "DEAD"),
                         summary_entry("10.0.0.6", WORKER_PORT, "c" * 56, False)])
    listed = cluster.node_summaries("10.0.0.4", None)
    assert not cluster.has_joined(listed, "10.0.0.5", WORKER_PORT)
    assert cluster.has_joined(listed, "10.0.0.6", WORKER_PORT)


def test_an_answer_without_a_summary_is_unanswered(monkeypatch: pytest.MonkeyPatch) -> None:
    answer(monkeypatch, [])
    assert cluster.node_summaries("h", None) == []
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda request, timeout: io.BytesIO(b'{"data": {}}'))
    with pytest.raises(cluster.UNANSWERED):
        cluster.node_summaries("h", None)


def test_the_node_of_the_container_before_this_one_is_no_join() -> None:
    """A head restarted with GCS fault tolerance lists the replaced container's node alive for
    a while (same IP and port): only a node started after this container counts."""
    started = cluster.started_epoch("2026-12-07T21:05:38.123456789Z")
    assert started is not None and cluster.started_epoch("0001-01-01T00:00:00Z") is None
    old = {"node_ip": "10.0.0.6", "node_manager_port": WORKER_PORT, "state": "ALIVE",
           "start_time_ms": (started - 60) * 1000}
    new = {**old, "start_time_ms": (started + 2) * 1000}
    assert cluster.has_joined([old], "10.0.0.6", WORKER_PORT)  # without a start to compare
    assert not cluster.has_joined([old], "10.0.0.6", WORKER_PORT, started)
    assert cluster.has_joined([old, new], "10.0.0.6", WORKER_PORT, started)
