"""Host checks: can this machine run a role? (`syntho-agent check ROLE`, k3s' check-config.)

Each check is a small function that returns a Result: ok, warn or fail, one line, and what to
do. `syntho-agent check ROLE` runs all of them and prints the firewall rules the role needs;
every role run runs the quick ones first (`before_run`: no throw-away container, no remote
connection, one `info` call to the engine) and stops before it changes anything when one fails.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Union

from agent import ray_tls, tls
from agent.config import RAY_PORTS, AppSettings, HeadSettings, RoleSettings, WorkerSettings
from agent.engine import Engine, EngineInfo
from agent.errors import EnvironmentProblem, UsageError
from agent.roles import ray
from agent.spec import LABEL_INSTANCE
from agent.waits import tcp_open

OK, WARN, FAIL = "ok", "warn", "fail"
GB = 1024**3
MB = 1024**2
# The API the agent needs (health checks' start period: 1.29, Docker 17.05) and the oldest it
# is tested with (1.41, Docker 20.10).
MIN_API = (1, 29)
TESTED_API = (1, 41)
# Ray's object store takes this share of the memory by default, and at most 95% of /dev/shm.
OBJECT_STORE_SHARE = 0.3
SHM_USABLE = 0.95
CAP_SYS_RESOURCE = 1 << 24
# The engine's containerd (dockerd starts it): it spawns the containers, under its limits.
CONTAINERD_PID = Path("/var/run/docker/containerd/containerd.pid")
NR_OPEN = Path("/proc/sys/fs/nr_open")
REACH_TIMEOUT = 2.0  # seconds per port of the head
CHECK_LABEL = "io.syntho.agent.check"  # the throw-away container of the nofile check
Say = Callable[[str], None]
RaySettings = Union[HeadSettings, WorkerSettings]


@dataclass(frozen=True)
class Result:
    status: str  # ok | warn | fail
    line: str  # what was found
    advice: str = ""  # what to do (warn and fail)
    # A fail that refuses a value given (a --nofile the host does not allow): bad input, exit 2
    # as when the engine refuses it at start (agent.engine.Engine.start), not the environment's
    # 3; restarting cannot fix it.
    bad_input: bool = False

    def text(self) -> str:
        return f"{self.status:<4}  {self.line}" + (f" -- {self.advice}" if self.advice else "")


def size(n: float) -> str:
    """Bytes as an operator writes them in --shm-size: 4gb, 512mb, 23.5gb."""
    for unit, factor in (("gb", GB), ("mb", MB)):
        if n >= factor:
            value = n / factor
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{int(n)}b"


# ---- the engine ---------------------------------------------------------------------------------

def docker_version(info: EngineInfo) -> Result:
    line = f"docker: engine {info.server_version}, API {info.api_version}"
    try:
        api = tuple(int(p) for p in info.api_version.split(".")[:2])
    except ValueError:
        return Result(WARN, line, "an API version the agent cannot read; upgrade Docker")
    if api < MIN_API:
        return Result(FAIL, line, "the agent needs API 1.29 or newer (Docker 17.05): upgrade "
                                  "Docker")
    if api < TESTED_API:
        return Result(WARN, line, "older than Docker 20.10 (API 1.41), the oldest the agent is "
                                  "tested with: upgrade Docker")
    return Result(OK, line)


def cgroup_version(info: EngineInfo) -> Result:
    line = f"cgroup: v{info.cgroup_version}"
    if info.cgroup_version == "2":
        return Result(OK, line)
    return Result(WARN, line + " (legacy; works, but Docker deprecates it)",
                  "move the host to cgroup v2 (systemd.unified_cgroup_hierarchy=1) when "
                  "convenient")


def memory(settings: RaySettings, info: EngineInfo) -> Result:
    """--shm-size (and --memory) against the machine's memory: shared memory is memory."""
    total = info.mem_total
    if settings.memory and total and settings.memory > total:
        return Result(FAIL, f"memory: --memory {size(settings.memory)} is more than this "
                            f"host has ({size(total)})", "lower --memory")
    limit = settings.memory or total
    line = f"memory: --shm-size {size(settings.shm_size)} of {size(limit)}"
    line += " (--memory)" if settings.memory else " (this host)"
    if not limit:
        return Result(WARN, "memory: the engine does not say how much this host has",
                      "check --shm-size against the VM's memory yourself")
    if settings.shm_size >= limit:
        return Result(FAIL, line + ": shared memory cannot be all of it",
                      f"lower --shm-size (Ray's default object store is 30% of memory: "
                      f"{size(limit * OBJECT_STORE_SHARE / SHM_USABLE)})")
    if settings.shm_size > limit / 2:
        return Result(WARN, line + ": leaves less than half for Ray's workers",
                      "lower --shm-size, or give the VM more memory")
    return Result(OK, line)


def shared_memory(settings: RaySettings, info: EngineInfo) -> Result:
    """/dev/shm in the container (--shm-size) against the object store Ray would take."""
    limit = settings.memory or info.mem_total
    wanted = limit * OBJECT_STORE_SHARE
    usable = settings.shm_size * SHM_USABLE
    if wanted > usable:
        return Result(WARN, f"/dev/shm: Ray's object store gets {size(usable)} (95% of "
                            f"--shm-size), less than the 30% of memory it takes by default "
                            f"({size(wanted)})",
                      f"raise --shm-size to {size(wanted / SHM_USABLE)} for a full object store")
    return Result(OK, f"/dev/shm: Ray's object store ({size(wanted)}) fits in --shm-size "
                      f"{size(settings.shm_size)}")


def nofile_tried(engine: Engine, settings: RaySettings) -> Result:
    """The nofile limit, tried: a throw-away container of the Ray image with it (~0.2 s)."""
    if engine.image_id(settings.ray_image) is None:
        found = nofile_allowed()
        return nofile_against(settings.nofile, found, f"{settings.ray_image} is not here yet "
                                                      "to try it")
    refused = engine.refuses_nofile(settings.ray_image, settings.nofile,
                                    {CHECK_LABEL: "true", LABEL_INSTANCE: settings.instance})
    if refused:
        cause = refused.split("error during container init: ")[-1]
        return Result(FAIL, f"nofile: the engine refuses --nofile {settings.nofile} ({cause})",
                      f"lower --nofile to what this host allows (`ulimit -Hn` of the engine"
                      f"{nofile_hint()}), or raise the engine's limit (LimitNOFILE)",
                      bad_input=True)
    return Result(OK, f"nofile: the engine starts a container with --nofile {settings.nofile}")


def nofile_allowed() -> int | None:
    """The highest nofile the engine's containerd can give a container, read from /proc: its
    own hard limit unless it may raise it (CAP_SYS_RESOURCE), then the kernel's nr_open. None
    when this machine does not show it (a remote engine, a containerd systemd runs, no root)."""
    try:
        pid = int(CONTAINERD_PID.read_text().strip())
        status = Path(f"/proc/{pid}/status").read_text()
        limits = Path(f"/proc/{pid}/limits").read_text()
        nr_open = int(NR_OPEN.read_text().strip())
    except (OSError, ValueError):
        return None
    caps = re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.MULTILINE)
    hard = re.search(r"^Max open files\s+\S+\s+(\S+)", limits, re.MULTILINE)
    if caps is None or hard is None:
        return None
    if int(caps[1], 16) & CAP_SYS_RESOURCE or hard[1] == "unlimited":
        return nr_open
    return min(int(hard[1]), nr_open)


def nofile_hint() -> str:
    allowed = nofile_allowed()
    return f": {allowed}" if allowed is not None else ""


def nofile_against(nofile: int, allowed: int | None, unknown: str) -> Result:
    if allowed is None:
        return Result(WARN, f"nofile: cannot tell whether the engine allows --nofile {nofile}: "
                            f"{unknown}", "run `syntho-agent check` again once it is")
    if nofile > allowed:
        return Result(FAIL, f"nofile: the engine allows at most {allowed} open files per "
                            f"container, not --nofile {nofile}",
                      f"lower --nofile to {allowed}, or raise the engine's limit (LimitNOFILE "
                      "of docker/containerd)", bad_input=True)
    return Result(OK, f"nofile: --nofile {nofile} is within the engine's {allowed}")


# ---- disks --------------------------------------------------------------------------------------

# How full a disk may get: a warning at 80%, a failure (a role run refuses to start) at 95%,
# where Ray itself stops creating objects.
WARN_FULL, FAIL_FULL = 0.80, 0.95


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds path (or would: its nearest existing parent)."""
    st = os.statvfs(_existing(path))
    return st.f_bavail * st.f_frsize


def used_share(path: Path) -> float:
    """How full the file system that holds path is, as df counts it (used / (used + free to
    an unprivileged user)); 0.0 when it reports no size."""
    st = os.statvfs(_existing(path))
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    room = used + st.f_bavail * st.f_frsize
    return used / room if room else 0.0


def fullness(share: float) -> str:
    """A disk's level by how full it is alone: ok, warn from 80%, fail from 95%."""
    return FAIL if share >= FAIL_FULL else WARN if share >= WARN_FULL else OK


def disk(what: str, path: Path, fail_below: int, warn_below: int, advice: str) -> Result:
    try:
        free, full = free_bytes(path), used_share(path)
    except OSError as exc:
        return Result(WARN, f"disk: cannot read the free space of {what} {path} "
                            f"({exc.strerror})", "check it with df")
    line = f"disk: {size(free)} free ({full:.0%} full) for {what} {path}"
    level = fullness(full)
    if free < fail_below or level == FAIL:
        return Result(FAIL, line, f"free at least {size(fail_below)} and keep it under "
                                  f"{FAIL_FULL:.0%} full: {advice}")
    if free < warn_below or level == WARN:
        return Result(WARN, line, f"less than {size(warn_below)} free or over "
                                  f"{WARN_FULL:.0%} full: {advice}")
    return Result(OK, line)


def engine_disk(info: EngineInfo) -> Result:
    if not info.local or not info.root_dir or not Path(info.root_dir).exists():
        return Result(WARN, f"disk: the engine's root {info.root_dir or '?'} is not on this "
                            "machine", "check its free space on the engine's machine (df)")
    return disk("the engine's images and containers in", Path(info.root_dir), 2 * GB, 10 * GB,
                "prune unused images (docker image prune) or grow the disk")


def data_disk(settings: RoleSettings) -> Result:
    return disk("the data dir", settings.data_dir, 100 * MB, GB,
                "the agent's secrets, app.env and backups live there")


# ---- ports --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Wanted:
    """A port the role listens on, on this host."""

    port: int
    host: str  # the address it binds (0.0.0.0: every one)
    what: str


def wanted_ports(settings: RoleSettings, quick: bool) -> list[Wanted]:
    """The host ports the role takes: a Ray node's on the host network (the worker range too,
    unless quick), the app's published ones."""
    if isinstance(settings, AppSettings):
        if settings.tls == "off":
            found = [Wanted(settings.frontend_port, settings.bind, "--frontend-port"),
                     Wanted(settings.backend_port, settings.bind, "--backend-port")]
        else:  # only the proxy, unless asked
            found = [Wanted(settings.https_port, settings.bind, "--https-port"),
                     Wanted(settings.http_port, settings.bind, "--http-port")]
        for published, what in ((settings.publish_postgres, "--publish-postgres"),
                                (settings.publish_redis, "--publish-redis"),
                                (settings.publish_frontend, "--publish-frontend"),
                                (settings.publish_backend, "--publish-backend")):
            if published is not None:
                found.append(Wanted(published[1], published[0], what))
        return found
    if settings.network != "host":
        return []  # on a Docker network: nothing listens on the host
    role = settings.command
    ports = ray.node_ports(settings, role)
    found = []
    if isinstance(settings, HeadSettings) and settings.gcs_ft:
        found.append(Wanted(settings.gcs_redis_port, "127.0.0.1", "--gcs-redis-port"))
    if role == "head":
        found += [Wanted(ray.GCS_PORT, "0.0.0.0", "Ray's GCS"),
                  Wanted(ray.DASHBOARD_PORT, "0.0.0.0", "Ray's dashboard"),
                  Wanted(ray.CLIENT_PORT, "0.0.0.0", "Ray's client server")]
    found += [Wanted(getattr(ports, key), "0.0.0.0", "--" + key.replace("_", "-"))
              for key in RAY_PORTS if key not in ("min_worker_port", "max_worker_port")]
    if not quick:
        found += [Wanted(p, "0.0.0.0", "Ray's worker range")
                  for p in range(ports.min_worker_port, ports.max_worker_port + 1)]
    return found


def port_taken(host: str, port: int) -> str | None:
    """Why port cannot be bound on host now (a listener holds it), or None when it is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def role_of(settings: RoleSettings) -> str:
    """head, worker or app (restore converges the app)."""
    return "app" if isinstance(settings, AppSettings) else settings.command


def own_ports(engine: Engine, settings: RoleSettings) -> set[int] | None:
    """The host ports this agent's own running containers of the role hold (a re-run must not
    fail its own check); None: all of them (a Ray node on the host network listens directly)."""
    running = [o for o in engine.managed(settings.instance, role_of(settings))
               if o.status == "running"]
    if not isinstance(settings, AppSettings):
        return None if running else set()
    return {p.host_port for o in running for p in o.published}


def ports(engine: Engine, settings: RoleSettings, quick: bool) -> list[Result]:
    """Every port the role needs, free on this host; one line for them all when they are."""
    wanted = wanted_ports(settings, quick)
    taken = [(w, why) for w in wanted if (why := port_taken(w.host, w.port))]
    if not wanted:
        return [Result(OK, f"ports: none on the host (Ray runs on the Docker network "
                           f"{getattr(settings, 'network', '?')})")]
    if not taken:
        listed = _ranges(sorted({w.port for w in wanted}))
        return [Result(OK, f"ports: free on this host: {listed}")]
    own = own_ports(engine, settings)
    results: list[Result] = []
    for w, why in taken:
        if own is None or w.port in own:
            continue  # held by this agent's own container
        if "assign requested address" in why:
            results.append(Result(FAIL, f"ports: {w.host} is not an address of this host "
                                        f"({w.what})", "give one this host has (ip addr)"))
        elif w.what == "Ray's worker range":
            continue  # counted below: Ray skips a taken one
        else:
            results.append(Result(FAIL, f"ports: {w.port} on {w.host} ({w.what}) is taken on "
                                        f"this host ({why})",
                                  f"free it (ss -ltnp 'sport = :{w.port}') or choose another "
                                  "port"))
    in_range = [w.port for w, _ in taken if w.what == "Ray's worker range"]
    if in_range and own is not None:
        total = sum(1 for w in wanted if w.what == "Ray's worker range")
        status = FAIL if len(in_range) == total else WARN
        results.append(Result(status, f"ports: {len(in_range)} of the {total} ports of Ray's "
                                      f"worker range are taken on this host",
                              "move --min-worker-port/--max-worker-port to a free range"))
    if not results:
        held = "this agent's running containers"
        results.append(Result(OK, f"ports: every one free, or held by {held}"))
    return results


def _ranges(ports: list[int]) -> str:
    """6379, 6380, 6381, 10002 -> '6379-6381, 10002'."""
    spans: list[list[int]] = []
    for p in ports:
        if spans and p == spans[-1][1] + 1:
            spans[-1][1] = p
        else:
            spans.append([p, p])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


# ---- the head, from a worker or the app ---------------------------------------------------------

def head_reachable(head: str, port: int, what: str) -> Result:
    if tcp_open(head, port, timeout=REACH_TIMEOUT):
        return Result(OK, f"head: {head}:{port} ({what}) answers")
    return Result(FAIL, f"head: {head}:{port} ({what}) does not answer within "
                        f"{REACH_TIMEOUT:.0f}s",
                  f"start the head, or open port {port} of the head to this VM")


# ---- the firewall -------------------------------------------------------------------------------

def firewall(settings: RoleSettings) -> list[str]:
    """The ports this role's VM must accept connections on, and from whom; what it must reach."""
    if isinstance(settings, AppSettings):
        return ["firewall: this app VM accepts (tcp)",
                f"  {settings.frontend_port:<13} the web UI (--frontend-port)    from users",
                f"  {settings.backend_port:<13} the backend API (--backend-port) from users and "
                "API clients",
                f"and reaches the head on 6379, 8265 and {ray.CLIENT_PORT}"]
    role = settings.command
    p = ray.node_ports(settings, role)
    workers = f"{p.min_worker_port}-{p.max_worker_port}"
    peers = "every worker VM" if role == "head" else "the head and every other worker VM"
    rows = []
    if role == "head":
        rows += [("6379", "Ray's GCS (the join port)", "every worker VM and the app VM"),
                 ("8265", "Ray's dashboard", "worker and app VMs, operators"),
                 (str(ray.CLIENT_PORT), "Ray's client server", "the app VM")]
    rows += [(f"{p.node_manager_port}, {p.object_manager_port}",
              "node manager, object manager", peers),
             (workers, "Ray's worker processes", peers),
             (f"{p.dashboard_agent_grpc_port}, {p.dashboard_agent_listen_port}",
              "dashboard agent (gRPC, HTTP)",
              "this VM only" if role == "head" else "the head (its dashboard)"),
             (str(p.runtime_env_agent_port), "runtime-env agent", "this VM only"),
             (", ".join(map(str, (p.metrics_export_port,
                                  *(ray.HEAD_METRICS_PORTS if role == "head" else ())))),
              "metrics (Prometheus; no secret in them)", "your Prometheus only")]
    width = max(len(r[0]) for r in rows)
    lines = [f"firewall: this {role} VM accepts (tcp)"]
    what_width = max(len(r[1]) for r in rows)
    lines += [f"  {ports:<{width}}  {what:<{what_width}}  from {who}" for ports, what, who in rows]
    if role == "head":
        lines.append(f"and reaches every worker VM on its {_defaults(1, agents=True)}")
    else:
        lines.append(f"and reaches the head on 6379, 8265 and its {_defaults(0, agents=False)}, "
                     f"and every other worker VM on its {_defaults(1, agents=False)}")
    if settings.network != "host":
        lines.append(f"(this run uses the Docker network {settings.network}: nothing listens "
                     "on the host; the table is for a VM on the host network)")
    return lines


def _defaults(pick: int, agents: bool) -> str:
    """The ports a node of a role (0 head, 1 worker) listens on for its peers, by default;
    agents: with the dashboard agent's, which the head's dashboard reaches."""
    d = {key: ports[pick] for key, ports in RAY_PORTS.items()}
    keys = ["node_manager_port", "object_manager_port"]
    keys += ["dashboard_agent_grpc_port", "dashboard_agent_listen_port"] if agents else []
    listed = ", ".join(str(d[k]) for k in keys)
    what = "node manager, object manager, dashboard agent" if agents else \
        "node manager, object manager"
    return (f"{what} and worker ports ({listed}, {d['min_worker_port']}-"
            f"{d['max_worker_port']} by default)")


def ray_tls_certificates(settings: RoleSettings) -> list[Result]:
    """This node's Ray certificate and the cluster CA's (docs/security.md): names, issuer,
    expiry; a warning 30 days ahead (a run renews the node's then), a failure once expired."""
    found = ray_tls.existing(settings.data_dir)
    if found is None:
        return [Result(OK, "ray tls: none in this data dir (Ray here speaks plain, or the role "
                           "has not run yet)")]
    results = []
    now = datetime.now(timezone.utc)
    for what, info in (("this node's", found[1]), ("the cluster CA's", found[0])):
        if info is None:
            results.append(Result(WARN, f"ray tls: {what} certificate is missing",
                                  "re-run the role: it issues one"))
            continue
        line = f"ray tls: {what} {tls.describe(info, now, days=ray_tls.WARN_WITHIN_DAYS)}"
        if info.not_after <= now:
            results.append(Result(FAIL, line, "re-run the role: it renews it"))
        elif tls.expires_soon(info, now, days=ray_tls.WARN_WITHIN_DAYS):
            results.append(Result(WARN, line, "re-run the role: it renews it"))
        else:
            results.append(Result(OK, line))
    return results


# ---- running them -------------------------------------------------------------------------------

def run_checks(engine: Engine, settings: RoleSettings, quick: bool) -> list[Result]:
    """Every check of the role; quick: only those that cost no throw-away container and no
    remote connection (before a run)."""
    info = engine.info()
    results = [docker_version(info), cgroup_version(info)]
    if not isinstance(settings, AppSettings):
        results += [memory(settings, info), shared_memory(settings, info)]
        if quick:
            if info.local:
                results.append(nofile_against(settings.nofile, nofile_allowed(), ""))
        else:
            results.append(nofile_tried(engine, settings))
    results += [engine_disk(info), data_disk(settings)]
    spill = getattr(settings, "spill_dir", None)
    if spill is not None:
        results.append(disk("Ray's spill dir", spill, GB, 10 * GB,
                            "Ray spills objects there when its object store is full"))
    results += ports(engine, settings, quick)
    if not quick:
        results += ray_tls_certificates(settings)
    if not quick and not isinstance(settings, HeadSettings) and settings.head:
        results += [head_reachable(settings.head, ray.GCS_PORT, "Ray's GCS"),
                    head_reachable(settings.head, ray.DASHBOARD_PORT, "Ray's dashboard"),
                    head_reachable(settings.head, ray.CLIENT_PORT, "Ray's client server")]
    return results


def report(engine: Engine, settings: RoleSettings, say: Say) -> bool:
    """`syntho-agent check ROLE`: every check, then the firewall table; True when one failed."""
    results = run_checks(engine, settings, quick=False)
    for r in results:
        say(r.text())
    say("")
    for line in firewall(settings):
        say(line)
    return any(r.status == FAIL for r in results)


def before_run(engine: Engine, settings: RoleSettings, say: Say) -> None:
    """The quick checks, before a role run changes anything: the failing ones printed, then
    EnvironmentProblem (exit 3), or UsageError (exit 2) when one refuses a value given (a
    --nofile the host does not allow). A run that passes prints nothing."""
    failed = [r for r in run_checks(engine, settings, quick=True) if r.status == FAIL]
    for r in failed:
        say(r.text())
    if failed:  # the error line names them too: it is the line a log collector keeps
        # A value the host refuses (--nofile) is bad input, exit 2, as when the engine refuses
        # it at start; the environment's failures alone are 3.
        error = UsageError if any(r.bad_input for r in failed) else EnvironmentProblem
        raise error(
            f"{len(failed)} host check(s) failed: {'; '.join(r.line for r in failed)}; nothing "
            "was changed: fix them (what to do: above), or run with --skip-checks to go on "
            f"anyway (`syntho-agent check {role_of(settings)}` runs every check)")

