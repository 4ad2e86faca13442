"""The cluster's Ray release: what the head publishes, and whether a node's image matches it.

The head publishes its Ray image reference and its release as labels of its Ray node
(roles/ray.py, `ray start --labels`), which the dashboard's node list reports to anyone with
the cluster token: a worker given no image of its own runs that one, and `status` compares.

Before a worker or the app joins, the Ray version of its image (read once per image ID, in a
throw-away container, and cached in the data dir) is compared with the head's (its dashboard
reports it): a mismatch is refused in one line, instead of a container that restarts forever.
"""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import cluster, store
from agent.engine import Engine, EngineError
from agent.errors import EnvironmentProblem
from agent.roles.ray import IMAGE_LABEL, RELEASE_LABEL
from agent.spec import LABEL_INSTANCE, LABEL_TEMPORARY

CACHE = "ray-versions.json"
VERSION_SCRIPT = ("python3 -c 'import ray; print(ray.__version__)' 2>/dev/null || "
                  "python -c 'import ray; print(ray.__version__)'")


@dataclass(frozen=True)
class Published:
    image: str
    release: str


def published(nodes: list[dict[str, Any]]) -> Published | None:
    """What the head node of this list publishes; None for a head that publishes nothing."""
    head = next((n for n in nodes if n.get("is_head_node") and n.get("state") == "ALIVE"), None)
    found = (head or {}).get("labels") or {}
    pieces: list[str] = []
    while f"{IMAGE_LABEL}{len(pieces)}" in found:
        pieces.append(str(found[f"{IMAGE_LABEL}{len(pieces)}"]))
    if not pieces:
        return None
    encoded = "".join(pieces)
    try:
        image = base64.b32decode(encoded + "=" * (-len(encoded) % 8)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return Published(image, str(found.get(RELEASE_LABEL) or ""))


def head_version(address: str, token: str | None, timeout: float = 3.0,
                 ca: str | None = None) -> str | None:
    """The Ray version the head runs (its dashboard's /api/version); None when it does not
    answer."""
    try:
        found = cluster.dashboard_get(address, "/api/version", token, ca, timeout)
        return str(found.get("ray_version") or "") or None
    except (*cluster.UNANSWERED, AttributeError):
        return None


def image_version(engine: Engine, ref: str, image_id: str, data_dir: Path,
                  instance: str = "") -> str:
    """The Ray version in an image, read once per image ID (a throw-away container, no
    network, labelled with the instance it was read for) and cached in the data dir."""
    cache = data_dir / CACHE
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(image_id), str):
        return str(known[image_id])
    out = io.BytesIO()
    try:
        code, errors = engine.run_to(ref, ["sh", "-c", VERSION_SCRIPT], "none", out, labels={
            LABEL_INSTANCE: instance, LABEL_TEMPORARY: "ray-version"})
    except EngineError as exc:
        raise EnvironmentProblem(f"cannot read the Ray version in {ref}: {exc.explanation}") \
            from None
    version = out.getvalue().decode(errors="replace").strip().splitlines()[-1:] or [""]
    if code != 0 or not re.match(r"^\d+\.\d+", version[0]):
        raise EnvironmentProblem(f"cannot read the Ray version in {ref} (python -c 'import "
                                 f"ray' exited {code}: {errors.strip()[-200:]}); is it a Ray "
                                 "image?")
    known = {**(known if isinstance(known, dict) else {}), image_id: version[0]}
    store.write_atomic(cache, json.dumps(known, indent=1) + "\n", mode=0o600)
    return version[0]


def check(engine: Engine, what: str, ref: str, image_id: str, data_dir: Path, head: str,
          token: str | None, instance: str = "", ca: str | None = None) -> None:
    """Refuse an image whose Ray is not the head's, naming both versions and what to run.
    A head whose dashboard does not answer is not judged here (the join check follows)."""
    theirs = head_version(head, token, ca=ca)
    if theirs is None:
        return
    mine = image_version(engine, ref, image_id, data_dir, instance)
    if mine != theirs:
        raise EnvironmentProblem(
            f"{what} image {ref} has Ray {mine} but the head at {head} runs Ray {theirs}: "
            "run the head's release (--release TAG, or --release-file FILE naming images with "
            f"Ray {theirs}); `syntho-agent status` on the head shows it")
