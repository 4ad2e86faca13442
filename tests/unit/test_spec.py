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


class FakeContainer:
    """Just the inspect data drift() reads: what the engine reports for a container."""

    def __init__(self, c: s.Container, image_id: str) -> None:
        self.attrs = {
            "Image": image_id,
            "Config": {"Env": [f"{k}={v}" for k, v in c.env] + ["PATH=/bin"],
                       "Cmd": list(c.command or []), "Entrypoint": None},
            "HostConfig": {"RestartPolicy": {"Name": c.restart}, "NetworkMode": c.network},
        }


def observed(c: s.Container, status: str, config_hash: str) -> Observed:
    return Observed(name=c.name, service=c.service, status=status, health=None,
                    config_hash=config_hash, sdk=FakeContainer(c, "sha256:1"))  # type: ignore[arg-type]


def test_plan_covers_every_case() -> None:
    ids = {"img": "sha256:1"}
    same, stopped, drifted, missing = c("same"), c("stopped"), c("drifted"), c("missing")
    by_hand = c("by-hand", env=(("A", "1"),))
    spec = s.Spec("app", "", (same, stopped, drifted, missing, by_hand))
    hand_made = observed(by_hand, "running", by_hand.config_hash("sha256:1"))
    hand_made.sdk.attrs["Config"]["Env"] = ["A=2"]  # its labels copied, its settings not
    actions = plan(spec, [
        observed(same, "running", same.config_hash("sha256:1")),
        observed(stopped, "exited", stopped.config_hash("sha256:1")),
        observed(drifted, "running", "old"),
        observed(c("orphan"), "running", "whatever"),
        hand_made,
    ], ids)
    verbs = {a.name: a.verb for a in actions}
    assert verbs == {"same": "unchanged", "stopped": "start", "drifted": "recreate",
                     "missing": "create", "orphan": "remove", "by-hand": "recreate"}
    assert actions[0].verb == "remove"
    reasons = {a.name: a.reason for a in actions}
    assert reasons["by-hand"] == "the environment changed outside the agent"
