"""What a user can read of the deployment, and whether it is fully healthy.

Fully healthy: every VM runs exactly its role's containers, each running and healthy (or
without a health check); the head's dashboard lists 3 live nodes, one for each of head, w1, w2
that started after that VM's Ray container last started; the core's
status says it ran a Ray task (7 squared) on a cluster of 3; the frontend answers from the host.
"""

from __future__ import annotations

import datetime
import json
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from agent import cluster, ray_tls
from tests.soak.lab import MANAGED, SERVICE_LABEL, safe_sh
from tests.support.vms import VM

PS_FORMAT = "{{.Names}}|{{.State}}|{{.Status}}|{{.Label \"" + SERVICE_LABEL + "\"}}"


@dataclass(frozen=True)
class Box:
    """One managed container as `docker ps -a` shows it inside a VM."""

    name: str
    state: str  # running, exited, restarting, created ...
    status: str  # "Up 3 minutes (healthy)"
    service: str

    @property
    def ready(self) -> bool:
        return self.state == "running" and "(unhealthy)" not in self.status and (
            "(health: starting)" not in self.status)


def managed(vm: VM) -> list[Box] | None:
    """The agent's containers in a VM (all states); None when its engine does not answer."""
    code, out, _ = safe_sh(vm, f"docker ps -a --filter label={MANAGED} --format '{PS_FORMAT}'")
    if code != 0:
        return None
    boxes = []
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 4:
            boxes.append(Box(*parts))
    return boxes


def core_status(app: VM) -> dict[str, Any]:
    code, out, _ = safe_sh(app, "docker exec syntho-core curl -sS -m 10 "
                           "http://localhost:8080/api/v1/status", timeout=20)
    try:
        found = json.loads(out) if code == 0 else {}
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def frontend_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


RAY_BOXES = {"head": "ray-head", "w1": "ray-worker", "w2": "ray-worker"}


def started_at(vm: VM, container: str) -> float | None:
    """When the container last started (the engine's clock: the host's, as Ray's)."""
    code, out, _ = safe_sh(vm, f"docker inspect -f '{{{{.State.StartedAt}}}}' {container}")
    stamp = out.strip()
    if code != 0 or not stamp.endswith("Z"):
        return None
    whole, _, fraction = stamp[:-1].partition(".")
    moment = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc)
    return moment.timestamp() + float(f"0.{fraction or 0}")


def started_ms(node: dict[str, Any]) -> float:
    """A node's start (Ray's start_time_ms, raw in the REST answer); 0 when not a number."""
    try:
        return float(node.get("start_time_ms") or 0)
    except (TypeError, ValueError):
        return 0.0


def ray_problems(vms: dict[str, VM], token: str) -> list[str]:
    """Each Ray VM listed alive by the head, by a node that started after its container did:
    a node the head still lists from before a restart (it notices late) does not count."""
    try:  # through the head's TLS front, trusting the CA the token carries
        listed = cluster.dashboard_get(vms["head"].ip, "/api/v0/nodes?detail=true&limit=1000",
                                       token, ray_tls.derived_ca(token).pem, 5)["data"][
                                           "result"]["result"]
    except (*cluster.UNANSWERED, KeyError, TypeError):
        return ["ray: the head's dashboard does not list the nodes"]
    alive = [n for n in listed if isinstance(n, dict) and n.get("state") == "ALIVE"]
    problems = []
    if len(alive) != 3:
        problems.append(f"ray: {len(alive)} live node(s)")
    for name, box in RAY_BOXES.items():
        since = started_at(vms[name], box)
        mine = [n for n in alive if n.get("node_ip") == vms[name].ip]
        fresh = [n for n in mine if since is not None and started_ms(n) / 1000 >= since - 1.0]
        if not fresh:
            problems.append(f"ray: vm-{name} not listed alive since its {box} started")
    return problems


@dataclass(frozen=True)
class Look:
    """One round of looking: when it began and ended, and what was not healthy."""

    began: float
    ended: float
    problems: tuple[str, ...]

    @property
    def healthy(self) -> bool:
        return not self.problems


def look(vms: dict[str, VM], token: str, frontend: str,
         expected: dict[str, tuple[str, ...]]) -> Look:
    """One look at the whole deployment; `expected`: each VM's containers (SoakLab.expected)."""
    began = time.time()
    problems: list[str] = []
    for name, vm in vms.items():
        boxes = managed(vm)
        if boxes is None:
            problems.append(f"vm-{name}: its engine does not answer")
            continue
        ready = {b.name for b in boxes if b.ready}
        missing = [n for n in expected[name] if n not in ready]
        if missing:
            problems.append(f"vm-{name}: not ready: {', '.join(missing)}")
    problems += ray_problems(vms, token)
    ray = core_status(vms["app"]).get("dependencies", {}).get("ray", {})
    if not (ray.get("ok") and ray.get("task_result") == 49 and ray.get("alive_nodes") == 3):
        problems.append(f"core: no Ray task on 3 nodes ({ray.get('error', ray)})"[:200])
    if not frontend_answers(frontend):
        problems.append("frontend: no answer from the host")
    return Look(began, time.time(), tuple(problems))
