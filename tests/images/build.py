"""Build the test images locally, with no registry: Debian's packages and PyPI only.

One base image is made from a debootstrap root file system with Python, PostgreSQL, Redis
and Ray from PyPI (slow: a few minutes); every other image is a small `docker build` on top
of it. Each image is tagged by a hash of its recipe, so an unchanged recipe is never rebuilt.

    python tests/images/build.py          # build what is missing, print the references
    python tests/images/build.py --list   # print the references only, build nothing
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import docker

HERE = Path(__file__).resolve().parent
REPO = "syntho-test"
RAY_VERSION = "2.60.0"
SUITE = "bookworm"
PACKAGES = [
    "python3",
    "python3-pip",
    "python-is-python3",
    "python3-psycopg2",
    "python3-redis",
    "postgresql",
    "redis-server",
    "curl",
    "procps",
    "iproute2",
    "ca-certificates",
    # For the simulated VMs (Docker-in-Docker): an engine of their own.
    "docker.io",
    "containerd",
    "runc",
    "iptables",
    "openssh-server",
]
# Images built on the base, each from the folder of the same name (a Dockerfile with ARG BASE).
DERIVED = ["ray", "postgres", "redis", "core", "backend", "frontend", "vm", "proxy", "pebble"]
# The stand-in program, copied into the build context of the images that run it.
SHARED_FILES = [HERE / "standin" / "standin.py"]
USES_STANDIN = {"core", "backend", "frontend"}


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:12]


def base_tag() -> str:
    recipe = json.dumps({"suite": SUITE, "packages": PACKAGES, "ray": RAY_VERSION, "v": 2})
    return f"{REPO}/base:{_digest(recipe.encode(), _function_source(_build_base))}"


def _function_source(fn: Callable[..., object]) -> bytes:
    import inspect

    return inspect.getsource(fn).encode()


def _context_files(name: str) -> list[Path]:
    folder = HERE / name
    own = sorted(p for p in folder.rglob("*") if p.is_file())
    return own + (SHARED_FILES if name in USES_STANDIN else [])


def derived_tag(name: str) -> str:
    parts = [base_tag().encode()]
    for path in _context_files(name):
        parts += [path.name.encode(), path.read_bytes()]
    return f"{REPO}/{name}:{_digest(*parts)}"


def busybox_tag() -> str:
    return f"{REPO}/busybox:{_digest(_function_source(_build_busybox))}"


def image_refs() -> dict[str, str]:
    """The reference of every test image, by short name (what the tests use)."""
    refs = {name: derived_tag(name) for name in DERIVED}
    refs["base"] = base_tag()
    refs["busybox"] = busybox_tag()
    return refs


def _debian_mirror() -> str:
    """The Debian mirror this machine's apt already uses (so no host is named here)."""
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    for path in candidates:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            line = line.strip()
            m = re.match(r"URIs:\s*(\S+)", line) or re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)", line)
            if m and "security" not in m.group(1):
                return m.group(1)
    raise SystemExit("no Debian mirror found in this machine's apt sources; cannot debootstrap")


def _host_ca_bundle() -> str:
    for candidate in [os.environ.get("PIP_CERT", ""), os.environ.get("SSL_CERT_FILE", ""),
                      "/etc/ssl/certs/ca-certificates.crt"]:
        if candidate and Path(candidate).is_file():
            return candidate
    raise SystemExit("no CA bundle found on this machine (set SSL_CERT_FILE)")


def _run(cmd: list[str], **kw: Any) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def _build_base(client: docker.DockerClient, tag: str) -> None:
    if not shutil.which("debootstrap"):
        raise SystemExit("debootstrap is missing: apt-get install -y debootstrap")
    work = Path(tempfile.mkdtemp(prefix="syntho-base-"))
    root = work / "rootfs"
    try:
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
              SUITE, str(root), _debian_mirror()], stdout=subprocess.DEVNULL)
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        # This machine's CA bundle, so pip trusts what this machine trusts; removed afterwards.
        shutil.copy(_host_ca_bundle(), root / "tmp/host-ca.crt")
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root",
               "PIP_BREAK_SYSTEM_PACKAGES": "1", "PIP_NO_CACHE_DIR": "1",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1", "LANG": "C.UTF-8",
               "PIP_CERT": "/tmp/host-ca.crt"}
        _run(["chroot", str(root), "python3", "-m", "pip", "install", "-q",
              f"ray[default]=={RAY_VERSION}"], env=env)
        for junk in ["var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man",
                     "usr/share/locale", "root/.cache"]:
            shutil.rmtree(root / junk, ignore_errors=True)
        (root / "tmp/host-ca.crt").unlink()
        (root / "etc/resolv.conf").write_text("")
        _import_rootfs(root, tag, ["ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                                   "ENV LANG=C.UTF-8"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _import_rootfs(root: Path, tag: str, changes: list[str]) -> None:
    cmd = ["docker", "import"]
    for change in changes:
        cmd += ["--change", change]
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    _run([*cmd, "-", tag], stdin=tar.stdout, stdout=subprocess.DEVNULL)
    if tar.wait() != 0:
        raise SystemExit(f"tar of {root} failed")


def _build_busybox(client: docker.DockerClient, tag: str) -> None:
    busybox = shutil.which("busybox")
    if not busybox:
        raise SystemExit("busybox is missing: apt-get install -y busybox-static")
    work = Path(tempfile.mkdtemp(prefix="syntho-busybox-"))
    try:
        (work / "bin").mkdir()
        (work / "tmp").mkdir()
        shutil.copy(busybox, work / "bin/busybox")
        applets = subprocess.run([busybox, "--list"], check=True, capture_output=True,
                                 text=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (work / "bin" / applet).symlink_to("busybox")
        _import_rootfs(work, tag, ["ENV PATH=/bin", 'CMD ["sh"]'])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_derived(client: docker.DockerClient, name: str, tag: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in _context_files(name):
            arcname = path.name if path in SHARED_FILES else str(path.relative_to(HERE / name))
            tar.add(str(path), arcname=arcname)
    buf.seek(0)
    print(f"+ docker build {tag}", flush=True)
    client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True, forcerm=True,
                        buildargs={"BASE": base_tag()}, labels={"syntho-test.recipe": tag})


def _remove_stale(client: docker.DockerClient, tag: str) -> None:
    """Drop older builds of the same image (other recipe hashes), keeping the disk small."""
    repo = tag.rsplit(":", 1)[0]
    # The low-level list (no inspect of each image), and a removal that may find the image
    # gone: another test process (the shards run at once) may be removing the same ones.
    for image in client.api.images(name=repo):
        tags = image.get("RepoTags") or []
        if tag not in tags:
            for old in tags:
                try:
                    client.images.remove(old, noprune=False)
                except docker.errors.ImageNotFound:
                    pass


def _exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def _build_derived_as(name: str, client: docker.DockerClient, tag: str) -> None:
    _build_derived(client, name, tag)


def build_all(client: docker.DockerClient) -> dict[str, str]:
    refs = image_refs()
    steps: list[tuple[str, Callable[[docker.DockerClient, str], None]]] = [
        ("base", _build_base), ("busybox", _build_busybox)]
    steps += [(name, functools.partial(_build_derived_as, name)) for name in DERIVED]
    for name, builder in steps:
        if not _exists(client, refs[name]):
            start = time.monotonic()
            builder(client, refs[name])
            print(f"built {refs[name]} in {time.monotonic() - start:.0f}s", flush=True)
            _remove_stale(client, refs[name])
    return refs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the references, build nothing")
    args = parser.parse_args(argv)
    if args.list:
        print(json.dumps(image_refs(), indent=2))
        return 0
    if os.geteuid() != 0:
        print("building the base image needs root (debootstrap, chroot)", file=sys.stderr)
    refs = build_all(docker.from_env(timeout=600))
    print(json.dumps(refs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
