"""--watch: stay running, follow the engine's events, and heal within seconds.

A managed container that dies, is stopped or removed is brought back by the same reconcile
the command runs (so start order and health gating still hold). The stream is re-opened
every `resync` seconds, and after the engine goes away (a restart of dockerd), and every
(re)subscription begins with a full reconcile, so nothing missed while not looking stays
broken. The data dir's lock is held only while healing, so an operator can still run the
agent by hand in between.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from agent import spec as s
from agent.config import RoleSettings
from agent.engine import ContainerGone, Engine, EngineAbsent, EngineLost
from agent.errors import AgentError
from agent.lock import data_dir_lock
from agent.reconcile import reconcile

Say = Callable[[str], None]
T = TypeVar("T")
TRIGGERS = {"die", "destroy", "stop", "kill", "oom", "pause"}
MAX_BACKOFF = 5.0


def through_engine_restarts(work: Callable[[], T], say: Say) -> T:
    """work(), run again while the engine does not answer: a watcher's first converge rides
    out a restart of dockerd under it, or a boot that started the agent before the engine, or
    a container removed while it looked at it, as its watch loop does later (a run without
    --watch exits 3 instead)."""
    backoff = 0.5
    while True:
        try:
            return work()
        except (EngineLost, EngineAbsent, ContainerGone) as exc:
            say(f"{exc}; trying again in {min(backoff, MAX_BACKOFF):.1f} s")
            time.sleep(min(backoff, MAX_BACKOFF))
            backoff *= 2


def heal(engine: Engine, spec: s.Spec, settings: RoleSettings, say: Say) -> int:
    """One converge, saying only what changed."""
    def changes_only(line: str) -> None:
        if not line.startswith("unchanged "):
            say(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} healed: {line}")

    with data_dir_lock(settings.data_dir, settings.lock_wait, changes_only):
        return reconcile(engine, spec, changes_only, settings.ready_timeout)


def follow(engine: Engine, spec: s.Spec, settings: RoleSettings, say: Say,
           resync: float = 30.0, stop_after: float | None = None,
           refresh: Callable[[], s.Spec | None] | None = None) -> None:
    """Heal until interrupted (or for stop_after seconds, for tests and benchmarks).
    `refresh`, asked at every resync, returns a new spec when the role has run again (a
    release changed: agent.deploy.refresher)."""
    end = time.monotonic() + stop_after if stop_after else None
    say(f"watching {len(spec.containers)} container(s) of the {spec.role} role "
        "(Ctrl-C stops watching; the containers keep running)")
    backoff = 0.5
    while end is None or time.monotonic() < end:
        window = resync if end is None else max(0.1, min(resync, end - time.monotonic()))
        try:
            # Subscribe first, then converge: an event during the converge is not lost.
            events = engine.events(spec.instance, spec.role, until=int(time.time() + window) + 1)
            spec = (refresh() if refresh is not None else None) or spec
            heal(engine, spec, settings, say)
            backoff = 0.5
            for action in events:
                if action in TRIGGERS:
                    heal(engine, spec, settings, say)
                if end is not None and time.monotonic() >= end:
                    events.close()
                    break
        except EngineLost as exc:
            say(f"lost the Docker engine ({exc.explanation or exc}); reconnecting")
            time.sleep(min(backoff, MAX_BACKOFF))
            backoff *= 2
        except AgentError as exc:  # the engine moved under us: look again
            say(f"could not heal yet: {exc}")
            time.sleep(min(backoff, MAX_BACKOFF))
            backoff *= 2
