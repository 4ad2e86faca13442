"""What every benchmark shares: statistics, the result table, the engine objects a run makes
(and their removal, pass or fail), and the machine's description. The helpers the tests share
too (the agent as a subprocess, free ports, counting engine calls, REPO, NOFILE) are in
tests/support, imported from there.

Each benchmark is a script (`python bench/NAME.py --repeat N [--json FILE]`); bench/run_all.py
runs them all and prints one table. A row compares the agent with a baseline measured in the
same run, the two interleaved so that machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import docker
import docker.errors
import requests

from tests.support.constants import AGENT_INSTANCE_LABEL, REPO
from tests.support.engine import connect

PY = sys.executable  # the virtualenv's interpreter under `make bench`
BENCH_LABEL = "syntho-bench.owner"
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


# ---- statistics and the result table ----

@dataclass
class Summary:
    n: int
    median: float
    low: float
    high: float
    q1: float
    q3: float


def summary(samples: Sequence[float]) -> Summary:
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return Summary(len(ordered), statistics.median(ordered), ordered[0], ordered[-1], q1, q3)


@dataclass
class Row:
    """One line of the table: the agent's samples against a baseline's, with the target."""

    name: str
    unit: str  # s | ms | MB | calls
    agent: list[float]
    baseline_name: str
    baseline: list[float] = field(default_factory=list)
    baseline_text: str = ""  # when there is no number (e.g. "never")
    target: str = ""
    met: bool | None = None
    note: str = ""

    def ratio(self) -> float | None:
        if not self.agent or not self.baseline:
            return None
        base = summary(self.baseline).median
        return summary(self.agent).median / base if base else None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio()
        data["agent_summary"] = asdict(summary(self.agent)) if self.agent else None
        data["baseline_summary"] = asdict(summary(self.baseline)) if self.baseline else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        keys = {"name", "unit", "agent", "baseline_name", "baseline", "baseline_text", "target",
                "met", "note"}
        return cls(**{k: v for k, v in data.items() if k in keys})


def _number(value: float, unit: str) -> str:
    if unit == "calls":
        return f"{value:.1f}" if value != int(value) else f"{int(value)}"
    if unit == "MB":
        return f"{value:.1f}"
    if unit == "ms":
        return f"{value:.0f}"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def spread(samples: Sequence[float], unit: str) -> str:
    """'median unit (min-max)' of the samples."""
    if not samples:
        return "-"
    s = summary(samples)
    text = f"{_number(s.median, unit)} {unit}"
    if s.n > 1:
        text += f" ({_number(s.low, unit)}-{_number(s.high, unit)})"
    return text


HEADER = ("measurement", "agent: median (min-max)", "baseline", "baseline: median (min-max)",
          "ratio", "target", "met")


def cells(row: Row) -> tuple[str, ...]:
    ratio = row.ratio()
    met = {True: "yes", False: "NO", None: "-"}[row.met]
    return (row.name, spread(row.agent, row.unit), row.baseline_name,
            row.baseline_text or spread(row.baseline, row.unit),
            f"{ratio:.2f}x" if ratio is not None else "-", row.target, met)


def table(rows: Sequence[Row], markdown: bool = False) -> str:
    lines = [HEADER, *(cells(r) for r in rows)]
    if markdown:
        out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in lines[1:]]
        return "\n".join(out)
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def report(rows: Sequence[Row], notes: Sequence[str], json_path: Path | None) -> None:
    print(table(rows))
    for note in notes:
        print(f"  - {note}")
    for row in rows:
        if row.note:
            print(f"  - {row.name}: {row.note}")
    if json_path is not None:
        json_path.write_text(json.dumps({"rows": [r.as_dict() for r in rows],
                                         "notes": list(notes)}, indent=2))


def parser(description: str, repeat: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--repeat", type=int, default=repeat,
                   help=f"runs of each side (default {repeat})")
    p.add_argument("--json", type=Path, help="also write the rows to this file (for run_all)")
    return p


def interleave(runs: int, *sides: Callable[[int], None]) -> None:
    """Run each side once per round, alternating which goes first, so that drift in the
    machine's load is shared."""
    for i in range(runs):
        order = sides if i % 2 == 0 else tuple(reversed(sides))
        for side in order:
            side(i)


# ---- the engine, the agent and what a run makes ----

def client(timeout: int = 300) -> docker.DockerClient:
    try:
        return connect(timeout)
    except docker.errors.DockerException as exc:
        raise SystemExit(f"the Docker engine does not answer ({exc}); run `make engine`") from None


def images(c: docker.DockerClient) -> dict[str, str]:
    """The test images' references (tests/images/build.py --list); they must be built already
    (`make images`)."""
    listed = subprocess.run([PY, "tests/images/build.py", "--list"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    refs = {str(k): str(v) for k, v in json.loads(listed).items()}
    for name in ("ray", "postgres", "redis", "core", "backend", "frontend", "busybox"):
        try:
            c.images.get(refs[name])
        except docker.errors.ImageNotFound:
            raise SystemExit(f"the test image {refs[name]} is missing: run `make images`") from None
    return refs


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.02) -> float:
    """Poll tightly until condition() holds; returns the perf_counter() when it did."""
    deadline = time.perf_counter() + timeout
    while True:
        if condition():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(interval)


class Poller:
    """A client in a thread that asks every 20 ms and records (start, answer), the answer None
    for a failed request: what a user sees during an upgrade."""

    def __init__(self, probe: Callable[[], object | None]) -> None:
        self.probe = probe
        self.samples: list[tuple[float, object | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            self.samples.append((started, self.probe()))
            time.sleep(max(0.0, 0.02 - (time.perf_counter() - started)))

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def wait_more(self, n: int = 10) -> None:
        """Until n more requests have been made (before a change, and after it)."""
        seen = len(self.samples)
        wait_for(lambda: len(self.samples) >= seen + n, 30, f"{n} more requests")

    def failed(self) -> int:
        return sum(1 for _, answer in self.samples if answer is None)

    def gaps(self) -> list[float]:
        """Each stretch of failed requests: from the first failure's start to the start of the
        next request that succeeded (or the last request's start, if none did)."""
        found, begun = [], None
        for started, answer in self.samples:
            if answer is None and begun is None:
                begun = started
            elif answer is not None and begun is not None:
                found.append(started - begun)
                begun = None
        if begun is not None:
            found.append(self.samples[-1][0] - begun)
        return found


def stamp(rfc3339: str) -> float:
    """An engine timestamp (nanoseconds, UTC) as seconds since the epoch."""
    whole, _, frac = rfc3339.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")


def container_ip(c: docker.DockerClient, name: str, network: str) -> str:
    attrs = c.api.inspect_container(name)
    return str(attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


class Janitor:
    """Unique names for one run's engine objects, and their removal at the end, pass or fail.

    Only what carries this run's marks is removed: its agent instances, its compose projects,
    its own label, and the names it recorded. Other suites on the same engine are never touched.
    """

    def __init__(self, c: docker.DockerClient) -> None:
        self.client = c
        self.id = "bench" + uuid.uuid4().hex[:6]
        self.labels = {BENCH_LABEL: self.id}
        self.tmp = Path(tempfile.mkdtemp(prefix=f"syntho-{self.id}-"))
        self.instances: list[str] = []
        self.projects: list[str] = []
        self.networks: list[str] = []
        self.volumes: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> Janitor:
        signal.signal(signal.SIGTERM, _interrupted)
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def instance(self, name: str) -> str:
        """An agent --instance (and name suffix) unique to this run."""
        full = f"{self.id}{name}"
        self.instances.append(full)
        return full

    def project(self, name: str) -> str:
        full = f"{self.id}{name}"
        self.projects.append(full)
        return full

    def spawn(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """A background process, ended (by its pid) at clean-up."""
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[Any]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _filters(self) -> list[dict[str, str]]:
        found = [{"label": f"{BENCH_LABEL}={self.id}"}]
        found += [{"label": f"{AGENT_INSTANCE_LABEL}={i}"} for i in self.instances]
        found += [{"label": f"{COMPOSE_PROJECT_LABEL}={p}"} for p in self.projects]
        return found

    def remove_containers(self) -> None:
        for f in self._filters():
            for ctr in self.client.containers.list(all=True, filters=f, sparse=True):
                try:
                    ctr.remove(force=True)
                except docker.errors.NotFound:
                    pass

    def cleanup(self) -> None:
        for proc in self.procs:  # first: a watching agent would bring containers back
            self.stop(proc)
        problems: list[str] = []
        for step in (self.remove_containers, self._remove_networks, self._remove_volumes):
            try:
                step()
            except (docker.errors.DockerException, requests.RequestException) as exc:
                problems.append(f"{step.__name__}: {exc}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        if problems:
            log(f"clean-up of {self.id} left something behind: {'; '.join(problems)}")

    def _remove_networks(self) -> None:
        seen: set[str] = set()
        nets = [n for f in self._filters() for n in self.client.networks.list(filters=f)]
        nets += [n for name in self.networks for n in self.client.networks.list(names=[name])
                 if n.name == name]
        for net in nets:
            if net.id in seen:
                continue
            seen.add(str(net.id))
            try:
                net.remove()
            except docker.errors.NotFound:
                pass

    def _remove_volumes(self) -> None:
        vols = [v for f in self._filters() for v in self.client.volumes.list(filters=f)]
        for name in self.volumes:
            try:
                vols.append(self.client.volumes.get(name))
            except docker.errors.NotFound:
                pass
        for vol in vols:
            try:
                vol.remove(force=True)
            except docker.errors.NotFound:
                pass


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# ---- the machine ----

def machine(c: docker.DockerClient) -> dict[str, str]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    version = c.version()
    info = c.info()
    try:
        compose = subprocess.run(["docker-compose", "version", "--short"], capture_output=True,
                                 text=True, timeout=30).stdout.strip()
    except OSError:
        compose = "absent"
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": _os_name(),
        "engine": f"Docker {version.get('Version')} (API {version.get('ApiVersion')}), "
                  f"storage {info.get('Driver')}, cgroup v{info.get('CgroupVersion', '?')}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "docker-compose": compose,
        "containers running on the engine": str(info.get("ContainersRunning")),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()
