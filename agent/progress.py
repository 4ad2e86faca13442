"""Progress of the long transfers (image pulls, bundle loads) as lines an operator can read.

On a terminal, one line per image rewritten in place. Elsewhere (CI logs, the systemd
journal) whole lines: the first as soon as there is a size to show, then at most one every
few seconds, so that a log never floods. Pure: fed the engine's events, byte counts and a
clock; it writes through what it is given.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, TextIO

LOG_EVERY = 5.0  # seconds between two lines of one transfer in a log
LIVE_EVERY = 0.2  # seconds between two rewrites of a terminal's line
HERE = "Already exists"  # a layer the engine had: nothing to download
DONE = ("Pull complete", HERE)
Say = Callable[[str], None]
Clock = Callable[[], float]


def size(n: int) -> str:
    """Bytes in the engine's own (decimal) units: 940 B, 12.3 kB, 61.2 MB, 1.2 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@dataclass
class Layer:
    status: str = ""
    current: int = 0  # bytes downloaded
    total: int = 0  # its (compressed) size; 0 until the engine starts downloading it


class Pull:
    """One image's pull, folded from the engine's status events: the dicts the SDK's
    pull(stream=True, decode=True) yields ({"status", "id", "progressDetail": {"current",
    "total"}})."""

    def __init__(self) -> None:
        self.layers: dict[str, Layer] = {}

    def feed(self, event: Mapping[str, Any]) -> None:
        key, status = event.get("id"), str(event.get("status") or "")
        # Events without an id are about the image ("Digest: ...", "Status: ..."); the first
        # one with an id names the tag ("Pulling from syntho/ray", id "1.2"). Neither is a
        # layer: counting the tag made a 2-layer image "2/3 layers".
        if not key or status.startswith("Pulling from"):
            return
        layer = self.layers.setdefault(str(key), Layer())
        layer.status = status
        detail = event.get("progressDetail") or {}
        if status == "Downloading":
            layer.total = int(detail.get("total") or layer.total)
            layer.current = int(detail.get("current") or layer.current)
        elif status in ("Download complete", "Extracting", "Pull complete"):
            # A small layer may come whole, with no Downloading event: extracting names its size.
            if status == "Extracting" and not layer.total:
                layer.total = int(detail.get("total") or 0)
            layer.current = layer.total

    @property
    def done(self) -> int:
        """Layers the image has on the engine now."""
        return sum(1 for layer in self.layers.values() if layer.status in DONE)

    @property
    def current(self) -> int:
        return sum(layer.current for layer in self.layers.values())

    @property
    def total(self) -> int:
        """Bytes to download, as far as known (see sizes_known)."""
        return sum(layer.total for layer in self.layers.values())

    @property
    def sizes_known(self) -> bool:
        """Whether every layer's size is known (the engine downloads a few layers at a time;
        the others wait, their sizes unknown until they start)."""
        return all(layer.total or layer.status in DONE for layer in self.layers.values())

    def line(self, ref: str) -> str:
        more = "" if self.sizes_known else "+"
        return (f"{ref}: {self.done}/{len(self.layers)} layers, {size(self.current)} / "
                f"{size(self.total)}{more}")

    def summary(self) -> str:
        here = sum(1 for layer in self.layers.values() if layer.status == HERE)
        return (f"{len(self.layers)} layers" + (f" ({here} already here)" if here else "")
                + f", {size(self.total)}")


def load_line(name: str, sent: int, total: int) -> str:
    return f"{name}: {size(sent)} / {size(total)}"


class Meter:
    """Shows one transfer's progress line. On a terminal (`live`): rewritten in place, at most
    every LIVE_EVERY seconds. Otherwise: said as a whole line, the first at once, then at most
    one every `every` seconds, however many events arrive."""

    def __init__(self, say: Say, live: TextIO | None, every: float = LOG_EVERY,
                 clock: Clock = time.monotonic) -> None:
        self._say, self._live, self._clock = say, live, clock
        self._every = LIVE_EVERY if live is not None else every
        self._last: float | None = None

    def show(self, line: str) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self._every:
            return
        self._last = now
        if self._live is None:
            self._say("  " + line)
        else:
            self._live.write("\r\x1b[K  " + line)  # ESC[K: clear what a longer line left
            self._live.flush()

    def close(self) -> None:
        """Clear the terminal's line, for the outcome (or an error) to be said in its place."""
        if self._live is not None and self._last is not None:
            self._live.write("\r\x1b[K")
            self._live.flush()
