"""Which release a role run runs, and what it records of it (agent/history.py keeps the
records): the record a run begins and ends, the release a role went back to (a later run must
not try the failed one again), the release to go back to after a failed rollout, and the
settings that run a recorded release.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, TypeVar

from agent import history, images, release
from agent.config import AppSettings, RoleSettings
from agent.engine import Engine
from agent.errors import EnvironmentProblem
from agent.reconcile import Plan, Router, Step

Say = Callable[[str], None]
R = TypeVar("R", bound=RoleSettings)
ROLLBACK_REASON = "rollback from release"


def release_name(settings: RoleSettings) -> str:
    """--release, the release file's name, or the main image's tag."""
    main = settings.core_image if isinstance(settings, AppSettings) else settings.ray_image
    return settings.release or release.tag_of(main)


def release_images(settings: RoleSettings, ids: dict[str, str]) -> dict[str, history.Image]:
    """The images this run runs, by release key (ray, core, ...), with their IDs."""
    refs = {key: getattr(settings, field) for key, field in release.IMAGE_KEYS.items()
            if hasattr(settings, field)}
    if isinstance(settings, AppSettings):
        refs.pop("ray", None)
        if settings.postgres_url is not None:
            refs.pop("postgres")
        if settings.redis_url is not None:
            refs.pop("redis")
    return {key: history.Image(ref, ids[ref]) for key, ref in refs.items() if ref in ids}


def begin_record(engine: Engine, settings: RoleSettings, found: dict[str, history.Image],
                 reason: str = "") -> history.Record | None:
    """The run's release record: None when it runs what the newest healthy record ran (the
    registry digests are read only for a new record)."""
    newest = history.latest(settings.data_dir, settings.command)
    if newest is not None and newest.state == "healthy" and newest.same_images(found):
        return None
    found = {k: replace(v, digests=engine.repo_digests(v.id)) for k, v in found.items()}
    return history.begin(settings.data_dir, settings.command, release_name(settings), found,
                         reason)


def end_record(settings: RoleSettings, record: history.Record | None, state: str,
               reason: str = "") -> history.Record | None:
    if record is None:
        return None
    return history.update(settings.data_dir, record, state=state,
                          reason=reason or record.reason)


def went_back(engine: Engine, settings: R, found: dict[str, history.Image], say: Say) -> R | None:
    """The settings of the release this role went back to, when the one asked for failed its
    health gate or was rolled back from (a reboot or a restarted unit must not try it again,
    nor undo a rollback); None to run what was asked. --retry-failed asks for it anyway."""
    if settings.retry_failed:
        return None
    found_back = history.went_back_from(settings.data_dir, settings.command, found)
    if found_back is None:
        return None
    bad, good = found_back
    what = "failed its health gate" if bad.state == "failed" else "was rolled back from"
    say(f"release {bad.name} {what} ({bad.finished or bad.started}): running release "
        f"{good.name}, as since (--retry-failed runs {bad.name} again)")
    # What runs instead is chosen: it is not judged again (two releases rolled back from in
    # turn would send each run to the other).
    return replace(with_release(engine, settings, good, say), retry_failed=True)


def with_release(engine: Engine, settings: R, record: history.Record, say: Say,
                 notes: list[str] | None = None) -> R:
    """The settings that run a recorded release: its references, each pointing again at the
    image it ran (a moving tag may have moved since: the tag is put back on this engine; an
    image gone from the engine is pulled by its digest). With `notes` (a plan), what would be
    tagged or pulled is noted instead."""
    changes: dict[str, object] = {}
    for key, image in record.images.items():
        field = release.IMAGE_KEYS[key]
        if not hasattr(settings, field):
            continue
        if notes is not None and engine.image_id(image.ref) != image.id:
            notes.append(f"the run would tag {image.ref} back to the image release "
                         f"{record.name} ran ({image.id[7:19]}), pulling it by its digest if "
                         "it is gone")
        elif engine.image_id(image.ref) != image.id:
            if engine.image_id(image.id) is None:
                pinned = [d for d in image.digests
                          if release.repository(d) == release.repository(image.ref)]
                if not pinned or not settings.registry:
                    raise EnvironmentProblem(
                        f"the image {image.ref} of release {record.name} is no longer on this "
                        f"engine (ID {image.id[7:19]}): load it (`docker load -i FILE` or "
                        "--images PATH) or give --registry to pull it, then run again")
                images.ensure(engine, settings, {pinned[0]: key}, say, "missing")
            say(f"tagged {image.ref} as release {record.name} ran it ({image.id[7:19]})")
            engine.tag(image.id, image.ref)
        changes[field] = image.ref
    return replace(settings, **changes, release=record.name, release_file=None,  # type: ignore[arg-type]
                   pull="missing", given=settings.given | set(changes))


def back_to(settings: RoleSettings, record: history.Record, rolled_out: bool,
            error: str) -> history.Record | None:
    """After a run's release failed its health gate: the record says so, and the release to go
    back to is the last healthy one before it, when the run was a rollout (the replaced
    containers kept) and that release runs other images; None to fail where it stands."""
    failed = end_record(settings, record, "failed", error)
    assert failed is not None
    if not rolled_out:
        return None
    good = history.last_healthy(settings.data_dir, settings.command, before=failed.number)
    return None if good is None or good.same_images(failed.images) else good


GOING_BACK_WAIT = 180.0  # seconds, at least, for the release the app goes back to


def going_back_timeout(asked: float) -> float:
    """How long the release the app goes back to may take to be healthy: a short
    --ready-timeout judges the new release; the way back must not fail for it (0: forever)."""
    return 0.0 if asked == 0 else max(asked, GOING_BACK_WAIT)


@dataclass(frozen=True)
class Extras:
    """What a converge is asked beyond its settings: the reason its record gives, a restore
    (restore.py: a step that fills the databases after Postgres is up and before anything that
    uses them starts; no going back to another release then), and whether a schema-migrating
    upgrade backs the databases up first (not on the way back after a failed rollout)."""

    reason: str = ""
    restore: Callable[[], int] | None = None
    backup: bool = True


@dataclass(frozen=True)
class Rollout:
    """The plan a run applies, with the role's own steps (by name, as the plan places them),
    the proxy's router when a running proxy serves the app (upgrades drop no request), the
    versioned services whose image changes (a rollout: the replaced containers are kept
    until the new release is healthy) and the run's release record."""

    plan: Plan
    record: history.Record | None
    steps: dict[str, Step] = field(default_factory=dict)
    router: Router | None = None
    moving: tuple[str, ...] = ()

    @property
    def rolled_out(self) -> bool:
        return bool(self.moving or self.plan.kept)


@dataclass(frozen=True)
class GoingBack:
    """A rollout that failed its health gate, and the release the role goes back to: the
    settings that run it (chosen: not judged again), its record's reason, and the error the
    run fails with once it is back."""

    settings: RoleSettings
    reason: str
    error: str
