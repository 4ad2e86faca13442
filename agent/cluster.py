"""Talking to a Ray cluster from outside it: the token, reachability, and who has joined."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from agent import store, validate
from agent.errors import UsageError
from agent.roles.ray import DASHBOARD_PORT, GCS_PORT

TOKEN_FILE = "ray-token"


class TokenSettings(Protocol):
    """The token options (of a role, or of launcher-config)."""

    @property
    def auth(self) -> bool: ...
    @property
    def token(self) -> str | None: ...
    @property
    def token_file(self) -> Path | None: ...


def _supplied_token(settings: TokenSettings) -> str | None:
    token = settings.token
    if token is None and settings.token_file is not None:
        token = store.read_secret(settings.token_file)
    if token is not None:
        try:
            token = validate.token(token)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return token


def head_token(settings: TokenSettings, data_dir: Path) -> tuple[str | None, str]:
    """The head's token: stored, or supplied once, or generated once.

    With what this call did to the file: "generated", "stored" (the supplied one) or "".
    """
    if not settings.auth:
        return None, ""
    path = data_dir / TOKEN_FILE
    supplied = _supplied_token(settings)
    stored = store.read_secret(path)
    if supplied and stored and supplied != stored:
        raise UsageError(f"this head already has a different Ray token in {path}: omit the token; "
                         "to change the cluster's token, `syntho-agent down` and delete that "
                         "file first (then re-join every worker and the app)")
    if supplied and not stored:
        store.write_atomic(path, supplied + "\n")
        return supplied, "stored"
    token, created = store.secret(path, store.token_hex(32))
    return token, "generated" if created else ""


def joining_token(settings: TokenSettings, data_dir: Path) -> str | None:
    """A worker's or the app's token: supplied (and then remembered) or remembered."""
    if not settings.auth:
        return None
    path = data_dir / TOKEN_FILE
    supplied = _supplied_token(settings)
    stored = store.read_secret(path)
    if supplied is None and stored is None:
        raise UsageError(
            "the Ray head uses token auth: give its token with SYNTHO_AGENT_TOKEN or --token-file "
            "(copy the head's <data-dir>/ray-token), or pass --no-auth if the head runs without")
    if supplied is not None and supplied != stored:
        store.write_atomic(path, supplied + "\n")
        return supplied
    return stored


def source_ip_towards(host: str, port: int = GCS_PORT) -> str:
    """The local address this machine uses to reach host: what Ray detects as the node IP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        return str(sock.getsockname()[0])


# What a dashboard that does not answer (or not with a node list) raises from nodes().
UNANSWERED = (OSError, ValueError, http.client.HTTPException)


def is_loopback(address: str) -> bool:
    return address == "localhost" or address.startswith("127.")


def dashboard_get(address: str, path: str, token: str | None, ca: str | None,
                  timeout: float) -> Any:
    """GET path of the head's dashboard, as JSON. With the cluster's CA (a head whose Ray
    speaks TLS), other VMs reach it through its TLS front, verified against that CA alone;
    on the head's own loopback the dashboard answers in plain (nothing there crosses a wire).
    One of UNANSWERED when it does not answer (a refused token is HTTPError 401)."""
    tls = ca is not None and not is_loopback(address)
    url = f"{'https' if tls else 'http'}://{address}:{DASHBOARD_PORT}{path}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    if tls:
        with urllib.request.urlopen(request, timeout=timeout,
                                    context=ssl.create_default_context(cadata=ca)) as resp:
            return json.load(resp)
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.load(resp)


def nodes(address: str, token: str | None, timeout: float = 3.0,
          ca: str | None = None) -> list[dict[str, Any]]:
    """Every node the head's dashboard lists, alive and dead; one of UNANSWERED when it does
    not answer (a refused token is urllib's HTTPError 401)."""
    data = dashboard_get(address, "/api/v0/nodes?detail=false&limit=1000", token, ca, timeout)
    found = data.get("data", {}).get("result", {}).get("result") if isinstance(data, dict) else None
    if not isinstance(found, list):
        raise ValueError("the dashboard's answer holds no node list")
    return [n for n in found if isinstance(n, dict)]


def node_summaries(address: str, token: str | None, timeout: float = 3.0,
                   ca: str | None = None) -> list[dict[str, Any]]:
    """Every node the head's dashboard summarises (/nodes?view=summary: its raylet as the GCS
    registered it), as {node_ip, node_manager_port, node_id, is_head_node, state}: unlike the
    state API's list (nodes), it has each node's node-manager port, which tells apart nodes on
    one host network (a worker beside the head). One of UNANSWERED when it does not answer."""
    data = dashboard_get(address, "/nodes?view=summary", token, ca, timeout)
    found = data.get("data", {}).get("summary") if isinstance(data, dict) else None
    if not isinstance(found, list):
        raise ValueError("the dashboard's answer holds no node summary")
    listed = []
    for entry in found:
        raylet = entry.get("raylet") if isinstance(entry, dict) else None
        if not isinstance(raylet, dict):
            continue
        listed.append({"node_ip": raylet.get("nodeManagerAddress") or entry.get("ip"),
                       "node_manager_port": raylet.get("nodeManagerPort"),
                       "node_id": raylet.get("nodeId"), "is_head_node": raylet.get("isHeadNode"),
                       "state": raylet.get("state"), "start_time_ms": raylet.get("startTimeMs")})
    return listed


def alive_nodes(address: str, token: str | None, timeout: float = 3.0,
                ca: str | None = None) -> list[dict[str, Any]]:
    """The cluster's live nodes, from the head's dashboard; [] when it does not answer."""
    try:
        return [n for n in nodes(address, token, timeout, ca) if n.get("state") == "ALIVE"]
    except UNANSWERED:
        return []


def unanswered_reason(exc: BaseException) -> str:
    """Why the dashboard did not answer, in a few words (never the token)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}" + (" (a wrong Ray token?)" if exc.code in (401, 403)
                                                  else "")
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def worker_ip(head: str, node_ip: str | None, network_ip: str | None) -> str:
    """The address the head lists a worker under: its container's address when it runs on a
    Docker network, else the --node-ip-address it was given, else the address this machine
    reaches the head from (what Ray detects). OSError when the head's name does not resolve."""
    return network_ip or node_ip or source_ip_towards(head)


# Seconds a node may seem to have started before its container did (the two clocks are the
# worker VM's own, read at different moments).
START_SLACK = 5.0


def has_joined(listed: list[dict[str, Any]], ip: str, node_manager_port: int,
               since: float | None = None) -> bool:
    """Whether the head's node summary (node_summaries) holds a live node at ip whose raylet
    listens on the worker's node-manager port: the worker there has joined. The IP alone is not
    enough: a worker on the head's host network shares the head's, and the head's node would
    read as the worker's. `since` (the worker container's start, epoch seconds): the node must
    have started after it, for a restarted head (GCS fault tolerance) still lists the node of
    the container before this one alive until its health checks fail."""
    def current(n: dict[str, Any]) -> bool:
        started = n.get("start_time_ms")
        return since is None or not isinstance(started, (int, float)) or (
            started / 1000 >= since - START_SLACK)

    return any(n.get("node_ip") == ip and n.get("node_manager_port") == node_manager_port
               and n.get("state") == "ALIVE" and current(n) for n in listed)


def started_epoch(started_at: str) -> float | None:
    """The engine's StartedAt (RFC 3339, nanoseconds, Z) as epoch seconds; None when unset."""
    if not started_at or started_at.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(started_at[:19] + "+00:00").timestamp()
    except ValueError:
        return None


def summaries_or_none(address: str, token: str | None,
                      ca: str | None = None) -> list[dict[str, Any]]:
    """node_summaries; [] when the dashboard does not answer."""
    try:
        return node_summaries(address, token, ca=ca)
    except UNANSWERED:
        return []


def token_path(data_dir: Path) -> Path:
    return data_dir / TOKEN_FILE
