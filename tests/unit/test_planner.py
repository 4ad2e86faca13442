"""The planner on plain values: what `plan` and `drift` decide for each kind of container the
engine can hold. No engine, no fakes: an `Observed` is built the way the engine reports one."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from agent import spec as s
from agent.engine import Endpoint, Observed, Published, observe_attrs
from agent.reconcile import Action, Plan, drift, plan, side_by_side_clash

IMAGE_ID = "sha256:1"
IDS = {"img": IMAGE_ID}


def c(service: str, after: tuple[str, ...] = (), **kw: Any) -> s.Container:
    return s.Container(service=service, name=service, image="img", after=after, **kw)


def seen(c: s.Container, status: str = "running", *, config_hash: str | None = None,
         scheme: str = s.HASH_SCHEME, **changes: Any) -> Observed:
    """c as the engine reports it after the agent made it, with `changes` made behind its back."""
    labels = {**s.Spec("app", "", ()).labels(c), s.LABEL_HASH:
              c.config_hash(IMAGE_ID) if config_hash is None else config_hash}
    if scheme:
        labels[s.LABEL_HASH_SCHEME] = scheme
    found = Observed(
        id=f"id-{c.name}", name=c.name, labels=tuple(sorted(labels.items())), status=status,
        health=None, health_log=(), image_id=IMAGE_ID, image=c.image,
        env=(*(f"{k}={v}" for k, v in c.env), "PATH=/bin"),  # the image adds its own
        command=c.command or ("from-image",), entrypoint=c.entrypoint or (),
        restart_policy=c.restart, network_mode="host" if c.network == "host" else c.network,
        endpoints=() if c.network == "host" else (
            Endpoint(c.network, "172.18.0.2", (*c.aliases, "abc123")),),
        published=tuple(Published(p.container, p.host_ip, p.host) for p in c.ports),
        started_at="2026-11-26T10:00:00Z", restart_count=0)
    return replace(found, **changes)


BRIDGED = c("web", network="net", aliases=("web",), env=(("A", "1"),), command=("run",))


@pytest.mark.parametrize("found,verb,reason", [
    (None, "create", ""),
    (seen(BRIDGED), "unchanged", ""),
    (seen(BRIDGED, "restarting"), "unchanged", ""),  # the engine is on it
    (seen(BRIDGED, "exited"), "start", "was exited"),
    (seen(BRIDGED, "created"), "start", "was created"),
    (seen(BRIDGED, config_hash="old"), "recreate", "configuration changed"),
    (seen(BRIDGED, scheme="9"), "recreate", "configuration changed"),  # another agent's scheme
    (seen(BRIDGED, image_id="sha256:2"), "recreate", "the image changed outside the agent"),
    (seen(BRIDGED, env=("A=2",)), "recreate", "the environment changed outside the agent"),
    (seen(BRIDGED, command=("other",)), "recreate", "the command changed outside the agent"),
    (seen(BRIDGED, restart_policy="no"), "recreate",
     "the restart policy changed outside the agent"),
    (seen(BRIDGED, endpoints=()), "recreate", "the network changed outside the agent"),
    (seen(BRIDGED, endpoints=(Endpoint("net", "172.18.0.2", ("abc123",)),)), "recreate",
     "the network changed outside the agent"),  # its alias is gone
    (seen(BRIDGED, network_mode="host"), "unchanged", ""),  # on its network still: fine
])
def test_plan_decides_per_container(found: Observed | None, verb: str, reason: str) -> None:
    actions = plan(s.Spec("app", "", (BRIDGED,)), [found] if found else [], IDS)
    assert [(a.verb, a.name, a.reason) for a in actions] == [(verb, "web", reason)]
    assert actions[0].config_hash == BRIDGED.config_hash(IMAGE_ID)


@pytest.mark.parametrize("changes,what", [
    ({}, None),
    ({"entrypoint": ("sh",)}, None),  # the spec leaves the entrypoint to the image
    ({"network_mode": "bridge"}, "the network"),
    ({"env": ("PATH=/bin",)}, "the environment"),
])
def test_drift_of_a_host_network_container(changes: dict[str, Any], what: str | None) -> None:
    head = c("ray-head", env=(("X", "1"),), command=("ray", "start"))
    assert drift(seen(head, **changes), head, IMAGE_ID) == (None if what is None else what)


def test_a_container_made_by_the_first_agent_is_recognised() -> None:
    """Hash scheme 1 wrote no scheme label and hashed every field: accepted as it is."""
    legacy = BRIDGED.legacy_hash(IMAGE_ID)
    assert legacy is not None and legacy != BRIDGED.config_hash(IMAGE_ID)
    actions = plan(s.Spec("app", "", (BRIDGED,)),
                   [seen(BRIDGED, config_hash=legacy, scheme="")], IDS)
    assert [a.verb for a in actions] == ["unchanged"]
    other = seen(BRIDGED, config_hash=replace(BRIDGED, command=("x",)).legacy_hash(IMAGE_ID),
                 scheme="")
    assert [a.verb for a in plan(s.Spec("app", "", (BRIDGED,)), [other], IDS)] == ["recreate"]


def test_removals_come_first_then_start_order() -> None:
    spec = s.Spec("app", "", (c("frontend", ("backend",)), c("backend", ("db",)), c("db")))
    actions = plan(spec, [seen(c("orphan")), seen(c("db"), "exited")], IDS)
    assert [(a.verb, a.name) for a in actions] == [
        ("remove", "orphan"), ("start", "db"), ("create", "backend"), ("create", "frontend")]


def test_a_step_goes_after_the_services_it_follows() -> None:
    spec = s.Spec("app", "", (c("db"), c("cache"), c("api", ("db", "cache"))))
    steps = Plan(plan(spec, [seen(c("orphan"))], IDS), {})
    placed = steps.with_step("prove", "why", after={"db", "cache"})
    assert [a.name for a in placed.actions] == ["orphan", "db", "cache", "prove", "api"]
    then = placed.with_step("later", "why", after={"db", "prove"})
    assert [a.name for a in then.actions] == ["orphan", "db", "cache", "prove", "later", "api"]
    nothing_before = steps.with_step("first", "why", after={"absent"})
    assert [a.name for a in nothing_before.actions][:2] == ["orphan", "first"]
    assert placed.actions[3] == Action("step", "prove", reason="why")


def test_observe_attrs_reads_an_inspect() -> None:
    """The engine's inspect JSON, as the planner gets it."""
    attrs = {
        "Id": "abc", "Name": "/web", "Image": IMAGE_ID,
        "State": {"Status": "running", "StartedAt": "2026-11-26T10:00:00Z",
                  "Health": {"Status": "healthy", "Log": [{"Output": "ok\n"}]}},
        "RestartCount": 2,
        "Config": {"Image": "img", "Env": ["A=1"], "Cmd": ["run"], "Entrypoint": None,
                   "Labels": {s.LABEL_SERVICE: "web", s.LABEL_ROLE: "app"}},
        "HostConfig": {"RestartPolicy": {"Name": "always"}, "NetworkMode": "net",
                       "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}],
                                        "81/tcp": None}},
        "NetworkSettings": {"Networks": {"net": {"IPAddress": "172.18.0.2",
                                                 "Aliases": ["web", "abc"]}}},
    }
    o = observe_attrs(attrs)
    assert (o.id, o.name, o.service, o.role, o.status, o.health) == (
        "abc", "web", "web", "app", "running", "healthy")
    assert o.health_log == ("ok",) and o.restart_count == 2 and o.entrypoint == ()
    assert o.published == (Published(80, "127.0.0.1", 8080),)
    assert o.ip_on("net") == "172.18.0.2" and o.ip_on("other") is None
    assert o.env_value("A") == "1" and o.command == ("run",)


def test_a_container_that_publishes_the_old_ones_port_cannot_run_beside_it() -> None:
    """A handover (reconcile.handover) starts the new container before the old one stops:
    not when both would publish the same host port; then it is a plain replace."""
    web = c("web", network="net", aliases=("web",))
    published = replace(web, ports=(s.Port(3000, 8080, "127.0.0.1"),))
    assert not side_by_side_clash(web, seen(web))
    assert side_by_side_clash(published, seen(published))
    assert not side_by_side_clash(published, seen(web))  # newly published: no clash
