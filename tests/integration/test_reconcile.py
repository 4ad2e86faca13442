"""The reconciler on the real engine, driven directly (no CLI): what it reads, what it makes,
and the race where a container vanishes between reading the engine and acting on it."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter

import docker.errors
import pytest

from agent import spec as s
from agent import waits
from agent.engine import Engine
from agent.errors import EnvironmentProblem
from agent.reconcile import apply, preflight, reconcile
from tests.support.engine_calls import CallCounter
from tests.support.sandbox import Sandbox


def quiet(line: str) -> None:
    pass


def busybox_spec(sandbox: Sandbox, image: str, n: int, env: str = "1") -> s.Spec:
    """n sleeping containers on the sandbox's bridge network, each with an alias; the last
    waits for the first (a running gate)."""
    instance = sandbox.instance("rec")
    containers = tuple(
        s.Container(service=f"s{i}", name=f"{instance}-s{i}", image=image,
                    command=("sleep", "86400"), env=(("GENERATION", env),),
                    network=sandbox.network, aliases=(f"s{i}",), restart="always",
                    after=("s0",) if i == n - 1 and n > 1 else ())
        for i in range(n))
    return s.Spec(role="test", instance=instance, containers=containers,
                  networks=(s.Network(sandbox.network),))


def test_a_no_op_reads_the_engine_once(sandbox: Sandbox, images: dict[str, str]) -> None:
    n = 6
    spec = busybox_spec(sandbox, images["busybox"], n)
    engine = Engine(sandbox.client)
    assert reconcile(engine, spec, quiet, ready_timeout=60) == n + 1  # and the network
    calls = CallCounter(sandbox.client).counts
    assert reconcile(engine, spec, quiet, ready_timeout=60) == 0
    # One image inspect, one list of the managed containers and one inspect of each: nothing
    # per container that a second look would repeat, nothing that changes anything.
    assert calls == Counter({"GET /images/{name}/json": 1, "GET /containers/json": 1,
                             "GET /containers/{id}/json": n}), calls


def test_containers_are_made_whole_with_their_aliases(
        sandbox: Sandbox, images: dict[str, str]) -> None:
    spec = busybox_spec(sandbox, images["busybox"], 2)
    engine = Engine(sandbox.client)
    calls = CallCounter(sandbox.client).counts
    reconcile(engine, spec, quiet, ready_timeout=60)
    assert calls["POST /containers/create"] == 2
    assert not any("disconnect" in k or "connect" in k for k in calls), calls
    for c in spec.containers:
        attrs = sandbox.client.api.inspect_container(c.name)
        assert c.service in attrs["NetworkSettings"]["Networks"][sandbox.network]["Aliases"]
    # A neighbour on the network reaches it by its alias (run() raises if ping fails).
    sandbox.client.containers.run(images["busybox"], ["ping", "-c", "1", "-W", "5", "s1"],
                                  remove=True, network=sandbox.network, labels=sandbox.labels)


def test_containers_removed_after_the_plan_are_made_anew(
        sandbox: Sandbox, images: dict[str, str]) -> None:
    """A stopped container (plan: start) and a changed one (plan: recreate) are removed after
    preflight read them and before apply acts, as `docker rm -f` during a --watch heal does."""
    first = busybox_spec(sandbox, images["busybox"], 2)
    engine = Engine(sandbox.client)
    reconcile(engine, first, quiet, ready_timeout=60)
    stopped, changed = (sandbox.client.containers.get(c.name) for c in first.containers)
    stopped.stop(timeout=1)
    second = s.Spec(role=first.role, instance=first.instance, networks=first.networks,
                    containers=(first.containers[0], dataclasses.replace(
                        first.containers[1], env=(("GENERATION", "2"),))))
    plan = preflight(engine, second)
    assert [a.verb for a in plan.actions] == ["start", "recreate"]
    for old in (stopped, changed):
        old.remove(force=True)
    said: list[str] = []
    assert apply(engine, second, plan, said.append, ready_timeout=60) == 2
    assert said == [f"created {c.name} (removed while this run planned)"
                    for c in second.containers]
    for c in second.containers:
        now = sandbox.client.containers.get(c.name)
        assert now.status == "running" and now.id not in (stopped.id, changed.id)
    assert reconcile(engine, second, quiet, ready_timeout=60) == 0


def test_a_container_made_by_hand_with_a_wanted_name_is_refused_untouched(
        sandbox: Sandbox, images: dict[str, str]) -> None:
    spec = busybox_spec(sandbox, images["busybox"], 2)
    squatter = sandbox.client.containers.run(
        images["busybox"], ["sleep", "86400"], name=spec.containers[1].name, detach=True,
        labels=sandbox.labels)
    engine = Engine(sandbox.client)
    with pytest.raises(EnvironmentProblem, match="did not create"):
        preflight(engine, spec)
    squatter.reload()
    assert squatter.status == "running"
    assert not sandbox.client.containers.list(
        all=True, filters={"name": spec.containers[0].name})


def test_a_removal_left_running_by_a_killed_agent_is_waited_out(
        sandbox: Sandbox, images: dict[str, str]) -> None:
    # A restore killed while the engine removed a container: the next run's removal of the same
    # container is refused with a 409 ("removal ... is already in progress") until the first
    # ends. Many files in its writable layer make the first removal last long enough to meet.
    heavy = sandbox.run(images["busybox"], "heavy", command=[
        "sh", "-c", "mkdir /m && cd /m && seq 50000 | xargs touch"])
    assert heavy.wait(timeout=120)["StatusCode"] == 0
    first = threading.Thread(target=sandbox.client.api.remove_container, args=(heavy.id,),
                             kwargs={"force": True})
    first.start()
    try:
        assert waits.poll(lambda: removing(sandbox, heavy.id), 30, "the first removal")
        Engine(sandbox.client).remove(heavy.id)
        assert not sandbox.client.containers.list(all=True, filters={"id": heavy.id})
    finally:
        first.join()


def removing(sandbox: Sandbox, container_id: str) -> bool:
    """Whether the engine is in the middle of removing a container (its state says so)."""
    try:
        state = sandbox.client.api.inspect_container(container_id)["State"]
    except docker.errors.NotFound:
        return False
    return bool(state.get("Status") == "removing")


def test_a_container_removed_while_the_agent_lists_them_is_left_out(
        sandbox: Sandbox, images: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Another agent removes a container between this one's list and its inspect of it (CI
    saw a waiting agent's pre-lock look fail on "No such container"): the list goes without
    it, as a list a moment later would."""
    spec = busybox_spec(sandbox, images["busybox"], 3)
    engine = Engine(sandbox.client)
    reconcile(engine, spec, quiet, ready_timeout=60)
    victim = sandbox.client.containers.get(spec.containers[1].name).id
    inspect = sandbox.client.api.inspect_container

    def racing(container: str) -> object:
        if container == victim:
            sandbox.client.api.remove_container(victim, force=True)  # the other agent's remove
        return inspect(container)

    monkeypatch.setattr(sandbox.client.api, "inspect_container", racing)
    found = engine.managed(spec.instance)
    assert sorted(o.name for o in found) == sorted(
        c.name for c in spec.containers if c.name != spec.containers[1].name)
