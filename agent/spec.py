"""The desired state: what a role wants the engine to run, as plain frozen data.

Role modules build a Spec from settings; the reconciler compares it with the engine.
Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

LABEL_PREFIX = "io.syntho.agent"
LABEL_MANAGED = f"{LABEL_PREFIX}.managed"
LABEL_INSTANCE = f"{LABEL_PREFIX}.instance"
LABEL_ROLE = f"{LABEL_PREFIX}.role"
LABEL_SERVICE = f"{LABEL_PREFIX}.service"
LABEL_HASH = f"{LABEL_PREFIX}.config-hash"


@dataclass(frozen=True)
class Health:
    """A Docker healthcheck (seconds)."""

    test: tuple[str, ...]
    interval: float = 2.0
    timeout: float = 5.0
    retries: int = 30
    start_period: float = 5.0


@dataclass(frozen=True)
class Port:
    container: int
    host: int
    host_ip: str = ""


@dataclass(frozen=True)
class Mount:
    source: str  # a volume name, or an absolute host path for a bind mount
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class Container:
    service: str  # the stack's name for it (postgres, core, ray-head ...)
    name: str  # the container name on the engine
    image: str
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    network: str = "host"  # "host" or a user-defined network name
    aliases: tuple[str, ...] = ()
    ports: tuple[Port, ...] = ()
    mounts: tuple[Mount, ...] = ()
    restart: str = "always"  # always | on-failure | unless-stopped | no
    shm_size: int | None = None
    nofile: int | None = None
    cpus: float | None = None
    memory: int | None = None
    health: Health | None = None
    after: tuple[str, ...] = ()  # services that must be ready before this one starts

    def config_hash(self, image_id: str) -> str:
        """A hash of everything that, changed, needs a new container (compose's idea)."""
        payload = json.dumps({"spec": asdict(self), "image_id": image_id}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


@dataclass(frozen=True)
class Network:
    name: str


@dataclass(frozen=True)
class Volume:
    name: str


@dataclass(frozen=True)
class Spec:
    """One role's desired state on one engine."""

    role: str
    instance: str
    containers: tuple[Container, ...]
    networks: tuple[Network, ...] = ()
    volumes: tuple[Volume, ...] = ()
    secrets: tuple[str, ...] = field(default=())  # values to redact from anything printed

    def labels(self, container: Container) -> dict[str, str]:
        return {
            LABEL_MANAGED: "true",
            LABEL_INSTANCE: self.instance,
            LABEL_ROLE: self.role,
            LABEL_SERVICE: container.service,
        }

    def ordered(self) -> list[Container]:
        """Containers in start order: each after the services it waits for."""
        by_service = {c.service: c for c in self.containers}
        done: list[Container] = []
        seen: set[str] = set()

        def visit(c: Container, path: tuple[str, ...]) -> None:
            if c.service in seen:
                return
            if c.service in path:
                raise ValueError(f"start order has a cycle: {' -> '.join((*path, c.service))}")
            for dep in c.after:
                if dep in by_service:
                    visit(by_service[dep], (*path, c.service))
            seen.add(c.service)
            done.append(c)

        for c in self.containers:
            visit(c, ())
        return done


def env_pairs(**values: str | int | None) -> tuple[tuple[str, str], ...]:
    """Env as sorted pairs, leaving out unset values."""
    return tuple(sorted((k, str(v)) for k, v in values.items() if v is not None))
