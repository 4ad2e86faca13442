"""This VM's agent state as Prometheus metrics, in node-exporter's textfile format.

<data-dir>/metrics/syntho_agent.prom is rewritten (atomically) after every run of a role or a
backup, and every minute by `--watch`; node-exporter's textfile collector
(`--collector.textfile.directory=<data-dir>/metrics`) publishes it, and Prometheus reads it
there with the host's own metrics (its disks among them). Why a file rather than an endpoint of
the agent: it needs no process of ours to stay up (a VM without --watch still tells its last
run), no new port, and no secret to guard; and node-exporter is what an operator's Prometheus
scrapes on every VM anyway. The alert rules that read these metrics:
agent/assets/syntho-alerts.yml (README "Metrics and alerts").

What is sampled is `status --json`'s report (agent/ops.py), so the two never disagree; the
last run of each command (its time, duration and result) is kept in metrics/runs.json.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from agent import __version__, ops, store
from agent.engine import Engine
from agent.errors import EXIT_ENVIRONMENT, AgentError
from agent.failures import Interrupted

Say = Callable[[str], None]
FOLDER = "metrics"
FILE = "syntho_agent.prom"
RUNS = "runs.json"
EVERY = 60.0  # seconds between two samples by --watch
RULES_ASSET = "syntho-alerts.yml"

# name -> (type, help). Every family the file may hold, in the order it is written.
FAMILIES: dict[str, tuple[str, str]] = {
    "syntho_agent_info": ("gauge", "The agent's version and the roles it runs here (always 1)"),
    "syntho_agent_sampled_timestamp_seconds": ("gauge", "When this file was written"),
    "syntho_agent_ready": ("gauge", "1 when everything `status` checks is ready, else 0"),
    "syntho_agent_container_ready": ("gauge", "1 when the container runs (and is healthy, "
                                     "where it has a health check)"),
    "syntho_agent_container_restarts_total": ("counter", "The engine's restart count of the "
                                              "container (from 0 when it is recreated)"),
    "syntho_agent_ray_node_alive": ("gauge", "1 when this VM's Ray node (head or worker) is "
                                    "listed alive by the head's dashboard"),
    "syntho_agent_ray_alive_nodes": ("gauge", "Ray nodes the head's dashboard lists alive, as "
                                     "this VM's role sees it"),
    "syntho_agent_ray_dashboard_answers": ("gauge", "1 when the head's dashboard answers this "
                                           "VM's agent"),
    "syntho_agent_release_info": ("gauge", "The newest release of a role here and its state "
                                  "(always 1)"),
    "syntho_agent_release_matches_head": ("gauge", "1 when this VM's role runs the Ray image "
                                          "or release the head publishes, 0 when it differs"),
    "syntho_agent_ray_tls_encrypted": ("gauge", "1 when this VM's Ray speaks mutual TLS"),
    "syntho_agent_certificate_expiry_timestamp_seconds": ("gauge", "When a certificate this VM "
                                                          "uses expires"),
    "syntho_agent_disk_used_ratio": ("gauge", "How full a file system the role lives on is "
                                     "(used / (used + available), as df counts)"),
    "syntho_agent_disk_free_bytes": ("gauge", "Bytes free on that file system"),
    "syntho_agent_volume_bytes": ("gauge", "Bytes in one of the agent's volumes"),
    "syntho_agent_writable_layer_bytes": ("gauge", "Bytes in a container's writable layer "
                                          "(a Ray container's /tmp/ray among them)"),
    "syntho_agent_backups": ("gauge", "Backups kept in the data dir"),
    "syntho_agent_backups_bytes": ("gauge", "Bytes of the backups kept in the data dir"),
    "syntho_agent_backup_last_success_timestamp_seconds": ("gauge", "When the newest backup "
                                                           "kept was made"),
    "syntho_agent_backup_schedule_seconds": ("gauge", "Seconds between scheduled backups (the "
                                             "timer `install app` wrote)"),
    "syntho_agent_last_run_timestamp_seconds": ("gauge", "When the last run of a command "
                                                "ended"),
    "syntho_agent_last_run_duration_seconds": ("gauge", "How long the last run of a command "
                                               "took"),
    "syntho_agent_last_run_success": ("gauge", "1 when the last run of a command succeeded"),
    "syntho_agent_last_run_exit_code": ("gauge", "The exit code of the last run of a command"),
}

Sample = tuple[str, dict[str, str], float]  # family, labels, value


def folder(data_dir: Path) -> Path:
    return data_dir / FOLDER


# ---- the last run of each command --------------------------------------------------------------

def runs(data_dir: Path) -> dict[str, dict[str, Any]]:
    """command -> {ended, seconds, exit_code} of its last run ({} when none was recorded, or
    the record is unreadable: it is rewritten whole by the next run)."""
    try:
        found = json.loads(store.read_text(folder(data_dir) / RUNS) or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def record_run(data_dir: Path, command: str, started: float, exit_code: int,
               now: float | None = None) -> None:
    """Keep how the run of `command` that started at `started` ended."""
    ended = time.time() if now is None else now
    found = runs(data_dir)
    found[command] = {"ended": round(ended, 3), "seconds": round(max(0.0, ended - started), 3),
                      "exit_code": exit_code}
    store.ensure_dir(folder(data_dir), 0o755)
    store.write_atomic(folder(data_dir) / RUNS, json.dumps(found, indent=1, sort_keys=True),
                       mode=0o644)


# ---- samples from status's report --------------------------------------------------------------

def _epoch(iso: str | None) -> float | None:
    """An ISO 8601 time (a backup's "...Z" too: Python before 3.11 reads no Z) as epoch; None
    when there is none, or it is not one."""
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None
    except ValueError:
        return None


def _containers(report: dict[str, Any]) -> Iterable[Sample]:
    for c in report.get("containers", []):
        labels = {"container": c["name"], "role": c["role"] or "", "service": c["service"] or ""}
        yield "syntho_agent_container_ready", labels, float(c["ready"])
        yield "syntho_agent_container_restarts_total", labels, float(c["restart_count"] or 0)


def _ray(report: dict[str, Any]) -> Iterable[Sample]:
    ray = report.get("ray") or {}
    head, worker, app = ray.get("head"), ray.get("worker"), ray.get("app")
    if head is not None:
        alive = any(n["head"] and n["state"] == "ALIVE" for n in head["nodes"])
        yield "syntho_agent_ray_node_alive", {"role": "head"}, float(alive)
        yield "syntho_agent_ray_alive_nodes", {"role": "head"}, float(head["alive"])
        yield "syntho_agent_ray_dashboard_answers", {"role": "head"}, float(head["answers"])
    if worker is not None:
        yield "syntho_agent_ray_node_alive", {"role": "worker"}, float(worker["joined"])
        yield "syntho_agent_ray_dashboard_answers", {"role": "worker"}, float(worker["answers"])
        if worker.get("matches_head") is not None:
            yield ("syntho_agent_release_matches_head", {"role": "worker"},
                   float(worker["matches_head"]))
    if app is not None:
        yield "syntho_agent_ray_alive_nodes", {"role": "app"}, float(app["alive"])
        yield "syntho_agent_ray_dashboard_answers", {"role": "app"}, float(app["answers"])
        mine = (report.get("releases") or {}).get("app")
        theirs = (app.get("head_runs") or {}).get("release")
        if mine is not None and theirs is not None:
            yield ("syntho_agent_release_matches_head", {"role": "app"},
                   float(theirs in ("", mine["name"])))


def _releases(report: dict[str, Any]) -> Iterable[Sample]:
    for role, r in (report.get("releases") or {}).items():
        yield ("syntho_agent_release_info", {"role": role, "release": r["name"],
                                             "state": r["state"]}, 1.0)


def _certificates(report: dict[str, Any]) -> Iterable[Sample]:
    found = report.get("ray_tls")
    if found is not None:
        yield "syntho_agent_ray_tls_encrypted", {}, float(found["encrypted"])
        for which, key in (("ray_node", "certificate"), ("ray_ca", "ca")):
            info = found.get(key)
            if info:
                yield ("syntho_agent_certificate_expiry_timestamp_seconds",
                       {"certificate": which}, _epoch(info["not_after"]) or 0.0)
    https = (report.get("https") or {}).get("certificate")
    if https:
        yield ("syntho_agent_certificate_expiry_timestamp_seconds", {"certificate": "https"},
               _epoch(https["not_after"]) or 0.0)


def _disk(report: dict[str, Any]) -> Iterable[Sample]:
    disk = report.get("disk")
    if not disk:
        return
    for fs in disk["filesystems"]:
        labels = {"what": fs["what"], "path": fs["path"]}
        yield "syntho_agent_disk_used_ratio", labels, float(fs["used_share"])
        yield "syntho_agent_disk_free_bytes", labels, float(fs["free_bytes"])
    for name, size in sorted(disk["volumes"].items()):
        yield "syntho_agent_volume_bytes", {"volume": name}, float(size)
    for name, size in sorted(disk["writable_layers"].items()):
        yield "syntho_agent_writable_layer_bytes", {"container": name}, float(size)
    backups = disk["backups"]
    if "app" in report.get("roles", []) or backups["count"]:
        yield "syntho_agent_backups", {}, float(backups["count"])
        yield "syntho_agent_backups_bytes", {}, float(backups["bytes"])
        newest = _epoch(backups.get("newest_created"))
        if newest is not None:
            yield "syntho_agent_backup_last_success_timestamp_seconds", {}, newest
        if backups.get("schedule_seconds"):
            yield "syntho_agent_backup_schedule_seconds", {}, float(backups["schedule_seconds"])


def _runs(found: dict[str, dict[str, Any]]) -> Iterable[Sample]:
    for command, run in sorted(found.items()):
        labels = {"command": command}
        code = int(run.get("exit_code", 1))
        yield "syntho_agent_last_run_timestamp_seconds", labels, float(run.get("ended", 0))
        yield "syntho_agent_last_run_duration_seconds", labels, float(run.get("seconds", 0))
        yield "syntho_agent_last_run_success", labels, float(code == 0)
        yield "syntho_agent_last_run_exit_code", labels, float(code)


def samples(report: dict[str, Any] | None, found_runs: dict[str, dict[str, Any]],
            now: float) -> list[Sample]:
    """Every sample, from status's report (None when the engine could not be asked: the runs
    alone) and the runs' record."""
    out: list[Sample] = [
        ("syntho_agent_info", {"version": __version__,
                               "roles": ",".join((report or {}).get("roles", []))}, 1.0),
        ("syntho_agent_sampled_timestamp_seconds", {}, now)]
    if report is not None:
        if report.get("containers"):
            out.append(("syntho_agent_ready", {}, float(report["ready"])))
        for part in (_containers, _ray, _releases, _certificates, _disk):
            out.extend(part(report))
    out.extend(_runs(found_runs))
    return out


# ---- the exposition format ---------------------------------------------------------------------

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def render(found: list[Sample]) -> str:
    """Prometheus' text format: each family's HELP and TYPE once, then its samples."""
    by_family: dict[str, list[str]] = {}
    for family, labels, value in found:
        assert family in FAMILIES and all(_LABEL_NAME.match(k) for k in labels), family
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        by_family.setdefault(family, []).append(
            f"{family}{{{text}}} {_number(value)}" if text else f"{family} {_number(value)}")
    lines = []
    for family, (kind, help_text) in FAMILIES.items():
        if family in by_family:
            lines += [f"# HELP {family} {help_text}", f"# TYPE {family} {kind}",
                      *by_family[family]]
    return "\n".join(lines) + "\n"


def write(data_dir: Path, report: dict[str, Any] | None, now: float | None = None) -> Path:
    """<data-dir>/metrics/syntho_agent.prom, replaced whole (the collector never reads half a
    file), with the alert rules beside it for the operator's Prometheus."""
    t = time.time() if now is None else now
    where = store.ensure_dir(folder(data_dir), 0o755)
    for stale in where.glob(".*"):  # a write killed with SIGKILL leaves its temporary file
        try:
            old = t - stale.stat().st_mtime > 600
        except FileNotFoundError:  # another run's, renamed meanwhile
            continue
        if old:
            store.remove(stale)
    path = where / FILE
    store.write_atomic(path, render(samples(report, runs(data_dir), t)), mode=0o644)
    rules = rules_text()
    if store.read_text(where / RULES_ASSET) != rules:
        store.write_atomic(where / RULES_ASSET, rules, mode=0o644)
    return path


def rules_text() -> str:
    from importlib import resources

    return (resources.files("agent") / "assets" / RULES_ASSET).read_text()


# ---- when: after each run, and every minute from --watch ---------------------------------------

def _report(engine: Engine | None, data_dir: Path, instance: str,
            sizes: bool) -> dict[str, Any] | None:
    """status --json's report (sizes False: without the volumes' and writable layers' sizes),
    or None when the engine does not answer."""
    try:
        engine = engine or Engine.connect()
        if engine is None:  # unit tests put none in its place
            return None
        return ops.engine_report(engine, ops.managed(engine, instance), data_dir, instance,
                                 sizes)
    except AgentError:
        return None


def publish(data_dir: Path, instance: str, say: Say, engine: Engine | None = None,
            run: tuple[str, float, int] | None = None, ask: bool = True) -> None:
    """The metrics file written anew (run: a run of a command that just ended, recorded first:
    its name, start time and exit code; then the sizes of volumes and writable layers are left
    to --watch's samples, to keep a run quick; ask False: the engine is not asked, the file
    tells the runs alone). A file that cannot be written is said in one line, and never fails
    what ran."""
    try:
        if run is not None:
            record_run(data_dir, *run)
        write(data_dir, _report(engine, data_dir, instance, sizes=run is None) if ask else None)
    except OSError as exc:
        say(f"metrics: cannot write {folder(data_dir) / FILE}: {exc.strerror or exc}")
    except Exception as exc:  # what the metrics cannot tell never fails the run
        say(f"metrics: not written ({type(exc).__name__}: {exc})")


@contextmanager
def recorded(data_dir: Path, instance: str, command: str, say: Say,
             engine: Engine | None = None) -> Iterator[None]:
    """The run of `command` inside, then the metrics file with how it ended (whatever the end:
    a failure is what the file must tell)."""
    started, code, stopping = time.time(), 1, False
    try:
        yield
        code = 0
    except AgentError as exc:
        code = exc.exit_code
        raise
    except Interrupted as exc:  # asked to stop: the run's end is told, the engine not asked
        code, stopping = exc.exit_code, True
        raise
    except OSError:
        code = EXIT_ENVIRONMENT
        raise
    finally:
        publish(data_dir, instance, say, engine, (command, started, code), ask=not stopping)
