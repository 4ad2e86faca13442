"""Self-heal at boot: a systemd unit that runs the same role with --watch at every boot.

`syntho-agent install ROLE [options]` writes a unit that reads the operator's config file at
every start (`ROLE --config that-file --watch`): the --config given to install (or the default
config file it read), or else the role's own file (/etc/syntho-agent/ROLE.yaml, 0600: it may
hold the license key), written from the options given only when it is absent. Installing again
keeps it as it is and lists what differs from the options given. For
the app it also adds scheduled backups: a timer that runs `syntho-agent backup --config
backup.yaml` (its own file, kept the same way). `uninstall` removes the units and those files and
leaves the data dir, the containers, the volumes and the backups alone; `down` stops a running
unit first (stop_watchers), as it would otherwise re-create what `down` removes.

Every value written into a unit is escaped for systemd's own parser (systemd.syntax(7),
systemd.service(5) "Command lines"), which is not a shell's: see command_line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from agent import __version__, buildinfo, store
from agent.config import ALL_OPTIONS, Common
from agent.errors import EXIT_USAGE, EnvironmentProblem, UsageError
from agent.sources import read_config_file
from agent.validate import printable

Say = Callable[[str], None]
ROLES = ("head", "worker", "app")


BACKUP = "syntho-agent-backup"  # its .service and .timer
CONFIGS = Path("/etc/syntho-agent")
BACKUP_CONFIG = CONFIGS / "backup.yaml"
AGENT_RECORD = CONFIGS / "agent.json"  # which agent install put where the units run it
UNITS = Path("/etc/systemd/system")
BACKUP_KEEP = 5  # the newest 5 kept unless --keep says otherwise


def unit_name(role: str) -> str:
    return f"syntho-agent-{role}.service"


def config_file(role: str) -> Path:
    return CONFIGS / f"{role}.yaml"


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def unit_config(role: str, root: Path, read: Path | None) -> Path:
    """The file the unit reads: the operator's own (the --config given to install, or the
    default config file it read), so that later edits of it apply; ROLE.yaml, written from
    the options given, when there is none (or it lies outside --root, as for an image)."""
    if read is not None:
        try:
            return Path("/") / read.absolute().relative_to(root.absolute())
        except ValueError:
            pass
    return config_file(role)


# ---- systemd's quoting -------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./$-]+")  # a word systemd takes as it is
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _quoted(text: str) -> str:
    """One word as systemd unquotes it: as it is when plain, else in double quotes with C-style
    escapes for the backslash, the quote and control characters."""
    if _PLAIN.fullmatch(text):
        return text
    inner = text.replace("\\", "\\\\").replace('"', '\\"')
    inner = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", inner)
    return f'"{inner}"'


def command_line(argv: list[str]) -> str:
    """ExecStart's value for argv. systemd expands %-specifiers in every word (`%%` is a `%`)
    and $VARIABLES in the arguments (`$$` is a `$`) but not in the program's path; a path
    holding `$` is therefore given twice: as the path (`@` prefix) and as argv[0]."""
    program, *args = argv
    if _CONTROL.search(program) or any(c in program for c in "\"'\\"):
        raise EnvironmentProblem(f"systemd cannot run {printable(program)}: its path holds a "
                                 "quote, a backslash or a control character; run syntho-agent "
                                 "from another path")

    def word(text: str, dollars: bool = True) -> str:
        text = text.replace("%", "%%")
        return _quoted(text.replace("$", "$$") if dollars else text)

    head = [word(program)] if "$" not in program else [word("@" + program, dollars=False),
                                                        word(program)]
    return " ".join([*head, *(word(a) for a in args)])


def environment_line(name: str, value: str) -> str:
    """Environment=NAME=value: systemd expands %-specifiers there (not $) and refuses control
    characters."""
    if _CONTROL.search(value):
        raise EnvironmentProblem(f"systemd cannot pass {name}={printable(value)} (a control "
                                 "character): run syntho-agent from another path")
    return "Environment=" + _quoted(f"{name}={value}".replace("%", "%%"))


def _environment(executable: list[str]) -> str:
    if executable[1:2] != ["-m"]:
        return ""
    # Run from a checkout: Python must find the package.
    return environment_line("PYTHONPATH", str(Path(__file__).resolve().parent.parent)) + "\n"


# ---- the units ---------------------------------------------------------------------------------

def backup_schedule(root: Path = Path("/")) -> int | None:
    """Seconds between scheduled backups, as the timer `install app` wrote says; None
    without one (backups by hand, or none)."""
    try:
        text = _under(root, UNITS / f"{BACKUP}.timer").read_text()
    except OSError:
        return None
    found = re.search(r"^OnUnitActiveSec=(\d+)s$", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def backup_units(every: int, executable: list[str]) -> dict[str, str]:
    """The backup service (one run) and its timer, by file name."""
    command = command_line([*executable, "backup", "--config", str(BACKUP_CONFIG)])
    return {
        f"{BACKUP}.service": f"""[Unit]
Description=syntho-agent backup: both databases, the secrets and app.env, in one archive
After=docker.service {unit_name("app")}
Requires=docker.service

[Service]
Type=oneshot
{_environment(executable)}ExecStart={command}
""",
        f"{BACKUP}.timer": f"""[Unit]
Description=syntho-agent backup every {every}s

[Timer]
OnBootSec=15min
OnUnitActiveSec={every}s
RandomizedDelaySec=5min

[Install]
WantedBy=timers.target
""",
    }


def exec_start(role: str, config: Path, executable: list[str]) -> str:
    return command_line([*executable, role, "--config", str(config), "--watch"])


def unit_text(role: str, config: Path, executable: list[str]) -> str:
    """The unit: after the engine, restarted on failure. (The zipapp carries its own
    extraction root, so the missing HOME of a unit does not matter.)

    `systemctl stop` sends SIGTERM: a watching agent then exits 0; one stopped in the middle of
    its first converge exits 143 (agent.cli), which SuccessExitStatus counts as a clean stop.
    Exit 2 is bad input (a config-file key or value): restarting cannot fix it, so the unit
    stays failed with the one-line reason in its journal until the file is edited.
    """
    return f"""[Unit]
Description=syntho-agent {role}: converge and heal the Syntho {role} on this VM
Wants=network-online.target
After=network-online.target docker.service
Requires=docker.service

[Service]
Type=simple
{_environment(executable)}ExecStart={exec_start(role, config, executable)}
Restart=always
RestartSec=5
RestartPreventExitStatus={EXIT_USAGE}
SuccessExitStatus=143

[Install]
WantedBy=multi-user.target
"""


def this_executable(root: Path) -> list[str]:
    """How the unit runs the agent: the zipapp, copied to /usr/local/bin, or this Python."""
    argv0 = Path(sys.argv[0]).resolve()
    if argv0.is_file() and zipfile.is_zipfile(argv0):
        target = root / "usr/local/bin/syntho-agent"
        if argv0 != target:
            store.ensure_dir(target.parent, mode=0o755)
            store.copy_atomic(argv0, target, mode=0o755)
        return ["/" + str(target.relative_to(root))]
    return [sys.executable, "-m", "agent"]


def record_agent(root: Path, executable: list[str]) -> dict[str, Any]:
    """Which agent the units run (its version, commit and the SHA-256 of its file; no file
    when they run a Python module), kept in AGENT_RECORD for status and upgrades."""
    path = executable[0] if len(executable) == 1 else None
    digest = None
    if path is not None:
        sha = hashlib.sha256()
        with _under(root, Path(path)).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha.update(chunk)
        digest = sha.hexdigest()
    record = {"version": __version__, "commit": buildinfo.COMMIT,
              "path": path or " ".join(executable), "sha256": digest,
              "installed": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    store.ensure_dir(_under(root, CONFIGS), mode=0o755)
    store.write_atomic(_under(root, AGENT_RECORD), json.dumps(record, indent=2) + "\n",
                       mode=0o644)
    return record


def installed_agent(root: Path = Path("/")) -> dict[str, Any] | None:
    """AGENT_RECORD as install wrote it; None without one (or one that is not a record)."""
    try:
        found = json.loads(_under(root, AGENT_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and "version" in found else None


# ---- the config files: written once, then the operator's ---------------------------------------

def yaml_value(value: Any) -> Any:
    """An option's parsed value as the config file writes it (and reads it back)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return f"{value[0]}:{value[1]}"  # ADDRESS:PORT
    if isinstance(value, tuple):
        return list(value)
    return value


def _config_text(header: str, values: dict[str, Any]) -> str:
    keyed = {ALL_OPTIONS[k].name: v for k, v in values.items()}  # shm-size, as the README writes
    return header + yaml.safe_dump(keyed, sort_keys=True)


_UNREADABLE = object()  # a value in the file that its option's parser refuses


def _held(path: Path) -> dict[str, tuple[Any, Any]] | None:
    """The file's values (key -> (parsed as yaml_value, as written)); None when absent. One
    the agent cannot read as a config file is refused before anything is written."""
    if not path.exists():
        return None
    try:
        raw = read_config_file(path)
    except click.BadParameter as exc:
        raise UsageError(f"{exc.message}; install keeps that file as it is and the unit reads "
                         "it: fix it or remove it, then run install again") from None
    held: dict[str, tuple[Any, Any]] = {}
    for key, (text, _line, _raw_key) in raw.items():
        option = ALL_OPTIONS.get(key)
        if option is None or text is None:
            continue
        try:
            if option.flag:
                value: Any = click.BOOL.convert(text, None, None)
            elif option.opt.multiple:
                parse = option.opt.parse or str
                value = tuple(parse(t) for t in (text if isinstance(text, list) else [text]))
            else:
                value = (option.opt.parse or str)(text)
            held[key] = (yaml_value(value), text)
        except (ValueError, TypeError, click.BadParameter):
            held[key] = (_UNREADABLE, text)
    return held


def _differences(held: dict[str, tuple[Any, Any]], values: dict[str, Any]) -> list[str]:
    """One line per value given that the file does not hold; secrets never shown."""
    lines = []
    for key, value in sorted(values.items()):
        if key in held and held[key][0] == value:
            continue
        option = ALL_OPTIONS[key]
        if option.opt.secret:
            where = "not in the file" if key not in held else "the file has another value"
            lines.append(f"  {option.name}: given ({where}; secret, not shown)")
            continue
        where = "not in the file" if key not in held else f"the file has {_shown(held[key][1])}"
        lines.append(f"  {option.name}: {printable(_shown(value))} ({printable(where)})")
    return lines


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _kept(path: Path, then: str, held: dict[str, tuple[Any, Any]], values: dict[str, Any],
          say: Say, other: str = "") -> None:
    lines = _differences(held, values)
    if not lines:
        say(f"kept {path} as it is (the unit reads it{other}; it holds every value given)")
        return
    say(f"kept {path} as it is (the unit reads it{other}); {len(lines)} value(s) given differ "
        f"from it, so edit it to apply them, {then}:")
    for line in lines:
        say(line)


def install(role: str, values: dict[str, Any], root: Path, enable: bool, say: Say,
            backups: tuple[int, dict[str, Any]] | None = None,
            read: Path | None = None) -> None:
    """values: the options given (yaml_value). backups: (every seconds, backup.yaml's values
    given) for the app's scheduled backups. read: the config file those values came from, if
    any (when it is not the role's own, the operator hears that the unit does not read it)."""
    config = unit_config(role, root, read)
    other = ""
    if read is not None and read.absolute() != _under(root, config).absolute():
        other = f", not {printable(read)}"
    unit = UNITS / unit_name(role)
    for folder in _under(root, CONFIGS), _under(root, UNITS):
        store.ensure_dir(folder, mode=0o755)
        store.check_writable(folder)  # both, before writing either
    every, backup_values = backups or (0, {})
    # Every refusal before the first write: the files kept, then the unit's command line.
    held = _held(_under(root, config))
    backup_held = _held(_under(root, BACKUP_CONFIG)) if every > 0 else None
    executable = this_executable(root)  # the zipapp's copy is the largest write
    text = unit_text(role, config, executable)
    timers = backup_units(every, executable) if every > 0 else {}
    if held is None:
        store.write_atomic(_under(root, config), _config_text(
            "# Written once by `syntho-agent install`, read by the unit at every start: edit, "
            f"then `systemctl restart {unit_name(role)}`.\n", values), mode=0o600)
        source = f" from {printable(read)} and the options given" if other else ""
        say(f"wrote {config}{source} (the unit reads it{other}: edit it, then `systemctl "
            f"restart {unit_name(role)}`)")
    else:
        _kept(config, f"then `systemctl restart {unit_name(role)}`", held, values, say, other)
    store.write_atomic(_under(root, unit), text, mode=0o644)
    say(f"wrote {unit}")
    record = record_agent(root, executable)
    if record["sha256"]:
        say(f"recorded in {AGENT_RECORD}: syntho-agent {record['version']} at {record['path']} "
            f"(sha256 {record['sha256'][:16]}...)")
    starts = [unit_name(role)]
    if timers:
        keep = backup_values.get("keep", BACKUP_KEEP)
        if backup_held is None:
            store.write_atomic(_under(root, BACKUP_CONFIG), _config_text(
                "# Written once by `syntho-agent install app`: the scheduled backups.\n",
                {"keep": BACKUP_KEEP, **backup_values}), mode=0o600)
            say(f"wrote {BACKUP_CONFIG}")
        else:
            _kept(BACKUP_CONFIG, "the next backup reads it", backup_held, backup_values, say)
            keep = backup_held.get("keep", (None, None))[0]
        for name, content in timers.items():
            store.write_atomic(_under(root, UNITS / name), content, mode=0o644)
        kept = (f"the newest {keep} kept" if isinstance(keep, int)
                else f"none deleted (see keep in {BACKUP_CONFIG})")
        say(f"wrote {UNITS / BACKUP}.timer and .service: a backup every {every // 3600}h"
            f"{every % 3600 // 60:02d}m, {kept}")
        starts.append(f"{BACKUP}.timer")
    elif backups is not None and _under(root, UNITS / f"{BACKUP}.timer").exists():
        _unschedule(root, enable, say)  # --backup-every 0 over an earlier schedule
    if enable:
        systemctl("daemon-reload")
        for name in starts:
            systemctl("enable", "--now", name)
        say(f"enabled and started {' and '.join(starts)}: at every boot")
    else:
        say(f"enable with: systemctl daemon-reload && systemctl enable --now {' '.join(starts)}")


def _unschedule(root: Path, enable: bool, say: Say) -> None:
    if enable:
        systemctl("disable", "--now", f"{BACKUP}.timer")
    for kind in ("timer", "service"):
        _remove(root, UNITS / f"{BACKUP}.{kind}")
    say(f"removed {UNITS / BACKUP}.timer and .service (--backup-every 0: no scheduled backups; "
        f"{BACKUP_CONFIG} kept)")


def uninstall(roles: list[str], root: Path, enable: bool, say: Say) -> None:
    removed = False
    for role in roles:
        units = [unit_name(role)] + ([f"{BACKUP}.timer", f"{BACKUP}.service"]
                                     if role == "app" else [])
        files = [UNITS / name for name in units]
        files += [config_file(role)] + ([BACKUP_CONFIG] if role == "app" else [])
        present = [f for f in files if _under(root, f).exists()]
        if not present:
            continue
        if enable:
            for name in units[:2]:  # the service and the timer; the backup's runs from it
                if _under(root, UNITS / name).exists():
                    systemctl("disable", "--now", name)
                    say(f"disabled and stopped {name}")
        for path in present:
            _remove(root, path)
            say(f"removed {path}")
        removed = True
    if not removed:
        say(f"nothing was installed here (no syntho-agent units under {root})")
        return
    if enable:
        systemctl("daemon-reload")
    say("kept the containers, volumes and data dir (`syntho-agent down` removes the containers)")


def _remove(root: Path, path: Path) -> None:
    try:
        _under(root, path).unlink(missing_ok=True)
    except OSError as exc:
        raise store.tag(exc, _under(root, path), "remove") from None


# ---- what the installed units run with (status, logs, down without --config) ---------------

def unit_reads(unit_text: str) -> Path | None:
    """The --config file of a unit's ExecStart (as exec_start wrote it), or None."""
    line = next((t for t in unit_text.splitlines() if t.startswith("ExecStart=")), None)
    if line is None:
        return None
    try:
        words = shlex.split(line[len("ExecStart="):])
    except ValueError:
        return None
    if "--config" not in words[:-1]:
        return None
    given = words[words.index("--config") + 1]
    return Path(given.replace("%%", "%").replace("$$", "$"))


def installed_configs(root: Path) -> list[tuple[str, Path]]:
    """(role, the config file its unit reads, under root) of every role installed here."""
    found = []
    for role in ROLES:
        unit = _under(root, UNITS / unit_name(role))
        try:
            text = unit.read_text()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise store.tag(exc, unit, "read") from None
        found.append((role, _under(root, unit_reads(text) or config_file(role))))
    return found


def installed_values(root: Path, keys: list[str]) -> dict[str, Any]:
    """The values of these keys (data_dir, instance) every installed unit runs with: its
    config file's, or the default; {} when no role is installed. Units that differ are
    refused in one line (which one did the operator mean?)."""
    defaults = {f.name: f.default for f in dataclasses.fields(Common)}
    runs: dict[tuple[tuple[str, Any], ...], list[str]] = {}
    for role, path in installed_configs(root):
        raw = read_config_file(path) if path.exists() else {}  # its errors name the file
        values = {}
        for key in keys:
            text = raw.get(key, (None, 0, ""))[0]
            parse = ALL_OPTIONS[key].opt.parse or str
            try:
                values[key] = defaults[key] if text is None else parse(text)
            except ValueError as exc:
                raise UsageError(f"{printable(path)} key {ALL_OPTIONS[key].name!r}: {exc}; "
                                 "fix it (the unit reads it too)") from None
        runs.setdefault(tuple(values.items()), []).append(
            f"{unit_name(role)} reads {printable(path)} ("
            + ", ".join(f"{ALL_OPTIONS[k].name} {printable(v) or '(none)'}"
                        for k, v in values.items()) + ")")
    if len(runs) > 1:
        raise UsageError("the installed units run with different values: "
                         + "; ".join(u for units in runs.values() for u in units)
                         + ": choose one with --config FILE (or --data-dir and --instance)")
    return dict(next(iter(runs))) if runs else {}


def stop_watchers(root: Path, say: Say) -> None:
    """Before `down` removes anything: stop this VM's running units, which would re-create it.
    Without systemctl, or with no unit installed or none running, nothing to do."""
    if not shutil.which("systemctl"):
        return
    for role in ROLES:
        name = unit_name(role)
        if not _under(root, UNITS / name).exists() or not _asks("is-active", name):
            continue
        systemctl("stop", name)
        boot = " (and so will the next boot: it is enabled)" if _asks("is-enabled", name) else ""
        say(f"stopped {name} first (it would have re-created what down removes); "
            f"`systemctl start {name}` brings it back{boot}")


def _asks(question: str, name: str) -> bool:
    """systemctl is-active / is-enabled: False also where systemd does not run."""
    done = subprocess.run(["systemctl", question, "--quiet", name], capture_output=True)
    return done.returncode == 0


def systemctl(*args: str) -> None:
    if not shutil.which("systemctl"):
        raise EnvironmentProblem("systemctl is not on this machine: pass --no-enable and start "
                                 "the unit with this VM's init system")
    result = subprocess.run(["systemctl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise EnvironmentProblem(f"systemctl {' '.join(args)} failed: "
                                 f"{result.stderr.strip()[:200]}")
