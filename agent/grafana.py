"""Ray's own Grafana dashboards, copied from the head into <data-dir>/metrics/grafana/ for the
operator's Grafana (README "Years unattended: metrics and alerts").

Ray's dashboard writes them at its start into its session folder, made for the Ray version
that runs: they are copied after a run of the head role whose Ray image is not the one they
were copied from (a new Ray release brings its own), as files of their own names, a changed
one replaced whole.
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


SOURCE = "ray-image"  # in the folder: the ID of the Ray image they were copied from


def copy_dashboards(engine: Engine, head: str, image_id: str, data_dir: Path,
                    say: Say) -> list[str]:
    """The dashboards Ray made in the head's container `head`, in the data dir, unless they
    were copied from the same Ray image already; their names ([] when nothing was copied).
    One line when they cannot be read (a copy that fails never fails the role)."""
    if store.read_text(folder(data_dir) / SOURCE) == image_id:
        return []
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
    if found:  # none yet (a dashboard still starting): the next run copies them
        store.write_atomic(where / SOURCE, image_id, mode=0o644)
    return sorted(found)
