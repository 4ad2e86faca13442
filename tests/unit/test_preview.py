"""What `plan` says about a container that changed: the fields, from the hashes the agent put
on it when it made it; never a hash of a secret alone."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from agent import spec as s
from agent.engine import Observed
from agent.reconcile import LABEL_FIELDS, SECRET_FIELD, field_hashes, plan

IMAGE_ID = "sha256:1"
SECRET = "s3cr3t-value-of-some-length"
BASE = s.Container(service="web", name="web", image="img", shm_size=1024,
                   env=(("MODE", "a"), ("DB_URL", f"postgres://u:{SECRET}@db/x"),
                        ("TOKEN", SECRET)))


def made(c: s.Container, secrets: tuple[str, ...] = (SECRET,)) -> Observed:
    """c as the agent made it: its hash and field hashes in its labels."""
    labels = {**s.Spec("app", "", ()).labels(c, c.config_hash(IMAGE_ID)),
              LABEL_FIELDS: json.dumps(field_hashes(c, IMAGE_ID, secrets))}
    return Observed(
        id="id", name=c.name, labels=tuple(sorted(labels.items())), status="running",
        health=None, health_log=(), image_id=IMAGE_ID, image=c.image,
        env=tuple(f"{k}={v}" for k, v in c.env), command=(), entrypoint=(),
        restart_policy=c.restart, network_mode="host", endpoints=(), published=(),
        started_at="", restart_count=0)


def reason(found: Observed, wanted: s.Container, secrets: tuple[str, ...] = (SECRET,)) -> str:
    spec = s.Spec("app", "", (wanted,), secrets=secrets)
    [action] = plan(spec, [found], {"img": IMAGE_ID})
    return f"{action.verb}: {action.reason}"


def test_the_changed_fields_are_named() -> None:
    assert reason(made(BASE), replace(BASE, shm_size=2048)) == \
        "recreate: configuration changed: shm_size"
    assert reason(made(BASE), replace(BASE, env=(("MODE", "b"), *BASE.env[1:]))) == \
        "recreate: configuration changed: env MODE"
    assert reason(made(BASE), replace(BASE, nofile=10, cpus=1.5)) == \
        "recreate: configuration changed: nofile, cpus"


def test_a_changed_secret_is_named_as_a_secret_only() -> None:
    other = "an0ther-secret-of-some-length"
    wanted = replace(BASE, env=(("MODE", "a"), ("DB_URL", f"postgres://u:{other}@db/x"),
                                ("TOKEN", other)))
    assert reason(made(BASE), wanted, (other,)) == \
        f"recreate: configuration changed: {SECRET_FIELD}"


def test_no_label_hashes_a_secret_on_its_own() -> None:
    hashes = field_hashes(BASE, IMAGE_ID, (SECRET,))
    assert "env TOKEN" not in hashes and "env DB_URL" not in hashes
    assert set(hashes) == {"image_id", "service", "name", "image", "env MODE", "shm_size",
                           SECRET_FIELD}


def test_a_container_made_before_the_field_hashes_gets_the_plain_reason() -> None:
    old = made(BASE)
    old = replace(old, labels=tuple(kv for kv in old.labels if kv[0] != LABEL_FIELDS))
    assert reason(old, replace(BASE, shm_size=2048)) == "recreate: configuration changed"


class _NoImages:
    """An engine that has none of the images asked for (a plan only looks)."""

    def image_id(self, ref: str) -> None:
        return None


def _planned(found: Observed, wanted: s.Container, how: str = "registry") -> tuple[str, str]:
    from agent.config import HeadSettings
    from agent.preview import action_line
    from agent.resolve import Preview, ensure_images

    settings = HeadSettings(registry="reg.example") if how == "registry" else \
        HeadSettings(images=Path("/bundle.tar"))
    preview = Preview()
    ids = ensure_images(_NoImages(), settings, {"img": "web"}, print, preview)  # type: ignore[arg-type]
    [action] = plan(s.Spec("app", "", (wanted,), secrets=(SECRET,)), [found], ids)
    return f"{action.verb}: {action.reason}", action_line(action)


def test_an_image_missing_from_the_engine_is_a_pull_not_a_change_of_image_id() -> None:
    """The container runs an image the reference may name again once pulled: the plan cannot
    know before the pull, and says so instead of `configuration changed: image_id`."""
    verb_reason, line = _planned(made(BASE), BASE)
    assert "image_id" not in verb_reason
    assert line == "web: would pull img; recreate only if the pulled image differs"
    _, line = _planned(made(BASE), BASE, how="bundle")
    assert line == "web: would load img; recreate only if the loaded image differs"
    # Another change too: a recreate for it, the image still not named as changed.
    verb_reason, line = _planned(made(BASE), replace(BASE, shm_size=2048))
    assert verb_reason == "recreate: configuration changed: shm_size (and img would be pulled)"
    assert line == "recreate web: configuration changed: shm_size (and img would be pulled)"
