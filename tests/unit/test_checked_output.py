"""Output checked end to end (agent/engine.py `_received`, CHECKED_SH): what an engine lost on
the way is noticed and asked for again, never taken as the command's answer."""

from __future__ import annotations

import hashlib
import io
import subprocess

import pytest

from agent import engine
from agent.engine import CHECKED_SH, OutputLost, _Digesting, _received
from agent.errors import EnvironmentProblem

DATA = b"".join(b"%d\n" % i for i in range(5000))


def trailer(data: bytes, code: int = 0) -> bytes:
    return b"syntho-exit=%d\n%s  -\n" % (code, hashlib.sha256(data).hexdigest().encode())


class Runs:
    """A command run by the checked path, each run arriving as `arrivals` says: "whole",
    "empty" (all output lost), "tail" (the end lost), "garbled" (the SDK's ValueError),
    "no-trailer" (standard error's end lost)."""

    def __init__(self, *arrivals: str, code: int = 0, said: bytes = b"") -> None:
        self.arrivals = list(arrivals)
        self.code, self.said, self.runs = code, said, 0

    def __call__(self, into: _Digesting | None) -> tuple[int, bytes]:
        assert into is not None
        self.runs += 1
        arrival = self.arrivals.pop(0)
        if arrival == "garbled":
            raise OutputLost("the engine garbled the output of x (46 is not a valid stream)")
        into.write({"whole": DATA, "empty": b"", "tail": DATA[:-700]}.get(arrival, DATA))
        end = b"" if arrival == "no-trailer" else trailer(DATA, self.code)
        return 0, self.said + end


def test_what_arrived_whole_is_the_answer_with_the_commands_own_code_and_words() -> None:
    out = io.BytesIO()
    runs = Runs("whole", code=3, said=b"psql: an error\n")
    assert _received(runs, out, ["x"]) == (3, "psql: an error\n")
    assert out.getvalue() == DATA and runs.runs == 1


@pytest.mark.parametrize("lost", ["empty", "tail", "garbled", "no-trailer"])
def test_a_lost_output_is_asked_for_again_and_kept_once(lost: str) -> None:
    out = io.BytesIO(b"kept before ")
    out.seek(0, io.SEEK_END)
    runs = Runs(lost, "whole")
    assert _received(runs, out, ["x"]) == (0, "")
    assert out.getvalue() == b"kept before " + DATA and runs.runs == 2


def test_an_output_lost_every_time_is_an_error_not_an_answer() -> None:
    runs = Runs(*["tail"] * engine.CHECKED_ATTEMPTS)
    with pytest.raises(OutputLost, match="lost part of what x printed"):
        _received(runs, io.BytesIO(), ["x"])
    assert runs.runs == engine.CHECKED_ATTEMPTS


class Unseekable(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        return len(b)  # type: ignore[arg-type]


def test_a_stream_that_cannot_be_rewound_is_left_to_its_caller() -> None:
    runs = Runs("empty", "whole")
    with pytest.raises(OutputLost):
        _received(runs, io.BufferedWriter(Unseekable()), ["pg_dump"])  # as backup.py writes
    assert runs.runs == 1


@pytest.mark.parametrize("code", [0, 3])
def test_the_shell_reports_the_commands_code_and_the_digest_of_its_output(code: int) -> None:
    done = subprocess.run(["sh", "-c", CHECKED_SH, "sh", "sh", "-c",
                           f"seq 0 4999; echo said >&2; exit {code}"],
                          capture_output=True, check=True)
    assert done.stdout == DATA
    assert done.stderr == b"said\n" + trailer(DATA, code)


def test_an_image_without_sha256sum_is_named_not_retried() -> None:
    def once(into: _Digesting | None) -> tuple[int, bytes]:
        return 0, b"syntho-exit=0\nsh: 1: sha256sum: not found\n"

    with pytest.raises(EnvironmentProblem, match="no tee or sha256sum"):
        _received(once, io.BytesIO(), ["pg_dump"])
