"""The single-file executables from build.py, run the ways VMs run them.

Built once for the module. No Docker engine needed: `version` and `--help` never touch it.
Every Python under /root/.pyenv/versions is used: 3.9-3.13 must work, older ones must be
refused in one line; fewer than two supported ones is a failure, not a skip, and in CI (the
environment variable CI set, as CI runners set it) so is any of 3.9-3.13 missing or not run. The
run's summary names the Pythons the zipapp ran on.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import __version__, validate
from tests.support import summary
from tests.support.constants import REPO

pytestmark = pytest.mark.integration

LIMIT = 15_000_000  # bytes
PYENV = Path("/root/.pyenv/versions")
SUPPORTED_MINORS = ("3.9", "3.10", "3.11", "3.12", "3.13")
SUPPORTED = sorted((p for minor in SUPPORTED_MINORS
                    for p in PYENV.glob(f"{minor}.*/bin/python")), key=str)
TOO_OLD = sorted((p for minor in ("2.7", "3.6", "3.7", "3.8")
                  for p in PYENV.glob(f"{minor}.*/bin/python")), key=str)
MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine(), platform.machine())
ARCHES = ("x86_64", "aarch64")
OTHER = next(arch for arch in ARCHES if arch != MACHINE)
ROOT_OF_ROOT = Path("/var/cache/syntho-agent")  # build.py's --root
NOBODY = 54321  # a uid with no passwd entry
SYSTEM_PYTHON = Path("/usr/bin/python3")  # one that uid can run (/root is 0700)
COMPILED = """
import sys, yaml, _cffi_backend, charset_normalizer.md as md
from cryptography.hazmat.primitives.asymmetric import ed25519
ed25519.Ed25519PrivateKey.generate()
assert yaml.__with_libyaml__, "libyaml did not load"
print(sys.version_info[0], sys.version_info[1], md.__file__, _cffi_backend.__file__)
"""


@dataclass(frozen=True)
class Build:
    dist: Path
    commit: str  # what the build should have written into buildinfo.py

    def file(self, arch: str | None = None) -> Path:
        return self.dist / (f"syntho-agent-{arch}" if arch else "syntho-agent")

    def build_id(self) -> str:
        with zipfile.ZipFile(self.file()) as archive:
            return str(json.loads(archive.read("environment.json"))["build_id"])


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


def build(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "build.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"build.py failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def built() -> Build:
    build()
    head = git("rev-parse", "HEAD")
    return Build(REPO / "dist", head + ("-dirty" if git("status", "--porcelain") else ""))


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would steer the zipapp or the interpreter."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHIV_", "SYNTHO_AGENT_", "PYTHONPATH", "PYTHONHOME"))}
    env.update(extra)
    return env


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], env=clean_env() if env is None else env,
                          capture_output=True, text=True, timeout=300)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def refused(done: subprocess.CompletedProcess[str]) -> str:
    """A refusal: exit 3, nothing on stdout, exactly one line on stderr."""
    assert done.returncode == 3, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("syntho-agent: error: ")
    return lines[0]


def as_nobody(*cmd: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd,
               env=env)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A world-readable folder (pytest's are 0700) holding a copy of the zipapp and a TMPDIR
    that, like /tmp, anyone may write to."""
    folder = Path(tempfile.mkdtemp(prefix="zipapp-test-"))
    try:
        folder.chmod(0o755)
        shutil.copy2(REPO / "dist" / "syntho-agent", folder / "syntho-agent")
        (folder / "tmp").mkdir()
        (folder / "tmp").chmod(0o1777)
        yield folder
    finally:
        shutil.rmtree(folder)


# --- the build ------------------------------------------------------------------------------


def test_files_are_there_and_small(built: Build) -> None:
    for arch in ARCHES:
        size = built.file(arch).stat().st_size
        assert 1_000_000 < size < LIMIT, f"{built.file(arch)}: {size} bytes"
        assert os.access(built.file(arch), os.X_OK)
    assert built.file().read_bytes() == built.file(MACHINE).read_bytes()


def test_a_rebuild_is_byte_identical_and_downloads_nothing(built: Build, tmp_path: Path) -> None:
    markers = sorted((REPO / "dist" / ".wheels").glob("*/complete"))
    assert markers, "no complete wheel cache after the first build"
    stamps = [m.stat().st_mtime_ns for m in markers]
    build("--dist", str(tmp_path))
    with zipfile.ZipFile(built.file()) as archive:
        names = archive.namelist()
    assert names == sorted(names), "entries not in name order: the order would vary by machine"
    for name in ("syntho-agent", *(f"syntho-agent-{arch}" for arch in ARCHES), "SHA256SUMS"):
        assert (tmp_path / name).read_bytes() == (built.dist / name).read_bytes(), name
    assert [m.stat().st_mtime_ns for m in markers] == stamps, "the wheel cache was refetched"


def test_sha256sums_lists_every_file_and_sha256sum_checks_them(built: Build) -> None:
    names = sorted(["syntho-agent", *(f"syntho-agent-{arch}" for arch in ARCHES)])
    lines = (built.dist / "SHA256SUMS").read_text().splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == names
    for line in lines:
        digest, name = line.split("  ", 1)
        assert digest == hashlib.sha256((built.dist / name).read_bytes()).hexdigest(), name
    done = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=built.dist,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [f"{name}: OK" for name in names]


def test_build_facts_are_in_the_files_not_in_the_checkout(built: Build) -> None:
    for arch in ARCHES:
        with zipfile.ZipFile(built.file(arch)) as archive:
            info = archive.read("site-packages/agent/buildinfo.py").decode()
            assert not [n for n in archive.namelist() if "__pycache__" in n or n.endswith(".pyc")]
        assert f"COMMIT = {built.commit!r}" in info
        assert f"BUILT_FOR = 'manylinux2014_{arch}'" in info
    assert 'COMMIT = "source"' in (REPO / "agent" / "buildinfo.py").read_text()


def test_compiled_modules_need_no_glibc_newer_than_2_17(built: Build) -> None:
    for arch in ARCHES:
        with zipfile.ZipFile(built.file(arch)) as archive:
            shared_objects = [n for n in archive.namelist() if re.search(r"\.so(\.|$)", n)]
            assert len(shared_objects) >= 5 * 3 + 1  # cffi, yaml, charset-normalizer x 5; rust
            for name in shared_objects:
                needed = {(int(a), int(b)) for a, b in
                          re.findall(rb"GLIBC_(\d+)\.(\d+)", archive.read(name))}
                assert max(needed, default=(2, 0)) <= (2, 17), f"{arch} {name}: {max(needed)}"


# --- every supported Python -----------------------------------------------------------------


RAN: dict[Path, str] = {}  # the Pythons the zipapp ran on (the test below passed): version


def in_ci() -> bool:
    """Whether this runs in CI (CI runners set CI=true): every supported Python must run."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def minor_of(version: str) -> str:
    return ".".join(version.split(".")[:2])


def test_there_are_pythons_to_try() -> None:
    minors = {minor_of(p.parent.parent.name) for p in SUPPORTED}
    assert len(minors) >= 2, f"need two or more of CPython 3.9-3.13 under {PYENV}, found {minors}"
    if in_ci():
        missing = [m for m in SUPPORTED_MINORS if m not in minors]
        assert not missing, (f"CI is set: every supported Python must run, and there is no "
                             f"CPython {', '.join(missing)} under {PYENV}")


@pytest.mark.parametrize("python", SUPPORTED, ids=lambda p: p.parent.parent.name)
def test_runs_on_every_supported_python(built: Build, python: Path) -> None:
    version = ok(run(python, "-c", "import platform; print(platform.python_version())")).strip()
    out = ok(run(python, built.file(), "version"))
    assert out.startswith(f"syntho-agent {__version__} (commit {built.commit}, built for "
                          f"manylinux2014_{MACHINE}) on Python {version}, Linux {MACHINE}"), out
    assert "Usage: syntho-agent" in ok(run(python, built.file(), "--help"))
    # The compiled modules of this very Python load (not a pure-Python fallback).
    major, minor, md, cffi = ok(run(python, built.file(), "-c", COMPILED,
                                    env=clean_env(SHIV_INTERPRETER="1"))).split()
    tag = f"cpython-{major}{minor}-{MACHINE}-linux-gnu.so"
    assert md.endswith(tag) and cffi.endswith(tag), (md, cffi)
    RAN[python] = version
    summary.note("tests/integration/test_zipapp.py",
                 "the zipapp ran on Python " + ", ".join(sorted(RAN.values(), key=version_key)))


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def test_every_supported_python_ran(request: pytest.FixtureRequest) -> None:
    """After the test above: every Python it was asked to run on, it ran on; in CI, that is
    every supported one (3.9-3.13), whatever -k chose."""
    asked = [Path(str(item.callspec.params["python"])) for item in request.session.items
             if isinstance(item, pytest.Function)
             and item.originalname == "test_runs_on_every_supported_python"]
    not_run = [p.parent.parent.name for p in asked if p not in RAN]
    assert not not_run, f"the zipapp did not run (or failed) on Python {not_run}"
    if in_ci():
        ran = {minor_of(v) for v in RAN.values()}
        missing = [m for m in SUPPORTED_MINORS if m not in ran]
        assert not missing, ("CI is set: the zipapp must run on every supported Python, and "
                             f"it did not run on {', '.join(missing)}")


# --- the ways cloud-init and systemd run it -------------------------------------------------


def test_works_with_home_unset(built: Build) -> None:
    env = clean_env()
    env.pop("HOME", None)
    out = ok(run(sys.executable, built.file(), "version", env=env))
    assert f"syntho-agent {__version__} (commit {built.commit}, built for" in out
    # root extracts to the root baked in by build.py
    assert (ROOT_OF_ROOT / f"syntho-agent_{built.build_id()}" / "site-packages" / "agent").is_dir()


def test_works_with_a_read_only_home(built: Build, shared: Path) -> None:
    home = shared / "home"
    home.mkdir(mode=0o555)
    home.chmod(0o555)
    ok(run(sys.executable, built.file(), "version", env=clean_env(HOME=str(home))))
    # a user other than root cannot write there at all: it falls back to a folder of its own
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(shared / "tmp")}
    ok(as_nobody(SYSTEM_PYTHON, shared / "syntho-agent", "version", env=env))
    assert list(home.iterdir()) == []
    assert (shared / "tmp" / f"syntho-agent-{NOBODY}").is_dir()


def test_works_as_a_uid_without_passwd_entry(built: Build, shared: Path) -> None:
    with pytest.raises(KeyError):
        pwd.getpwuid(NOBODY)
    assert SYSTEM_PYTHON.exists(), f"{SYSTEM_PYTHON} is needed to run as uid {NOBODY}"
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(shared / "tmp")}  # no HOME, like systemd
    # run through the shebang line (/usr/bin/env python3), as a unit file would
    out = ok(as_nobody(shared / "syntho-agent", "version", env=env))
    assert f"(commit {built.commit}, built for" in out
    ok(as_nobody(shared / "syntho-agent", "--help", env=env))
    root = shared / "tmp" / f"syntho-agent-{NOBODY}"
    assert root.stat().st_uid == NOBODY and root.stat().st_mode & 0o777 == 0o700
    assert (root / f"syntho-agent_{built.build_id()}" / "site-packages").is_dir()


def test_a_user_with_a_home_extracts_under_its_cache(built: Build, shared: Path) -> None:
    home = shared / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(shared / "tmp")}
    ok(as_nobody(SYSTEM_PYTHON, shared / "syntho-agent", "version", env=env))
    assert (home / ".cache" / "syntho-agent" / f"syntho-agent_{built.build_id()}").is_dir()
    assert list((shared / "tmp").iterdir()) == []


def test_refuses_an_extraction_root_someone_else_made(built: Build, shared: Path) -> None:
    planted = shared / "tmp" / f"syntho-agent-{NOBODY}"
    planted.mkdir(mode=0o755)  # owned by root: it could hold code that uid would run
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(shared / "tmp")}
    line = refused(as_nobody(SYSTEM_PYTHON, shared / "syntho-agent", "version", env=env))
    assert str(planted) in line and "SHIV_ROOT" in line


def test_honours_shiv_root(built: Build, tmp_path: Path) -> None:
    ok(run(sys.executable, built.file(), "version", env=clean_env(SHIV_ROOT=str(tmp_path))))
    assert (tmp_path / f"syntho-agent_{built.build_id()}" / "site-packages" / "agent").is_dir()


def test_bytecode_is_made_at_extraction_even_where_python_writes_none(
        built: Build, tmp_path: Path) -> None:
    """shiv --compile-pyc: with PYTHONDONTWRITEBYTECODE set, a module that `version` never
    imports still has its bytecode, so no start compiles the dependencies again."""
    env = clean_env(SHIV_ROOT=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")
    ok(run(sys.executable, built.file(), "version", env=env))
    site = tmp_path / f"syntho-agent_{built.build_id()}" / "site-packages"
    tag = sys.implementation.cache_tag
    assert (site / "click" / "__pycache__" / f"testing.{tag}.pyc").is_file()
    assert (site / "agent" / "__pycache__" / f"launcher.{tag}.pyc").is_file()


def test_a_second_python_gets_its_own_bytecode_once(built: Build, tmp_path: Path) -> None:
    """Extracted (and compiled) by one Python, then run by another with PYTHONDONTWRITEBYTECODE
    (an OS upgrade that changes python3): the zipapp compiles every module for the second one
    at its first start, never again, and no start compiles a module from source after that."""
    first, second = SUPPORTED[0], SUPPORTED[-1]
    tags = [ok(run(p, "-c", "import sys; print(sys.implementation.cache_tag)")).strip()
            for p in (first, second)]
    assert tags[0] != tags[1], f"{first} and {second} share a cache tag"
    env = clean_env(SHIV_ROOT=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")
    ok(run(first, built.file(), "version", env=env))
    site = tmp_path / f"syntho-agent_{built.build_id()}" / "site-packages"
    count = len(list(site.rglob(f"*.{tags[0]}.pyc")))
    assert count > 300 and not list(site.rglob(f"*.{tags[1]}.pyc"))

    def start() -> tuple[dict[Path, int], str]:
        """One start of the second Python; its bytecode files (mtimes) and -v's import log."""
        done = run(second, "-v", built.file(), "version", env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return {p: p.stat().st_mtime_ns for p in site.rglob(f"*.{tags[1]}.pyc")}, done.stderr

    def compiled_from_source(log: str) -> list[str]:
        return [line for line in log.splitlines()
                if line.startswith(f"# code object from {site}") and line.endswith(".py")]

    made, _ = start()
    assert len(made) == count, "not every module was compiled for the second Python"
    assert (site / "click" / "__pycache__" / f"testing.{tags[1]}.pyc") in made  # never imported
    again, log = start()
    assert again == made, "the second start compiled again"
    assert not compiled_from_source(log)
    assert f"{site}/agent/__pycache__/cli.{tags[1]}.pyc matches" in log

    # Bytecode wiped (a clean-up of __pycache__): made again, once.
    for path in made:
        path.unlink()
    wiped, _ = start()
    assert sorted(wiped) == sorted(made)
    assert start()[0] == wiped


def test_token_prints_a_new_token_alone(built: Build, tmp_path: Path) -> None:
    """`syntho-agent token`: stdout is the token (for a secrets manager), as the head makes it."""
    env = clean_env(SHIV_ROOT=str(tmp_path))
    tokens = []
    for _ in range(2):
        done = run(sys.executable, built.file(), "token", env=env)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert re.fullmatch(r"[0-9a-f]{64}\n", done.stdout), done.stdout
        tokens.append(validate.token(done.stdout))
    assert tokens[0] != tokens[1]


# --- refusals: one line, before anything is extracted or imported -------------------------


def test_refuses_the_wrong_cpu(built: Build, tmp_path: Path) -> None:
    env = clean_env(SHIV_ROOT=str(tmp_path / "root"))
    line = refused(run(sys.executable, built.file(OTHER), "version", env=env))
    assert f"for {OTHER} CPUs" in line and f"this is {MACHINE}" in line
    assert not (tmp_path / "root").exists()


def test_there_are_old_pythons_to_try() -> None:
    assert TOO_OLD, f"need a CPython 3.8, 3.7 (or older) under {PYENV} to test the refusal"


@pytest.mark.parametrize("python", TOO_OLD, ids=lambda p: p.parent.parent.name)
def test_refuses_an_old_python(built: Build, python: Path, tmp_path: Path) -> None:
    env = clean_env(SHIV_ROOT=str(tmp_path / "root"))
    line = refused(run(python, built.file(), "version", env=env))
    assert f"CPython {python.parent.parent.name} ({python})" in line, line
    assert "3.9.2 to 3.13" in line
    assert not (tmp_path / "root").exists()
