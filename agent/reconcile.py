"""The reconciler: compare a Spec with what the engine runs, then act, in start order.

Plan first (pure: `plan`, `drift`, on plain `Observed` values), then act (`apply`): create what
is missing, start what is stopped, recreate what drifted (its config hash differs), remove what
this role made and no longer wants, and run the role's own steps where the plan puts them
(the app proves its database password between Postgres and the services that use it).
The engine is read once per run (`preflight`: one list of the managed containers, one inspect
of each image) and apply acts on that reading; a run with nothing to do changes nothing and
makes no further call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
from dataclasses import dataclass, field
from typing import Callable, Protocol

from agent import spec as s
from agent.engine import Engine, Observed
from agent.errors import ConvergeError, EnvironmentProblem
from agent.waits import poll, tcp_open

Say = Callable[[str], None]
READY_POLL = 0.25  # seconds between looks at a container that is becoming ready (one inspect)
# A hash of each field of a container's spec, so that a later plan can say which one changed
# (the config hash says only that something did). Secret-bearing env values share one hash.
LABEL_FIELDS = f"{s.LABEL_PREFIX}.field-hashes"
SECRET_FIELD = "a secret"


# A plan's stand-in for the ID of an image that is not on the engine yet (agent.resolve's
# ensure_images for a preview): the run would pull or load it, and only then know its ID.
NOT_HERE = "(not on this engine: the run would "


def not_here(ref: str, how: str) -> str:
    """The stand-in ID of ref, which the run would get by `how` (pull, load)."""
    return f"{NOT_HERE}{how} {ref})"


def _not_here_how(image_id: str) -> str | None:
    return image_id[len(NOT_HERE):].split(" ", 1)[0] if image_id.startswith(NOT_HERE) else None


Step = Callable[["Plan"], int]  # a role's own step: runs with the plan, returns its changes
ACTING = ("create", "recreate", "start", "revert")  # the verbs that make or start a container


@dataclass(frozen=True)
class Action:
    # create | recreate | start | revert | unchanged | remove | step; and, in a plan only,
    # "pull": the image is not on the engine yet, and the container is recreated by the run
    # only if the image it gets differs from the one the container runs (reason says how)
    verb: str
    name: str  # the container's name, or the step's
    container: s.Container | None = None
    config_hash: str = ""
    reason: str = ""
    fields: str = ""  # the container's field hashes (LABEL_FIELDS), for its labels


@dataclass(frozen=True)
class Plan:
    """What preflight read from the engine and what it decided to do about it."""

    actions: list[Action]
    observed: dict[str, Observed]  # the managed containers, by name
    # The previous release's containers (stopped, named <name>-previous), by the name they
    # would take back; and the services whose replaced container is kept so (a release
    # rollout on the app VM), instead of removed.
    kept: dict[str, Observed] = field(default_factory=dict)
    keep: frozenset[str] = frozenset()

    def with_step(self, name: str, reason: str, after: set[str]) -> Plan:
        """This plan with a role's step placed after the actions of these services (and
        these steps)."""
        last = max((i for i, a in enumerate(self.actions)
                    if (a.container is not None and a.container.service in after)
                    or (a.verb == "step" and a.name in after)), default=-1)
        removals = sum(1 for a in self.actions if a.verb == "remove")
        at = max(last + 1, removals)
        actions = [*self.actions[:at], Action("step", name, reason=reason),
                   *self.actions[at:]]
        return dataclasses.replace(self, actions=actions)

    def verb(self, name: str) -> str | None:
        return next((a.verb for a in self.actions if a.name == name), None)

    def ready(self, c: s.Container) -> bool:
        """Left unchanged and ready when read: no need to look again."""
        return self.verb(c.name) == "unchanged" and is_ready(self.observed.get(c.name), c)


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
         kept: dict[str, Observed] | None = None) -> list[Action]:
    """What to do, removals first, then every wanted container in start order. A kept
    container of the previous release that is what is wanted again is reverted to (started
    under its name), not made anew."""
    wanted = {c.name for c in spec.containers}
    current = {o.name: o for o in observed}
    kept = kept or {}
    actions = [Action("remove", o.name, reason="no longer wanted")
               for o in observed if o.name not in wanted]
    for c in spec.ordered():
        h = c.config_hash(ids[c.image])
        hashes = field_hashes(c, ids[c.image], spec.secrets)
        label = json.dumps(hashes, sort_keys=True, separators=(",", ":"))
        o = current.get(c.name)
        k = kept.get(c.name)
        how = _not_here_how(ids[c.image])
        if o is not None and how is not None:
            actions.append(_unknown_image(spec, c, o, how, h, label))
        elif (k is not None and c.hash_matches(ids[c.image], k.config_hash, k.hash_scheme)
                and drift(k, c, ids[c.image]) is None
                and (o is None or not c.hash_matches(ids[c.image], o.config_hash,
                                                     o.hash_scheme))):
            actions.append(Action("revert", c.name, c, h, "the previous release's container, "
                                  "kept", label))
        elif o is None:
            actions.append(Action("create", c.name, c, h, fields=label))
        elif not c.hash_matches(ids[c.image], o.config_hash, o.hash_scheme):
            changed = changed_fields(o, hashes)
            actions.append(Action("recreate", c.name, c, h, "configuration changed" + (
                f": {', '.join(changed)}" if changed else ""), label))
        elif (what := drift(o, c, ids[c.image])) is not None:
            actions.append(Action("recreate", c.name, c, h, f"{what} changed outside the agent",
                                  label))
        elif o.status not in ("running", "restarting"):  # restarting: the engine is on it
            actions.append(Action("start", c.name, c, h, f"was {o.status}", label))
        else:
            actions.append(Action("unchanged", c.name, c, h, fields=label))
    return actions


def _unknown_image(spec: s.Spec, c: s.Container, o: Observed, how: str, h: str,
                   label: str) -> Action:
    """A plan's action for a container whose image is not on the engine yet: judged as if the
    run got the image the container runs; whether it does is known only after the pull."""
    gets = f"{how}ed"  # pulled, loaded
    if c.hash_matches(o.image_id, o.config_hash, o.hash_scheme) and drift(o, c, o.image_id) \
            is None:
        return Action("pull", c.name, c, h, f"would {how} {c.image}; recreate only if the "
                      f"{gets} image differs", label)
    also = f" (and {c.image} would be {gets})"
    if not c.hash_matches(o.image_id, o.config_hash, o.hash_scheme):
        changed = changed_fields(o, field_hashes(c, o.image_id, spec.secrets))
        return Action("recreate", c.name, c, h, "configuration changed" + (
            f": {', '.join(changed)}" if changed else "") + also, label)
    return Action("recreate", c.name, c, h,
                  f"{drift(o, c, o.image_id)} changed outside the agent{also}", label)


def _digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def field_hashes(c: s.Container, image_id: str, secrets: tuple[str, ...]) -> dict[str, str]:
    """A short hash of each field of c that is not at its default (the config hash's view),
    and of each env variable by name; the variables whose value holds a secret share one hash,
    so no label ever carries a hash of a secret alone."""
    hashes = {"image_id": _digest(image_id)}
    hidden = []
    for name, value in s.canonical(c).items():
        if name != "env":
            hashes[name] = _digest(value)
            continue
        for key, text in value:
            if any(secret and secret in text for secret in secrets):
                hidden.append((key, text))
            else:
                hashes[f"env {key}"] = _digest(text)
    if hidden:
        hashes[SECRET_FIELD] = _digest(hidden)
    return hashes


def changed_fields(o: Observed, hashes: dict[str, str]) -> list[str]:
    """The fields whose hash differs from the one o was labelled with when it was made ([]
    for a container made before the agent recorded them)."""
    try:
        recorded = json.loads(o.label(LABEL_FIELDS) or "{}")
    except ValueError:
        return []
    if not isinstance(recorded, dict) or not recorded:
        return []
    names = [*hashes, *(k for k in recorded if k not in hashes)]
    return [k for k in names if recorded.get(k) != hashes.get(k)]


def drift(o: Observed, c: s.Container, image_id: str) -> str | None:
    """What of the container differs from its spec, though its label claims the right hash
    (someone recreated it by hand, copying the labels); None when it matches."""
    if o.image_id != image_id:
        return "the image"
    if not {f"{k}={v}" for k, v in c.env} <= set(o.env):
        return "the environment"
    if c.command is not None and c.command != o.command:
        return "the command"
    if c.entrypoint is not None and c.entrypoint != o.entrypoint:
        return "the entrypoint"
    if o.restart_policy != c.restart:
        return "the restart policy"
    if c.network == "host":
        return None if o.host_network else "the network"
    endpoint = next((e for e in o.endpoints if e.network == c.network), None)
    if endpoint is None or not set(c.aliases) <= set(endpoint.aliases):
        return "the network"
    return None


def check_names(engine: Engine, spec: s.Spec, observed: list[Observed]) -> None:
    """A container with a wanted name that the agent did not make is never touched."""
    mine = {o.name for o in observed}
    if all(c.name in mine for c in spec.containers):
        return
    others = engine.container_names() - mine
    for c in spec.containers:
        if c.name in others:
            raise EnvironmentProblem(
                f"a container named {c.name} exists that this agent did not create (or that "
                "belongs to another --instance); remove or rename it, then run again")


def is_ready(o: Observed | None, c: s.Container) -> bool:
    if o is None or o.status != "running":
        return False
    return o.health == "healthy" if c.health else True


def wait_ready(engine: Engine, c: s.Container, timeout: float, say: Say) -> None:
    what = f"{c.name} to be {'healthy' if c.health else 'running'}"
    # Health checks pass between looks: a short ceiling starts the next service promptly.
    if not poll(lambda: is_ready(engine.observe(c.name), c), timeout, what, say,
                ceiling=READY_POLL):
        raise ConvergeError(
            f"{c.name} did not become {'healthy' if c.health else 'ready'} within "
            f"{timeout:.0f}s; last health output: {engine.health_log_tail(c.name)}; "
            f"see `syntho-agent logs` (or --ready-timeout to wait longer)")


def apply(engine: Engine, spec: s.Spec, plan: Plan, say: Say, ready_timeout: float,
          steps: dict[str, Step] | None = None, router: Router | None = None) -> int:
    """Carry out the plan; returns how many changes were made. A running container that a
    `router` serves is replaced by handover (no request dropped), any other by swap_in."""
    changes = 0
    # Networks and volumes matter only to a container being made or started (one in use
    # cannot be removed), so a run that leaves every container alone does not look at them.
    if any(a.verb in ACTING for a in plan.actions):
        changes += _ensure_storage(engine, spec, say)
    ready = {c.name for c in spec.containers if plan.ready(c)}
    for action in plan.actions:
        if action.verb == "unchanged":
            say(f"unchanged {action.name}")
            continue
        if action.verb == "step":
            changes += (steps or {})[action.name](plan)
            continue
        changes += 1
        if action.verb == "remove":
            engine.remove(plan.observed[action.name].id)
            say(f"removed {action.name} ({action.reason})")
            continue
        c = action.container
        assert c is not None
        # Start order, gated by health (a revert's too): the services this one waits for
        # must be ready first.
        _wait_for_dependencies(engine, spec, c, ready, ready_timeout, say)
        if action.verb == "revert":
            revert(engine, c.name, plan.kept[c.name])
            say(f"reverted {c.name} (started the previous release's container, kept)")
        else:
            _start_or_make(engine, spec, plan, action, c, router, ready, ready_timeout, say)
    return changes


def _ensure_storage(engine: Engine, spec: s.Spec, say: Say) -> int:
    """The spec's networks and volumes, made where missing; how many were made."""
    labels = {s.LABEL_MANAGED: "true", s.LABEL_INSTANCE: spec.instance}
    made = 0
    for net in spec.networks:
        if engine.ensure_network(net.name, labels):
            say(f"created network {net.name}")
            made += 1
    for vol in spec.volumes:
        if engine.ensure_volume(vol.name, labels):
            say(f"created volume {vol.name}")
            made += 1
    return made


def _wait_for_dependencies(engine: Engine, spec: s.Spec, c: s.Container, ready: set[str],
                           timeout: float, say: Say) -> None:
    by_service = {x.service: x for x in spec.containers}
    for dep in c.after:
        if dep in by_service and by_service[dep].name not in ready:
            wait_ready(engine, by_service[dep], timeout, say)
            ready.add(by_service[dep].name)


def _start_or_make(engine: Engine, spec: s.Spec, plan: Plan, action: Action, c: s.Container,
                   router: Router | None, ready: set[str], timeout: float, say: Say) -> None:
    """A start of the container there is, or a new one made (created, or recreated over the
    old one: by handover when the router serves it, else swap_in)."""
    old = plan.observed[c.name] if action.verb in ("start", "recreate") else None
    if old is not None:
        old = engine.observe(old.id)
        if old is None:  # removed since preflight read it: make it anew
            action = Action("create", c.name, c, action.config_hash,
                            "removed while this run planned", action.fields)
    if action.verb == "start":
        assert old is not None
        engine.start(old.id, c.name)
        say(f"started {c.name} ({action.reason})")
        return
    own = spec.labels(c, action.config_hash)
    if action.fields:
        own[LABEL_FIELDS] = action.fields
    keep = c.service in plan.keep
    if (router is not None and old is not None and old.status == "running"
            and old.ip_on(c.network) is not None and router.handles(c)
            and not side_by_side_clash(c, old)):
        handover(engine, c, own, old, keep, router, timeout, say)
        ready.add(c.name)
        say(f"{action.verb}d {c.name} with no request dropped (the proxy moved to "
            "it once it was ready)" + (f"; {action.reason}" if action.reason else ""))
    else:
        swap_in(engine, c, own, old, keep=keep)
        say(f"{action.verb}d {c.name}" + (f" ({action.reason})" if action.reason else ""))


def wait_all_ready(engine: Engine, spec: s.Spec, plan: Plan, timeout: float, say: Say) -> None:
    """Every container with a health check healthy (those the plan saw healthy and left
    alone are not looked at again)."""
    for c in spec.ordered():
        if c.health and not plan.ready(c):
            wait_ready(engine, c, timeout, say)


def swap_in(engine: Engine, c: s.Container, labels: dict[str, str],
            old: Observed | None, keep: bool = False) -> None:
    """Create and start c; if it fails, put the old container (if any) back as it was.

    The old one is stopped and renamed aside first (a host-network container holds its ports);
    a run killed midway leaves it as an unwanted container that the next run removes. With
    `keep`, it is kept stopped as <name>-previous (replacing an older one) instead: the
    release's rollout removes it once the new release is healthy (prune_kept).
    """
    was_running = False
    if old is not None:  # apply has just read it again
        was_running = old.status == "running"
        engine.stop(old.id)
        move_aside(engine, c.name, old, keep)
    new = None
    try:
        new = engine.create(c, labels)
        engine.start(new, c.name)
    except BaseException:
        if new is not None:
            engine.remove(new)
        if old is not None:
            engine.rename(old.id, c.name)
            if was_running:
                engine.start(old.id, c.name)
        raise
    if old is not None and not keep:
        engine.remove(old.id)


class Router(Protocol):
    """A proxy in front of some services, which can send a service's traffic to one address
    (agent/proxy.py): what lets a running container be replaced with no request dropped."""

    def handles(self, c: s.Container) -> bool:
        """Whether c's traffic goes through this router now (the proxy runs)."""

    def port(self, c: s.Container) -> int:
        """The port c serves on, on its network."""

    def route(self, c: s.Container, address: str | None) -> None:
        """Send c's traffic to address (ip:port), or (None) back to c's service name."""

    def idle(self, address: str) -> bool:
        """Whether no request to address is in flight."""


def side_by_side_clash(c: s.Container, old: Observed) -> bool:
    """Whether c publishes a host port the old container holds: they cannot run side by side."""
    return bool({p.host for p in c.ports} & {p.host_port for p in old.published})


NEXT_SUFFIX = "-next"  # the new container's name while the old one still serves
DRAIN = 30.0  # seconds at most for the old container's requests in flight to finish


def handover(engine: Engine, c: s.Container, labels: dict[str, str], old: Observed,
             keep: bool, router: Router, timeout: float, say: Say) -> None:
    """Replace the running `old` with c and drop no request (kamal-proxy's deploys): pin the
    router to the old container; start c beside it under a temporary name; once c is ready,
    route to it, let the old one's requests finish, stop it (kept as <name>-previous with
    `keep`, else removed), give c its name, and route to the service's name again.

    If c never gets ready, it is removed and the old container serves on as if nothing had
    happened (ConvergeError). Killed midway, the next run removes the temporary container
    (no longer wanted) and puts the proxy's configuration back."""
    port = router.port(c)
    old_address = f"{old.ip_on(c.network)}:{port}"
    router.route(c, old_address)
    temp = dataclasses.replace(c, name=c.name + NEXT_SUFFIX)
    stale = engine.observe(temp.name)
    if stale is not None:
        engine.remove(stale.id)
    new = None
    try:
        new = engine.create(temp, labels)
        engine.start(new, temp.name)
        wait_ready(engine, temp, timeout, say)
        started = engine.observe(new)
        ip = started.ip_on(c.network) if started is not None else None
        # Its health check may have reached the old container (they share the service's
        # name): the new one must also take connections itself.
        if ip is None or not poll(lambda: tcp_open(ip, port), timeout,
                                  f"{temp.name} to take connections on {port}", say):
            raise ConvergeError(f"{temp.name} took no connection on {ip}:{port} within "
                                f"{timeout:.0f}s")
        router.route(c, f"{ip}:{port}")
    except BaseException:
        router.route(c, None)
        if new is not None:
            engine.remove(new)
        raise
    poll(lambda: router.idle(old_address), DRAIN, f"the requests to the old {c.name}", say)
    engine.stop(old.id)
    move_aside(engine, c.name, old, keep)
    if not keep:
        engine.remove(old.id)
    engine.rename(new, c.name)
    router.route(c, None)


def move_aside(engine: Engine, name: str, old: Observed, keep: bool) -> None:
    """Free the name of a replaced (stopped) container: as <name>-previous with `keep` (an
    older one there is removed), else under a name of its own until it is removed."""
    aside = f"{name}-replaced-{old.id[:12]}"
    if keep:
        aside = name + s.KEPT_SUFFIX
        stale = engine.observe(aside)
        if stale is not None and stale.id != old.id:
            engine.remove(stale.id)
    engine.rename(old.id, aside)


def revert(engine: Engine, name: str, kept: Observed) -> None:
    """Put the previous release's kept container back under its name and start it. Killed
    midway, the next plan finds it kept (or already named) and finishes."""
    current = engine.observe(name)
    if current is not None and current.id != kept.id:
        engine.remove(current.id)
    if current is None or current.id != kept.id:
        engine.rename(kept.id, name)
    engine.start(kept.id, name)


def prune_kept(engine: Engine, spec: s.Spec, say: Say) -> int:
    """Remove the previous release's kept containers (the new one is healthy)."""
    gone = 0
    for o in engine.managed(spec.instance, spec.role):
        if o.kept:
            engine.remove(o.id)
            gone += 1
    if gone:
        say(f"removed the previous release's {gone} kept container(s)")
    return gone


def check_ports(actions: list[Action], observed: list[Observed]) -> None:
    """A host port that a new container would publish must be free, before anything changes."""
    current = {o.name: o for o in observed}
    for action in actions:
        if action.verb not in ("create", "recreate") or action.container is None:
            continue
        held = ({p.host_port for p in current[action.name].published}
                if action.name in current else set())
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


def preflight(engine: Engine, spec: s.Spec, ids: dict[str, str] | None = None) -> Plan:
    """Read the engine once and refuse, before anything changes, what would fail: a missing
    image, a name taken by a container the agent did not make, a host port in use.

    `ids` are the images' IDs when the caller has just read them (images.ensure).
    """
    ids = ids if ids is not None else image_ids(engine, spec)
    found = engine.managed(spec.instance, spec.role)
    observed = [o for o in found if not o.kept]
    kept = {o.name[: -len(s.KEPT_SUFFIX)]: o for o in found if o.kept}
    check_names(engine, spec, observed)
    actions = plan(spec, observed, ids, kept)
    check_ports(actions, observed)
    return Plan(actions, {o.name: o for o in observed}, kept)


def reconcile(engine: Engine, spec: s.Spec, say: Say, ready_timeout: float,
              ids: dict[str, str] | None = None) -> int:
    """Converge the engine to spec; returns the number of changes."""
    return apply(engine, spec, preflight(engine, spec, ids=ids), say, ready_timeout)
