"""The day-two commands: status, down and logs, over everything the agent manages here."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from agent import cluster, store
from agent import spec as s
from agent.engine import Engine, Observed
from agent.redact import redact, secrets_in_env
from agent.roles.ray import GCS_PORT

Say = Callable[[str], None]


def managed(engine: Engine, instance: str) -> list[Observed]:
    order = {"head": 0, "worker": 1, "app": 2}
    found = engine.managed(instance)
    return sorted(found, key=lambda o: (order.get(o.role, 9), o.name))


REDACT = "to redact the secrets in it from the logs"


def file_secrets(data_dir: Path) -> set[str]:
    """Every value in the data dir's secret files (the Ray token and secrets/*), each line of a
    damaged one too. A file or folder that cannot be read is an error (tagged, see store.tag):
    what cannot be read cannot be redacted. A data dir that does not exist holds none."""
    folder = data_dir / "secrets"
    try:
        names = sorted(p.name for p in folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        names = []
    except OSError as exc:
        raise store.tag(exc, folder, "read", REDACT) from None
    values: set[str] = set()
    for path in [cluster.token_path(data_dir), *(folder / name for name in names)]:
        try:
            text = path.read_text(errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            continue
        except OSError as exc:
            raise store.tag(exc, path, "read", REDACT) from None
        values.update(line.strip() for line in text.splitlines() if line.strip())
    return values


def secrets_to_redact(file_values: set[str], observed: list[Observed]) -> list[str]:
    """Every secret the agent knows of: its data dir's secret files and containers' secret env."""
    values = set(file_values)
    for o in observed:
        values |= secrets_in_env(o.env)
    return sorted(values, key=len, reverse=True)


def _ray_address(o: Observed) -> str:
    if o.host_network:
        return "127.0.0.1"
    return next((e.ip for e in o.endpoints if e.ip), "127.0.0.1")


def status(engine: Engine, data_dir: Path, instance: str, say: Say) -> int:
    """Print what runs here; returns how many managed containers are not ready."""
    observed = managed(engine, instance)
    if not observed:
        where = f" (instance {instance})" if instance else ""
        say(f"nothing managed by syntho-agent here{where}")
        return 0
    say(f"{'ROLE':<8} {'CONTAINER':<24} {'STATE':<10} HEALTH")
    not_ready = 0
    for o in observed:
        health = o.health or "-"
        say(f"{o.role or '?':<8} {o.name:<24} {o.status:<10} {health}")
        if o.status != "running" or o.health not in (None, "healthy"):
            not_ready += 1
    for o in observed:
        if o.service == "ray-head" and o.status == "running":
            address = _ray_address(o)
            try:
                token = store.read_secret(cluster.token_path(data_dir))
            except Exception:
                token = None
            nodes = cluster.alive_nodes(address, token)
            say(f"ray cluster at {address}:{GCS_PORT}: {len(nodes)} node(s) alive")
            for n in sorted(nodes, key=lambda n: (not n.get("is_head_node"), n.get("node_ip", ""))):
                kind = "head" if n.get("is_head_node") else "worker"
                cpus = n.get("resources_total", {}).get("CPU", 0)
                say(f"  {kind:<7} {n.get('node_ip', '?'):<16} {cpus:g} CPU")
    for line in app_urls(observed):
        say(line)
    return not_ready


def app_urls(observed: list[Observed]) -> list[str]:
    for o in observed:
        if o.service == "frontend" and o.status == "running":
            for p in o.published:
                host = p.host_ip or "0.0.0.0"
                host = "<this VM>" if host in ("0.0.0.0", "::") else host
                return [f"open the app at http://{host}:{p.host_port}"]
    return []


def down(engine: Engine, data_dir: Path, instance: str, purge: bool, say: Say) -> None:
    if purge and data_dir.is_dir():  # refuse before removing anything
        try:
            store.check_writable(data_dir, space=False)  # a full disk must not stop a purge
        except OSError as exc:
            raise store.tag(exc, data_dir, "remove") from None
    observed = managed(engine, instance)
    for o in reversed(observed):
        engine.remove(o.id)
        say(f"removed {o.name}")
    labels = [f"{s.LABEL_MANAGED}=true", f"{s.LABEL_INSTANCE}={instance}"]
    for net in engine.networks(labels):
        if net.users:
            say(f"kept network {net.name} (still used by {', '.join(net.users)})")
            continue
        engine.remove_network(net.name)
        say(f"removed network {net.name}")
    if not purge:
        if not observed:
            say("nothing to remove")
        say(f"kept volumes and {data_dir} (--purge removes them)")
        return
    for volume in engine.volumes(labels):
        engine.remove_volume(volume)
        say(f"removed volume {volume}")
    if data_dir.exists():
        remove_data_dir(data_dir)
        say(f"removed {data_dir}")


def remove_data_dir(data_dir: Path) -> None:
    """The data dir and everything in it; only its contents when it is a mount point."""
    try:
        if not os.path.ismount(data_dir):
            shutil.rmtree(data_dir)
            return
        for entry in os.scandir(data_dir):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    except OSError as exc:
        raise store.tag(exc, Path(exc.filename or data_dir), "remove") from None


def logs(engine: Engine, data_dir: Path, instance: str, output: Path, say: Say) -> None:
    from_files = file_secrets(data_dir)  # first: refuse before reading any log
    observed = managed(engine, instance)
    secrets = secrets_to_redact(from_files, observed)
    lines: list[str] = []
    for o in observed:
        lines.append(f"===== {o.name} ({o.status}{', ' + o.health if o.health else ''}) =====")
        lines.extend(redact(line, secrets) for line in engine.logs(o.id))
    store.write_atomic(output, "\n".join(lines) + "\n", mode=0o600)
    say(f"wrote the logs of {len(observed)} container(s) to {output} (secrets redacted)")
