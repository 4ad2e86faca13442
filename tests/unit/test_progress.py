"""Pull and load progress (agent/progress.py): the layer and byte counts folded from the
engine's pull events, their formatting, and how often lines are written."""

from __future__ import annotations

import io
from typing import Any

import pytest

from agent import progress
from agent.progress import Meter, Pull

# Recorded: the SDK's pull(stream=True, decode=True) of an image of three layers (busybox's,
# already on the engine, then 3 MB and 40 MB) from a local registry; "progress" bars dropped.
RECORDED: list[dict[str, Any]] = [
    {"status": "Pulling from rec/blob", "id": "1"},
    {"status": "Already exists", "progressDetail": {}, "id": "4677d3dddf28"},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": "e89b04ca00d7"},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": "83de7dfdeb9d"},
    {"status": "Downloading", "progressDetail": {"current": 36445, "total": 3001127},
     "id": "e89b04ca00d7"},
    {"status": "Downloading", "progressDetail": {"current": 407552, "total": 40012402},
     "id": "83de7dfdeb9d"},
    {"status": "Verifying Checksum", "progressDetail": {}, "id": "e89b04ca00d7"},
    {"status": "Download complete", "progressDetail": {}, "id": "e89b04ca00d7"},
    {"status": "Extracting", "progressDetail": {"current": 32768, "total": 3001127},
     "id": "e89b04ca00d7"},
    {"status": "Extracting", "progressDetail": {"current": 3001127, "total": 3001127},
     "id": "e89b04ca00d7"},
    {"status": "Pull complete", "progressDetail": {}, "id": "e89b04ca00d7"},
    {"status": "Downloading", "progressDetail": {"current": 16861184, "total": 40012402},
     "id": "83de7dfdeb9d"},
    {"status": "Verifying Checksum", "progressDetail": {}, "id": "83de7dfdeb9d"},
    {"status": "Download complete", "progressDetail": {}, "id": "83de7dfdeb9d"},
    {"status": "Extracting", "progressDetail": {"current": 425984, "total": 40012402},
     "id": "83de7dfdeb9d"},
    {"status": "Extracting", "progressDetail": {"current": 40012402, "total": 40012402},
     "id": "83de7dfdeb9d"},
    {"status": "Pull complete", "progressDetail": {}, "id": "83de7dfdeb9d"},
    {"status": "Digest: sha256:9d5b89b981fdfb3a7c7e267036fc039d8b27e8375ad5d7ac81c297e2399b09ea"},
    {"status": "Status: Downloaded newer image for 127.0.0.1:49551/rec/blob:1"},
]
REF = "127.0.0.1:49551/rec/blob:1"


def fed(events: list[dict[str, Any]]) -> Pull:
    pull = Pull()
    for event in events:
        pull.feed(event)
    return pull


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("n,text", [
    (0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (443997, "444.0 kB"),
    (43013529, "43.0 MB"), (1_234_000_000, "1.2 GB"),
])
def test_size(n: int, text: str) -> None:
    assert progress.size(n) == text


def test_the_tag_is_not_a_layer() -> None:
    """The off-by-one: the first event's id is the tag being pulled."""
    assert fed(RECORDED[:1]).layers == {}
    assert len(fed(RECORDED).layers) == 3


def test_a_recorded_pull_midway() -> None:
    pull = fed(RECORDED[:6])
    assert (pull.done, pull.current, pull.total) == (1, 36445 + 407552, 3001127 + 40012402)
    assert pull.line(REF) == f"{REF}: 1/3 layers, 444.0 kB / 43.0 MB"
    pull.feed(RECORDED[6])
    pull.feed(RECORDED[7])  # download complete: all its bytes are there
    assert pull.current == 3001127 + 407552


def test_a_recorded_pull_at_its_end() -> None:
    pull = fed(RECORDED)
    assert pull.line(REF) == f"{REF}: 3/3 layers, 43.0 MB / 43.0 MB"
    assert pull.summary() == "3 layers (1 already here), 43.0 MB"


def test_a_waiting_layer_makes_the_total_a_lower_bound() -> None:
    pull = fed([*RECORDED[:5], {"status": "Waiting", "progressDetail": {}, "id": "83de7dfdeb9d"}])
    assert not pull.sizes_known
    assert pull.line("x:1") == "x:1: 1/3 layers, 36.4 kB / 3.0 MB+"


def test_a_layer_that_came_whole_takes_its_size_from_extracting() -> None:
    pull = fed([{"status": "Pulling fs layer", "id": "a"},
                {"status": "Download complete", "id": "a"},
                {"status": "Extracting", "progressDetail": {"current": 10, "total": 2048},
                 "id": "a"},
                {"status": "Pull complete", "id": "a"}])
    assert pull.summary() == "1 layers, 2.0 kB"
    assert pull.current == pull.total == 2048


def test_an_image_already_here_downloads_nothing() -> None:
    pull = fed([RECORDED[0], RECORDED[1], {"status": "Status: Image is up to date for x"}])
    assert (pull.done, len(pull.layers), pull.total) == (1, 1, 0)
    assert pull.summary() == "1 layers (1 already here), 0 B"


def test_a_log_gets_the_first_line_at_once_then_one_every_few_seconds() -> None:
    said: list[str] = []
    clock = Clock()
    meter = Meter(said.append, None, every=5.0, clock=clock)
    for second in range(13):  # an event every 0.1 s for 12 s
        for tenth in range(10):
            clock.now = 100.0 + second + tenth / 10
            meter.show(f"at {second}.{tenth}")
    meter.close()
    assert said == ["  at 0.0", "  at 5.0", "  at 10.0"]


def test_a_recorded_pull_in_a_log_is_one_line_not_one_per_event() -> None:
    said: list[str] = []
    clock = Clock()
    meter = Meter(said.append, None, clock=clock)
    pull = Pull()
    for event in RECORDED:
        clock.now += 0.1
        pull.feed(event)
        if pull.total:
            meter.show(pull.line(REF))
    assert said == [f"  {REF}: 1/3 layers, 36.4 kB / 3.0 MB+"]


def test_a_terminal_line_is_rewritten_in_place_and_cleared_at_the_end() -> None:
    said: list[str] = []
    out = io.StringIO()
    clock = Clock()
    meter = Meter(said.append, out, clock=clock)
    meter.show("a")
    clock.now += 0.15
    meter.show("b")  # too soon: dropped
    clock.now += 0.15
    meter.show("c")
    meter.close()
    assert said == []
    assert out.getvalue() == "\r\x1b[K  a\r\x1b[K  c\r\x1b[K"


def test_nothing_shown_nothing_cleared() -> None:
    out = io.StringIO()
    Meter(print, out).close()
    assert out.getvalue() == ""


def test_load_line() -> None:
    assert progress.load_line("images.tar.gz", 12_500_000, 61_200_000) == (
        "images.tar.gz: 12.5 MB / 61.2 MB")
