"""`syntho-agent plan ROLE`: what a run would do, changing nothing.

The run's own stages (agent/deploy.py's ROLES): resolve with a Preview (images looked at, not
pulled; the head asked once), the spec, the files the run would write, its preflight and plan,
all inside store.dry_run(): what the run would write is held in memory and compared with the
data dir. Nothing is written anywhere, not even a scratch copy of a secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent import secret_files, store
from agent.config import RoleSettings
from agent.deploy import ROLES
from agent.engine import Engine
from agent.reconcile import ACTING, Action, preflight
from agent.resolve import Preview
from agent.spec import LABEL_MANAGED


@dataclass(frozen=True)
class Forecast:
    """What `syntho-agent plan ROLE` found: the same resolution and plan a run makes, before
    the run would act on them."""

    data_dir: Path
    data_dir_exists: bool
    actions: list[Action]  # the containers, in the order the run would act on them
    networks: list[str]  # that the run would create
    volumes: list[str]
    files: list[tuple[str, str]]  # (path in the data dir, what the run would do to it)
    images: list[str]
    notes: list[str]

    @property
    def changes(self) -> bool:
        return not self.data_dir_exists or bool(
            self.networks or self.volumes or self.files or self.images
            or any(a.verb not in ("unchanged", "step") for a in self.actions))


def _file_changes(held: store.DryRun, data_dir: Path) -> list[tuple[str, str]]:
    """What the run would write into data_dir (held by the dry run, compared with the files
    there), as what it would do to each. Names only: a secret's value is never shown."""
    changes = []
    for path, pending in sorted(held.files.items()):
        if not path.is_relative_to(data_dir):
            continue
        name = str(path.relative_to(data_dir))
        if path.is_file() and path.read_bytes() == pending.content:
            continue
        secret = secret_files.is_secret(name)
        what = pending.how or ("rewrite it" if path.exists() else "write it")
        changes.append((name, what + (" (a secret: value not shown)" if secret else "")))
    return changes


def _silent(line: str) -> None:
    """A plan's resolve speaks through its Forecast, not line by line."""


def forecast(engine: Engine, settings: RoleSettings) -> Forecast:
    """What a run of this role would do: the run's own stages (images looked at but not
    pulled, the head asked once), with every write held in memory; nothing on the engine or
    in the data dir changes."""
    role = ROLES[settings.command]
    preview = Preview()
    with store.dry_run() as held:
        settings, inputs = role.resolve(engine, settings, _silent, preview)
        spec = role.spec(settings, inputs)
        role.plan_files(settings, inputs, _silent, preview.notes)
        plan = preflight(engine, spec, inputs.image_ids)
    files = _file_changes(held, settings.data_dir)
    acting = any(a.verb in ACTING for a in plan.actions)
    labels = [f"{LABEL_MANAGED}=true"]
    networks = {n.name for n in engine.networks(labels)} if spec.networks and acting else set()
    return Forecast(
        data_dir=settings.data_dir, data_dir_exists=settings.data_dir.is_dir(),
        actions=plan.actions,
        networks=[n.name for n in spec.networks if acting and n.name not in networks],
        volumes=[v.name for v in spec.volumes
                 if acting and not engine.volume_exists(v.name)],
        files=files, images=preview.images, notes=preview.notes)
