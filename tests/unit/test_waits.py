"""waits.poll against a fake clock: its timing is logic, so it is tested without sleeping."""

from __future__ import annotations

import pytest

from agent import waits


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    # waits' own `time` (the module): patched by path, as waits does not export it.
    monkeypatch.setattr("agent.waits.time.monotonic", fake.monotonic)
    monkeypatch.setattr("agent.waits.time.sleep", fake.sleep)
    return fake


def test_looks_back_off_from_first_to_the_ceiling(clock: Clock) -> None:
    looks = iter([False] * 6 + [True])
    assert waits.poll(lambda: next(looks), 60, "x", first=0.05, ceiling=0.5)
    assert clock.sleeps == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]


def test_the_time_a_look_takes_counts_toward_the_interval(clock: Clock) -> None:
    """A look that hangs (a connection to an address that does not answer) is not followed by
    a full interval of sleep: looks stay one interval apart."""
    count = 0

    def slow_look() -> bool:
        nonlocal count
        clock.now += 0.4
        count += 1
        return count == 4

    assert waits.poll(slow_look, 60, "x", first=0.5, ceiling=0.5)
    assert clock.sleeps == [0.1, 0.1, 0.1]


def test_gives_up_at_the_timeout_and_says_why_it_waits(clock: Clock) -> None:
    heard: list[str] = []
    assert not waits.poll(lambda: False, 12, "the head", heard.append, ceiling=0.5)
    assert 12 <= clock.now <= 12.5
    assert heard == ["still waiting for the head (10s)"]
