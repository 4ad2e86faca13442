"""Polling with backoff: the only place the agent waits for something to become true."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from typing import Callable


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(200 <= resp.status < 300)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def poll(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    progress: Callable[[str], None] | None = None,
    first: float = 0.1,
    ceiling: float = 2.0,
) -> bool:
    """Poll until condition() is true or timeout seconds pass (0 = forever); True if it held.

    The interval doubles from `first` up to `ceiling`; progress hears about it every ~10 s.
    """
    start = time.monotonic()
    interval = first
    next_note = start + 10
    while True:
        if condition():
            return True
        now = time.monotonic()
        if timeout and now - start >= timeout:
            return False
        if progress and now >= next_note:
            progress(f"still waiting for {what} ({now - start:.0f}s)")
            next_note = now + 10
        sleep = min(interval, ceiling)
        if timeout:
            sleep = max(0.0, min(sleep, start + timeout - now))
        time.sleep(sleep)
        interval *= 2
