"""Releases: the pinned set of image references a role runs.

`--release TAG` gives the Syntho images (ray, core, backend, frontend) that tag, each in its own
repository; `--release-file FILE` pins each reference, by tag or by digest (README, "Upgrades and
rollback"):

    release: "1.4.2"            # optional: the name history shows (default: the file's name)
    images:
      ray: registry.example/syntho-ray:1.4.2
      core: registry.example/syntho-core-api@sha256:...
      backend: registry.example/syntho-backend:1.4.2
      frontend: registry.example/syntho-frontend:1.4.2
      postgres: postgres:14.5    # where bundled
      redis: redis:6.2-alpine    # where bundled

Pure: parsing and naming; agent/history.py records what ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.errors import UsageError

# A release file's image keys, with the settings field each one sets.
IMAGE_KEYS = {"ray": "ray_image", "core": "core_image", "backend": "backend_image",
              "frontend": "frontend_image", "postgres": "postgres_image",
              "redis": "redis_image"}
FIELDS = frozenset(IMAGE_KEYS.values())
# The images --release TAG names: the Syntho ones (postgres and redis keep their own tags).
SYNTHO_KEYS = ("ray", "core", "backend", "frontend")
FILE_KEYS = ("release", "images")
# Versioned together on the app VM: a new backend against an old core is never left running.
APP_VERSIONED = ("core", "core_worker", "backend", "worker", "frontend")
# The services whose images migrate the database's schema when they start.
MIGRATING = ("core", "backend")


@dataclass(frozen=True)
class ReleaseFile:
    name: str
    images: dict[str, str]  # the settings field -> the pinned reference


def repository(ref: str) -> str:
    """The reference without its tag or digest: "host:5000/syntho-ray:1" ->
    "host:5000/syntho-ray"."""
    base = ref.split("@", 1)[0]
    last = base.rsplit("/", 1)[-1]
    return base[: len(base) - len(last.split(":", 1)[1]) - 1] if ":" in last else base


def pinned(ref: str) -> bool:
    """Whether a reference names a tag or a digest (not just a repository)."""
    return "@" in ref or ":" in ref.rsplit("/", 1)[-1]


def with_tag(ref: str, tag: str) -> str:
    return f"{repository(ref)}:{tag}"


def tag_of(ref: str) -> str:
    """The tag, or the digest's first 12 hex digits, or "latest" for a bare repository."""
    if "@" in ref:
        return ref.split("@", 1)[1].split(":")[-1][:12]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def read_file(path: Path) -> ReleaseFile:
    """A release file, checked: known keys only, every reference pinned."""
    where = f"--release-file {path}"
    try:
        data: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"{where}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise UsageError(f"{where} is not valid YAML{line}: fix it (README, \"Upgrades and "
                         "rollback\", shows the format)") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), dict):
        raise UsageError(f"{where}: expected a mapping with an `images:` mapping (ray, core, "
                         "backend, frontend, postgres, redis); see README, \"Upgrades and "
                         "rollback\"")
    unknown = [str(k) for k in data if k not in FILE_KEYS]
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(FILE_KEYS)})")
    images: dict[str, str] = {}
    for key, ref in data["images"].items():
        if key not in IMAGE_KEYS:
            raise UsageError(f"{where}: unknown image {key!r} (known: "
                             f"{', '.join(IMAGE_KEYS)})")
        if not isinstance(ref, str) or not ref.strip() or any(c.isspace() for c in ref):
            raise UsageError(f"{where}: images.{key} must be one image reference")
        if not pinned(ref):
            raise UsageError(f"{where}: images.{key} ({ref}) names no tag or digest: pin it "
                             f"({ref}:TAG or {ref}@sha256:...)")
        images[IMAGE_KEYS[key]] = ref
    name = data.get("release")
    if name is not None and (not isinstance(name, (str, int, float)) or not str(name).strip()):
        raise UsageError(f"{where}: release must be a name (text)")
    return ReleaseFile(str(name).strip() if name is not None else path.stem, images)


def apply(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The settings' values with --release or --release-file turned into image references.
    `values` holds what was given; `defaults` each image field's default."""
    release, path = values.get("release"), values.get("release_file")
    if release is not None and path is not None:
        raise UsageError("--release and --release-file both name the release: give one")
    out = dict(values)
    if release is not None:
        for key in SYNTHO_KEYS:
            field = IMAGE_KEYS[key]
            if field in defaults:
                out[field] = with_tag(str(values.get(field, defaults[field])), str(release))
    elif path is not None:
        found = read_file(Path(path))
        for field, ref in found.images.items():
            if field not in defaults:
                continue  # another role's image: one file serves every VM
            if field in values:
                raise UsageError(f"--{field.replace('_', '-')} and --release-file {path} both "
                                 "name that image: give one")
            out[field] = ref
        out["release"] = found.name
    return out
