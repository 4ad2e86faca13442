from dataclasses import replace

import pytest

from agent import spec as s


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
