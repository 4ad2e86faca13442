"""SIGKILL rounds: a printed, replayable seed; kill points spread over the command's own
duration; and, for each round, whether the kill landed while the command still ran.

Round k of n kills at a point drawn within the k-th of n equal slices of [EARLIEST, duration]
(the rounds' order shuffled), so the points cover the whole command instead of bunching
wherever uniform draws fall. A kill counts as landed only when the process had not exited just
before SIGKILL was sent and died of it: a point past the command's end proves nothing, and a
test asserts that enough of its rounds landed (enough_landed). kill_rounds runs the rounds of
one command and shortens the duration it spreads them over to any run that ended on its own
before its point: a run timed beforehand may be slower than the ones after it.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import AnyStr, Generic

from tests.support import summary

EARLIEST = 0.05  # seconds after the start: the first slice begins here
SHARE = 0.8  # of the rounds whose kill must land


def fault_seed(variable: str) -> int:
    """The seed in the environment variable `variable`, else a new one (SystemRandom); printed
    either way, as the assignment that replays the run, and noted for the run's summary (a
    passing test's prints show only with -s)."""
    given = os.environ.get(variable)
    seed = int(given) if given else random.SystemRandom().randrange(2**32)
    line = f"{variable}={seed} (set it to replay these kill points)"
    print(line)
    summary.note(variable, line)
    return seed


def kill_points(rng: random.Random, rounds: int, duration: float,
                earliest: float = EARLIEST) -> list[float]:
    """One point per round, each drawn within its own slice of [earliest, duration]; shuffled."""
    if duration <= earliest:
        raise ValueError(f"a command of {duration:.2f}s leaves nothing to kill after "
                         f"{earliest:.2f}s")
    width = (duration - earliest) / rounds
    points = [rng.uniform(earliest + k * width, earliest + (k + 1) * width)
              for k in range(rounds)]
    rng.shuffle(points)
    return points


@dataclass
class Kill(Generic[AnyStr]):
    """One round's kill: its point, whether it landed, the process's exit code and output
    (None when not piped), and, when the process ended on its own before the point, after how
    many seconds."""

    at: float
    landed: bool
    returncode: int
    stdout: AnyStr | None
    stderr: AnyStr | None
    ended: float | None = None


def kill_at(proc: subprocess.Popen[AnyStr], started: float, at: float) -> Kill[AnyStr]:
    """SIGKILL `proc` `at` seconds after `started` (time.monotonic(), just before it was
    started), if it still runs then; its output, if piped, read meanwhile."""
    try:
        out, err = proc.communicate(timeout=max(0.0, started + at - time.monotonic()))
        # It ended before the kill point.
        return Kill(at, False, proc.returncode, out, err, time.monotonic() - started)
    except subprocess.TimeoutExpired:
        pass
    running = proc.poll() is None  # still running just before the kill: only then it lands
    if running:
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    return Kill(at, running and proc.returncode == -signal.SIGKILL, proc.returncode, out, err)


def kill_rounds(rng: random.Random, rounds: int, duration: float,
                start: Callable[[], subprocess.Popen[AnyStr]],
                earliest: float = EARLIEST) -> Iterator[Kill[AnyStr]]:
    """`rounds` runs of start() (it returns the process just started), each killed at a point
    within its own slice of [earliest, duration]; one Kill per round, yielded as the round ends
    so that the caller can check what it left. A run that ends on its own before its point
    sets the duration to its own when that is shorter: the points after it fall within the
    runs as they are now, not as a slower run timed before them was (the seed replays the
    slices, the durations are measured again)."""
    for share in kill_points(rng, rounds, 1.0, earliest=0.0):
        at = earliest + share * (duration - earliest)
        started = time.monotonic()
        kill = kill_at(start(), started, at)
        if kill.ended is not None and kill.returncode == 0 and kill.ended > earliest:
            duration = min(duration, kill.ended)
        yield kill


def enough_landed(kills: list[Kill[str]] | list[Kill[bytes]], share: float = SHARE) -> str:
    """'' when at least `share` of the kills (rounded down, and at least one) landed while the
    command ran; else what went wrong, with every point. Rounded down: a run lasts a little
    more or less each time (health checks are looked at every few seconds), so a point in the
    last slice can come after the end; with 2 rounds (the release faults' default) 1 must land,
    with 10 8, with 20 16."""
    landed = sum(k.landed for k in kills)
    need = max(1, math.floor(share * len(kills) + 1e-9))
    if landed >= need:
        return ""
    points = ", ".join(f"{k.at:.2f}s {'landed' if k.landed else f'exit {k.returncode}'}"
                       for k in kills)
    return (f"only {landed} of {len(kills)} kills landed while the command ran (at least "
            f"{need} must): {points}")
