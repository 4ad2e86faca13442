"""tests/support/kills.py, the SIGKILL rounds' harness: the points it chooses, and how it judges
whether a kill landed, on real short processes."""

from __future__ import annotations

import random
import subprocess
import sys
import time

import pytest

from tests.support import summary
from tests.support.kills import (
    Kill,
    enough_landed,
    fault_seed,
    kill_at,
    kill_points,
    kill_rounds,
)


def test_one_point_in_each_slice_of_the_duration() -> None:
    for rounds, duration in [(1, 3.0), (2, 40.0), (10, 8.0), (30, 8.0)]:
        points = kill_points(random.Random(7), rounds, duration)
        assert len(points) == rounds
        width = (duration - 0.05) / rounds
        slices = sorted(int((p - 0.05) // width) for p in points)
        assert slices == list(range(rounds)), (rounds, points)
        assert all(0.05 <= p <= duration for p in points)
    assert kill_points(random.Random(7), 10, 8.0) == kill_points(random.Random(7), 10, 8.0)
    with pytest.raises(ValueError):
        kill_points(random.Random(7), 3, 0.01)


def test_the_seed_comes_from_its_variable_and_is_printed(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SYNTHO_TEST_SEED", "1234")
    assert fault_seed("SYNTHO_TEST_SEED") == 1234
    assert "SYNTHO_TEST_SEED=1234" in capsys.readouterr().out
    assert summary.LINES.pop("SYNTHO_TEST_SEED").startswith("SYNTHO_TEST_SEED=1234 ")
    monkeypatch.delenv("SYNTHO_TEST_SEED")
    seed = fault_seed("SYNTHO_TEST_SEED")
    assert f"SYNTHO_TEST_SEED={seed}" in capsys.readouterr().out
    assert summary.LINES.pop("SYNTHO_TEST_SEED").startswith(f"SYNTHO_TEST_SEED={seed} ")


def sleeper(seconds: float) -> tuple[subprocess.Popen[str], float]:
    started = time.monotonic()
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), started


def test_a_kill_while_it_runs_lands() -> None:
    proc, started = sleeper(10)
    kill = kill_at(proc, started, 0.3)
    assert kill.landed and kill.returncode == -9
    assert time.monotonic() - started < 5


def test_a_kill_point_past_the_commands_end_does_not_land() -> None:
    proc, started = sleeper(0.1)
    kill = kill_at(proc, started, 2.0)
    assert not kill.landed and kill.returncode == 0
    assert kill.stdout == "" and kill.stderr == ""


def test_too_few_landed_kills_fail_the_threshold() -> None:
    """Points drawn over a duration ten times the command's: most fall past its end, and the
    rounds fail enough_landed."""
    kills = []
    for at in kill_points(random.Random(3), 5, 3.0):
        proc, started = sleeper(0.3)
        kills.append(kill_at(proc, started, at))
    assert sum(k.landed for k in kills) <= 1
    assert enough_landed(kills).startswith(f"only {sum(k.landed for k in kills)} of 5 kills")


def test_kill_rounds_shorten_the_duration_to_a_run_that_ended_before_its_point() -> None:
    """The same overestimate as above (ten times the command's duration), through kill_rounds:
    after the first run that ends on its own, every point falls within that run's duration,
    and most kills land."""
    kills = list(kill_rounds(random.Random(3), 10, 5.0, lambda: sleeper(0.5)[0]))
    first = next(i for i, k in enumerate(kills) if k.ended is not None)
    limit = kills[first].ended
    assert limit is not None and kills[first].returncode == 0
    assert all(k.at <= limit for k in kills[first + 1:]), kills
    assert sum(k.landed for k in kills) >= 5, kills


@pytest.mark.parametrize("landed, rounds, enough", [
    (8, 10, True), (7, 10, False), (2, 2, True), (1, 2, True), (0, 2, False), (1, 1, True),
    (0, 1, False), (16, 20, True), (15, 20, False), (24, 30, True), (23, 30, False),
    (0, 0, False)])
def test_the_threshold_is_80_percent_rounded_down_and_at_least_one(landed: int, rounds: int,
                                                      enough: bool) -> None:
    kills = [Kill(1.0, i < landed, -9 if i < landed else 0, None, None) for i in range(rounds)]
    assert (enough_landed(kills) == "") is enough
