"""Ray's temp dir kept bounded: the agent's retention (assets/ray-retention.py) run inside a
node's Ray container after each role run and hourly by `--watch`.

Ray keeps every session's logs, one file per worker process, in /tmp/ray (the container's
writable layer) and prunes none of them. The retention removes old sessions, the logs of dead
processes and rotated copies older than --ray-log-retention-days, then more of those, oldest
first, while the temp dir is above --ray-temp-max-size; never a live process's log nor a
spilled object. What it freed is said in one line.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any, Callable

from agent.engine import Engine, EngineError

Say = Callable[[str], None]
ASSET = "ray-retention.py"
EVERY = 3600.0  # seconds between two runs of it by --watch


@functools.lru_cache(maxsize=1)
def program() -> str:
    return (resources.files("agent") / "assets" / ASSET).read_text()


def prune(engine: Engine, name: str, keep_days: float, cap: int, say: Say) -> dict[str, Any] | None:
    """Run the retention in the Ray container `name`; its report (before, after, freed,
    files, sessions: bytes and counts), or None when it could not run (said in one line: a
    retention that fails never fails the role)."""
    try:
        code, out = engine.exec(name, ["python3", "-c", program()],
                                env={"KEEP_DAYS": f"{keep_days:g}", "CAP_BYTES": str(cap)})
    except EngineError as exc:
        say(f"ray temp dir: the retention did not run in {name}: {exc}")
        return None
    lines = out.strip().splitlines()
    try:
        report: dict[str, Any] = json.loads(lines[-1]) if code == 0 and lines else {}
    except ValueError:
        report = {}
    if not report:
        say(f"ray temp dir: the retention failed in {name} (exit {code}): "
            f"{(lines or ['no output'])[-1][:200]}")
        return None
    if report.get("freed"):
        say(f"ray temp dir of {name}: freed {_mb(report['freed'])} ({report['files']} log "
            f"file(s) of finished processes, {report['sessions']} old session(s)); "
            f"{_mb(report['after'])} left (cap {_mb(cap)})")
    return report


def _mb(n: float) -> str:
    return f"{n / 1024**2:.1f} MB"
