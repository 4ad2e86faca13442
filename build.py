"""Build the single-file executables: shiv zipapps for CPython 3.9-3.13 on any glibc >= 2.17.

    .venv/bin/python build.py             # or `make build`
    .venv/bin/python build.py --dist DIR  # elsewhere (the tests build twice and compare)

Writes dist/syntho-agent-x86_64, dist/syntho-agent-aarch64, dist/syntho-agent (a copy of the one
for this machine) and dist/SHA256SUMS (their checksums, for `sha256sum -c`). How one file serves
five Pythons: pip downloads manylinux2014 wheels for each target Python, pinned to the versions that
resolve for the oldest one (abi3 where a project offers it, per-version compiled wheels otherwise),
and they are unpacked into one site-packages where the compiled modules of each Python sit side by
side (_yaml.cpython-39-x86_64-linux-gnu.so).
See docs/zipapp.md.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent
ARCHES = ("x86_64", "aarch64")
# Oldest first: its resolution pins the others. 3.9.2: cryptography excludes 3.9.0 and 3.9.1.
PYTHONS = ("3.9.2", "3.10", "3.11", "3.12", "3.13")
ROOT = "/var/cache/syntho-agent"  # root's extraction root; zipapp_main.py picks other users'
SHEBANG = "/usr/bin/env python3"
ENTRY_POINT = "agent.cli:main"
RECIPE = 1  # part of the wheel cache's key: bump it when fetch_wheels changes
ZIP_EPOCH = 315554400  # shiv's default timestamp (1980), when there is no git history
ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def git(*args: str) -> str | None:
    """A git query's output, or None outside a git checkout (a source tarball still builds)."""
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def commit_id() -> str:
    """HEAD's commit, with -dirty when anything is uncommitted: the file then holds code that no
    commit has, and `syntho-agent version` should say so."""
    head = git("rev-parse", "HEAD")
    if head is None:
        return "unknown"
    return head + ("-dirty" if git("status", "--porcelain") else "")


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH if set (the reproducible-builds convention), else HEAD's commit time: the
    zip's timestamps then say when the code was committed and never move between rebuilds."""
    given = os.environ.get("SOURCE_DATE_EPOCH")
    stamp = given or git("log", "-1", "--format=%ct")
    return int(stamp) if stamp else ZIP_EPOCH


def wheel_cache(base: Path) -> Path:
    """base/<hash> of everything that decides which wheels are fetched, so an unchanged
    requirements.txt and target list never download again."""
    key = json.dumps({"requirements": (REPO / "requirements.txt").read_text(), "arches": ARCHES,
                      "pythons": PYTHONS, "recipe": RECIPE}, sort_keys=True)
    return base / hashlib.sha256(key.encode()).hexdigest()[:16]


def pip_download(into: Path, arch: str, python: str, what: list[str]) -> None:
    """Wheels only (no sdist can be built for another CPU), for one target CPU and CPython."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(into),
                    "--only-binary=:all:", "--platform", f"manylinux2014_{arch}",
                    "--implementation", "cp", "--python-version", python, *what], check=True)


def projects(folder: Path) -> dict[str, str]:
    """{project: version} of the wheels in folder, from their file names (name-version-tags)."""
    found = {}
    for wheel in folder.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        found[name] = version
    return found


def fetch_wheels(cache: Path) -> None:
    """cache/<arch>/<python>/*.whl for every target. The oldest Python resolves requirements.txt;
    the others get exactly those versions (--no-deps), or a newer urllib3 that dropped 3.9 would
    end up in the one site-packages that every Python shares. A folder per Python, because each
    needs its own compiled wheels (cffi, pyyaml, charset-normalizer) beside the common ones."""
    if (cache / "complete").exists():
        return
    shutil.rmtree(cache, ignore_errors=True)
    first = cache / ARCHES[0] / PYTHONS[0]
    pip_download(first, ARCHES[0], PYTHONS[0], ["-r", str(REPO / "requirements.txt")])
    pins = projects(first)
    pinned = sorted(f"{name}=={version}" for name, version in pins.items())
    for arch in ARCHES:
        for python in PYTHONS:
            folder = cache / arch / python
            if folder != first:
                pip_download(folder, arch, python, ["--no-deps", *pinned])
            if projects(folder) != pins:
                sys.exit(f"build.py: {folder} has {projects(folder)}, not {pins}")
    (cache / "pins.txt").write_text("\n".join(pinned) + "\n")
    (cache / "complete").write_text("")


def unpack_wheels(folders: list[Path], site: Path) -> None:
    """Unzip every wheel into site, oldest Python first, in sorted order. A wheel is a zip of its
    installed files; unzipping (not `pip install --target`, which replaces a package's folder and
    so drops the other Pythons' compiled modules) keeps each Python's .so files side by side. The
    files two wheels share are identical, but for the dist-info's WHEEL and RECORD (newest wins)."""
    for folder in folders:
        for wheel in sorted(folder.glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                if any(name.split("/")[0].endswith(".data") for name in archive.namelist()):
                    sys.exit(f"build.py: {wheel.name} has a .data folder; teach unpack_wheels it")
                archive.extractall(site)


def set_constants(text: str, **values: object) -> str:
    """Rewrite `NAME = ...` lines (buildinfo.py, zipapp_main.py); each must be there exactly once,
    so a renamed constant fails the build instead of shipping the default."""
    lines = text.splitlines(keepends=True)
    for name, value in values.items():
        hits = [i for i, line in enumerate(lines) if line.startswith(f"{name} = ")]
        if len(hits) != 1:
            sys.exit(f"build.py: expected one line '{name} = ...', found {len(hits)}")
        lines[hits[0]] = f"{name} = {value!r}\n"
    return "".join(lines)


def stage_agent(site: Path, commit: str, built_for: str) -> None:
    """Copy the agent package (without bytecode) and write the build's facts into the copy's
    buildinfo.py; the checked-in one keeps saying "source"."""
    shutil.copytree(REPO / "agent", site / "agent",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    info = site / "agent" / "buildinfo.py"
    info.write_text(set_constants(info.read_text(), COMMIT=commit, BUILT_FOR=built_for))


def normalise_modes(site: Path) -> None:
    """shiv records each file's mode; make it independent of the builder's umask and checkout."""
    for path in site.rglob("*"):
        executable = path.is_dir() or path.stat().st_mode & 0o111
        path.chmod(0o755 if executable else 0o644)


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def with_guard(zipapp: bytes, main_py: bytes) -> bytes:
    """shiv writes its own __main__.py (import _bootstrap; _bootstrap.bootstrap()); put
    zipapp_main.py in its place, which checks the machine before shiv extracts or imports
    anything. Entries keep their name, timestamp and mode, and go in name order (shiv adds its
    _bootstrap files in directory-listing order, which differs between machines). shiv stored
    them uncompressed, so that they are compressed once, here."""
    out = io.BytesIO()
    out.write(zipapp[: zipapp.index(b"\n") + 1])  # the shebang line
    with zipfile.ZipFile(io.BytesIO(zipapp)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in sorted(src.infolist(), key=lambda info: info.filename):
            entry = zipfile.ZipInfo(info.filename, info.date_time)
            entry.external_attr = info.external_attr
            entry.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(entry, main_py if info.filename == "__main__.py" else src.read(info))
    return out.getvalue()


def build_one(arch: str, wheels: Path, commit: str, epoch: int) -> bytes:
    """One zipapp for one CPU, as bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp, "site-packages")
        unpack_wheels([wheels / arch / python for python in PYTHONS], site)
        stage_agent(site, commit, f"manylinux2014_{arch}")
        normalise_modes(site)
        raw = Path(tmp, "shiv.pyz")
        subprocess.run([sys.executable, "-m", "shiv", "--site-packages", str(site),
                        "--entry-point", ENTRY_POINT, "--output-file", str(raw),
                        "--python", SHEBANG, "--root", ROOT, "--reproducible", "--uncompressed",
                        # Bytecode made once at extraction: with PYTHONDONTWRITEBYTECODE set
                        # (as some hosts do) every start would compile the dependencies anew.
                        "--compile-pyc"],
                       check=True, env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})
        guard = set_constants((REPO / "zipapp_main.py").read_text(), MACHINE=arch,
                              OLDEST=version_tuple(PYTHONS[0]), NEWEST=version_tuple(PYTHONS[-1]))
        return with_guard(raw.read_bytes(), guard.encode())


def write_executable(path: Path, data: bytes) -> None:
    """Write beside, then rename: a running copy or a reader never sees half a file."""
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    part.chmod(0o755)
    part.replace(path)


def write_checksums(dist: Path, names: list[str]) -> None:
    """dist/SHA256SUMS in `sha256sum` format, for the files this build wrote: publish it beside
    them; `sha256sum -c SHA256SUMS` (or the cloud-init examples) checks a download."""
    lines = [f"{hashlib.sha256((dist / name).read_bytes()).hexdigest()}  {name}\n"
             for name in sorted(names)]
    part = dist / "SHA256SUMS.part"
    part.write_text("".join(lines))
    part.replace(dist / "SHA256SUMS")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dist", type=Path, default=REPO / "dist", help="where the files go")
    parser.add_argument("--wheels", type=Path, default=REPO / "dist" / ".wheels",
                        help="the wheel cache (one folder per requirements.txt + targets hash)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    args.wheels.mkdir(parents=True, exist_ok=True)
    with (args.wheels / ".lock").open("w") as lock:
        # Two builds at once in one checkout (the test shards) take turns: the wheel cache is
        # filled by one of them only, and a dist's files are written by one at a time.
        fcntl.flock(lock, fcntl.LOCK_EX)
        build(args.dist, wheel_cache(args.wheels), started)


def build(dist: Path, cache: Path, started: float) -> None:
    fetch_wheels(cache)
    commit, epoch = commit_id(), source_date_epoch()
    dist.mkdir(parents=True, exist_ok=True)
    built = {arch: build_one(arch, cache, commit, epoch) for arch in ARCHES}
    for arch, data in built.items():
        write_executable(dist / f"syntho-agent-{arch}", data)
    machine = platform.machine().lower()
    native = ALIASES.get(machine, machine)
    written = [f"syntho-agent-{arch}" for arch in built]
    if native in built:
        write_executable(dist / "syntho-agent", built[native])
        written.append("syntho-agent")
    write_checksums(dist, written)
    for arch, data in built.items():
        print(f"{dist / f'syntho-agent-{arch}'}: {len(data) / 1e6:.1f} MB")
    print(f"commit {commit}; wheels in {cache}; {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
