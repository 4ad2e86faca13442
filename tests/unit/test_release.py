"""Releases, pure: --release and --release-file into image references, the head's labels,
and the history's records."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import history, release
from agent.config import AppSettings, WorkerSettings
from agent.errors import UsageError
from agent.ray_release import published
from agent.roles.ray import head_labels


def test_release_tags_the_syntho_images_only() -> None:
    s = AppSettings.from_params({"head": "10.0.0.4", "release": "1.4.2", "registry": "r:5000"})
    assert (s.core_image, s.backend_image, s.frontend_image) == (
        "r:5000/syntho-core-api:1.4.2", "r:5000/syntho-backend:1.4.2",
        "r:5000/syntho-frontend:1.4.2")
    assert s.postgres_image == "postgres:14.5"


def test_release_keeps_a_given_repository() -> None:
    s = WorkerSettings.from_params({"head": "h", "release": "2", "ray_image": "my/ray:1"})
    assert s.ray_image == "my/ray:2" and {"release", "ray_image"} <= s.given


def test_release_file_pins_each_image(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("release: '7'\nimages:\n  core: reg/core@sha256:" + "a" * 64
                 + "\n  ray: reg/ray:7\n")
    s = AppSettings.from_params({"head": "h", "release_file": f})
    assert s.core_image == "reg/core@sha256:" + "a" * 64 and s.release == "7"
    assert WorkerSettings.from_params({"head": "h", "release_file": f}).ray_image == "reg/ray:7"


@pytest.mark.parametrize("text, says", [
    ("images:\n  coer: reg/core:1\n", "unknown image 'coer'"),
    ("imagez:\n  core: reg/core:1\n", "expected a mapping with an `images:`"),
    ("images:\n  core: reg/core:1\nextra: 1\n", "unknown key 'extra'"),
    ("images:\n  core: reg/core\n", "names no tag or digest"),
    ("images: [\n", "is not valid YAML"),
])
def test_bad_release_files_are_one_line(tmp_path: Path, text: str, says: str) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(text)
    with pytest.raises(UsageError, match=says):
        AppSettings.from_params({"head": "h", "release_file": f})


def test_release_and_release_file_conflict(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("images:\n  core: reg/core:1\n")
    with pytest.raises(UsageError, match="give one"):
        AppSettings.from_params({"head": "h", "release_file": f, "release": "2"})
    with pytest.raises(UsageError, match="give one"):
        AppSettings.from_params({"head": "h", "release_file": f, "core_image": "x/core:3"})


@pytest.mark.parametrize("ref, repo, tag", [
    ("host:5000/syntho-ray:1", "host:5000/syntho-ray", "1"),
    ("host:5000/syntho-ray", "host:5000/syntho-ray", "latest"),
    ("ray@sha256:" + "b" * 64, "ray", "b" * 12),
])
def test_references(ref: str, repo: str, tag: str) -> None:
    assert release.repository(ref) == repo and release.tag_of(ref) == tag


def test_head_labels_round_trip() -> None:
    ref = "registry.example.com:5000/a/very/long/path/to/the/syntho-ray:2026.12.04-build.17"
    labels = dict(pair.split("=") for pair in head_labels(ref, "2026.12").split(","))
    assert all(len(v) <= 63 for v in labels.values()) and len(labels) > 2
    node = {"is_head_node": True, "state": "ALIVE", "labels": labels}
    found = published([node])
    assert found is not None and (found.image, found.release) == (ref, "2026.12")
    assert published([{**node, "labels": {}}]) is None


def _images(n: str) -> dict[str, history.Image]:
    return {"core": history.Image(f"core:{n}", f"sha256:{n}")}


def test_history_records_changes_only(tmp_path: Path) -> None:
    a = history.begin(tmp_path, "app", "A", _images("a"))
    assert a is not None and a.state == "in-progress"
    assert history.begin(tmp_path, "app", "A", _images("a")) == a, "a killed run's record"
    history.update(tmp_path, a, state="healthy")
    assert history.begin(tmp_path, "app", "A", _images("a")) is None, "nothing changed"
    b = history.begin(tmp_path, "app", "B", _images("b"))
    assert b is not None and b.previous == a.number
    c = history.begin(tmp_path, "app", "C", _images("c"))
    assert c is not None
    states = [(r.name, r.state) for r in history.load(tmp_path)]
    assert states == [("A", "healthy"), ("B", "interrupted"), ("C", "in-progress")]
    history.update(tmp_path, c, state="failed")
    back = history.went_back_from(tmp_path, "app", _images("c"))
    assert back is not None and back[1].name == "A"
    assert history.went_back_from(tmp_path, "app", _images("a")) is None
    assert (tmp_path / history.FILE).stat().st_mode & 0o777 == 0o600


def test_gcs_ft_keeps_the_password_off_command_lines() -> None:
    from agent.config import HeadSettings
    from agent.roles.ray import head_spec

    assert HeadSettings.from_params({}).gcs_ft is True, "on by default (README)"
    spec = head_spec(HeadSettings.from_params({"gcs_ft": True}), "t" * 32, "the-gcs-password")
    redis, head = spec.containers
    assert (redis.service, head.after) == ("gcs-redis", ("gcs-redis",))
    for c in spec.containers:
        assert "the-gcs-password" not in " ".join([*(c.entrypoint or ()), *(c.command or ())])
        assert ("GCS_REDIS_PASSWORD", "the-gcs-password") in c.env
    assert "--bind 127.0.0.1" in (redis.command or ("",))[0], "loopback only on a VM"
    assert ("RAY_REDIS_ADDRESS", "127.0.0.1:6386") in head.env
    assert "the-gcs-password" in spec.secrets
    assert [v.name for v in spec.volumes] == ["syntho-gcs-redis-data"]
    off = head_spec(HeadSettings.from_params({"gcs_ft": False}), "t" * 32, None)
    assert [c.service for c in off.containers] == ["ray-head"]


def test_the_gcs_redis_port_must_not_collide() -> None:
    from agent.config import HeadSettings
    from agent.roles.ray import node_ports

    with pytest.raises(UsageError, match="--gcs-redis-port 6380 collides"):
        node_ports(HeadSettings.from_params({"gcs_redis_port": 6380, "gcs_ft": True}), "head")
    node_ports(HeadSettings.from_params({"gcs_redis_port": 6380, "gcs_ft": False}), "head")


class _MovedTag:
    """An engine on which the tag of a recorded release now names another image; it records
    every change asked of it."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []

    def image_id(self, ref: str) -> str | None:
        return {"r/ray:moving": "sha256:" + "b" * 64, "sha256:" + "a" * 64: "sha256:" + "a" * 64
                }.get(ref)

    def tag(self, image: str, ref: str) -> None:
        self.changes.append((image, ref))


def test_a_plan_notes_the_tag_a_run_would_put_back_and_changes_nothing() -> None:
    from agent.rollout import with_release

    record = history.Record(3, "worker", "moving", {"ray": history.Image(
        "r/ray:moving", "sha256:" + "a" * 64)}, "healthy", "now")
    settings = WorkerSettings.from_params({"head": "h", "ray_image": "r/ray:moving"})
    engine = _MovedTag()
    notes: list[str] = []
    planned = with_release(engine, settings, record, print, notes)  # type: ignore[arg-type]
    assert engine.changes == [] and planned.release == "moving"
    assert notes == ["the run would tag r/ray:moving back to the image release moving ran "
                     "(aaaaaaaaaaaa), pulling it by its digest if it is gone"]
    ran = with_release(engine, settings, record, print)  # type: ignore[arg-type]
    assert engine.changes == [("sha256:" + "a" * 64, "r/ray:moving")] and ran == planned
