"""The aarch64 zipapp, run for real: an arm64 Python from Debian's arm64 packages, under
qemu-user (qemu-aarch64-static -L ROOT: no binfmt, no arm64 machine needed).

ROOT is Debian's python3 for arm64 with what it depends on, unpacked (debootstrap downloads
the packages; dpkg-deb unpacks them, nothing runs): built once per recipe, cached under
dist/.arm64-python/<hash>.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import __version__
from agent import spec as s
from tests.images import build as image_build
from tests.support.constants import REPO
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

QEMU = "qemu-aarch64-static"
RECIPE = {"suite": "bookworm", "arch": "arm64", "variant": "minbase", "include": "python3"}
CACHE = REPO / "dist" / ".arm64-python"
# The compiled modules inside the zipapp, for this CPU and this Python, load and work.
COMPILED = """
import sys, yaml, _cffi_backend, charset_normalizer.md as md
from cryptography.hazmat.bindings import _rust
from cryptography.hazmat.primitives.asymmetric import ed25519
key = ed25519.Ed25519PrivateKey.generate()
key.public_key().verify(key.sign(b"x"), b"x")
assert yaml.__with_libyaml__, "libyaml did not load"
print(md.__file__, _cffi_backend.__file__, _rust.__file__)
"""


def make_root(into: Path) -> None:
    """Debian's python3 for arm64 and its dependencies, unpacked into `into`."""
    with tempfile.TemporaryDirectory(dir=into.parent) as tmp:
        downloads = Path(tmp, "debootstrap")
        subprocess.run(["debootstrap", "--download-only", f"--arch={RECIPE['arch']}",
                        f"--variant={RECIPE['variant']}", f"--include={RECIPE['include']}",
                        RECIPE["suite"], str(downloads), image_build._debian_mirror()],
                       check=True, capture_output=True, timeout=900)
        root = Path(tmp, "root")
        for deb in sorted((downloads / "var/cache/apt/archives").glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True,
                           capture_output=True)
        try:
            root.rename(into)
        except OSError:  # another run made it meanwhile
            if not (into / "usr/bin/python3").exists():
                raise


def arm64_root() -> Path:
    """The cached root of this recipe (and of make_root's code), made when missing."""
    key = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()
                         + inspect.getsource(make_root).encode()).hexdigest()[:12]
    root = CACHE / key
    if not (root / "usr/bin/python3").exists():
        for tool in ("debootstrap", "dpkg-deb"):
            if not shutil.which(tool):
                pytest.fail(f"{tool} is needed to make an arm64 root (.ci/run installs it)",
                            pytrace=False)
        CACHE.mkdir(parents=True, exist_ok=True)
        make_root(root)
    return root


@dataclass(frozen=True)
class Arm64:
    root: Path
    zipapp: Path
    shiv_root: Path

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """The zipapp under the arm64 Python, in this environment (DOCKER_HOST and all) less
        what would steer the zipapp or the interpreter."""
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("SHIV_", "SYNTHO_AGENT_", "PYTHONPATH", "PYTHONHOME"))}
        return subprocess.run(
            [QEMU, "-L", str(self.root), str(self.root / "usr/bin/python3"), str(self.zipapp),
             *args], env={**clean, "SHIV_ROOT": str(self.shiv_root), **env},
            capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def arm64(tmp_path_factory: pytest.TempPathFactory) -> Arm64:
    if not shutil.which(QEMU):
        pytest.fail(f"{QEMU} is needed: apt-get install qemu-user-static (.ci/run does)",
                    pytrace=False)
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "build.py", "--dist", str(dist)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"build.py failed:\n{done.stdout}\n{done.stderr}"
    return Arm64(arm64_root(), dist / "syntho-agent-aarch64", tmp_path_factory.mktemp("shiv"))


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_version_says_aarch64(arm64: Arm64) -> None:
    out = ok(arm64.run("version"))  # the first run: extracts and compiles, under emulation
    assert re.fullmatch(rf"syntho-agent {re.escape(__version__)} \(commit \S+, built for "
                        r"manylinux2014_aarch64\) on Python 3\.\d+\.\d+, Linux aarch64\n",
                        out), out


def test_help(arm64: Arm64) -> None:
    assert "Usage: syntho-agent" in ok(arm64.run("--help"))


def test_the_compiled_modules_for_aarch64_load(arm64: Arm64) -> None:
    md, cffi, rust = ok(arm64.run("-c", COMPILED, SHIV_INTERPRETER="1")).split()
    assert md.endswith("-aarch64-linux-gnu.so") and cffi.endswith("-aarch64-linux-gnu.so"), (
        md, cffi)
    assert rust.endswith(".so") and "/site-packages/cryptography/" in rust, rust


def test_status_talks_to_the_engine(arm64: Arm64, sandbox: Sandbox,
                                    images: dict[str, str]) -> None:
    """The arm64 Python reaches the host's engine socket through qemu-user."""
    instance = sandbox.instance("arm")
    labels = {s.LABEL_MANAGED: "true", s.LABEL_INSTANCE: instance, s.LABEL_ROLE: "app",
              s.LABEL_SERVICE: "redis"}
    box = sandbox.run(images["busybox"], "arm64-status", labels=labels,
                      command=["sleep", "600"])
    out = ok(arm64.run("status", "--instance", instance, "--data-dir", str(sandbox.tmp / "d")))
    assert re.search(rf"^app\s+{re.escape(box.name)}\s+running\s", out, re.MULTILINE), out
