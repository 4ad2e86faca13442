"""Getting the images onto the engine, the two ways the vendor's guide names (docs/stack.md):
an offline bundle of `docker save` archives (--images PATH), or a registry (--registry,
--registry-user, and a password from a file, SYNTHO_AGENT_REGISTRY_PASSWORD or stdin, never a
command-line value).

The password is given to the engine for the pull only; it is not written to any file.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

from agent import progress, store
from agent.config import ImageSources
from agent.engine import Engine, EngineError, registry_of
from agent.errors import EnvironmentProblem, UsageError

Say = Callable[[str], None]
PASSWORD_ENV = "SYNTHO_AGENT_REGISTRY_PASSWORD"


def ensure(engine: Engine, settings: ImageSources, wanted: dict[str, str], say: Say,
           pull_policy: str = "missing") -> dict[str, str]:
    """Every wanted image (reference -> who needs it) on the engine; returns their IDs.

    Missing ones come from the bundle first, then the registry (not with --pull never). With
    --pull always, the registry is asked for each reference's digest first and what changed
    there is pulled too. Whatever is still missing is one error that names the image and the
    ways to provide it.
    """
    ids = {ref: engine.image_id(ref) for ref in wanted}
    auth = Auth(engine, settings)
    stale = changed_in_registry(engine, wanted, ids, auth, say) if pull_policy == "always" else []
    if any(i is None for i in ids.values()) and settings.images is not None:
        load_bundle(engine, settings.images, say)
        ids = {ref: i or engine.image_id(ref) for ref, i in ids.items()}
    missing = [ref for ref, i in ids.items() if i is None]
    if pull_policy == "never" and missing:
        raise EnvironmentProblem(
            f"image {missing[0]} (for {wanted[missing[0]]}) is not on this engine and --pull "
            "is never: load it (--images PATH, or `docker load`), or pull it (--pull missing)")
    to_pull = [*stale, *(ref for ref in missing if ref not in stale)]
    if to_pull and (settings.registry or stale):
        started, pulled = time.monotonic(), 0
        for ref in to_pull:
            pulled += pull(engine, ref, auth.get(ref), say)
            ids[ref] = engine.image_id(ref)
        if len(to_pull) > 1:
            say(f"pulled {len(to_pull)} images, {progress.size(pulled)} in "
                f"{time.monotonic() - started:.0f}s")
    missing = [ref for ref, i in ids.items() if i is None]
    if missing:
        ref = missing[0]
        raise EnvironmentProblem(
            f"image {ref} (for {wanted[ref]}) is not on this engine: pass --images PATH (a "
            "`docker save` archive, .tar or .tar.gz), or --registry with --registry-user to "
            "pull it")
    return {ref: i or "" for ref, i in ids.items()}


class Auth:
    """The registry login, made once and only when a pull or a digest needs it."""

    def __init__(self, engine: Engine, settings: ImageSources) -> None:
        self.engine, self.settings = engine, settings
        self._auth: dict[str, str] | None = None

    def get(self, ref: str) -> dict[str, str] | None:
        if not self.settings.registry or registry_of(ref) != self.settings.registry:
            return None  # another registry's image (Docker Hub's postgres): no login of ours
        if self._auth is None:
            self._auth = registry_auth(self.engine, self.settings)
        return self._auth


def changed_in_registry(engine: Engine, wanted: dict[str, str], ids: dict[str, str | None],
                        auth: Auth, say: Say) -> list[str]:
    """--pull always: the references whose registry digest is not the image this engine has.
    Every registry is asked before anything is pulled, so an unreachable one changes nothing.
    A reference by digest names one image forever: it is not asked about once here."""
    stale = []
    for ref in wanted:
        if "@" in ref and ids[ref] is not None:
            continue
        try:
            digest = engine.registry_digest(ref, auth.get(ref))
        except EngineError as exc:
            text = exc.explanation
            if _not_found(text):
                raise UsageError(f"the registry has no image {ref} (for {wanted[ref]}): check "
                                 "the release's tag (--release) or the reference") from None
            where = registry_of(ref) or "Docker Hub"
            raise EnvironmentProblem(f"--pull always: cannot ask {where} for {ref}: "
                                     f"{text[:200]}; check that the registry answers, or run "
                                     "with --pull missing") from None
        if ids[ref] is None or not any(d.endswith("@" + digest)
                                       for d in engine.repo_digests(ref)):
            stale.append(ref)
    say(f"--pull always: {len(stale)} of {len(wanted)} image(s) changed in the registry"
        + (f" ({', '.join(stale)})" if stale else ""))
    return stale


def _not_found(text: str) -> bool:
    lowered = text.lower()
    return "manifest unknown" in lowered or "not found" in lowered


def bundle_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.name.endswith((".tar", ".tar.gz", ".tgz")))
    else:
        files = [path]
    if not files or not all(f.is_file() for f in files):
        raise UsageError(f"--images {path}: no .tar or .tar.gz archive there "
                         "(make one with `docker save IMAGE... | gzip > images.tar.gz`)")
    return files


def load_bundle(engine: Engine, path: Path, say: Say) -> None:
    for archive in bundle_files(path):
        load_archive(engine, archive, say)


def load_archive(engine: Engine, archive: Path, say: Say) -> None:
    """Load one archive, showing the bytes sent so far as it streams to the engine."""
    started = time.monotonic()
    say(f"loading images from {archive}")
    meter = progress.Meter(say, live_output())
    try:
        with archive.open("rb") as stream:  # the engine unpacks gzip itself
            total = os.fstat(stream.fileno()).st_size
            tags = engine.load_images(stream, total, lambda sent: meter.show(
                progress.load_line(archive.name, sent, total)))
    except (OSError, EOFError, EngineError) as exc:
        raise EnvironmentProblem(f"cannot load images from {archive}: {exc}; check that it "
                                 "is a `docker save` archive") from None
    finally:
        meter.close()
    say(f"loaded {', '.join(tags) or 'no tagged image'} in "
        f"{time.monotonic() - started:.0f}s ({progress.size(total)})")


def registry_password(settings: ImageSources) -> str:
    if settings.registry_password_file is not None:
        value = store.read_secret(settings.registry_password_file)
        if value is None:
            raise UsageError(f"{settings.registry_password_file} does not exist")
        return value
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV].strip()
    if settings.registry_password_stdin:
        value = sys.stdin.readline().strip()
        if value:
            return value
    raise UsageError(
        f"--registry {settings.registry} needs a password: --registry-password-file FILE, "
        f"{PASSWORD_ENV}, or --registry-password-stdin")


def registry_auth(engine: Engine, settings: ImageSources) -> dict[str, str]:
    """Log in once (checks the password now, with a clear error) and return the pull auth."""
    if not settings.registry_user:
        raise UsageError(f"--registry {settings.registry} needs --registry-user")
    auth = {"username": settings.registry_user, "password": registry_password(settings)}
    assert settings.registry
    try:
        engine.login(settings.registry, auth["username"], auth["password"])
    except EngineError as exc:
        text = exc.explanation
        if "unauthorized" in text.lower() or "401" in text:
            raise UsageError(f"the registry {settings.registry} refused the login of "
                             f"{settings.registry_user}: check the password") from None
        raise EnvironmentProblem(f"cannot log in to the registry {settings.registry}: "
                                 f"{text}") from None
    return auth


def pull(engine: Engine, ref: str, auth: dict[str, str] | None, say: Say) -> int:
    """Pull with progress in bytes (progress.Meter: a live line on a terminal, a line every
    few seconds in logs); the bytes downloaded."""
    started = time.monotonic()
    say(f"pulling {ref}")
    state, meter = progress.Pull(), progress.Meter(say, live_output())
    try:
        for event in engine.pull(ref, auth):
            if "error" in event:
                if _not_found(str(event["error"])):
                    raise UsageError(f"the registry has no image {ref}: check the release's "
                                     "tag (--release) or the reference")
                raise EnvironmentProblem(f"cannot pull {ref}: {event['error']}")
            state.feed(event)
            if state.total:
                meter.show(state.line(ref))
    except EngineError as exc:
        if _not_found(exc.explanation):
            raise UsageError(f"the registry has no image {ref}: check the release's tag "
                             "(--release) or the reference") from None
        raise EnvironmentProblem(f"cannot pull {ref}: {exc.explanation}") from None
    finally:
        meter.close()
    say(f"pulled {ref} in {time.monotonic() - started:.0f}s: {state.summary()}")
    return state.total


def live_output() -> TextIO | None:
    """Standard output when it is a terminal (progress rewritten in place there)."""
    return sys.stdout if sys.stdout.isatty() else None
