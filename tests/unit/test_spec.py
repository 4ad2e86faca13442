from dataclasses import replace
from pathlib import Path

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


def test_a_spill_dir_is_rays_flag_a_mount_and_its_capacity_on_both_ray_roles(
        tmp_path: Path) -> None:
    from agent.config import HeadSettings, WorkerSettings
    from agent.roles import ray

    for spec in (ray.head_spec(HeadSettings(spill_dir=tmp_path), None),
                 ray.worker_spec(WorkerSettings(head="10.0.0.4", spill_dir=tmp_path), None)):
        node = spec.containers[0]
        command = list(node.command or ())
        assert command[command.index("--object-spilling-directory") + 1] == "/ray-spill"
        assert s.Mount(str(tmp_path), "/ray-spill") in node.mounts
        assert ("RAY_local_fs_capacity_threshold", "0.95") in node.env
    plain = ray.head_spec(HeadSettings(), None).containers[0]
    assert "--object-spilling-directory" not in (plain.command or ())
    assert not any(m.target == "/ray-spill" for m in plain.mounts)
