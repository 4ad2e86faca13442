"""Releases of the test images in a registry, for the tests of releases, upgrades and rollback.

A release is the four Syntho images (ray, core-api, backend, frontend) built as a small layer
on the test images that names it: the stand-ins answer their health with "version": <tag>
(STANDIN_VERSION), and can be made a broken release (STANDIN_BROKEN: their health answers 503
while they run on); the Ray image can claim another Ray version (ray.__version__). Each is
pushed to a registry under `{registry}/syntho-<name>:<tag>`, with postgres and redis beside
them as `{registry}/postgres:test` and `{registry}/redis:test`.

Everything goes through the SDK (builds and pushes), nothing through the docker CLI.
"""

from __future__ import annotations

import io
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

import docker
import docker.errors
import docker.utils

# The short names of a release's images (the `images` fixture's keys) and their repositories.
SYNTHO_REPOS = {"ray": "syntho-ray", "core": "syntho-core-api", "backend": "syntho-backend",
                "frontend": "syntho-frontend"}
# The stand-in roles a release can break (STANDIN_BROKEN).
BREAKABLE = frozenset({"core", "backend", "frontend"})
RELEASE_LABEL = "org.syntho.test.release"
# The login of the registry the release tests share (ReleaseRegistry).
USER, PASSWORD = "syntho", "registry-pass-release-1"
AUTH = {"username": USER, "password": PASSWORD}

# Run in the Ray image (argv[1]: the version to claim). ray.__version__ is the `version` of
# ray/_version.py (ray/__init__.py imports it from there); `ray --version` (click) reads the
# Version of ray-*.dist-info/METADATA: both are rewritten. Found without importing Ray.
_SET_RAY_VERSION = "\n".join([
    "import importlib.util, pathlib, re, sys",
    "def sub(path, pattern, line):",
    "    text, n = re.subn(pattern, line, path.read_text(), count=1, flags=re.M)",
    "    if n != 1: sys.exit(f'no line {pattern} in {path}')",
    "    path.write_text(text)",
    "ray = pathlib.Path(importlib.util.find_spec('ray').origin).parent",
    "sub(ray / '_version.py', r'^version = .*$', 'version = %r' % sys.argv[1])",
    "[pyc.unlink() for pyc in ray.glob('__pycache__/_version.*.pyc')]",
    "meta = list(ray.parent.glob('ray-*.dist-info/METADATA'))",
    "if len(meta) != 1: sys.exit(f'not one ray-*.dist-info: {meta}')",
    "sub(meta[0], r'^Version: .*$', 'Version: ' + sys.argv[1])",
])


class PushFailed(RuntimeError):
    """The registry refused a push (its message is the exception's)."""


def _split(ref: str) -> tuple[str, str]:
    repo, tag = docker.utils.parse_repository_tag(ref)
    if not tag or "@" in ref:
        raise ValueError(f"{ref!r} is not repository:tag")
    return repo, tag


def push(client: docker.DockerClient, ref: str, auth: dict[str, str]) -> None:
    """Push a local repository:tag with auth (username/password); PushFailed with the
    registry's message when an event of the push's stream reports an error."""
    repo, tag = _split(ref)
    events: Iterable[dict[str, Any]] = client.images.push(repo, tag, auth_config=auth,
                                                          stream=True, decode=True)
    for event in events:
        if "error" in event or "errorDetail" in event:
            message = event.get("error") or (event.get("errorDetail") or {}).get("message")
            raise PushFailed(f"push of {ref} failed: {message}")


def retag_and_push(client: docker.DockerClient, source_ref: str, target_ref: str,
                   auth: dict[str, str]) -> None:
    """Tag the local image source_ref as target_ref (moving the tag if it names another image,
    e.g. `latest`) and push it."""
    repo, tag = _split(target_ref)
    if not client.images.get(source_ref).tag(repo, tag):
        raise RuntimeError(f"the engine did not tag {source_ref} as {target_ref}")
    push(client, target_ref, auth)


def remove_local(client: docker.DockerClient, refs: Iterable[str]) -> None:
    """Remove these tags from the engine (the registry keeps them); an image with no other tag
    goes with its tag. A tag already gone is no error; one a container uses is."""
    for ref in refs:
        try:
            client.images.remove(ref)
        except docker.errors.ImageNotFound:
            pass


def _dockerfile(base: str, env: dict[str, str], label: str, run: list[str] | None) -> bytes:
    lines = [f"FROM {base}"]
    lines += [f"ENV {key}={json.dumps(value)}" for key, value in env.items()]
    lines.append(f"LABEL {RELEASE_LABEL}={json.dumps(label)}")
    if run:
        lines.append(f"RUN {json.dumps(run)}")
    return ("\n".join(lines) + "\n").encode()


def _build(client: docker.DockerClient, dockerfile: bytes, tag: str) -> None:
    client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True, forcerm=True,
                        pull=False)


def make_release(client: docker.DockerClient, images: dict[str, str], registry: str, tag: str,
                 auth: dict[str, str], *, broken: frozenset[str] = frozenset(),
                 ray_version: str | None = None) -> dict[str, str]:
    """Build release `tag` on the test images (`images`: the fixture's), push it to `registry`
    (host:port) with auth (username/password), and return its references by short name:
    ray, core, backend, frontend (this release's builds) and postgres, redis (the test images
    as they are, under the tag `test`).

    broken: the stand-in roles (core, backend, frontend) whose health answers 503 in this
    release. ray_version: what ray.__version__ (and `ray --version`) says in its Ray image
    (default: the real one).
    The images stay on the engine too (remove_local drops them).
    """
    if not broken <= BREAKABLE:
        raise ValueError(f"broken names {sorted(broken - BREAKABLE)}: only {sorted(BREAKABLE)}")
    if ray_version is not None and not re.fullmatch(r"[0-9A-Za-z.+-]+", ray_version):
        raise ValueError(f"not a version: {ray_version!r}")
    refs: dict[str, str] = {}
    for name, repo in SYNTHO_REPOS.items():
        ref = f"{registry}/{repo}:{tag}"
        run = None
        if name == "ray":
            env = {"SYNTHO_TEST_RELEASE": tag}
            if ray_version is not None:
                run = ["python3", "-c", _SET_RAY_VERSION, ray_version]
        else:
            env = {"STANDIN_VERSION": tag}
            if broken:
                env["STANDIN_BROKEN"] = ",".join(sorted(broken))
        _build(client, _dockerfile(images[name], env, tag, run), ref)
        push(client, ref, auth)
        refs[name] = ref
    for name in ("postgres", "redis"):
        refs[name] = f"{registry}/{name}:test"
        retag_and_push(client, images[name], refs[name], auth)
    return refs


def build_local(client: docker.DockerClient, image: str, tag: str) -> str:
    """A stand-in image of release `tag` on this engine only (no registry): its reference."""
    repo = image.split(":", 1)[0] + "-release"
    ref = f"{repo}:{tag}"
    _build(client, _dockerfile(image, {"STANDIN_VERSION": tag}, tag, None), ref)
    return ref


def health_version(url: str) -> str:
    """The "version" of a stand-in's health answer at url, whatever its status (a 503's body
    is read too)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
    return str(body["version"])


class ReleaseRegistry:
    """One registry for every release test of a run (the `release_registry` fixture): each
    release built and pushed once, the first time a module asks for it, and kept (on the
    engine too, as make_release leaves it) until the run ends."""

    def __init__(self, client: docker.DockerClient, images: dict[str, str],
                 registry: str) -> None:
        self.client, self.images, self.registry = client, images, registry
        self._made: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}

    def release(self, tag: str, **options: Any) -> dict[str, str]:
        """make_release(tag, **options), or the references of its earlier build; a tag asked
        again with other options is the caller's mistake."""
        if tag in self._made:
            made_with, refs = self._made[tag]
            if made_with != options:
                raise ValueError(f"release {tag} was built with {made_with}, not {options}")
            return refs
        refs = make_release(self.client, self.images, self.registry, tag, AUTH, **options)
        self._made[tag] = (options, refs)
        return refs

    def refs(self) -> list[str]:
        """Every reference it put on the engine."""
        return sorted({ref for _, refs in self._made.values() for ref in refs.values()})
