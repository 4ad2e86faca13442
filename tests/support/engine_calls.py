"""Counting (and timing) the requests a Docker client sends to the engine, by kind."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable
from urllib.parse import urlsplit

import docker
import requests

_ID_RESOURCES = {"containers", "networks", "volumes", "exec", "plugins"}
_VERBS = {"json", "create", "prune", "load"}


def call_kind(method: str, url: str) -> str:
    """'GET /containers/{id}/json' for a request to the engine's API."""
    parts = [p for p in urlsplit(url).path.split("/") if p]
    if parts and re.fullmatch(r"v\d+\.\d+", parts[0]):
        parts = parts[1:]
    if parts and parts[0] == "images" and len(parts) > 2:
        parts = ["images", "{name}", parts[-1]]
    elif parts and parts[0] in _ID_RESOURCES and len(parts) > 1 and parts[1] not in _VERBS:
        parts[1] = "{id}"
    return f"{method} /{'/'.join(parts)}"


class CallCounter:
    """Counts (and times) every request a DockerClient sends, by kind, from now on."""

    def __init__(self, c: docker.DockerClient) -> None:
        self.counts: Counter[str] = Counter()
        self.seconds = 0.0
        api = c.api
        original: Callable[..., requests.Response] = api.send

        def send(request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            self.counts[call_kind(request.method or "?", request.url or "")] += 1
            started = time.perf_counter()
            try:
                return original(request, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        api.send = send

    def reset(self) -> None:
        self.counts.clear()
        self.seconds = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @contextmanager
    def measure(self) -> Iterator[Counter[str]]:
        """The counts of the requests sent inside the block (reset at its start)."""
        self.reset()
        yield self.counts


@contextmanager
def counting_engine() -> Iterator[list[CallCounter]]:
    """Inside the block, every engine the agent connects to in this process (its CLI run
    in-process) has its SDK client counted: one CallCounter per connection, in order."""
    from agent.engine import Engine

    counters: list[CallCounter] = []
    original = Engine.connect

    def connect(timeout: int = 60) -> Engine:
        engine = original(timeout)
        counters.append(CallCounter(engine._client))  # the SDK client the engine wraps
        return engine

    Engine.connect = connect  # type: ignore[method-assign]
    try:
        yield counters
    finally:
        Engine.connect = original  # type: ignore[method-assign]
