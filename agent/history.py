"""What each role ran: one record per release change, in <data-dir>/releases.json.

A run whose images differ from the newest record's begins a record (state "in-progress"),
and ends it "healthy" or "failed"; a run that changes nothing records nothing. A run killed
midway leaves its record in progress: the next run with the same images carries it on, a run
with other images marks it "interrupted". `syntho-agent history` lists them, newest first.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from agent import __version__, store

FILE = "releases.json"
SCHEMA = 1
KEEP = 100  # records kept per data dir, newest
Say = Callable[[str], None]


@dataclass(frozen=True)
class Image:
    ref: str
    id: str
    digests: tuple[str, ...] = ()


@dataclass(frozen=True)
class Record:
    number: int
    role: str
    name: str  # the release's name (--release, the release file's, or the main image's tag)
    images: dict[str, Image]  # by service
    state: str  # in-progress | healthy | failed | interrupted
    started: str
    finished: str = ""
    agent: str = __version__
    reason: str = ""  # why it failed, or what it was (a rollback from N)
    backup: str = ""  # the database backup taken before it (a schema-changing upgrade)
    previous: int = 0  # the record it replaced

    def same_images(self, images: dict[str, Image]) -> bool:
        return {k: v.id for k, v in self.images.items()} == {k: v.id for k, v in images.items()}

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out["images"] = {k: asdict(v) for k, v in self.images.items()}
        return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _from_row(row: dict[str, Any]) -> Record:
    images = {k: Image(v["ref"], v["id"], tuple(v.get("digests") or ()))
              for k, v in (row.get("images") or {}).items()}
    known = {f for f in Record.__dataclass_fields__} - {"images"}
    return Record(images=images, **{k: v for k, v in row.items() if k in known})


def path(data_dir: Path) -> Path:
    return data_dir / FILE


def load(data_dir: Path) -> list[Record]:
    """Every record, oldest first; [] when there is none (or the file is unreadable: history
    is a record, not a source of truth for the run)."""
    try:
        data = json.loads(path(data_dir).read_text())
        return [_from_row(r) for r in data.get("releases", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def _save(data_dir: Path, records: list[Record]) -> None:
    body = {"schema": SCHEMA, "releases": [r.row() for r in records[-KEEP:]]}
    store.write_atomic(path(data_dir), json.dumps(body, indent=1) + "\n", mode=0o600)


def latest(data_dir: Path, role: str) -> Record | None:
    mine = [r for r in load(data_dir) if r.role == role]
    return mine[-1] if mine else None


def last_healthy(data_dir: Path, role: str, before: int | None = None) -> Record | None:
    return next((r for r in reversed(load(data_dir)) if r.role == role and r.state == "healthy"
                 and (before is None or r.number < before)), None)


def find(data_dir: Path, role: str, name: str) -> Record | None:
    """The newest healthy record of that name (or number)."""
    return next((r for r in reversed(load(data_dir))
                 if r.role == role and r.state == "healthy"
                 and (r.name == name or str(r.number) == name)), None)


def went_back_from(data_dir: Path, role: str, images: dict[str, Image]
                   ) -> tuple[Record, Record] | None:
    """(the record of these images, the healthy release run since) when these images failed
    their health gate or were rolled back from, and another release has run healthy since."""
    mine = [r for r in load(data_dir) if r.role == role]
    same = next((r for r in reversed(mine) if r.same_images(images)), None)
    if same is None or same.state not in ("failed", "rolled-back"):
        return None
    good = next((r for r in reversed(mine) if r.state == "healthy"
                 and not r.same_images(images)), None)
    return (same, good) if good is not None else None


def begin(data_dir: Path, role: str, name: str, images: dict[str, Image],
          reason: str = "") -> Record | None:
    """The record this run carries: a new one when the images changed, the one a killed run
    left in progress with the same images, or None when the run changes no image."""
    records = load(data_dir)
    mine = [r for r in records if r.role == role]
    newest = mine[-1] if mine else None
    if newest is not None and newest.same_images(images):
        if newest.state == "in-progress":
            return newest
        if newest.state == "healthy":
            return None
    if newest is not None and newest.state == "in-progress":
        records = [replace(r, state="interrupted", finished=_now()) if r is newest else r
                   for r in records]
    previous = next((r.number for r in reversed(mine) if r.state == "healthy"), 0)
    record = Record(number=max((r.number for r in records), default=0) + 1, role=role,
                    name=name, images=images, state="in-progress", started=_now(),
                    reason=reason, previous=previous)
    _save(data_dir, [*records, record])
    return record


def update(data_dir: Path, record: Record, **changes: Any) -> Record:
    changed = replace(record, **changes)
    if changes.get("state") in ("healthy", "failed"):
        changed = replace(changed, finished=_now())
    _save(data_dir, [changed if r.number == record.number else r for r in load(data_dir)])
    return changed


def show(data_dir: Path, as_json: bool, say: Say) -> None:
    records = list(reversed(load(data_dir)))
    if as_json:
        say(json.dumps({"schema": SCHEMA, "releases": [r.row() for r in records]}, indent=1))
        return
    if not records:
        say(f"no release recorded in {path(data_dir)} yet (a role run records one)")
        return
    say(f"{'#':>3}  {'RELEASE':<20} {'ROLE':<7} {'STATE':<12} {'STARTED':<21} IMAGES")
    for r in records:
        images = ", ".join(f"{k}={v.ref}" for k, v in sorted(r.images.items()))
        say(f"{r.number:>3}  {r.name[:20]:<20} {r.role:<7} {r.state:<12} {r.started:<21} "
            f"{images}")
        for extra in (r.reason, f"backup before it: {r.backup}" if r.backup else ""):
            if extra:
                say(f"{'':>5}{extra}")
