"""The reconciler: compare a Spec with what the engine runs, then act, in start order.

Plan first (pure: `plan`), then act (`apply`): create what is missing, start what is stopped,
recreate what drifted (its config hash differs), remove what this role made and no longer wants.
A run with nothing to do makes no engine call that changes anything.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Callable

from docker.models.containers import Container as SdkContainer

from agent import spec as s
from agent.engine import Engine, Observed
from agent.errors import ConvergeError, EnvironmentProblem
from agent.waits import poll

Say = Callable[[str], None]


@dataclass(frozen=True)
class Action:
    verb: str  # create | recreate | start | unchanged | remove
    name: str
    container: s.Container | None = None
    config_hash: str = ""
    reason: str = ""


def require_images(engine: Engine, wanted: dict[str, str]) -> dict[str, str]:
    """Each image's ID, by reference; wanted maps reference -> the container that needs it.

    A missing image is an error before anything changes.
    """
    ids: dict[str, str] = {}
    for ref, user in wanted.items():
        image_id = engine.image_id(ref)
        if image_id is None:
            raise EnvironmentProblem(
                f"image {ref} (for {user}) is not on this engine: load it with "
                "`docker load -i FILE`, or pull it (docker pull) and run again")
        ids[ref] = image_id
    return ids


def image_ids(engine: Engine, spec: s.Spec) -> dict[str, str]:
    return require_images(engine, {c.image: c.name for c in reversed(spec.containers)})


def plan(spec: s.Spec, observed: list[Observed], ids: dict[str, str],
         only: set[str] | None = None) -> list[Action]:
    """What to do, removals first, then every wanted container in start order.

    With `only`, just those services (and the removals).
    """
    wanted = {c.name for c in spec.containers}
    current = {o.name: o for o in observed}
    actions = [Action("remove", o.name, reason="no longer wanted")
               for o in observed if o.name not in wanted]
    for c in spec.ordered():
        if only is not None and c.service not in only:
            continue
        h = c.config_hash(ids[c.image])
        o = current.get(c.name)
        if o is None:
            actions.append(Action("create", c.name, c, h))
        elif o.config_hash != h:
            actions.append(Action("recreate", c.name, c, h, "configuration changed"))
        elif (what := drift(o, c, ids[c.image])) is not None:
            actions.append(Action("recreate", c.name, c, h, f"{what} changed outside the agent"))
        elif o.status not in ("running", "restarting"):  # restarting: the engine is on it
            actions.append(Action("start", c.name, c, h, f"was {o.status}"))
        else:
            actions.append(Action("unchanged", c.name, c, h))
    return actions


def drift(o: Observed, c: s.Container, image_id: str) -> str | None:
    """What of the container differs from its spec, though its label claims the right hash
    (someone recreated it by hand, copying the labels); None when it matches."""
    attrs = o.sdk.attrs
    config, host = attrs.get("Config") or {}, attrs.get("HostConfig") or {}
    if attrs.get("Image") != image_id:
        return "the image"
    if not {f"{k}={v}" for k, v in c.env} <= set(config.get("Env") or []):
        return "the environment"
    if c.command is not None and list(c.command) != (config.get("Cmd") or []):
        return "the command"
    if c.entrypoint is not None and list(c.entrypoint) != (config.get("Entrypoint") or []):
        return "the entrypoint"
    if ((host.get("RestartPolicy") or {}).get("Name") or "no") != c.restart:
        return "the restart policy"
    if c.network == "host":
        return None if host.get("NetworkMode") == "host" else "the network"
    endpoint = ((attrs.get("NetworkSettings") or {}).get("Networks") or {}).get(c.network)
    if endpoint is None or not set(c.aliases) <= set(endpoint.get("Aliases") or []):
        return "the network"
    return None


def check_names(engine: Engine, spec: s.Spec, observed: list[Observed]) -> None:
    """A container with a wanted name that the agent did not make is never touched."""
    mine = {o.name for o in observed}
    for c in spec.containers:
        if c.name in mine:
            continue
        other = engine.observe(c.name)
        if other is not None:
            raise EnvironmentProblem(
                f"a container named {c.name} exists that this agent did not create (or that "
                "belongs to another --instance); remove or rename it, then run again")


def is_ready(o: Observed | None, c: s.Container) -> bool:
    if o is None or o.status != "running":
        return False
    return o.health == "healthy" if c.health else True


def wait_ready(engine: Engine, c: s.Container, timeout: float, say: Say) -> None:
    what = f"{c.name} to be {'healthy' if c.health else 'running'}"
    if not poll(lambda: is_ready(engine.observe(c.name), c), timeout, what, say):
        raise ConvergeError(
            f"{c.name} did not become {'healthy' if c.health else 'ready'} within "
            f"{timeout:.0f}s; last health output: {engine.health_log_tail(c.name)}; "
            f"see `syntho-agent logs` (or --ready-timeout to wait longer)")


def apply(engine: Engine, spec: s.Spec, actions: list[Action], say: Say,
          ready_timeout: float) -> int:
    """Carry out the plan; returns how many changes were made."""
    changes = 0
    by_service = {c.service: c for c in spec.containers}
    for net in spec.networks:
        if engine.ensure_network(net.name, {s.LABEL_MANAGED: "true",
                                            s.LABEL_INSTANCE: spec.instance}):
            say(f"created network {net.name}")
            changes += 1
    for vol in spec.volumes:
        if engine.ensure_volume(vol.name, {s.LABEL_MANAGED: "true",
                                           s.LABEL_INSTANCE: spec.instance}):
            say(f"created volume {vol.name}")
            changes += 1
    observed = {o.name: o for o in engine.managed(spec.instance, spec.role)}
    for action in actions:
        if action.verb == "unchanged":
            say(f"unchanged {action.name}")
            continue
        if action.verb == "remove":
            if action.name in observed:
                engine.remove(observed[action.name].sdk)
            say(f"removed {action.name} ({action.reason})")
            changes += 1
            continue
        c = action.container
        assert c is not None
        # Start order, gated by health: the services this one waits for must be ready first.
        for dep in c.after:
            if dep in by_service:
                wait_ready(engine, by_service[dep], ready_timeout, say)
        if action.verb in ("start", "recreate") and c.name not in observed:
            # It vanished between plan and act (removed meanwhile): make it anew.
            action = Action("create", c.name, c, action.config_hash)
        if action.verb == "start":
            engine.start(observed[c.name].sdk, c.name)
            say(f"started {c.name} ({action.reason})")
        else:
            labels = {**spec.labels(c), s.LABEL_HASH: action.config_hash}
            old = observed[c.name].sdk if action.verb == "recreate" else None
            replace(engine, c, labels, old)
            say(f"{action.verb}d {c.name}" + (f" ({action.reason})" if action.reason else ""))
        changes += 1
    return changes


def replace(engine: Engine, c: s.Container, labels: dict[str, str],
            old: SdkContainer | None) -> None:
    """Create and start c; if it fails, put the old container (if any) back as it was.

    The old one is stopped and renamed aside first (a host-network container holds its ports);
    a run killed midway leaves it as an unwanted container that the next run removes.
    """
    was_running = False
    if old is not None:
        old.reload()
        was_running = old.status == "running"
        engine.stop(old)
        old.rename(f"{c.name}-replaced-{old.short_id}")
    new = None
    try:
        new = engine.create(c, labels)
        engine.start(new, c.name)
    except BaseException:
        if new is not None:
            engine.remove(new)
        if old is not None:
            old.rename(c.name)
            if was_running:
                old.start()
        raise
    if old is not None:
        engine.remove(old)


def check_ports(actions: list[Action], observed: list[Observed]) -> None:
    """A host port that a new container would publish must be free, before anything changes."""
    current = {o.name: o for o in observed}
    for action in actions:
        if action.verb not in ("create", "recreate") or action.container is None:
            continue
        held = published_ports(current[action.name]) if action.name in current else set()
        for p in action.container.ports:
            if p.host in held:
                continue  # the container being replaced holds it
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((p.host_ip or "0.0.0.0", p.host))
                except OSError:
                    raise EnvironmentProblem(
                        f"port {p.host} on {p.host_ip or '0.0.0.0'} is already taken on this "
                        f"host (wanted by {action.name}); free it or choose another port"
                    ) from None


def published_ports(o: Observed) -> set[int]:
    bindings = o.sdk.attrs.get("HostConfig", {}).get("PortBindings") or {}
    return {int(b["HostPort"]) for bs in bindings.values() for b in (bs or [])
            if b.get("HostPort")}


def preflight(engine: Engine, spec: s.Spec, only: set[str] | None = None) -> list[Action]:
    """Everything that can be refused without changing anything: images, names, host ports.

    Returns the plan.
    """
    ids = image_ids(engine, spec)
    observed = engine.managed(spec.instance, spec.role)
    check_names(engine, spec, observed)
    actions = plan(spec, observed, ids, only)
    check_ports(actions, observed)
    return actions


def reconcile(engine: Engine, spec: s.Spec, say: Say, ready_timeout: float,
              only: set[str] | None = None) -> int:
    """Converge the engine to spec (or only some services); returns the number of changes."""
    return apply(engine, spec, preflight(engine, spec, only), say, ready_timeout)
