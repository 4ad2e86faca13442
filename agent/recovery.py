"""A missing secret file is never silently replaced: it is recovered, or the run stops.

A generated secret is made only on a first install. Once a container carries it (the head's Ray
token, the database password, the core's Fernet key, the backend's key, the admin password),
anything that used it (joined workers, data encrypted with the key, the database's password)
depends on it. So when a secret file is missing:
- a managed container that carries the value gives it back (written atomically, 0600);
- if none does but the database volume exists, the run stops (exit 3) before any change,
  naming the file: a new value would lock the data out;
- otherwise this is a first install, and the caller generates it.

The engine is looked at only when a file is missing: a run with every file in place costs no
engine call here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from agent import store
from agent.engine import Engine, Observed
from agent.errors import EnvironmentProblem

Say = Callable[[str], None]


@dataclass(frozen=True)
class Carrier:
    """A container (by service) whose env variable holds a secret's value."""

    service: str
    env: str


@dataclass(frozen=True)
class SecretFile:
    path: Path
    carriers: tuple[Carrier, ...]  # where to look, first match wins
    supplied: bool = False  # the operator gives the value: never a reason to stop


def recover(engine: Engine, instance: str, role: str, files: list[SecretFile],
            volume: str | None, say: Say) -> None:
    """Restore every missing file that a container of this role carries; refuse (before any
    change) one that nothing carries while `volume` (the data that depends on it) exists."""
    missing = [f for f in files if store.read_secret(f.path) is None]
    if not missing:
        return
    found = engine.managed(instance, role)
    restored: list[tuple[SecretFile, str, str]] = []
    for f in missing:
        carried = _carried(f, found)
        if carried is not None:
            restored.append((f, *carried))
        elif not f.supplied and volume is not None and engine.volume_exists(volume):
            raise EnvironmentProblem(
                f"{f.path} is missing and no container carries its value, but the volume "
                f"{volume} holds data made with it: a new value would lock that data out; "
                f"restore {f.path.name} from your backup of {f.path.parent}, then run again")
    for f, value, name in restored:
        store.write_atomic(f.path, value + "\n", how=f"restore it from the container {name}")
        say(f"restored {f.path} from the container {name} (the file was missing; nothing "
            "else changed)")


def _carried(f: SecretFile, found: list[Observed]) -> tuple[str, str] | None:
    """(value, container name) of the first carrier that holds a value."""
    for carrier in f.carriers:
        for o in found:
            value = o.env_value(carrier.env) if o.service == carrier.service else None
            if value:
                return value, o.name
    return None
