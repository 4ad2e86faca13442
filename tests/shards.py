"""Every test, in two shards at once and then what must run alone: the command `make test` (and
so CI) runs. `python -m tests.shards [PYTEST ARGS]`.

Why shards: most of the suite waits (on Ray, on the engine, on health checks) rather than
computes, so two pytest processes share this 2-core machine well. Their tests must not see each
other:
- the `isolated` shard holds the modules whose deployments live inside simulated VMs (each its
  own Docker engine) or on Docker networks of their own (a module whose `head_vm` is marked
  `head_on_a_network`; the fixture fails a host-network head in this shard), never on this
  host's network or ports, and that build no image; every build of the zipapp is there too
  (one after the other);
- the `host` shard holds the rest: Ray heads on the host network, image builds, the "nothing
  changed" checks (which leave out what the other shard's sandboxes own:
  tests/support/sandbox.py);
- a test marked `engine_restart` restarts the engine itself: it runs alone, after both.

Each shard's output goes to a log, printed whole when it ends (a line a minute says how far
each has got meanwhile); then one table of the time per module, slowest first, and one closing
line for the whole run. Exit 0 only when every phase passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOGS = REPO / "build" / "test-logs"
# The modules of the `isolated` shard (paths from the repository's root); `host` has the rest.
ISOLATED = (
    "tests/integration/test_ray_up.py",
    "tests/integration/test_vms.py",
    "tests/integration/test_wire.py",
    "tests/soak",
    "tests/integration/test_autoscaling.py",
    "tests/integration/test_zipapp.py",
    "tests/integration/test_aarch64.py",
    "tests/integration/test_cloud_init_run.py",
    "tests/integration/test_launcher_schema.py",
    "tests/integration/test_status_logs.py",
    "tests/integration/test_images.py",
    "tests/integration/test_watch_engine.py",
    "tests/integration/test_reconcile.py",
    "tests/integration/test_systemd_units.py",
    "tests/integration/test_env_file_compose.py",
    "tests/integration/test_examples.py",
    "tests/integration/test_faults.py",  # these two: head_on_a_network
    "tests/integration/test_backup.py",
    "tests/unit",
)
ALONE = "engine_restart"
HEARTBEAT = 60.0


@dataclass
class Phase:
    name: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    code: int | None = None
    began: float = 0.0
    ended: float = 0.0

    @property
    def log(self) -> Path:
        return LOGS / f"{self.name}.log"

    @property
    def junit(self) -> Path:
        return LOGS / f"{self.name}.xml"

    def start(self, extra: list[str]) -> None:
        # its own temporary root: pytest's numbered ones under one user are pruned by whichever
        # run starts next, the other shard's included
        basetemp = Path(tempfile.gettempdir()) / f"syntho-tests-{self.name}"
        cmd = [sys.executable, "-m", "pytest", "-q", "--durations=25",
               f"--junitxml={self.junit}", f"--basetemp={basetemp}", *self.args, *extra]
        self.began = time.monotonic()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         env={**os.environ, "SYNTHO_TEST_SHARD": self.name})

    def poll(self) -> bool:
        """Whether it has ended (and its exit code is known)."""
        assert self.proc is not None
        if self.code is None and self.proc.poll() is not None:
            self.code = self.proc.returncode
            self.ended = time.monotonic()
        return self.code is not None

    def progress(self) -> str:
        """Its log's last progress mark (`[ 45%]`), or how many results so far."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        marks = [line.rsplit("[", 1)[1].strip(" ]") for line in text.splitlines()
                 if line.rstrip().endswith("%]")]
        return marks[-1] if marks else f"{sum(text.count(c) for c in '.FEsx')} results"


def run(phases: list[Phase], extra: list[str]) -> None:
    for phase in phases:
        phase.start(extra)
    last = time.monotonic()
    while not all(phase.poll() for phase in phases):
        time.sleep(1.0)  # a look a second at the children; the heartbeat only every minute
        if time.monotonic() - last >= HEARTBEAT:
            last = time.monotonic()
            print("  ".join(f"{p.name}: {'done' if p.code is not None else p.progress()}"
                            for p in phases), flush=True)
    for phase in phases:
        print(f"\n{'=' * 30} {phase.name}: exit {phase.code} after "
              f"{phase.ended - phase.began:.0f} s {'=' * 30}", flush=True)
        sys.stdout.write(phase.log.read_text(errors="replace"))
        sys.stdout.flush()


@dataclass
class Counts:
    passed: int = 0
    failed: int = 0
    skipped: int = 0


def module_of(classname: str) -> str:
    """tests.integration.test_x[.Class] -> tests/integration/test_x.py"""
    parts = classname.split(".")
    while parts:
        path = "/".join(parts) + ".py"
        if (REPO / path).is_file():
            return path
        parts.pop()
    return classname


def tally(junits: list[Path]) -> tuple[dict[str, float], dict[str, int], Counts]:
    """Seconds and tests per module, and the run's counts, from pytest's JUnit XML files."""
    seconds: dict[str, float] = {}
    tests: dict[str, int] = {}
    counts = Counts()
    for path in junits:
        if not path.exists():
            continue
        for case in ET.parse(path).getroot().iter("testcase"):
            module = module_of(case.get("classname", ""))
            seconds[module] = seconds.get(module, 0.0) + float(case.get("time", "0"))
            tests[module] = tests.get(module, 0) + 1
            if case.find("skipped") is not None:
                counts.skipped += 1
            elif case.find("failure") is not None or case.find("error") is not None:
                counts.failed += 1
            else:
                counts.passed += 1
    return seconds, tests, counts


def table(seconds: dict[str, float], tests: dict[str, int]) -> list[str]:
    total = sum(seconds.values()) or 1.0
    lines = ["time per module, slowest first (setup, call and teardown; the shards ran at once)"]
    for module, secs in sorted(seconds.items(), key=lambda kv: -kv[1]):
        lines.append(f"{secs:8.1f} s {100 * secs / total:5.1f}% {tests.get(module, 0):4d} tests  "
                     f"{module}")
    lines.append(f"{sum(seconds.values()):8.1f} s in all")
    return lines


def main(argv: list[str]) -> int:
    LOGS.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    isolated = [p for p in ISOLATED if (REPO / p).exists()]
    host = ["tests", *(f"--ignore={p}" for p in isolated)]
    together = [Phase("host", [*host, "-m", f"not {ALONE}"]),
                Phase("isolated", [*isolated, "-m", f"not {ALONE}"])]
    alone = Phase("alone", ["tests", "-m", ALONE])
    run(together, argv)
    run([alone], argv)
    phases = [*together, alone]
    seconds, tests, counts = tally([p.junit for p in phases])
    print("\n" + "\n".join(table(seconds, tests)))
    # pytest's 5 is "no test collected": a phase may select none under a -k of the caller's;
    # any other non-zero code is a failure, and so is a run that passed no test at all.
    bad = [p for p in phases if p.code not in (0, 5)]
    print(f"\nshards: {', '.join(f'{p.name} exit {p.code}' for p in phases)}; "
          f"{time.monotonic() - began:.0f} s in all")
    skipped = f", {counts.skipped} skipped" if counts.skipped else ""
    print(f"suite: {counts.passed} passed, {counts.failed} failed{skipped}", flush=True)
    return 1 if bad or counts.failed or not counts.passed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
