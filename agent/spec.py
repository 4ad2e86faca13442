"""The desired state: what a role wants the engine to run, as plain frozen data.

Role modules build a Spec from settings; the reconciler compares it with the engine.
Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any

LABEL_PREFIX = "io.syntho.agent"
LABEL_MANAGED = f"{LABEL_PREFIX}.managed"
LABEL_INSTANCE = f"{LABEL_PREFIX}.instance"
LABEL_ROLE = f"{LABEL_PREFIX}.role"
# The previous release's container, kept stopped under this name until the new one is healthy
# (agent/reconcile.py): going back is a start, not a pull.
KEPT_SUFFIX = "-previous"
LABEL_SERVICE = f"{LABEL_PREFIX}.service"
# A throw-away container of a run (`backup-client`, `restore-client`: Postgres' client tools),
# not a service: a killed run leaves it, the next such run or `down` removes it, and `status`
# names it as what it is (agent/ops.py, TEMPORARY).
LABEL_TEMPORARY = f"{LABEL_PREFIX}.temporary"
LABEL_HASH = f"{LABEL_PREFIX}.config-hash"
LABEL_HASH_SCHEME = f"{LABEL_PREFIX}.hash-scheme"
HASH_SCHEME = "2"


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


# Every container's logs rotate (Docker's json-file driver, which otherwise keeps all): at most
# this many files of this size each. A container made before the agent set them keeps Docker's
# unbounded default until it is recreated for another reason: the defaults do not enter the
# config hash (an agent upgrade recreates nothing); a size or count given otherwise does.
LOG_MAX_SIZE = "10m"
LOG_MAX_FILES = 5


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
    log_max_size: str = LOG_MAX_SIZE  # json-file's max-size (Docker's size units: 10m, 1g)
    log_max_files: int = LOG_MAX_FILES  # json-file's max-file

    def config_hash(self, image_id: str) -> str:
        """A hash of everything that, changed, needs a new container (compose's idea).

        Only fields that differ from their defaults enter it, in a canonical form: a later
        agent that adds a field (with a default) computes the same hash for the same
        containers, so an agent upgrade recreates nothing (see LABEL_HASH_SCHEME).
        """
        payload = json.dumps({"scheme": HASH_SCHEME, "spec": canonical(self),
                              "image_id": image_id}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()

    def legacy_hash(self, image_id: str) -> str | None:
        """The hash the first agent (hash scheme 1, no scheme label) wrote for this container,
        or None when this container uses something that agent could not express."""
        spec = _v1_dict(self, V1_FIELDS)
        if spec is None:
            return None
        payload = json.dumps({"spec": spec, "image_id": image_id}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def hash_matches(self, image_id: str, found_hash: str, found_scheme: str) -> bool:
        """Whether a container labelled with (found_hash, found_scheme) was made for this."""
        if found_scheme == HASH_SCHEME:
            return found_hash == self.config_hash(image_id)
        if found_scheme == "":
            return found_hash == self.legacy_hash(image_id)
        return False  # another agent's scheme: make it anew

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

    def labels(self, container: Container, config_hash: str = "") -> dict[str, str]:
        labels = {
            LABEL_MANAGED: "true",
            LABEL_INSTANCE: self.instance,
            LABEL_ROLE: self.role,
            LABEL_SERVICE: container.service,
        }
        if config_hash:
            labels.update({LABEL_HASH: config_hash, LABEL_HASH_SCHEME: HASH_SCHEME})
        return labels

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


def canonical(value: Any) -> Any:
    """A dataclass as JSON-ready data with only its non-default fields (recursively)."""
    if is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in fields(value):
            v = getattr(value, f.name)
            if f.default is not MISSING and v == f.default:
                continue
            out[f.name] = canonical(v)
        return out
    if isinstance(value, (tuple, list)):
        return [canonical(v) for v in value]
    return value


# Hash scheme 1 (the first agent): sha256 of asdict() of these fields, all of them.
V1_FIELDS: dict[str, tuple[str, ...]] = {
    "Container": ("service", "name", "image", "command", "entrypoint", "env", "network",
                  "aliases", "ports", "mounts", "restart", "shm_size", "nofile", "cpus",
                  "memory", "health", "after"),
    "Health": ("test", "interval", "timeout", "retries", "start_period"),
    "Port": ("container", "host", "host_ip"),
    "Mount": ("source", "target", "read_only"),
}


def _v1_dict(value: Any, known: dict[str, tuple[str, ...]]) -> Any:
    """asdict() as scheme 1 saw it, or None if a field it did not know is not at its default."""
    if is_dataclass(value) and not isinstance(value, type):
        names = known.get(type(value).__name__)
        if names is None:
            return None
        out = {}
        for f in fields(value):
            v = getattr(value, f.name)
            if f.name not in names:
                if f.default is MISSING or v != f.default:
                    return None
                continue
            converted = _v1_dict(v, known)
            if converted is None and v is not None:
                return None
            out[f.name] = converted
        return out
    if isinstance(value, (tuple, list)):
        items = [_v1_dict(v, known) for v in value]
        if any(i is None and v is not None for i, v in zip(items, value)):
            return None
        return items
    return value


def with_logs(spec: Spec, max_size: str, max_files: int) -> Spec:
    """spec with every container's log rotation set (--log-max-size, --log-max-files)."""
    return replace(spec, containers=tuple(
        replace(c, log_max_size=max_size, log_max_files=max_files) for c in spec.containers))


def env_pairs(**values: str | int | None) -> tuple[tuple[str, str], ...]:
    """Env as sorted pairs, leaving out unset values."""
    return tuple(sorted((k, str(v)) for k, v in values.items() if v is not None))
