"""Lines for the terminal summary of the run: what a test used that CI's log must show.

pytest shows a passing test's own output only with -s, so what a test prints is not in CI's
log (a fuzz's random seed, the Pythons a test ran on). tests/conftest.py writes every line
noted here at the end of the run, in `pytest -q` too.
"""

from __future__ import annotations

LINES: dict[str, str] = {}  # who noted it (a test module) -> the line


def note(who: str, line: str) -> None:
    """The line shown for `who` in the summary (replacing what it noted before)."""
    LINES[who] = line
