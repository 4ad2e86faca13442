"""Self-heal at boot: a systemd unit that runs the same role with --watch at every boot.

`syntho-agent install ROLE [options]` writes the options given into the role's config file
(/etc/syntho-agent/ROLE.yaml, 0600: it may hold the license key) and a unit that runs
`syntho-agent ROLE --config that-file --watch`, restarted on failure. For the app it also adds
scheduled backups: a timer that runs `syntho-agent backup --config backup.yaml` (its own
file: the key file, --keep, the target). `uninstall` removes them all and leaves the data dir,
the containers, the volumes and the backups alone.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable

import yaml

from agent import store
from agent.errors import EnvironmentProblem

Say = Callable[[str], None]
ROLES = ("head", "worker", "app")


BACKUP = "syntho-agent-backup"  # its .service and .timer
BACKUP_CONFIG = Path("/etc/syntho-agent/backup.yaml")
UNITS = Path("/etc/systemd/system")


def unit_name(role: str) -> str:
    return f"syntho-agent-{role}.service"


def backup_units(every: int, executable: list[str]) -> dict[str, str]:
    """The backup service (one run) and its timer, by file name."""
    command = shlex.join([*executable, "backup", "--config", str(BACKUP_CONFIG)])
    source = ""
    if executable[1:2] == ["-m"]:
        source = f"Environment=PYTHONPATH={Path(__file__).resolve().parent.parent}\n"
    return {
        f"{BACKUP}.service": f"""[Unit]
Description=syntho-agent backup: both databases, the secrets and app.env, in one archive
After=docker.service {unit_name("app")}
Requires=docker.service

[Service]
Type=oneshot
{source}ExecStart={command}
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
    return shlex.join([*executable, role, "--config", str(config), "--watch"])


def unit_text(role: str, config: Path, executable: list[str]) -> str:
    """The unit: after the engine, restarted on failure. (The zipapp carries its own
    extraction root, so the missing HOME of a unit does not matter.)

    `systemctl stop` sends SIGTERM: a watching agent then exits 0; one stopped in the middle of
    its first converge exits 143 (agent.cli), which SuccessExitStatus counts as a clean stop.
    """
    source = ""
    if executable[1:2] == ["-m"]:  # run from a checkout: Python must find the package
        source = f"Environment=PYTHONPATH={Path(__file__).resolve().parent.parent}\n"
    return f"""[Unit]
Description=syntho-agent {role}: converge and heal the Syntho {role} on this VM
Wants=network-online.target
After=network-online.target docker.service
Requires=docker.service

[Service]
Type=simple
{source}ExecStart={exec_start(role, config, executable)}
Restart=always
RestartSec=5
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


def install(role: str, values: dict[str, Any], root: Path, enable: bool, say: Say,
            backups: tuple[int, dict[str, Any]] | None = None) -> None:
    """backups: (every seconds, backup.yaml's values) for the app's scheduled backups."""
    config = Path("/etc/syntho-agent") / f"{role}.yaml"
    unit = UNITS / unit_name(role)
    for folder in (root / config.relative_to("/")).parent, (root / unit.relative_to("/")).parent:
        store.ensure_dir(folder, mode=0o755)
        store.check_writable(folder)  # both, before writing either
    text = "# Written by `syntho-agent install`: edit, then `systemctl restart " \
           f"{unit_name(role)}`.\n" + yaml.safe_dump(values, sort_keys=True)
    executable = this_executable(root)  # first: the zipapp's copy is the largest write
    store.write_atomic(root / config.relative_to("/"), text, mode=0o600)
    store.write_atomic(root / unit.relative_to("/"), unit_text(role, config, executable),
                       mode=0o644)
    say(f"wrote {config} and {unit}")
    starts = [unit_name(role)]
    if backups is not None and backups[0] > 0:
        every, backup_values = backups
        store.write_atomic(root / BACKUP_CONFIG.relative_to("/"),
                           "# Written by `syntho-agent install app`: the scheduled backups.\n"
                           + yaml.safe_dump(backup_values, sort_keys=True), mode=0o600)
        for name, text in backup_units(every, executable).items():
            store.write_atomic(root / UNITS.relative_to("/") / name, text, mode=0o644)
        say(f"wrote {BACKUP_CONFIG} and {UNITS / BACKUP}.timer: a backup every {every // 3600}h"
            f"{every % 3600 // 60:02d}m, the newest {backup_values.get('keep')} kept")
        starts.append(f"{BACKUP}.timer")
    if enable:
        systemctl("daemon-reload")
        for name in starts:
            systemctl("enable", "--now", name)
        say(f"enabled and started {' and '.join(starts)}: at every boot")
    else:
        say(f"enable with: systemctl daemon-reload && systemctl enable --now {' '.join(starts)}")


def uninstall(roles: list[str], root: Path, enable: bool, say: Say) -> None:
    for role in roles:
        unit = root / "etc/systemd/system" / unit_name(role)
        config = root / "etc/syntho-agent" / f"{role}.yaml"
        extra = [root / UNITS.relative_to("/") / f"{BACKUP}.{kind}" for kind in ("timer",
                                                                              "service")]
        extra = [*extra, root / BACKUP_CONFIG.relative_to("/")] if role == "app" else []
        if not unit.exists() and not config.exists() and not any(p.exists() for p in extra):
            continue
        if enable:
            systemctl("disable", "--now", unit_name(role))
            if extra and extra[0].exists():
                systemctl("disable", "--now", f"{BACKUP}.timer")
        for path in (unit, config, *extra):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise store.tag(exc, path, "remove") from None
        say(f"removed {unit_name(role)} and its config (containers, volumes and data dir kept)")
    if enable:
        systemctl("daemon-reload")


def systemctl(*args: str) -> None:
    if not shutil.which("systemctl"):
        raise EnvironmentProblem("systemctl is not on this machine: pass --no-enable and start "
                                 "the unit with this VM's init system")
    result = subprocess.run(["systemctl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise EnvironmentProblem(f"systemctl {' '.join(args)} failed: "
                                 f"{result.stderr.strip()[:200]}")
