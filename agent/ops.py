"""The day-two commands: status, down and logs, over everything the agent manages here."""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from agent import (
    __version__,
    backup,
    buildinfo,
    check,
    cluster,
    history,
    proxy,
    ray_release,
    ray_tls,
    relay,
    secret_files,
    store,
    systemd,
    tls,
    validate,
)
from agent import spec as s
from agent.config import RAY_PORTS
from agent.engine import DiskUsage, Engine, Observed
from agent.errors import UsageError
from agent.redact import redact, secrets_in_env
from agent.roles.ray import DASHBOARD_PORT, GCS_PORT, SPILL_INSIDE, TOKEN_ENV
from agent.validate import printable

Say = Callable[[str], None]


# What a throw-away container is (its spec.LABEL_TEMPORARY), and which run removes it.
TEMPORARY = {"backup-client": ("a backup's leftover client container", "backup"),
             "restore-client": ("a restore's leftover client container", "restore"),
             # made by an agent before the label: its role label only (pgclient.ROLE)
             "client": ("a backup's or restore's leftover client container",
                        "backup or restore")}


def _temporary(o: Observed) -> str:
    """What kind of throw-away container o is; "" for a service's."""
    return o.label(s.LABEL_TEMPORARY) or ("client" if o.role == "client" else "")


def _everything(engine: Engine, instance: str) -> list[Observed]:
    """Every container the agent labelled here: the services, then throw-away ones."""
    order = {"head": 0, "worker": 1, "app": 2}
    found = engine.managed(instance)
    return sorted(found, key=lambda o: (bool(_temporary(o)),
                                        order.get(o.role, 9), o.name))


def managed(engine: Engine, instance: str) -> list[Observed]:
    """The services' containers (not a killed run's throw-away ones: leftovers)."""
    return [o for o in _everything(engine, instance) if not _temporary(o)]


def leftover_what(o: Observed) -> tuple[str, str]:
    """(what a throw-away container is, the run that removes it)."""
    kind = _temporary(o)
    return TEMPORARY.get(kind, (f"a leftover throw-away container ({kind})", "such run"))


def leftovers(engine: Engine, instance: str) -> list[dict[str, Any]]:
    """A killed run's throw-away containers, as `status` shows them."""
    found = []
    for o in _everything(engine, instance):
        if _temporary(o):
            what, run = leftover_what(o)
            found.append({"name": o.name, "what": what, "state": o.status,
                          "removed_by": f"the next {run} or down"})
    return found


def _leftover_lines(found: list[dict[str, Any]]) -> list[str]:
    return [f"{c['name']}: {c['what']} ({c['state']}), removed by {c['removed_by']}"
            for c in found]


REDACT = "to redact the secrets in it from the logs"


def secrets_to_redact(file_values: set[str], observed: list[Observed]) -> list[str]:
    """Every secret the agent knows of: its data dir's secret files and containers' secret env."""
    values = set(file_values)
    for o in observed:
        values |= secrets_in_env(o.env)
    return sorted(values, key=len, reverse=True)


SCHEMA = 1  # of `status --json` (README "status --json"): raised when a key changes meaning


def _ray_address(o: Observed) -> str:
    if o.host_network:
        return "127.0.0.1"
    return next((e.ip for e in o.endpoints if e.ip), "127.0.0.1")


def _token(o: Observed, data_dir: Path) -> str | None:
    """The Ray token the container was given, else the data dir's."""
    given = o.env_value(TOKEN_ENV)
    if given:
        return given
    try:
        return store.read_secret(cluster.token_path(data_dir))
    except Exception:  # a token that cannot be read: ask without one
        return None


def _arg(command: tuple[str, ...], flag: str) -> str | None:
    """The value of `flag=V` or `flag V` in a command line."""
    for i, item in enumerate(command):
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
        if item == flag and i + 1 < len(command):
            return command[i + 1]
    return None


def _host_of(address: str) -> str:
    """The host of H, H:PORT, [H]:PORT or scheme://H:PORT."""
    netloc = urlsplit(address if "://" in address else f"//{address}")
    return netloc.hostname or address


def _started(o: Observed) -> tuple[str | None, int | None]:
    """(started-at as the engine has it, uptime in seconds while it runs)."""
    try:
        started = validate.since(o.started_at)
    except ValueError:  # never started: the engine says 0001-01-01T00:00:00Z
        return None, None
    uptime = max(0, int(time.time() - started)) if o.status == "running" else None
    return o.started_at, uptime


def _container(o: Observed) -> dict[str, Any]:
    started_at, uptime = _started(o)
    return {
        "name": o.name, "role": o.role or None, "service": o.service or None,
        "image": o.image, "image_id": o.image_id, "state": o.status, "health": o.health,
        "started_at": started_at, "uptime_seconds": uptime, "restart_count": o.restart_count,
        "ports": [{"container_port": p.container_port, "host_ip": p.host_ip or "0.0.0.0",
                   "host_port": p.host_port} for p in o.published],
        "ready": o.status == "running" and o.health in (None, "healthy"),
    }


def _ask(address: str, token: str | None, into: dict[str, Any],
         ca: str | None) -> list[dict[str, Any]]:
    """The head's node list; records in `into` whether its dashboard answered, and why not.
    In HTTPS with the cluster's CA (ca: ray_tls.stored_ca) when this node's Ray speaks TLS."""
    try:
        listed = cluster.nodes(address, token, ca=ca)
    except cluster.UNANSWERED as exc:
        into.update(answers=False, error=cluster.unanswered_reason(exc))
        return []
    into.update(answers=True, error=None)
    return listed


def _head_ray(o: Observed, data_dir: Path) -> dict[str, Any]:
    address = _ray_address(o)
    info: dict[str, Any] = {"address": address, "answers": False, "error": None,
                            "alive": 0, "nodes": []}
    if o.status != "running":
        info["error"] = f"{o.name} is not running"
        return info
    listed = _ask(address, _token(o, data_dir), info, ray_tls.stored_ca(data_dir))
    info["publishes"] = _published(listed)
    info["nodes"] = [{"node_ip": n.get("node_ip"), "node_id": n.get("node_id"),
                      "head": bool(n.get("is_head_node")), "state": n.get("state"),
                      "cpus": (n.get("resources_total") or {}).get("CPU", 0)} for n in listed]
    info["alive"] = sum(1 for n in info["nodes"] if n["state"] == "ALIVE")
    return info


def _worker_ray(o: Observed, data_dir: Path) -> dict[str, Any]:
    address = _arg(o.command, "--address")
    head = _host_of(address) if address else None
    info: dict[str, Any] = {"head": head, "node_ip": None, "answers": False, "error": None,
                            "joined": False}
    if head is None:
        info["error"] = f"{o.name} has no --address in its command"
        return info
    if o.status != "running":
        info["error"] = f"{o.name} is not running"
        return info
    try:  # the address the head lists it under, as the worker role confirms its join
        ip = cluster.worker_ip(head, _arg(o.command, "--node-ip-address"),
                               None if o.host_network else o.ip_on(o.network_mode))
    except OSError:
        info["error"] = f"the head's name {head} does not resolve"
        return info
    info["node_ip"] = ip
    token = _token(o, data_dir)
    ca = ray_tls.stored_ca(data_dir)
    listed = _ask(head, token, info, ca)
    given = _arg(o.command, "--node-manager-port") or ""
    port = int(given) if given.isdigit() else RAY_PORTS["node_manager_port"][1]
    if info["answers"]:
        try:  # its own node: its address and node-manager port (the head's may share the IP)
            info["joined"] = cluster.has_joined(cluster.node_summaries(
                head, token, ca=ca), ip, port,
                cluster.started_epoch(o.started_at))
        except cluster.UNANSWERED as exc:
            info.update(answers=False, error=cluster.unanswered_reason(exc))
    info["head_runs"] = _published(listed)
    info["matches_head"] = (None if info["head_runs"] is None
                            else info["head_runs"]["image"] == o.image)
    return info


def _published(listed: list[dict[str, Any]]) -> dict[str, str] | None:
    found = ray_release.published(listed)
    return None if found is None else {"image": found.image, "release": found.release}


def _app_ray(observed: list[Observed], data_dir: Path) -> dict[str, Any] | None:
    core = next((o for o in observed if o.role == "app" and o.env_value("RAY_ADDRESS")), None)
    if core is None:
        return None
    head = _host_of(core.env_value("RAY_ADDRESS") or "")
    info: dict[str, Any] = {"head": head, "answers": False, "error": None, "alive": 0}
    listed = _ask(head, _token(core, data_dir), info, ray_tls.stored_ca(data_dir))
    info["alive"] = sum(1 for n in listed if n.get("state") == "ALIVE")
    info["head_runs"] = _published(listed)
    return info


def _releases(roles: list[str], data_dir: Path) -> dict[str, Any]:
    """The newest release each role here recorded (agent/history.py)."""
    found = {}
    for role in roles:
        record = history.latest(data_dir, role)
        if record is not None:
            found[role] = {"name": record.name, "state": record.state, "number": record.number,
                           "started": record.started}
    return found


def status_report(observed: list[Observed], data_dir: Path, instance: str) -> dict[str, Any]:
    """What runs here, as `status --json` prints it (schema in README "status --json")."""
    containers = [_container(o) for o in observed]
    not_ready = [f"{c['name']}: {c['state']}{', ' + c['health'] if c['health'] else ''}"
                 for c in containers if not c["ready"]]
    ray: dict[str, Any] = {}
    for o in observed:
        if o.service == "ray-head" and "head" not in ray:
            ray["head"] = _head_ray(o, data_dir)
            if o.status == "running" and not any(n["head"] and n["state"] == "ALIVE"
                                                 for n in ray["head"]["nodes"]):
                not_ready.append(f"ray head: not listed alive by its dashboard "
                                 f"({ray['head']['error'] or 'not yet'})")
        if o.service == "ray-worker" and "worker" not in ray:
            ray["worker"] = _worker_ray(o, data_dir)
            if o.status == "running" and not ray["worker"]["joined"]:
                not_ready.append(f"ray worker: not listed alive by the head "
                                 f"({ray['worker']['error'] or 'not joined'})")
    app_ray = _app_ray(observed, data_dir)
    if app_ray is not None:
        ray["app"] = app_ray  # informational: the app role does not wait for the dashboard
    roles = []
    for o in observed:
        if o.role and o.role not in roles:
            roles.append(o.role)
    return {"schema": SCHEMA, "instance": instance, "roles": roles, "ready": not not_ready,
            "not_ready": not_ready, "containers": containers, "ray": ray,
            "releases": _releases(roles, data_dir), "https": _https(observed, data_dir),
            "ray_tls": _ray_tls(observed, data_dir), "agent": _agent()}


def _agent() -> dict[str, Any]:
    """This agent's version and commit, and the agent install put where the units run it."""
    return {"version": __version__, "commit": buildinfo.COMMIT,
            "installed": systemd.installed_agent()}


def _agent_lines(found: dict[str, Any]) -> list[str]:
    line = f"agent: syntho-agent {found['version']} (commit {found['commit']})"
    installed = found["installed"]
    if installed is not None:
        same = (installed.get("version"), installed.get("commit")) == (found["version"],
                                                                       found["commit"])
        line += (f"; the units run {installed.get('path')}: "
                 + ("this one" if same else f"{installed.get('version')} (commit "
                    f"{installed.get('commit')}), NOT this one")
                 + (f", sha256 {str(installed['sha256'])[:16]}..." if installed.get("sha256")
                    else ""))
    return [line]


RAY_CLIENTS = ("ray-head", "ray-worker", "core")  # the containers whose Ray may speak TLS


def _ray_tls(observed: list[Observed], data_dir: Path) -> dict[str, Any] | None:
    """Whether this VM's Ray speaks TLS, and the certificates it uses: names, issuer, expiry
    (a warning 30 days ahead: a re-run renews the node's then). None without Ray here."""
    ray_here = [o for o in observed if o.service in RAY_CLIENTS]
    if not ray_here:
        return None
    if not any(o.env_value("RAY_USE_TLS") == "1" for o in ray_here):
        return {"encrypted": False, "ca": None, "certificate": None,
                "advice": "Ray's traffic between VMs is NOT encrypted (a cluster made before "
                          "the agent encrypted it, or --no-ray-tls): to switch it on, follow "
                          "docs/security.md (\"Switching a running cluster to TLS\")"}
    found = ray_tls.existing(data_dir)
    ca, cert = found if found is not None else (None, None)

    def described(info: tls.CertInfo | None) -> dict[str, Any] | None:
        if info is None:
            return None
        soon = tls.expires_soon(info, days=ray_tls.WARN_WITHIN_DAYS)
        return {"subject": info.subject, "issuer": info.issuer, "names": list(info.names),
                "not_after": info.not_after.isoformat(), "expires_soon": soon,
                "summary": tls.describe(info, days=ray_tls.WARN_WITHIN_DAYS)}

    return {"encrypted": True, "ca": described(ca), "certificate": described(cert),
            "advice": None}


def _ray_tls_lines(found: dict[str, Any] | None) -> list[str]:
    if found is None:
        return []
    if not found["encrypted"]:
        return [found["advice"]]
    lines = ["ray traffic: mutual TLS with the cluster's CA (docs/security.md)"]
    for what, key in (("this node's", "certificate"), ("the cluster CA's", "ca")):
        info = found[key]
        lines.append(f"  {what} {info['summary']}" if info else
                     f"  {what} certificate is missing: re-run the role to issue it")
    return lines


def engine_report(engine: Engine, observed: list[Observed], data_dir: Path,
                  instance: str, sizes: bool = True) -> dict[str, Any]:
    """status_report, and what only the engine can tell: the leftovers, and whether the
    backend's path to the Ray dashboard (the relay) works, asked from inside the relay."""
    report = status_report(observed, data_dir, instance)
    report["leftovers"] = leftovers(engine, instance)
    report["disk"] = disk = (disk_report(engine, data_dir, instance, sizes, observed)
                             if observed else None)
    for fs in (disk or {}).get("filesystems", []):
        if fs["level"] == check.FAIL:
            report["not_ready"].append(f"disk: {fs['what']} {fs['path']} is "
                                       f"{fs['used_share']:.0%} full")
            report["ready"] = False
    box = next((o for o in observed if o.service == relay.SERVICE), None)
    app_ray = report["ray"].get("app")
    if box is not None and app_ray is not None:
        path = (relay.probe(engine, box.name) if box.status == "running" else
                {"works": False, "ray_version": None, "error": f"{box.name} is not running"})
        app_ray["backend_path"] = path
        if not path["works"]:
            report["not_ready"].append(f"the backend's path to the Ray dashboard ({box.name}): "
                                       f"{path['error']}")
            report["ready"] = False
    return report


def _filesystem(what: str, path: Path) -> dict[str, Any] | None:
    """How full the file system that holds path is, as `check` judges it."""
    try:
        free, full = check.free_bytes(path), check.used_share(path)
    except OSError:
        return None
    return {"what": what, "path": str(path), "free_bytes": free, "used_share": round(full, 3),
            "level": check.fullness(full)}


def disk_report(engine: Engine, data_dir: Path, instance: str, sizes: bool = True,
                observed: list[Observed] | None = None) -> dict[str, Any]:
    """The disks this VM's role lives on (how full, against the 80% and 95% marks) and what
    the agent's own things take there: its volumes, its containers' writable layers (a Ray
    container's /tmp/ray: session logs, spilled objects) and the backups."""
    info = engine.info()
    places = [("the data dir", data_dir)]
    places += [("Ray's spill dir", Path(source)) for o in observed or ()
               for source, inside in o.binds if inside == SPILL_INSIDE]
    if info.local and info.root_dir:
        places.insert(0, ("the engine's root", Path(info.root_dir)))
    # The sizes of volumes and writable layers are the engine's disk usage, its slowest
    # question (a tenth of a second or more): a role run's metrics leave them to --watch.
    usage = engine.disk_usage(instance) if sizes else DiskUsage({}, {})
    archives = backup.listed(backup.backups_dir(data_dir))
    return {"filesystems": [fs for what, path in places if (fs := _filesystem(what, path))],
            "volumes": usage.volumes, "writable_layers": usage.containers,
            "backups": {"path": str(backup.backups_dir(data_dir)), "count": len(archives),
                        "bytes": sum(b.size for b in archives),
                        "newest_created": archives[-1].header.get("created") if archives
                        else None, "schedule_seconds": systemd.backup_schedule()}}


def _disk_lines(disk: dict[str, Any] | None) -> list[str]:
    if not disk:
        return []
    lines = []
    for fs in disk["filesystems"]:
        line = (f"disk: {fs['what']} {fs['path']}: {fs['used_share']:.0%} full, "
                f"{check.size(fs['free_bytes'])} free")
        if fs["level"] != check.OK:
            mark = check.FAIL_FULL if fs["level"] == check.FAIL else check.WARN_FULL
            line += (f"; WARNING: over {mark:.0%} full"
                     + (": role runs refuse to start" if fs["level"] == check.FAIL else "")
                     + " (free space: prune unused images, old backups, or grow the disk)")
        lines.append(line)
    held = [f"{name} {check.size(n)}" for name, n in sorted(disk["volumes"].items())]
    layers = [f"{name} {check.size(n)}" for name, n in sorted(disk["writable_layers"].items())
              if n]
    backups = disk["backups"]
    parts = ([f"volumes {', '.join(held)}"] if held else []) + (
        [f"containers' own files (Ray's /tmp/ray among them) {', '.join(layers)}"]
        if layers else []) + ([f"{backups['count']} backup(s) {check.size(backups['bytes'])}"]
                              if backups["count"] else [])
    if parts:
        lines.append("disk use: " + "; ".join(parts))
    return lines


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    for unit, size, smaller, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                            ("m", 60, "s", 1)):
        if seconds >= size:
            rest = (seconds % size) // small_size
            whole = f"{seconds // size}{unit}"
            return f"{whole}{rest:02d}{smaller}" if rest else whole
    return f"{seconds}s"


def _ray_lines(ray: dict[str, Any]) -> list[str]:
    lines = []
    head = ray.get("head")
    if head and head["answers"]:
        alive = [n for n in head["nodes"] if n["state"] == "ALIVE"]
        ips = {n["node_ip"] for n in alive}
        dead = [n for n in head["nodes"] if n["state"] != "ALIVE" and n["node_ip"] not in ips]
        lines.append(f"ray cluster at {head['address']}:{GCS_PORT}: {len(alive)} node(s) alive"
                     + (f", {len(dead)} dead" if dead else ""))
        for n in sorted(alive, key=lambda n: (not n["head"], n["node_ip"] or "")) + dead:
            kind = "head" if n["head"] else "worker"
            state = "" if n["state"] == "ALIVE" else f"  {str(n['state']).lower()}"
            lines.append(f"  {kind:<7} {n['node_ip'] or '?':<16} {n['cpus']:g} CPU{state}")
    elif head and head["error"] and "not running" not in head["error"]:
        lines.append(f"ray cluster at {head['address']}:{GCS_PORT}: the dashboard on port "
                     f"{DASHBOARD_PORT} does not answer ({head['error']})")
    worker = ray.get("worker")
    if worker and worker["joined"]:
        lines.append(f"ray worker {worker['node_ip']}: joined the cluster at "
                     f"{worker['head']}:{GCS_PORT} (the head lists it alive)")
    elif worker and worker["answers"]:
        lines.append(f"ray worker {worker['node_ip']}: NOT joined: the head at "
                     f"{worker['head']} does not list it alive")
    elif worker and worker["error"] and "not running" not in worker["error"]:
        lines.append(f"ray worker: cannot tell whether it joined the head at {worker['head']}: "
                     f"{_dashboard_problem(worker)}")
    app = ray.get("app")
    if app and app["answers"]:
        lines.append(f"the app's ray cluster at {app['head']}:{GCS_PORT}: {app['alive']} node(s) "
                     "alive")
    elif app:
        lines.append(f"the app's ray cluster at {app['head']}:{GCS_PORT}: "
                     f"{_dashboard_problem(app)}")
    path = (app or {}).get("backend_path")
    if path is not None and path["works"]:
        lines.append(f"the backend reaches the Ray dashboard through the relay (Ray "
                     f"{path['ray_version']})")
    elif path is not None:
        lines.append(f"the backend does NOT reach the Ray dashboard: {path['error']}")
    return lines


def _dashboard_problem(info: dict[str, Any]) -> str:
    if "does not resolve" in str(info["error"]):
        return str(info["error"])
    return f"its dashboard on port {DASHBOARD_PORT} does not answer ({info['error']})"


def status(engine: Engine, data_dir: Path, instance: str, say: Say) -> int:
    """Print what runs here; returns how many things are not ready."""
    observed = managed(engine, instance)
    report = engine_report(engine, observed, data_dir, instance)
    if not report["containers"]:
        where = f" (instance {instance})" if instance else ""
        say(f"nothing managed by syntho-agent here{where}")
        for line in _leftover_lines(report["leftovers"]):
            say(line)
        return 0
    rows = [("ROLE", "CONTAINER", "STATE", "HEALTH", "UPTIME", "RESTARTS", "IMAGE")]
    rows += [(c["role"] or "?", c["name"], c["state"], c["health"] or "-",
              _age(c["uptime_seconds"]), str(c["restart_count"]), c["image"])
             for c in report["containers"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        say("  ".join(f"{v:<{w}}" for v, w in zip(r, widths)) + "  " + r[-1])
    for line in [*_leftover_lines(report["leftovers"]), *_ray_lines(report["ray"]),
                 *_ray_tls_lines(report["ray_tls"]), *_disk_lines(report.get("disk")),
                 *_release_lines(report), *_agent_lines(report["agent"]),
                 *(_https_lines(report["https"]) or app_urls(observed))]:
        say(line)
    return len(report["not_ready"])


def _release_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    ray = report["ray"]
    for role, r in report["releases"].items():
        line = f"{role} release: {r['name']} ({r['state']}, #{r['number']}, {r['started']})"
        head_runs = (ray.get("worker") or ray.get("app") or {}).get("head_runs")
        if role == "head" and (ray.get("head") or {}).get("publishes"):
            line += f"; published to the workers: {ray['head']['publishes']['image']}"
        elif role in ("worker", "app") and head_runs:
            theirs = head_runs["release"] or head_runs["image"]
            same = (ray["worker"].get("matches_head") if role == "worker"
                    else head_runs["release"] in ("", r["name"]))
            line += f"; the head runs {theirs}: {'matches' if same else 'DIFFERS'}"
        lines.append(line)
    return lines


def status_json(engine: Engine, data_dir: Path, instance: str, say: Say) -> int:
    """status as JSON (README "status --json"); returns how many things are not ready."""
    report = engine_report(engine, managed(engine, instance), data_dir, instance)
    say(json.dumps(report, indent=2))
    return len(report["not_ready"])


def app_urls(observed: list[Observed]) -> list[str]:
    for o in observed:
        if o.service == "frontend" and o.status == "running":
            for p in o.published:
                host = p.host_ip or "0.0.0.0"
                host = "<this VM>" if host in ("0.0.0.0", "::") else host
                return [f"open the app at http://{host}:{p.host_port}"]
    return []


def _https(observed: list[Observed], data_dir: Path) -> dict[str, Any] | None:
    """The HTTPS proxy's URL and the certificate it serves now (read from it, whatever the
    mode: the operator's, an ACME CA's or Caddy's own)."""
    front = next((o for o in observed if o.service == "proxy"), None)
    site = proxy.site_record(data_dir) if front is not None else None
    if front is None or site is None:
        return None
    port = int(str(site.get("https_port", 443)))
    bound = [p.host_ip for p in front.published if p.host_port == port]
    address = bound[0] if bound and bound[0] not in ("", "0.0.0.0", "::") else "127.0.0.1"
    served = (proxy.served(address, port, str(site.get("host")))
              if front.status == "running" else None)
    cert = None if served is None else {
        "names": list(served.names), "issuer": served.issuer,
        "not_after": served.not_after.isoformat(), "expires_soon": tls.expires_soon(served),
        "summary": tls.describe(served)}
    return {"url": f"https://{site.get('address')}/", "mode": site.get("mode"), "port": port,
            "certificate": cert}


def _https_lines(https: dict[str, Any] | None) -> list[str]:
    if https is None:
        return []
    cert = https["certificate"]
    return [f"open the app at {https['url']} (HTTPS, --tls {https['mode']})",
            f"  {cert['summary']}" if cert else
            f"  no certificate is served on port {https['port']} now"]


def down(engine: Engine, data_dir: Path, instance: str, purge: bool, say: Say,
         first: Callable[[], None] | None = None) -> None:
    """first: after the refusals, before anything is removed (the CLI stops this VM's
    syntho-agent unit there: it would re-create what down removes)."""
    if purge and data_dir.is_dir():  # refuse before removing anything
        try:
            store.check_writable(data_dir, space=False)  # a full disk must not stop a purge
        except OSError as exc:
            raise store.tag(exc, data_dir, "remove") from None
    if first is not None:
        first()
    observed = _everything(engine, instance)  # a killed backup's client too
    for o in reversed(observed):
        engine.remove(o.id)
        what = f" ({leftover_what(o)[0]})" if _temporary(o) else ""
        say(f"removed {o.name}{what}")
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


@dataclass(frozen=True)
class LogOptions:
    """What `logs` reads: the services (none: every one), the last `tail` lines of each, from
    `since` (a Unix time), and whether to keep following; `output` None is standard output."""

    output: Path | None = None
    services: tuple[str, ...] = ()
    tail: int | None = None
    since: float | None = None
    follow: bool = False


def select(observed: list[Observed], services: tuple[str, ...], instance: str) -> list[Observed]:
    """The containers of the named services (or container names); UsageError naming the
    services that exist when one is not among them."""
    if not services:
        return observed
    known = sorted({o.service for o in observed if o.service})
    for wanted in services:
        if not any(wanted in (o.service, o.name) for o in observed):
            where = f" (instance {instance})" if instance else ""
            exist = (f"the services here are: {', '.join(known)}" if known
                     else "nothing managed by syntho-agent runs here")
            raise UsageError(f"--service {printable(wanted)} is not a service here{where}; "
                             f"{exist}")
    return [o for o in observed if o.service in services or o.name in services]


def logs(engine: Engine, data_dir: Path, instance: str, options: LogOptions, say: Say,
         write: Say) -> None:
    """The selected containers' logs, secrets redacted: into options.output (atomically,
    0600), or through `write` (standard output), or followed through `write` until they stop."""
    from_files = secret_files.stored_values(data_dir, REDACT)  # first: refuse before any log
    observed = managed(engine, instance)
    selected = select(observed, options.services, instance)
    secrets = secrets_to_redact(from_files, observed)
    tail: int | str = "all" if options.tail is None else options.tail
    if options.follow:
        _follow(engine, instance, options.services, selected, secrets, tail, options.since,
                write)
        return
    lines: list[str] = []
    for o in selected:
        lines.append(f"===== {o.name} ({o.status}{', ' + o.health if o.health else ''}) =====")
        lines.extend(redact(line, secrets) for line in engine.logs(o.id, tail, options.since))
    if options.output is None:
        for line in lines:
            write(line)
        return
    store.write_atomic(options.output, "\n".join(lines) + "\n", mode=0o600)
    say(f"wrote the logs of {len(selected)} container(s) to {options.output} (secrets redacted)")


FOLLOW_LOOK = 2.0  # seconds between looks at the managed set while following
FOLLOW_GRACE = 10.0  # following ends once none of the followed services has run this long


def _follow(engine: Engine, instance: str, services: tuple[str, ...], selected: list[Observed],
            secrets: list[str], tail: int | str, since: float | None, write: Say) -> None:
    """Every selected container's lines as they come (one thread each), prefixed with its
    service when there are several, until none has run for FOLLOW_GRACE (or Ctrl-C).

    It follows the managed set as it changes: every FOLLOW_LOOK seconds it looks again, and a
    container made since (a --watch re-creation, an upgrade's) is followed from its first
    line, with a line that says which one it replaced; one that the engine restarted is
    followed again from where its lines stopped."""
    lines: queue.Queue[tuple[str, str | BaseException | None]] = queue.Queue()
    label: dict[str, str] = {}  # container id -> its service (or name)
    current: dict[str, str] = {}  # service -> the container id followed for it last
    active: set[str] = set()
    ended: dict[str, float] = {}  # container id -> when its stream ended (Unix time)
    several = len({o.service or o.name for o in selected}) > 1

    def pump(cid: str, tail: int | str, since: float | None) -> None:
        try:
            for line in engine.follow_logs(cid, tail, since):
                lines.put((cid, line))
        except BaseException as exc:  # handed to the main thread, raised there
            lines.put((cid, exc))
        finally:
            lines.put((cid, None))

    def start(o: Observed, tail: int | str, since: float | None) -> None:
        label[o.id] = o.service or o.name
        current[label[o.id]] = o.id
        active.add(o.id)
        threading.Thread(target=pump, args=(o.id, tail, since), daemon=True).start()

    def note(text: str) -> None:
        write(f"===== {text} =====")

    def look() -> bool:
        """Follow what is new or back; whether a followed service runs."""
        nonlocal several
        found = [o for o in managed(engine, instance)
                 if not services or o.service in services or o.name in services]
        for o in found:
            if o.id in active:
                continue
            if o.id in label:  # followed before: its stream ended
                if o.status == "running":
                    note(f"{o.name} was restarted: following it again")
                    start(o, "all", ended.get(o.id))
                continue
            service = o.service or o.name
            old = current.get(service)
            if old is not None:
                note(f"{service}: a new container {o.name} ({o.id[:12]}) replaced "
                     f"{old[:12]}: following it")
            else:
                note(f"{service}: a new container {o.name} ({o.id[:12]}): following it")
            several = several or any(v != service for v in current)
            start(o, "all", since)
        return any(o.status == "running" for o in found)

    for o in selected:
        start(o, tail, since)
    ran = time.monotonic() if any(o.status == "running" for o in selected) else None
    next_look = time.monotonic() + FOLLOW_LOOK
    while True:
        try:  # Ctrl-C interrupts the wait (agent.failures)
            cid, item = lines.get(timeout=max(0.0, next_look - time.monotonic()))
        except queue.Empty:
            if look() or active:
                ran = time.monotonic()
            elif ran is None or time.monotonic() - ran > FOLLOW_GRACE:
                return
            next_look = time.monotonic() + FOLLOW_LOOK
            continue
        if item is None:
            active.discard(cid)
            ended[cid] = time.time()
            if not active and ran is None:  # nothing ran when it began: as `logs`
                return
        elif isinstance(item, BaseException):
            raise item
        else:
            text = redact(item, secrets)
            width = max(len(v) for v in label.values())
            write(f"{label[cid]:<{width}} | {text}" if several else text)
