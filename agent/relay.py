"""The relay between the backend and the Ray head's dashboard, as the agent handles it.

The vendor's backend is given RAY_URL and calls the dashboard's HTTP API with no token, and it
has no setting for one; the head runs with Ray token authentication, so the dashboard refuses
it. The backend's RAY_URL therefore names the relay (`ray-relay` on the app's network, never
published), which adds the token and forwards read-only requests of /api/ to the head
(assets/ray-relay.py, run by the core image's python3). The token is in the relay's
environment only.

The program is written into the data dir under a name that carries its digest, so that a
changed program is a changed container command (a recreation), never a file swapped under a
running container. The container itself is declared in roles/app.py (`ray_relay`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from agent import store
from agent.engine import Engine, EngineError

SERVICE = "ray-relay"
PORT = 8265  # the dashboard's port, so that RAY_URL reads as the vendor's does
URL = f"http://{SERVICE}:{PORT}"  # the backend's RAY_URL
DIR = "relay"  # in the data dir, mounted read-only at INSIDE
INSIDE = "/relay"
ALIVE = "/syntho-relay/alive"
ASSET = "ray-relay.py"
PROBE_PATH = "/api/version"  # what `status` asks for through the relay


@functools.cache
def program() -> str:
    """The relay's program, read once from the package."""
    return (resources.files("agent") / "assets" / ASSET).read_text()


def health_command() -> tuple[str, ...]:
    """The container's health check: the relay itself answers (not the dashboard, whose
    absence must not make the relay look broken)."""
    return ("CMD", "python3", "-c", "import urllib.request as u; "
            f"u.urlopen('http://127.0.0.1:{PORT}{ALIVE}', timeout=3)")


def file_name(text: str) -> str:
    return f"ray-relay-{hashlib.sha256(text.encode()).hexdigest()[:16]}.py"


def write_files(data_dir: Path) -> None:
    """The relay's program in data_dir/relay/ (0644: the container's user reads it), and no
    other version of it."""
    text = program()
    name = file_name(text)
    folder = store.ensure_dir(data_dir / DIR, 0o755, exact=True)
    target = folder / name
    if not target.exists() or target.read_text() != text:
        store.write_atomic(target, text, mode=0o644)
    for old in folder.glob("ray-relay-*.py"):
        if old.name != name:
            store.remove(old)


def probe_command(path: str = PROBE_PATH) -> list[str]:
    """A request of the relay from inside its container (python3 is there: the relay runs on
    it), printing the answer's status and body."""
    code = ("import sys, urllib.request as u, urllib.error as e\n"
            "try:\n"
            f"    r = u.urlopen('http://127.0.0.1:{PORT}{path}', timeout=20)\n"
            "    print(r.status); print(r.read().decode(errors='replace'))\n"
            "except e.HTTPError as x:\n"
            "    print(x.code); print(x.read().decode(errors='replace'))\n"
            "except Exception as x:\n"
            "    print(0); print(x)\n")
    return ["python3", "-c", code]


def probe(engine: Engine, name: str) -> dict[str, Any]:
    """Whether the backend's path to the dashboard works now: the relay asked, from inside its
    container, for the dashboard's version. {"works": bool, "ray_version", "error"}."""
    try:
        code, out = engine.exec(name, probe_command())
    except EngineError as exc:
        return {"works": False, "ray_version": None, "error": f"cannot ask the relay: {exc}"}
    status, _, body = out.strip().partition("\n")
    status = status.strip()
    if code != 0 or status != "200":
        what = {"401": "the dashboard refuses the relay's token (401)",
                "403": "the dashboard refuses the relay's token (403)",
                "502": "the relay cannot reach the dashboard",
                "0": "the relay does not answer"}.get(status, f"HTTP {status or code}")
        lines = body.strip().splitlines()
        detail = f": {lines[0][:200]}" if lines and status not in ("401", "403") else ""
        return {"works": False, "ray_version": None, "error": what + detail}
    try:
        version = str(json.loads(body).get("ray_version") or "?")
    except (ValueError, AttributeError):
        return {"works": False, "ray_version": None,
                "error": "the dashboard's answer is not the JSON of /api/version"}
    return {"works": True, "ray_version": version, "error": None}
