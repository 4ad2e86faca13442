"""Ray's own Grafana dashboards, copied from the head into <data-dir>/metrics/grafana/ for the
operator's Grafana (README "Years unattended: metrics and alerts").

Ray's dashboard writes them at its start into its session folder, made for the Ray version
that runs, so they are copied after every run of the head role (a new Ray release brings its
own), as files of their own names, a changed one replaced whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from agent import metrics, store
from agent.engine import Engine, EngineError

Say = Callable[[str], None]
FOLDER = "grafana"
INSIDE = "/tmp/ray/session_latest/metrics/grafana/dashboards"
# Run by the Ray image's python3: the dashboards as one JSON object (name -> text).
_READ = ("import json, os, sys\n"
         "d = sys.argv[1]\n"
         "names = sorted(n for n in os.listdir(d) if n.endswith('.json')) if os.path.isdir(d) "
         "else []\n"
         "print(json.dumps({n: open(os.path.join(d, n)).read() for n in names}))\n")


def folder(data_dir: Path) -> Path:
    return metrics.folder(data_dir) / FOLDER


def copy_dashboards(engine: Engine, head: str, data_dir: Path, say: Say) -> list[str]:
    """The dashboards Ray made in the head's container `head`, in the data dir; their names.
    One line when they cannot be read (a copy that fails never fails the role)."""
    try:
        code, out = engine.exec(head, ["python3", "-c", _READ, INSIDE])
        found = json.loads(out) if code == 0 else None
    except (EngineError, ValueError):
        found = None
    if not isinstance(found, dict):
        say(f"grafana dashboards: could not read them in {head} ({INSIDE})")
        return []
    where = store.ensure_dir(folder(data_dir), 0o755)
    for name, text in found.items():
        if "/" not in name and store.read_text(where / name) != text:
            store.write_atomic(where / name, text, mode=0o644)
    return sorted(found)
