"""The Docker engine, through the SDK: the only module that imports `docker`.

What the engine has comes back as plain frozen values (`Observed`, read from one inspect by
`observe_attrs`); what the agent wants goes in as spec objects (`create_args` turns a
`spec.Container` into the SDK's create arguments). Every SDK failure leaves this module as
one of the agent's errors: `EngineError` (the engine refused or failed a call, in its own
words) or `EngineLost` (it went away, as when dockerd restarts).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import IO, Any, Callable, TypeVar, cast

import docker
import docker.auth
import docker.errors
import docker.utils
import requests.exceptions
from docker.types import Mount as SdkMount

from agent import spec as s
from agent import waits
from agent.errors import EnvironmentProblem, UsageError

NS = 1_000_000_000
REMOVAL_WAIT = 120  # s: a removal the engine began for an agent that was killed meanwhile
F = TypeVar("F", bound=Callable[..., Any])


class EngineError(EnvironmentProblem):
    """The engine refused or failed a call; `explanation` is its own words."""

    def __init__(self, message: str, explanation: str = "") -> None:
        super().__init__(message)
        self.explanation = explanation


class EngineLost(EngineError):
    """The engine stopped answering (dockerd restarted, the socket went away)."""


class ContainerGone(EngineError):
    """A container the run was looking at was removed meanwhile (by someone else)."""


class EngineAbsent(EnvironmentProblem):
    """No engine answers where it should (not started yet, or restarting)."""


def _sdk(fn: F) -> F:
    """Translate what the SDK raises past a method into the agent's errors."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except docker.errors.APIError as exc:
            explanation = str(exc.explanation or exc)
            kind = (ContainerGone if isinstance(exc, docker.errors.NotFound)
                    and explanation.startswith("No such container") else EngineError)
            raise kind(f"the Docker engine failed: {explanation}", explanation) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException,
                ConnectionError) as exc:
            raise EngineLost(f"the Docker engine stopped answering ({type(exc).__name__}); "
                             "check that it runs (docker info)", str(exc)) from None

    return cast(F, call)


# ---- image references, split by the SDK's own rules --------------------------------------------

def split_reference(ref: str) -> tuple[str, str]:
    """(repository, tag or digest) of an image reference, as the SDK's pull splits it:
    "host:5000/syntho/ray:1" -> ("host:5000/syntho/ray", "1"), "ray@sha256:..." -> ("ray",
    "sha256:..."); "latest" when it names neither."""
    repository, tag = docker.utils.parse_repository_tag(ref)
    return str(repository), str(tag or "latest")


def registry_of(ref: str) -> str | None:
    """The registry an image reference names ("host:5000", "localhost", "reg.example"), or
    None when it names none (the engine's default). Docker's rule: the first component is a
    registry when it has a "." or a ":" or is "localhost"."""
    repository, _ = docker.utils.parse_repository_tag(ref)
    registry, path = docker.auth.split_repo_name(repository)
    return None if path == repository else str(registry)


# ---- what the engine has, as plain values ------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """A container's place on one network."""

    network: str
    ip: str
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class Published:
    """A host port a container publishes (as configured, also while it is stopped)."""

    container_port: int
    host_ip: str
    host_port: int


@dataclass(frozen=True)
class Observed:
    """A container as the engine has it: one inspect, read into plain values."""

    id: str
    name: str
    labels: tuple[tuple[str, str], ...]
    status: str  # created | running | exited | restarting | paused | dead | removing
    health: str | None  # healthy | unhealthy | starting | None when no healthcheck
    health_log: tuple[str, ...]  # the health check's latest outputs, oldest first
    image_id: str
    image: str  # the reference it was created from
    env: tuple[str, ...]  # "KEY=value", as the engine has them
    command: tuple[str, ...]
    entrypoint: tuple[str, ...]
    restart_policy: str  # "no" when none
    network_mode: str
    endpoints: tuple[Endpoint, ...]
    published: tuple[Published, ...]
    started_at: str
    restart_count: int
    binds: tuple[tuple[str, str], ...] = ()  # (host path, path inside) of its bind mounts

    def label(self, key: str) -> str:
        return dict(self.labels).get(key, "")

    @property
    def service(self) -> str:
        return self.label(s.LABEL_SERVICE)

    @property
    def role(self) -> str:
        return self.label(s.LABEL_ROLE)

    @property
    def config_hash(self) -> str:
        return self.label(s.LABEL_HASH)

    @property
    def hash_scheme(self) -> str:
        return self.label(s.LABEL_HASH_SCHEME)

    def env_value(self, key: str) -> str | None:
        for item in self.env:
            k, _, v = item.partition("=")
            if k == key:
                return v
        return None

    def ip_on(self, network: str) -> str | None:
        return next((e.ip for e in self.endpoints if e.network == network and e.ip), None)

    @property
    def kept(self) -> bool:
        """The previous release's container, kept for a rollback (spec.KEPT_SUFFIX)."""
        return self.name.endswith(s.KEPT_SUFFIX)

    @property
    def host_network(self) -> bool:
        return self.network_mode == "host"


def observe_attrs(attrs: dict[str, Any]) -> Observed:
    """An inspect's JSON, as plain values (pure: the planner's tests build these directly)."""
    state = attrs.get("State") or {}
    config = attrs.get("Config") or {}
    host = attrs.get("HostConfig") or {}
    health = state.get("Health") or {}
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    bindings = host.get("PortBindings") or {}
    return Observed(
        id=str(attrs.get("Id", "")),
        name=str(attrs.get("Name", "")).lstrip("/"),
        labels=tuple(sorted((config.get("Labels") or {}).items())),
        status=str(state.get("Status", "")),
        health=health.get("Status"),
        health_log=tuple(str(e.get("Output", "")).strip().replace("\n", " ")
                         for e in health.get("Log") or []),
        image_id=str(attrs.get("Image", "")),
        image=str(config.get("Image", "")),
        env=tuple(config.get("Env") or ()),
        command=tuple(config.get("Cmd") or ()),
        entrypoint=tuple(config.get("Entrypoint") or ()),
        restart_policy=str((host.get("RestartPolicy") or {}).get("Name") or "no"),
        network_mode=str(host.get("NetworkMode", "")),
        endpoints=tuple(Endpoint(name, str(e.get("IPAddress") or ""),
                                 tuple(e.get("Aliases") or ()))
                        for name, e in sorted(networks.items()) if e is not None),
        published=tuple(Published(int(port.split("/")[0]), str(b.get("HostIp") or ""),
                                  int(b["HostPort"]))
                        for port, bs in sorted(bindings.items()) for b in (bs or [])
                        if b.get("HostPort")),
        started_at=str(state.get("StartedAt", "")),
        restart_count=int(attrs.get("RestartCount") or 0),
        binds=tuple((str(m.get("Source", "")), str(m.get("Destination", "")))
                    for m in attrs.get("Mounts") or [] if m.get("Type") == "bind"),
    )


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    users: tuple[str, ...]  # names of the containers attached to it


@dataclass(frozen=True)
class EngineInfo:
    """The engine's facts the host checks read (agent/check.py): one `info` call."""

    server_version: str  # "20.10.24+dfsg1"
    api_version: str  # what this client speaks with it: "1.41"
    cgroup_version: str  # "1" or "2"
    mem_total: int  # bytes of memory on the engine's machine
    root_dir: str  # DockerRootDir: images and containers' layers
    local: bool  # the engine runs on this machine (a unix socket): its paths are ours


@dataclass(frozen=True)
class DiskUsage:
    """Bytes on the engine's disk: this agent's volumes, and its containers' writable layers
    (where a Ray container keeps /tmp/ray: session logs, spilled objects)."""

    volumes: dict[str, int]
    containers: dict[str, int]


# ---- the engine ----------------------------------------------------------------------------

class Engine:
    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client

    @classmethod
    def connect(cls, timeout: int = 60) -> Engine:
        given = os.environ.get("DOCKER_HOST", "")
        host = given or "unix:///var/run/docker.sock"
        try:
            client = docker.from_env(timeout=timeout)
            client.ping()
        except docker.errors.DockerException as exc:
            text = str(exc)
            if "Permission denied" in text or "PermissionError" in text:
                raise EnvironmentProblem(
                    f"no permission to use the Docker engine at {host}: run as root or as a "
                    "member of the docker group") from None
            if given and ("Invalid bind address" in text or "paramiko" in text):
                reason = " ".join(text.split())[:200]
                raise UsageError(f"DOCKER_HOST={given} cannot be used ({reason}): fix it, or "
                                 "unset it to use this machine's engine") from None
            if given and not given.startswith("unix://"):  # another machine's engine
                raise EngineAbsent(
                    f"the Docker engine at DOCKER_HOST={given} does not answer: check that it "
                    "runs and that this machine reaches it, or fix DOCKER_HOST (unset it to use "
                    "this machine's engine)") from None
            fix = " (or fix DOCKER_HOST)" if given else ""
            raise EngineAbsent(
                f"the Docker engine at {host} does not answer: start it (systemctl start docker)"
                f"{fix} and try again") from None
        return cls(client)

    # ---- images ----

    @_sdk
    def image_id(self, ref: str) -> str | None:
        try:
            return str(self._client.images.get(ref).id)
        except docker.errors.ImageNotFound:
            return None

    @_sdk
    def image_user(self, ref: str) -> str:
        """The user the image's processes run as (its Config.User: "" for root)."""
        return str((self._client.images.get(ref).attrs.get("Config") or {}).get("User") or "")

    @_sdk
    def repo_digests(self, ref: str) -> tuple[str, ...]:
        """The image's `repository@sha256:...` names, as the registries it came from (or went
        to) know it; () when it is not on the engine or came from no registry."""
        try:
            return tuple(self._client.images.get(ref).attrs.get("RepoDigests") or ())
        except docker.errors.ImageNotFound:
            return ()

    @_sdk
    def tag(self, image_id: str, ref: str) -> None:
        """Point ref at an image this engine has (a rollback's release, by its ID)."""
        repo, tag = split_reference(ref)
        self._client.api.tag(image_id, repo, tag)

    @_sdk
    def registry_digest(self, ref: str, auth: dict[str, str] | None) -> str:
        """The digest the registry has for ref now (the engine asks it: one call, no pull)."""
        try:
            return str(self._client.images.get_registry_data(ref, auth_config=auth).id)
        except docker.errors.APIError as exc:
            explanation = str(exc.explanation or exc)
            raise EngineError(f"the engine could not ask the registry for {ref}: {explanation}",
                              explanation) from None
        except docker.errors.DockerException as exc:
            raise EngineError(f"the engine could not ask the registry for {ref}: {exc}",
                              str(exc)) from None

    @_sdk
    def load_images(self, stream: IO[bytes], size: int,
                    sent: Callable[[int], None] | None = None) -> list[str]:
        """Load a `docker save` archive of `size` bytes (the engine unpacks gzip itself);
        the tags it held. `sent` is told the bytes sent so far, as the archive streams."""
        body = _Counted(stream, size, sent or (lambda _: None))
        try:
            loaded = self._client.images.load(body)
        except docker.errors.ImageLoadError as exc:  # the engine's words, mid-stream
            raise EngineError(f"the engine failed to load images: {exc}", str(exc)) from None
        return [t for image in loaded for t in image.tags]

    @_sdk
    def login(self, registry: str, username: str, password: str) -> None:
        """Check the credentials with the registry now. The SDK keeps them in memory for the
        pulls of this process; it writes no credentials file."""
        self._client.login(username=username, password=password, registry=registry, reauth=True)

    def pull(self, ref: str, auth: dict[str, str] | None) -> Iterator[dict[str, Any]]:
        """The engine's progress events of one pull (a tag or a digest), as it sends them."""
        repo, tag = split_reference(ref)
        try:
            yield from self._client.api.pull(repo, tag, stream=True, decode=True,
                                             auth_config=auth)
        except docker.errors.APIError as exc:
            explanation = str(exc.explanation or exc)
            raise EngineError(f"the engine failed to pull {repo}: {explanation}",
                              explanation) from None

    # ---- the host, for the checks ----

    @_sdk
    def info(self) -> EngineInfo:
        """The engine's version, cgroup version, memory and root dir, in one call."""
        found = self._client.api.info()
        host = os.environ.get("DOCKER_HOST", "")
        return EngineInfo(
            server_version=str(found.get("ServerVersion") or "?"),
            api_version=str(self._client.api.api_version),
            cgroup_version=str(found.get("CgroupVersion") or "1"),
            mem_total=int(found.get("MemTotal") or 0),
            root_dir=str(found.get("DockerRootDir") or ""),
            local=not host or host.startswith("unix://"))

    @_sdk
    def refuses_nofile(self, image: str, nofile: int, labels: dict[str, str]) -> str | None:
        """Start a throw-away container of `image` with nofile as its soft and hard limit:
        the engine's words when it refuses, None when it takes it (what the host allows is
        the OCI runtime's business: only a try says). About 0.2 s."""
        api = self._client.api
        host = api.create_host_config(network_mode="none", ulimits=[
            docker.types.Ulimit(name="nofile", soft=nofile, hard=nofile)])
        created = api.create_container(image, ["true"], entrypoint=["true"], host_config=host,
                                       labels=labels)
        try:
            api.start(created["Id"])
            api.wait(created["Id"])
            return None
        except docker.errors.APIError as exc:
            return str(exc.explanation or exc)
        finally:
            api.remove_container(created["Id"], force=True)

    # ---- observing ----

    @_sdk
    def managed(self, instance: str, role: str | None = None) -> list[Observed]:
        """The containers this agent made here (one list, one inspect each)."""
        filters = [f"{s.LABEL_MANAGED}=true", f"{s.LABEL_INSTANCE}={instance}"]
        if role:
            filters.append(f"{s.LABEL_ROLE}={role}")
        # ignore_removed: one another agent (or an operator) removed between the list and its
        # inspect is not here any more, as a list a moment later would say.
        found = self._client.containers.list(all=True, filters={"label": filters},
                                             ignore_removed=True)
        return [observe_attrs(c.attrs) for c in found]

    @_sdk
    def observe(self, name_or_id: str) -> Observed | None:
        try:
            return observe_attrs(self._client.api.inspect_container(name_or_id))
        except docker.errors.NotFound:
            return None

    @_sdk
    def container_names(self) -> set[str]:
        """The names of every container on the engine (one list call, no inspects)."""
        return {str(n).lstrip("/") for c in self._client.api.containers(all=True)
                for n in c.get("Names") or []}

    def health_log_tail(self, name: str, lines: int = 3) -> str:
        obs = self.observe(name)
        if obs is None:
            return "container is missing"
        tail = " | ".join(line[:300] for line in obs.health_log[-lines:])
        return tail or f"status {obs.status}"

    @_sdk
    def logs(self, name_or_id: str, tail: int | str = "all",
             since: float | None = None) -> list[str]:
        """The container's log lines, timestamped: the last `tail`, from `since` (Unix time)."""
        data = self._client.api.logs(name_or_id, timestamps=True, tail=tail, since=since)
        return cast(bytes, data).decode(errors="replace").splitlines()

    def follow_logs(self, name_or_id: str, tail: int | str = "all",
                    since: float | None = None) -> Generator[str, None, None]:
        """As logs(), then each new line as it comes, until the container stops (or the
        generator is closed); EngineLost when the engine goes away meanwhile."""
        stream = _sdk(self._client.api.logs)(name_or_id, timestamps=True, tail=tail,
                                              since=since, stream=True, follow=True)
        pending = b""
        for chunk in _streamed(stream):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()  # a line the engine sent in two chunks
            for line in lines:
                yield line.decode(errors="replace")
        if pending:
            yield pending.decode(errors="replace")

    def events(self, instance: str, role: str, until: int) -> Generator[str, None, None]:
        """The actions (die, start, destroy ...) of this role's containers until `until`
        (a Unix time); EngineLost when the engine goes away meanwhile."""
        filters = {"type": "container", "label": [
            f"{s.LABEL_MANAGED}=true", f"{s.LABEL_INSTANCE}={instance}",
            f"{s.LABEL_ROLE}={role}"]}
        stream = _sdk(self._client.events)(decode=True, filters=filters, until=until)
        for event in _streamed(stream):
            yield str(event.get("Action", "")).split(":")[0]

    # ---- acting ----

    @_sdk
    def ensure_network(self, name: str, labels: dict[str, str]) -> bool:
        """Create a bridge network unless it exists; True when created."""
        # The engine's name filter matches substrings ("syntho" finds "syntho-x"): compare.
        if any(n.name == name for n in self._client.networks.list(names=[name])):
            return False
        self._client.networks.create(name, driver="bridge", labels=labels)
        return True

    @_sdk
    def ensure_volume(self, name: str, labels: dict[str, str]) -> bool:
        try:
            self._client.volumes.get(name)
            return False
        except docker.errors.NotFound:
            self._client.volumes.create(name, labels=labels)
            return True

    @_sdk
    def volume_exists(self, name: str) -> bool:
        try:
            self._client.volumes.get(name)
            return True
        except docker.errors.NotFound:
            return False

    @_sdk
    def networks(self, labels: list[str]) -> list[NetworkInfo]:
        found = []
        for net in self._client.networks.list(filters={"label": labels}):
            net.reload()
            users = (net.attrs.get("Containers") or {}).values()
            found.append(NetworkInfo(str(net.name), tuple(sorted(
                str(c.get("Name", "?")) for c in users))))
        return found

    @_sdk
    def remove_network(self, name: str) -> None:
        for net in self._client.networks.list(names=[name]):
            if net.name == name:
                net.remove()

    @_sdk
    def volumes(self, labels: list[str]) -> list[str]:
        return [str(v.name) for v in self._client.volumes.list(filters={"label": labels})]

    @_sdk
    def disk_usage(self, instance: str) -> DiskUsage:
        """What this agent's volumes and containers hold on the engine's disk (one `system df`:
        the engine walks the volumes, so it takes a moment on a big one)."""
        found = self._client.api.df()
        ours = {s.LABEL_MANAGED: "true", s.LABEL_INSTANCE: instance}

        def mine(labels: dict[str, str] | None) -> bool:
            return all((labels or {}).get(k) == v for k, v in ours.items())

        volumes = {str(v["Name"]): int((v.get("UsageData") or {}).get("Size") or 0)
                   for v in found.get("Volumes") or [] if mine(v.get("Labels"))}
        containers = {str((c.get("Names") or ["?"])[0]).lstrip("/"): int(c.get("SizeRw") or 0)
                      for c in found.get("Containers") or [] if mine(c.get("Labels"))}
        return DiskUsage(volumes, containers)

    @_sdk
    def remove_volume(self, name: str) -> None:
        try:
            self._client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass

    @_sdk
    def create(self, c: s.Container, labels: dict[str, str]) -> str:
        """Create c (not started); its ID."""
        try:
            return str(self._client.containers.create(**create_args(c, labels)).id)
        except docker.errors.APIError as exc:
            raise EnvironmentProblem(f"the engine refused to create {c.name}: "
                                     f"{exc.explanation or exc}") from None

    @_sdk
    def start(self, container_id: str, name: str) -> None:
        try:
            self._client.api.start(container_id)
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

    @_sdk
    def rename(self, container_id: str, name: str) -> None:
        self._client.api.rename(container_id, name)

    @_sdk
    def remove(self, container_id: str) -> None:
        try:
            self._client.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # An agent killed mid-removal leaves the engine finishing it: wait for its end.
            if "already in progress" not in str(exc.explanation or exc):
                raise
            if not waits.poll(lambda: self.observe(container_id) is None, REMOVAL_WAIT,
                              "a removal already under way"):
                raise

    @_sdk
    def stop(self, container_id: str, timeout: int = 10) -> None:
        try:
            self._client.api.stop(container_id, timeout=timeout)
        except docker.errors.NotFound:
            pass

    def exec(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
        """Run an idempotent command in a running container: (exit code, its standard output
        then its standard error), checked end to end as exec_to's."""
        out = io.BytesIO()
        code, errors = self.exec_to(name, cmd, out, env)
        return code, out.getvalue().decode(errors="replace") + errors

    @_sdk
    def exec_to(self, name: str, cmd: list[str], out: IO[bytes] | None,
                env: dict[str, str] | None = None) -> tuple[int, str]:
        """Run cmd in a running container, its standard output streamed into `out` (a dump
        of any size, a chunk at a time; None: dropped) and checked end to end (see
        _received); (exit code, the tail of its standard error)."""
        api = self._client.api

        def once(into: _Digesting | None) -> tuple[int, bytes]:
            exec_id = api.exec_create(name, cmd if into is None else _checked(cmd),
                                      environment=env or {})["Id"]
            errors = _drain(api.exec_start(exec_id, stream=True, demux=True), into, cmd)
            code = api.exec_inspect(exec_id).get("ExitCode")
            return int(code if code is not None else -1), errors

        return _received(once, out, cmd)

    @_sdk
    def run_to(self, image: str, cmd: list[str], network: str, out: IO[bytes] | None, *,
               labels: dict[str, str], env: dict[str, str] | None = None,
               binds: dict[str, str] | None = None, name: str | None = None) -> tuple[int, str]:
        """Run cmd in a throw-away container on a network (its standard output streamed into
        `out`, binary-safe and checked as exec_to's: attached before it starts, never through
        a log driver: a dump must not be written twice), then remove it; (exit code, the tail
        of its standard error). binds: host dir -> container dir, read-only. name: the
        container's (the engine picks one without)."""
        api = self._client.api
        host = api.create_host_config(
            network_mode=network, log_config=docker.types.LogConfig(type="none"),
            binds={src: {"bind": dst, "mode": "ro"} for src, dst in (binds or {}).items()})

        def once(into: _Digesting | None) -> tuple[int, bytes]:
            run = cmd if into is None else _checked(cmd)
            # The program itself as the entrypoint: an image's entrypoint may switch users or
            # do more than run it (the Postgres image's starts a server for its own command).
            created = api.create_container(image, run[1:], entrypoint=run[:1],
                                           environment=env or {}, host_config=host,
                                           labels=labels, name=name)
            cid = created["Id"]
            try:
                frames = api.attach(cid, stdout=True, stderr=True, stream=True, demux=True)
                api.start(cid)
                errors = _drain(frames, into, cmd)
                return int(api.wait(cid).get("StatusCode", -1)), errors
            finally:
                api.remove_container(cid, force=True)

        return _received(once, out, cmd)


# ---- output checked end to end ------------------------------------------------------------------

# Some engines lose part of what a command prints on its way to an attached client (all of a
# short exec's output, the tail of a container's attach stream, or the frames' headers: about 1
# run in 300 on engine 20.10) and say nothing. A command whose output is read therefore runs
# under a shell that copies its standard output through sha256sum and prints, on standard
# error, the command's exit code and that digest, which the agent compares with what arrived.
CHECKED_SH = 'exec 3>&1; ( "$@"; echo "syntho-exit=$?" >&2 ) | tee /dev/fd/3 | sha256sum >&2'
CHECKED_ATTEMPTS = 3


class OutputLost(EngineError):
    """The engine lost or garbled part of a command's output on its way here."""


def _checked(cmd: list[str]) -> list[str]:
    return ["sh", "-c", CHECKED_SH, "sh", *cmd]


def _drain(frames: Iterator[tuple[bytes | None, bytes | None]], into: _Digesting | None,
           cmd: list[str]) -> bytes:
    """Standard output into `into` (None: dropped), frame by frame; the tail of standard
    error."""
    errors = b""
    try:
        for stdout, stderr in frames:
            if stdout and into is not None:
                into.write(stdout)
            if stderr:
                errors = (errors + stderr)[-4000:]
    except ValueError as exc:  # the SDK met bytes where a frame's header belongs
        if into is not None:  # else only the exit code matters, which comes another way
            raise OutputLost(f"the engine garbled the output of {cmd[0]} ({exc})") from None
    return errors


class _Digesting(io.RawIOBase):
    """What is written through it goes on to `into`, hashed on the way."""

    def __init__(self, into: IO[bytes]) -> None:
        self.into = into
        self.digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.digest.update(b)
        self.into.write(b)
        return len(b)


def _received(once: Callable[[_Digesting | None], tuple[int, bytes]], out: IO[bytes] | None,
              cmd: list[str]) -> tuple[int, str]:
    """(exit code, standard error's tail) of a command run by once(into), the output that
    arrived in `out` checked against the digest its shell printed. A lost output is asked for
    again when `out` can be rewound (up to CHECKED_ATTEMPTS runs: these commands read, they
    change nothing); otherwise OutputLost, for the caller to start its file again."""
    if out is None:
        code, errors = once(None)
        return code, errors.decode(errors="replace")
    start = out.tell() if out.seekable() else None
    for attempt in range(1, CHECKED_ATTEMPTS + 1):
        into = _Digesting(out)
        try:
            code, errors = once(into)
        except OutputLost:
            if start is None or attempt == CHECKED_ATTEMPTS:
                raise
            errors = b""
        lines = errors.rstrip(b"\n").split(b"\n")
        exit_line, digest_line = [b"", b"", *lines][-2:]
        if (exit_line.startswith(b"syntho-exit=") and exit_line[12:].isdigit()
                and digest_line[:64].decode(errors="replace") == into.digest.hexdigest()):
            return int(exit_line[12:]), b"".join(x + b"\n" for x in lines[:-2]).decode(
                errors="replace")
        if re.search(rb"(tee|sha256sum)\b.*not found", errors):
            raise EnvironmentProblem(f"cannot check what {cmd[0]} prints: its image has no "
                                     "tee or sha256sum (the agent needs both, and sh)")
        if start is None or attempt == CHECKED_ATTEMPTS:
            raise OutputLost(f"the engine lost part of what {cmd[0]} printed (its digest did not "
                             f"match what arrived, {attempt} time(s)); run it again")
        out.seek(start)
        out.truncate()
    raise AssertionError("unreachable")


def _streamed(stream: Any) -> Generator[Any, None, None]:
    """The items of an SDK stream (logs, events) as they come; EngineLost when the engine
    goes away meanwhile. The stream is closed however the reading ends."""
    try:
        yield from _sdk(iter)(stream)
    except (docker.errors.DockerException, requests.exceptions.RequestException,
            OSError) as exc:
        raise EngineLost(f"the Docker engine stopped answering ({type(exc).__name__})",
                         str(exc)) from None
    finally:
        stream.close()


class _Counted:
    """A file as the SDK sends it, telling `sent` the bytes read so far after each read. Its
    length is declared, so the body goes with a Content-Length (not chunked)."""

    def __init__(self, stream: IO[bytes], size: int, sent: Callable[[int], None]) -> None:
        self._stream, self._size, self._sent, self._count = stream, size, sent, 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._count += len(data)
        self._sent(self._count)
        return data

    def __len__(self) -> int:
        return self._size


def create_args(c: s.Container, labels: dict[str, str]) -> dict[str, Any]:
    """The SDK's containers.create() arguments for c: one create call makes the container
    whole (its network aliases included). Plain data, apart from the mounts' SDK type."""
    kwargs: dict[str, Any] = dict(
        image=c.image,
        name=c.name,
        command=list(c.command) if c.command is not None else None,
        entrypoint=list(c.entrypoint) if c.entrypoint is not None else None,
        environment=c.env_dict(),
        labels=labels,
        restart_policy={"Name": c.restart} if c.restart != "no" else None,
        log_config={"Type": "json-file", "Config": {"max-size": c.log_max_size,
                                                    "max-file": str(c.log_max_files)}},
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
