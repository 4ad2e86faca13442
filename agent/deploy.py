"""A role run, start to finish, written once for the three roles:
resolve -> spec -> plan -> apply -> gate -> record.

resolve (agent/resolve.py) does every read, fetch and wait and returns plain Inputs; the spec
is built from the settings and those inputs (agent/inputs.py); the plan (agent/reconcile.py)
carries the role's own steps (the app's: agent/app_steps.py); the gate waits for readiness
(agent/gates.py); agent/rollout.py records the release and decides where to go back to when
a rollout fails. ROLES says what differs between the roles. The CLI calls `run`, `rollback`
and the watcher's `refresher`; `syntho-agent plan` (agent/forecast.py) uses the same table.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Generic, TypeVar

from agent import (
    app_steps,
    cluster,
    gates,
    grafana,
    history,
    metrics,
    ray_release,
    ray_retention,
    ray_tls,
    resolve,
    rollout,
    store,
)
from agent.config import AppSettings, HeadSettings, RoleSettings, WorkerSettings
from agent.engine import Engine
from agent.errors import ConvergeError, UsageError
from agent.history import Record
from agent.inputs import Inputs, app_spec, head_spec, worker_spec
from agent.lock import data_dir_lock
from agent.reconcile import Plan, apply, preflight, prune_kept
from agent.resolve import OWN_RAY_IMAGE, Preview
from agent.rollout import Extras, GoingBack, Rollout, release_name
from agent.spec import Spec

Say = Callable[[str], None]
S = TypeVar("S", HeadSettings, WorkerSettings, AppSettings)


@dataclass(frozen=True)
class Role(Generic[S]):
    """What differs between the roles; every stage not named here is the same for all."""

    resolve: Callable[[Engine, S, Say, Preview | None], tuple[S, Inputs]]
    spec: Callable[[S, Inputs], Spec]
    gate: Callable[[Engine, S, Inputs, Spec, Plan, int, Say], None]
    # Before the plan is applied: files, the role's own steps, the rollout's terms.
    prepare: Callable[[Engine, S, Inputs, Spec, Plan, Record | None, Extras, Say], Rollout]
    done: Callable[[Engine, S, Inputs, Spec, Say], None]  # the last words to the operator
    # For a plan (inside store.dry_run): the files the run would write, and notes.
    plan_files: Callable[[S, Inputs, Say, list[str]], None]


def _plain(engine: Engine, settings: Any, inputs: Inputs, spec: Spec, plan: Plan,
           record: Record | None, extras: Extras, say: Say) -> Rollout:
    return Rollout(plan, record)


def _head_prepare(engine: Engine, settings: HeadSettings, inputs: Inputs, spec: Spec,
                  plan: Plan, record: Record | None, extras: Extras, say: Say) -> Rollout:
    old = plan.observed.get(settings.suffix("ray-head"))
    if old is not None and old.image_id != inputs.image_ids[settings.ray_image]:
        say_upgrade_order(settings, say)
    return Rollout(plan, record)


def _nothing(*args: Any) -> None:
    return None


def _ray_done(engine: Engine, settings: HeadSettings | WorkerSettings, inputs: Inputs,
              spec: Spec, say: Say) -> None:
    prune_ray_temp(engine, settings, say)
    if isinstance(settings, HeadSettings):  # Ray's dashboards, for the operator's Grafana
        grafana.copy_dashboards(engine, settings.suffix("ray-head"),
                                inputs.image_ids.get(settings.ray_image, settings.ray_image),
                                settings.data_dir, say)


def prune_ray_temp(engine: Engine, settings: HeadSettings | WorkerSettings, say: Say) -> None:
    """Ray's temp dir brought back within its bounds (agent/ray_retention.py): after every run
    of a Ray role, and hourly by the watcher."""
    node = settings.suffix("ray-head" if isinstance(settings, HeadSettings) else "ray-worker")
    ray_retention.prune(engine, node, settings.ray_log_retention_days,
                        settings.ray_temp_max_size, say)


ROLES: dict[str, Role[Any]] = {
    "head": Role(resolve.resolve_head, head_spec, gates.head_gate, _head_prepare, _ray_done,
                 _nothing),
    "worker": Role(resolve.resolve_worker, worker_spec, gates.worker_gate, _plain, _ray_done,
                   _nothing),
    "app": Role(resolve.resolve_app, app_spec, gates.app_gate, app_steps.prepare,
                app_steps.done, app_steps.plan_files),
}
# `restore` converges the app role (its settings are the app's; its records keep its name).
ROLES["restore"] = ROLES["app"]


@contextmanager
def locked(settings: RoleSettings, say: Say) -> Iterator[None]:
    """The data dir's lock, held for a whole run (the data dir made first)."""
    store.ensure_dir(settings.data_dir)
    with data_dir_lock(settings.data_dir, settings.lock_wait, say):
        yield


def run(engine: Engine, settings: RoleSettings, say: Say) -> Spec:
    """`syntho-agent head|worker|app`: the role converged, the data dir's lock held."""
    with locked(settings, say):
        return converge(engine, settings, say)


def converge(engine: Engine, settings: RoleSettings, say: Say,
             extras: Extras | None = None) -> Spec:
    """The role, the data dir's lock held. When a rollout fails its health gate, the history
    chooses the release to go back to and the role converges once more with it; the run then
    fails (exit 4) with what broke."""
    outcome = _converge_once(engine, settings, say, extras or Extras())
    while isinstance(outcome, GoingBack):
        failed = outcome
        outcome = _converge_once(engine, failed.settings, say,
                                 Extras(reason=failed.reason, backup=False))
        if isinstance(outcome, Spec):
            raise ConvergeError(failed.error) from None
    return outcome


def _converge_once(engine: Engine, settings: RoleSettings, say: Say,
                   extras: Extras) -> Spec | GoingBack:
    role = ROLES[settings.command]
    settings, inputs = role.resolve(engine, settings, say, None)
    found = rollout.release_images(settings, inputs.image_ids)
    # A release that failed or was rolled back from is not run again unless asked: the
    # release gone back to runs instead, resolved once more (a restore runs what is asked).
    back = None if extras.restore is not None else rollout.went_back(engine, settings, found,
                                                                     say)
    if back is not None:
        settings, inputs = role.resolve(engine, back, say, None)
        found = rollout.release_images(settings, inputs.image_ids)
    spec = role.spec(settings, inputs)
    plan = preflight(engine, spec, inputs.image_ids)
    record = rollout.begin_record(engine, settings, found, extras.reason)
    staged = role.prepare(engine, settings, inputs, spec, plan, record, extras, say)
    try:
        changes = apply(engine, spec, staged.plan, say, settings.ready_timeout, staged.steps,
                        staged.router)
        if changes == 0:
            say(f"nothing to do: {len(spec.containers)} container(s) up to date")
        role.gate(engine, settings, inputs, spec, staged.plan, changes, say)
    except ConvergeError as exc:
        if staged.record is None:
            raise
        going = _going_back(engine, settings, spec, staged, str(exc), say)
        if going is None:
            raise
        return going
    if staged.rolled_out:  # before the record says healthy: killed between, a re-run prunes
        prune_kept(engine, spec, say)
    rollout.end_record(settings, staged.record, "healthy")
    role.done(engine, settings, inputs, spec, say)
    return spec


def _going_back(engine: Engine, settings: RoleSettings, spec: Spec, staged: Rollout,
                error: str, say: Say) -> GoingBack | None:
    """The failed release recorded; where the role goes back to, if anywhere."""
    assert staged.record is not None
    good = rollout.back_to(settings, staged.record, staged.rolled_out, error)
    if good is None:
        return None
    name = staged.record.name
    sick = gates.unhealthy(engine, spec)
    say(f"release {name} did not become healthy ({sick or error}): going back to "
        f"release {good.name}")
    # No backup on the way back: time is what counts now, and the failed release's own
    # (taken before it started) is the database as it was.
    back = replace(rollout.with_release(engine, settings, good, say), retry_failed=True,
                   ready_timeout=rollout.going_back_timeout(settings.ready_timeout))
    schema = (f"; the database's schema may have moved: `syntho-agent restore "
              f"{staged.record.backup}` puts it back as it was before {name}"
              if staged.record.backup else "")
    return GoingBack(back, f"went back from release {name}, which failed",
                     f"release {name} failed and the app went back to release {good.name}: "
                     f"{sick or error}{schema}")


def say_upgrade_order(settings: HeadSettings, say: Say) -> None:
    """A new Ray image on the head: every member of the cluster must run the same Ray."""
    name = release_name(settings)
    option = f"--release {name}" if settings.release else f"--ray-image {settings.ray_image}"
    say(f"the Ray image changes to {settings.ray_image} (release {name}): the head first "
        "(now), then the workers, then the app VM")
    say("  workers with no release of their own follow the head by themselves (at their next "
        f"run, or within seconds with --watch); the others run: syntho-agent worker --head "
        f"HEAD {option}")
    say(f"  the app VM runs: syntho-agent app --head HEAD --release {name} (its core's Ray "
        "must match the head's: it is checked before it starts)")


def rollback(engine: Engine, settings: RoleSettings, target: str | None, say: Say) -> Spec:
    """`syntho-agent rollback ROLE [RELEASE]`: go back to the previous healthy release (or a
    named one), with the same health gates, pulling nothing that is still on the engine."""
    role = settings.command
    with locked(settings, say):
        records = [r for r in history.load(settings.data_dir) if r.role == role]
        if not records:
            raise UsageError(f"no release of the {role} role is recorded in "
                             f"{history.path(settings.data_dir)}: nothing to go back to")
        current = records[-1]
        if (current.state == "in-progress"
                and current.reason.startswith(rollout.ROLLBACK_REASON)):
            # A rollback killed midway: the same command finishes it.
            say(f"finishing the rollback to release {current.name} (#{current.number}) that "
                "was interrupted")
            return _converge_to(engine, settings, current, current.reason, say)
        chosen = _rollback_target(settings, records, target)
        say(f"going back from release {current.name} to release {chosen.name} "
            f"(#{chosen.number}, {chosen.started})")
        if current.state == "healthy":
            history.update(settings.data_dir, current, state="rolled-back")
        # The release asked for runs, even one that was rolled back from before.
        spec = _converge_to(engine, settings, chosen,
                            f"{rollout.ROLLBACK_REASON} {current.name}", say)
        # The first backup taken after the release gone back to: the database as it ran it.
        moved = next((r for r in records if r.number > chosen.number and r.backup), None)
        if moved is not None:
            say(f"the database's schema may have moved with release {moved.name}: "
                f"`syntho-agent restore {moved.backup}` puts it back as it was before it")
        return spec


def _rollback_target(settings: RoleSettings, records: list[Record], target: str | None
                     ) -> Record:
    role, current = settings.command, records[-1]
    if target is not None:
        chosen = history.find(settings.data_dir, role, target)
        if chosen is None:
            raise UsageError(f"no healthy release {target!r} of the {role} role in the "
                             "history: `syntho-agent history` lists them")
        return chosen
    found = next((r for r in reversed(records[:-1]) if r.state == "healthy"
                  and not r.same_images(current.images)), None)
    if found is None:
        raise UsageError(f"no earlier healthy release of the {role} role to go back "
                         "to: `syntho-agent history` lists what ran")
    return found


def _converge_to(engine: Engine, settings: RoleSettings, record: Record, reason: str,
                 say: Say) -> Spec:
    """The role converged to a recorded release, chosen (not judged again)."""
    chosen = replace(rollout.with_release(engine, settings, record, say), retry_failed=True)
    return converge(engine, chosen, say, Extras(reason=reason))


# ---- --watch: when the watcher runs the whole role again ----

def follows_head(settings: RoleSettings) -> bool:
    return isinstance(settings, WorkerSettings) and not settings.given & OWN_RAY_IMAGE


def certificate_files(settings: RoleSettings) -> bytes:
    """--tls cert's files as they are now (b"" without them, or while one is unreadable: the
    run that follows says why)."""
    if not isinstance(settings, AppSettings) or settings.tls != "cert":
        return b""
    try:
        return b"".join(p.read_bytes() for p in (settings.tls_cert, settings.tls_key) if p)
    except OSError:
        return b""


def refresher(engine: Engine, settings: RoleSettings, spec: Spec,
              say: Say) -> Callable[[], Spec | None]:
    """What the watcher asks before each look (agent/watch.py): a new spec when the whole
    role must run again (a rollback changed the history under it; the head a worker follows
    moved to another Ray image; the certificate files changed), else None."""
    def newest() -> int:
        found = history.latest(settings.data_dir, settings.command)
        return found.number if found is not None else 0

    seen, current = [newest()], [spec]
    pruned = [time.monotonic()]  # the run before the watcher pruned Ray's temp dir
    sampled = [time.monotonic()]  # and wrote the metrics file
    certificate = [certificate_files(settings)]

    def head_moved(worker: WorkerSettings) -> bool:
        token = cluster.joining_token(worker, worker.data_dir)
        found = ray_release.published(cluster.alive_nodes(
            worker.head or "", token, ca=ray_tls.stored_ca(worker.data_dir)))
        moved = found is not None and found.image != current[0].containers[0].image
        if found is not None and moved:
            say(f"the head moved to the Ray image {found.image}: following it")
        return moved

    def refresh() -> Spec | None:
        if (isinstance(settings, (HeadSettings, WorkerSettings))
                and time.monotonic() - pruned[0] >= ray_retention.EVERY):
            pruned[0] = time.monotonic()
            prune_ray_temp(engine, settings, say)
        if time.monotonic() - sampled[0] >= metrics.EVERY:
            sampled[0] = time.monotonic()
            metrics.publish(settings.data_dir, settings.instance, say, engine)
        again = newest() != seen[0]
        if not again and certificate[0] != (now := certificate_files(settings)):
            certificate[0] = now
            again = True
            say("the certificate files changed: running again to reload the HTTPS proxy")
        if not again and ray_tls.renewal_due(settings.data_dir):
            again = True
            say("this node's Ray TLS certificate is due for renewal: running again")
        if not again and isinstance(settings, WorkerSettings) and follows_head(settings):
            again = head_moved(settings)
        if not again:
            return None
        with metrics.recorded(settings.data_dir, settings.instance, settings.command, say,
                              engine):
            made = run(engine, settings, say)
        seen[0], current[0] = newest(), made
        return made

    return refresh
