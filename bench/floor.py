"""The engine's floor: a minimal script that makes the same containers as the agent straight
through the Docker SDK, in the same order and behind the same gates, polling tightly (every
50 ms for health, 10 ms for a TCP port). It imports nothing but the SDK, so its start costs what
any such script costs.

    python bench/floor.py PLAN.json

PLAN.json (written by the benchmark from the agent's own Spec, see stacks.floor_plan): an
optional TCP address to wait for first (a Ray head's 6379), the volumes, the containers in start
order (each with the SDK create() arguments of agent.engine.create_args, the names it waits
for, whether it has a health check), and an optional URL that must answer at the end.
"""

from __future__ import annotations

import functools
import json
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Callable

import docker

POLL = 0.05  # seconds between looks at a health state
TCP_POLL = 0.01  # seconds between connection attempts


def ready(client: docker.DockerClient, name: str, health: bool) -> bool:
    state = client.api.inspect_container(name)["State"]
    if state.get("Status") != "running":
        return False
    return not health or (state.get("Health") or {}).get("Status") == "healthy"


def wait(what: str, condition: Callable[[], bool], every: float, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if timeout and time.monotonic() > deadline:
            sys.exit(f"floor: {what} not ready within {timeout:.0f}s")
        time.sleep(every)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(200 <= resp.status < 300)
    except (OSError, urllib.error.URLError):
        return False


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.05):
            return True
    except OSError:
        return False


def create_kwargs(c: dict[str, Any]) -> dict[str, Any]:
    """The SDK arguments agent.engine.create_args() gives (as JSON: the ports' (ip, port)
    pairs came as lists)."""
    kwargs = dict(c["create"])
    if "ports" in kwargs:
        kwargs["ports"] = {k: tuple(v) for k, v in kwargs["ports"].items()}
    return kwargs


def main(path: str) -> None:
    with open(path) as f:
        plan = json.load(f)
    client = docker.from_env(timeout=120)
    if plan.get("wait_tcp"):
        host, port = plan["wait_tcp"]
        print(f"waiting for {host}:{port}", flush=True)
        wait(f"{host}:{port}", lambda: tcp_open(host, port), TCP_POLL, timeout=0)
    for volume in plan["volumes"]:
        client.volumes.create(volume["name"], labels=volume["labels"])
    health = {c["name"]: c["health"] for c in plan["containers"]}
    for c in plan["containers"]:
        for dep in c["after"]:
            wait(dep, functools.partial(ready, client, dep, health[dep]), POLL)
        client.containers.create(**create_kwargs(c)).start()
    for c in plan["containers"]:
        if c["health"]:
            wait(c["name"], functools.partial(ready, client, c["name"], True), POLL)
    if plan.get("url"):
        wait(plan["url"], lambda: http_ok(plan["url"]), POLL)


if __name__ == "__main__":
    main(sys.argv[1])
