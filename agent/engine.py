"""The Docker engine, through the SDK: what the reconciler needs (observe, create, start,
remove, exec), translating spec objects into SDK calls and SDK failures into the agent's
one-line errors. The edges that need more of the SDK (images.py: load, login, pull; watch.py:
events; ops.py: listing networks and volumes) use `Engine.client` directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container as SdkContainer
from docker.types import Mount as SdkMount

from agent import spec as s
from agent.errors import EnvironmentProblem, UsageError

NS = 1_000_000_000


@dataclass
class Observed:
    """A managed container as the engine has it."""

    name: str
    service: str
    status: str  # created | running | exited | restarting | paused | dead
    health: str | None  # healthy | unhealthy | starting | None when no healthcheck
    config_hash: str
    sdk: SdkContainer


class Engine:
    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    @classmethod
    def connect(cls, timeout: int = 60) -> Engine:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        try:
            client = docker.from_env(timeout=timeout)
            client.ping()
        except docker.errors.DockerException as exc:
            text = str(exc)
            if "Permission denied" in text or "PermissionError" in text:
                raise EnvironmentProblem(
                    f"no permission to use the Docker engine at {host}: run as root or as a "
                    "member of the docker group") from None
            raise EnvironmentProblem(
                f"the Docker engine at {host} does not answer: start it (systemctl start docker) "
                "and try again") from None
        return cls(client)

    # ---- images ----

    def image_id(self, ref: str) -> str | None:
        try:
            return str(self.client.images.get(ref).id)
        except docker.errors.ImageNotFound:
            return None

    # ---- observing ----

    def managed(self, instance: str, role: str | None = None) -> list[Observed]:
        filters = [f"{s.LABEL_MANAGED}=true", f"{s.LABEL_INSTANCE}={instance}"]
        if role:
            filters.append(f"{s.LABEL_ROLE}={role}")
        found = self.client.containers.list(all=True, filters={"label": filters})
        return [self._observe(c) for c in found]

    def observe(self, name: str) -> Observed | None:
        try:
            return self._observe(self.client.containers.get(name))
        except docker.errors.NotFound:
            return None

    @staticmethod
    def _observe(c: SdkContainer) -> Observed:
        state = c.attrs.get("State", {})
        labels = c.labels or {}
        return Observed(
            name=c.name or "",
            service=labels.get(s.LABEL_SERVICE, ""),
            status=state.get("Status", c.status),
            health=(state.get("Health") or {}).get("Status"),
            config_hash=labels.get(s.LABEL_HASH, ""),
            sdk=c,
        )

    def container_names(self) -> set[str]:
        """The names of every container on the engine (one list call, no inspects)."""
        return {str(n).lstrip("/") for c in self.client.api.containers(all=True)
                for n in c.get("Names") or []}

    def health_log_tail(self, name: str, lines: int = 3) -> str:
        obs = self.observe(name)
        if obs is None:
            return "container is missing"
        health = obs.sdk.attrs.get("State", {}).get("Health") or {}
        entries = health.get("Log") or []
        tail = " | ".join(str(e.get("Output", "")).strip().replace("\n", " ")[:300]
                          for e in entries[-lines:])
        return tail or f"status {obs.status}"

    # ---- acting ----

    def ensure_network(self, name: str, labels: dict[str, str]) -> bool:
        """Create a bridge network unless it exists; True when created."""
        # The engine's name filter matches substrings ("syntho" finds "syntho-x"): compare.
        if any(n.name == name for n in self.client.networks.list(names=[name])):
            return False
        self.client.networks.create(name, driver="bridge", labels=labels)
        return True

    def ensure_volume(self, name: str, labels: dict[str, str]) -> bool:
        try:
            self.client.volumes.get(name)
            return False
        except docker.errors.NotFound:
            self.client.volumes.create(name, labels=labels)
            return True

    def create(self, c: s.Container, labels: dict[str, str]) -> SdkContainer:
        try:
            return self.client.containers.create(**create_args(c, labels))
        except docker.errors.APIError as exc:
            raise EnvironmentProblem(f"the engine refused to create {c.name}: "
                                     f"{exc.explanation or exc}") from None

    def start(self, container: SdkContainer, name: str) -> None:
        try:
            container.start()
        except docker.errors.APIError as exc:
            explanation = str(exc.explanation or exc)
            if "nofile" in explanation or "operation not permitted" in explanation:
                raise UsageError(
                    f"the engine refused to start {name}: {explanation}; "
                    "lower --nofile to what this host allows (see `ulimit -Hn`)") from None
            taken = ("address already in use", "port is already allocated")
            if any(text in explanation for text in taken):
                raise EnvironmentProblem(
                    f"cannot start {name}: a port it publishes is already taken on this host "
                    f"({explanation}); free it or choose another port") from None
            raise EnvironmentProblem(f"the engine refused to start {name}: {explanation}") from None

    def reload(self, container: SdkContainer) -> bool:
        """Read the container's state again; False when it is gone."""
        try:
            container.reload()
            return True
        except docker.errors.NotFound:
            return False

    def remove(self, container: SdkContainer) -> None:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass

    def stop(self, container: SdkContainer, timeout: int = 10) -> None:
        try:
            container.stop(timeout=timeout)
        except docker.errors.NotFound:
            pass

    def volume_exists(self, name: str) -> bool:
        try:
            self.client.volumes.get(name)
            return True
        except docker.errors.NotFound:
            return False

    def exec(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
        container = self.client.containers.get(name)
        code, out = container.exec_run(cmd, environment=env or {}, demux=False)
        return int(code), (out or b"").decode(errors="replace")

    def logs(self, container: SdkContainer, tail: int | str = "all") -> Iterator[str]:
        data = container.logs(timestamps=True, tail=tail)
        yield from data.decode(errors="replace").splitlines()

    def container_ip(self, name: str, network: str) -> str | None:
        obs = self.observe(name)
        if obs is None:
            return None
        nets = obs.sdk.attrs.get("NetworkSettings", {}).get("Networks", {})
        return (nets.get(network) or {}).get("IPAddress") or None


def create_args(c: s.Container, labels: dict[str, str]) -> dict[str, Any]:
    """The SDK's containers.create() arguments for c: one create call makes the container
    whole (its network aliases included). Plain data, apart from the ports' (ip, port) tuples."""
    kwargs: dict[str, Any] = dict(
        image=c.image,
        name=c.name,
        command=list(c.command) if c.command is not None else None,
        entrypoint=list(c.entrypoint) if c.entrypoint is not None else None,
        environment=c.env_dict(),
        labels=labels,
        restart_policy={"Name": c.restart} if c.restart != "no" else None,
        detach=True,
    )
    if c.network == "host":
        kwargs["network_mode"] = "host"
    else:
        kwargs["network"] = c.network
        if c.aliases:
            kwargs["networking_config"] = {c.network: {"Aliases": list(c.aliases)}}
    if c.shm_size:
        kwargs["shm_size"] = c.shm_size
    if c.nofile:
        kwargs["ulimits"] = [{"name": "nofile", "soft": c.nofile, "hard": c.nofile}]
    if c.cpus:
        kwargs["nano_cpus"] = int(c.cpus * NS)
    if c.memory:
        kwargs["mem_limit"] = c.memory
        kwargs["mem_reservation"] = c.memory
    if c.ports:
        kwargs["ports"] = {f"{p.container}/tcp": (p.host_ip or "0.0.0.0", p.host)
                           for p in c.ports}
    if c.mounts:
        kwargs["mounts"] = [
            SdkMount(target=m.target, source=m.source, read_only=m.read_only,
                     type="bind" if m.source.startswith("/") else "volume")
            for m in c.mounts
        ]
    if c.health:
        kwargs["healthcheck"] = {
            "test": list(c.health.test),
            "interval": int(c.health.interval * NS),
            "timeout": int(c.health.timeout * NS),
            "retries": c.health.retries,
            "start_period": int(c.health.start_period * NS),
        }
    return kwargs
