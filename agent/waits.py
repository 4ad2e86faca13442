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


def resolves(host: str) -> bool:
    """Whether a host name resolves now (an address always does)."""
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return True
    except (socket.gaierror, UnicodeError):
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
    first: float = 0.05,
    ceiling: float = 0.5,
) -> bool:
    """Poll until condition() is true or timeout seconds pass (0 = forever); True if it held.

    Looks begin `first` seconds apart, doubling up to `ceiling` (the time a look itself takes
    counts toward it); progress hears about it every ~10 s.
    """
    start = time.monotonic()
    interval = first
    next_note = start + 10
    while True:
        began = time.monotonic()
        if condition():
            return True
        now = time.monotonic()
        if timeout and now - start >= timeout:
            return False
        if progress and now >= next_note:
            progress(f"still waiting for {what} ({now - start:.0f}s)")
            next_note = now + 10
        sleep = max(0.0, min(interval, ceiling) - (now - began))
        if timeout:
            sleep = min(sleep, start + timeout - now)
        time.sleep(sleep)
        interval *= 2
