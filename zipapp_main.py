"""The zipapp's __main__.py: build.py puts this file in place of shiv's own two-line one.

It runs before shiv extracts anything and before any dependency is imported, so that:
- a CPU, C library or Python this file cannot serve gets one line and exit code 3, not a
  traceback from a compiled module that fails to load;
- a user other than root gets an extraction root of its own (shiv's default, ~/.shiv, breaks
  with HOME unset, a read-only HOME, or a uid without a passwd entry). Root uses the root baked
  in by build.py (/var/cache/syntho-agent); SHIV_ROOT, when set, wins for everyone.
Then it makes sure the extracted site-packages hold bytecode for the Python that runs (shiv
compiles only for the one that extracted them: after an OS upgrade changes python3, or with two
Pythons on a host that sets PYTHONDONTWRITEBYTECODE, every start would compile every module),
and hands over to shiv's bootstrap, which extracts once and calls agent.cli:main.

Kept parseable by any Python (no f-strings, no annotations: type comments instead), so an old
interpreter gets the one-line message too, not a SyntaxError.
"""

import os
import platform
import stat
import sys

# build.py sets these three for each target (see PYTHONS and ARCHES there).
MACHINE = "x86_64"
OLDEST = (3, 9, 2)
NEWEST = (3, 13)

EXIT_ENVIRONMENT = 3  # agent/errors.py: the machine is not one the agent can work on
ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
GLIBC = (2, 17)  # manylinux2014


def refuse(reason):
    # type: (str) -> None
    """Leave with one line, in the CLI's format."""
    sys.stderr.write("syntho-agent: error: " + reason + "\n")
    sys.exit(EXIT_ENVIRONMENT)


def dotted(version):
    # type: (tuple[int, ...]) -> str
    return ".".join(str(part) for part in version)


def check_machine():
    # type: () -> None
    """The compiled modules inside are for one CPU, 64-bit Linux, glibc >= 2.17."""
    machine = platform.machine().lower()
    machine = ALIASES.get(machine, machine)
    if not sys.platform.startswith("linux"):
        refuse("this file runs on Linux; this is " + platform.system())
    if machine != MACHINE or sys.maxsize <= 2**32:
        bits = "64-bit" if sys.maxsize > 2**32 else "32-bit"
        refuse("this file is for " + MACHINE + " CPUs; this is " + machine + " (" + bits
               + " Python): use syntho-agent-" + machine)
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
        found = tuple(int(part) for part in libc.split()[-1].split(".")[:2])
    except (AttributeError, ValueError, OSError, IndexError):
        found = ()
    if found < GLIBC:
        refuse("this file needs glibc " + dotted(GLIBC) + " or newer; this system has "
               + (dotted(found) if found else "another C library (musl?)"))


def check_python():
    # type: () -> None
    """Compiled modules are inside for CPython OLDEST..NEWEST only."""
    here = tuple(sys.version_info[:3])
    name = platform.python_implementation()
    if name != "CPython" or here < OLDEST or here[:2] > NEWEST:
        refuse("this file needs CPython " + dotted(OLDEST) + " to " + dotted(NEWEST) + "; this is "
               + name + " " + dotted(here) + " (" + (sys.executable or "python") + ")")


def private_root():
    # type: () -> str
    """An extraction root that only this user can write: ~/.cache when usable, else one in the
    temp dir named by uid, refused if someone else made it first (they could plant code)."""
    uid = os.geteuid()
    home = os.environ.get("HOME")
    cache = os.environ.get("XDG_CACHE_HOME") or (os.path.join(home, ".cache") if home else "")
    if cache and os.path.isabs(cache):
        path = os.path.join(cache, "syntho-agent")
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            if os.access(path, os.W_OK | os.X_OK) and os.stat(path).st_uid == uid:
                return path
        except OSError:
            pass
    path = os.path.join(os.environ.get("TMPDIR") or "/tmp", "syntho-agent-" + str(uid))
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        refuse("cannot make " + path + " (" + str(exc.strerror or exc) + "); set SHIV_ROOT to a "
               "directory you can write")
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o022:
        refuse(path + " is not a directory of uid " + str(uid) + " alone; remove it or set "
               "SHIV_ROOT to a directory you own")
    return path


def ensure_bytecode():
    # type: () -> None
    """Bytecode for this interpreter (its cache tag, cpython-312) in the extraction, made once.

    shiv extracts and compiles (--compile-pyc) only when the folder is missing, so a second
    Python finds bytecode for the first one alone. Here, before any dependency is imported:
    extract if needed, then compileall for this interpreter unless the marker says it was done
    (py_compile writes even under PYTHONDONTWRITEBYTECODE; each .pyc is written atomically, the
    marker last, all under shiv's own extraction lock). Once done it costs ~2 ms (the zip's
    index read once more, two stat calls). A root this user cannot write is left alone: a
    slower start beats none."""
    import compileall
    import py_compile

    import _bootstrap  # shiv's, beside this file in the zipapp
    from _bootstrap.environment import Environment
    from _bootstrap.filelock import FileLock

    tag = sys.implementation.cache_tag
    with _bootstrap.current_zipfile() as archive:
        if archive is None or not tag:
            return
        env = Environment.from_json(archive.read("environment.json").decode())
        if env.force_extract or not env.compile_pyc:
            return  # shiv's bootstrap extracts (and compiles for this Python) anew, or never
        target = _bootstrap.cache_path(archive, env.root, env.build_id)
        site = target / "site-packages"
        marker = target / (".bytecode-" + tag)
        # the marker: every module compiled once; the sample: nobody wiped them since
        sample = site / "agent" / "__pycache__" / ("__init__." + tag + ".pyc")
        if marker.exists() and sample.exists():
            return
        try:
            fresh = not site.exists()
            if fresh:  # shiv's extraction, which compiles for this Python
                _bootstrap.extract_site_packages(archive, target, True, env.compile_workers)
            if not os.access(str(site), os.W_OK):
                return
            with FileLock(str(target.parent / ("." + target.name + "_lock"))):
                if marker.exists() and sample.exists():
                    return  # another start did it while this one waited
                if not (fresh and sample.exists()):
                    compileall.compile_dir(
                        str(site), quiet=2, workers=env.compile_workers,
                        invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
                part = target / (".bytecode-" + tag + ".part")
                part.write_text("")
                os.replace(str(part), str(marker))
        except OSError:
            return


def main():
    # type: () -> None
    check_python()
    check_machine()
    if not os.environ.get("SHIV_ROOT"):
        os.environ.pop("SHIV_ROOT", None)  # set but empty: shiv would fall back to ~/.shiv
        if os.geteuid() != 0:
            os.environ["SHIV_ROOT"] = private_root()
    ensure_bytecode()
    import _bootstrap  # shiv's, beside this file in the zipapp

    _bootstrap.bootstrap()


if __name__ == "__main__":
    main()
