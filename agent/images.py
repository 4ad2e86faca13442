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


def ensure(engine: Engine, settings: ImageSources, wanted: dict[str, str],
           say: Say) -> dict[str, str]:
    """Every wanted image (reference -> who needs it) on the engine; returns their IDs.

    Missing ones come from the bundle first, then the registry. Whatever is still missing is
    one error that names the image and the ways to provide it.
    """
    ids = {ref: engine.image_id(ref) for ref in wanted}
    if any(i is None for i in ids.values()) and settings.images is not None:
        load_bundle(engine, settings.images, say)
        ids = {ref: i or engine.image_id(ref) for ref, i in ids.items()}
    if any(i is None for i in ids.values()) and settings.registry:
        auth = registry_auth(engine, settings)
        started, pulled = time.monotonic(), 0
        missing = [ref for ref, i in ids.items() if i is None]
        for ref in missing:
            ours = registry_of(ref) == settings.registry
            pulled += pull(engine, ref, auth if ours else None, say)
            ids[ref] = engine.image_id(ref)
        if len(missing) > 1:
            say(f"pulled {len(missing)} images, {progress.size(pulled)} in "
                f"{time.monotonic() - started:.0f}s")
    missing = [ref for ref, i in ids.items() if i is None]
    if missing:
        ref = missing[0]
        raise EnvironmentProblem(
            f"image {ref} (for {wanted[ref]}) is not on this engine: pass --images PATH (a "
            "`docker save` archive, .tar or .tar.gz), or --registry with --registry-user to "
            "pull it")
    return {ref: i or "" for ref, i in ids.items()}


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
                raise EnvironmentProblem(f"cannot pull {ref}: {event['error']}")
            state.feed(event)
            if state.total:
                meter.show(state.line(ref))
    except EngineError as exc:
        raise EnvironmentProblem(f"cannot pull {ref}: {exc.explanation}") from None
    finally:
        meter.close()
    say(f"pulled {ref} in {time.monotonic() - started:.0f}s: {state.summary()}")
    return state.total


def live_output() -> TextIO | None:
    """Standard output when it is a terminal (progress rewritten in place there)."""
    return sys.stdout if sys.stdout.isatty() else None
