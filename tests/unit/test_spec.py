from dataclasses import replace

import pytest

from agent import spec as s
from agent.engine import Observed
from agent.reconcile import plan


def c(service: str, after: tuple[str, ...] = (), **kw: object) -> s.Container:
    return s.Container(service=service, name=service, image="img", after=after, **kw)  # type: ignore[arg-type]


def test_ordered_puts_dependencies_first() -> None:
    spec = s.Spec("app", "", (c("frontend", ("backend",)), c("backend", ("postgres", "core")),
                              c("core", ("postgres",)), c("postgres")))
    order = [x.service for x in spec.ordered()]
    assert order.index("postgres") < order.index("core") < order.index("backend")
    assert order.index("backend") < order.index("frontend")


def test_ordered_rejects_cycles() -> None:
    spec = s.Spec("app", "", (c("a", ("b",)), c("b", ("a",))))
    with pytest.raises(ValueError, match="cycle"):
        spec.ordered()


def test_hash_follows_config_and_image() -> None:
    base = c("x", env=(("A", "1"),))
    assert base.config_hash("sha256:1") == c("x", env=(("A", "1"),)).config_hash("sha256:1")
    assert base.config_hash("sha256:1") != base.config_hash("sha256:2")
    assert base.config_hash("sha256:1") != replace(base, env=(("A", "2"),)).config_hash("sha256:1")


def observed(name: str, status: str, config_hash: str) -> Observed:
    return Observed(name=name, service=name, status=status, health=None,
                    config_hash=config_hash, sdk=None)  # type: ignore[arg-type]


def test_plan_covers_every_case() -> None:
    ids = {"img": "sha256:1"}
    same, stopped, drifted, missing = c("same"), c("stopped"), c("drifted"), c("missing")
    spec = s.Spec("app", "", (same, stopped, drifted, missing))
    actions = plan(spec, [
        observed("same", "running", same.config_hash("sha256:1")),
        observed("stopped", "exited", stopped.config_hash("sha256:1")),
        observed("drifted", "running", "old"),
        observed("orphan", "running", "whatever"),
    ], ids)
    verbs = {a.name: a.verb for a in actions}
    assert verbs == {"same": "unchanged", "stopped": "start", "drifted": "recreate",
                     "missing": "create", "orphan": "remove"}
    assert actions[0].verb == "remove"
