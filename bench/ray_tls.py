"""10. Ray's mutual TLS against plain Ray, between two simulated VMs, in one run.

Two VMs of the lab (tests/support/vms.py): vm-head runs `head --no-ray-tls`, vm-w1 `worker`
(images from the lab's registry). A driver in the head's Ray container measures, for Ray plain:

- a. throughput: a task pinned to the worker's node (NodeAffinitySchedulingStrategy,
  soft=False) gets a 100 MB bytes argument (random, `ray.put` on the head, a new object each
  time, so the worker never holds it already) and returns its length; each transfer timed from
  the submission to the result (after one untimed transfer). MB/s = 100 MB (10^6 bytes) / time.
- b. latency: sequential `ray.get(f.remote())` of a no-op pinned to the worker's node (after a
  warm-up of 50): median and p95.

Then the same cluster is switched to TLS as docs/security.md says (`head --ray-tls` on vm-head,
the worker re-run on vm-w1; both `status` say "mutual TLS") and measured again the same way.
Every operation that raises (or returns a wrong length) is a failure, counted, never retried.
Goals: TLS at least 0.8x plain's throughput, a median latency at most 1.2x plain's.

The two sides run one after the other (switching is a restart of the cluster's Ray), not
interleaved: a change of the machine's load between them is not shared (the load average at
each side's start is printed). `--rounds N` repeats plain, TLS N times (the cluster switched
back with `head --no-ray-tls` and the worker re-run), the samples of a side pooled, so that
drift hits both sides more alike.

    python bench/ray_tls.py            # 5 transfers and 1000 tasks each side
    python bench/ray_tls.py --quick    # 2 transfers and 200 tasks
    python bench/ray_tls.py --rounds 3 # plain, TLS, plain, TLS, plain, TLS
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from tests.support.constants import NOFILE, REPO
from tests.support.vms import DATA, GCS_REDIS_REPO, PASSWORD, RAY_REPO, USER, VM, Lab, lab_of_vms

SIZE = 100_000_000  # bytes of each transferred object: "100 MB"
WARMUP_TASKS = 50

# Run in ray-head on vm-head (its environment has the token and, with TLS, Ray's TLS settings).
# Prints one line "RESULT {json}" at the end.
DRIVER = """
import json, os, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

size, repeat, tasks, warmup = (int(os.environ[k]) for k in ("SIZE", "REPEAT", "TASKS", "WARMUP"))
node, worker = os.environ["NODE"], os.environ["WORKER"]
ray.init(address="auto", logging_level="ERROR")
# Not a measurement: until the GCS lists the worker's current raylet (its id from the worker).
at_worker = [n for n in ray.nodes() if n["NodeManagerAddress"] == worker]
deadline = time.monotonic() + 120
while not any(n["NodeID"] == node and n["Alive"] for n in at_worker):
    assert time.monotonic() < deadline, at_worker
    time.sleep(0.5)
    at_worker = [n for n in ray.nodes() if n["NodeManagerAddress"] == worker]
pin = NodeAffinitySchedulingStrategy(node, soft=False)

@ray.remote
def length(data):
    return len(data)

@ray.remote
def noop():
    return None

length_there, noop_there = length.options(scheduling_strategy=pin), noop.options(
    scheduling_strategy=pin)
out = {"ray": ray.__version__, "transfer_s": [], "latency_ms": [], "errors": [], "failures": 0,
       "others_alive": sum(1 for n in at_worker if n["Alive"] and n["NodeID"] != node)}

def failed(what, exc):
    out["failures"] += 1
    if len(out["errors"]) < 5:
        out["errors"].append(f"{what}: {type(exc).__name__}: {str(exc)[:300]}")

def transfer(timed):
    ref = ray.put(os.urandom(size))  # a new object: never on the worker yet
    try:
        began = time.perf_counter()
        got = ray.get(length_there.remote(ref), timeout=300)
        took = time.perf_counter() - began
        if got != size:
            raise ValueError(f"the task saw {got} bytes")
        if timed:
            out["transfer_s"].append(took)
    except Exception as exc:
        failed("transfer", exc)
    del ref

def task(timed):
    try:
        began = time.perf_counter()
        ray.get(noop_there.remote(), timeout=60)
        took = time.perf_counter() - began
        if timed:
            out["latency_ms"].append(took * 1000)
    except Exception as exc:
        failed("task", exc)

transfer(False)
for _ in range(repeat):
    transfer(True)
for _ in range(warmup):
    task(False)
for _ in range(tasks):
    task(True)
print("RESULT " + json.dumps(out), flush=True)
"""


# Run in ray-worker on vm-w1: the node id of the raylet there, as the GCS knows it.
NODE_ID = """
import ray
ray.init(address="auto", logging_level="ERROR")
print("NODE " + ray.get_runtime_context().get_node_id(), flush=True)
"""


@dataclass
class Side:
    name: str
    transfer_s: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    ray: str = "?"
    loads: list[float] = field(default_factory=list)  # the 1-minute load average at each start
    notes: list[str] = field(default_factory=list)

    def mbps(self) -> list[float]:
        return [SIZE / 1e6 / s for s in self.transfer_s]


def median(samples: list[float]) -> float | None:
    return statistics.median(samples) if samples else None


def p95(samples: list[float]) -> float | None:
    if len(samples) < 2:
        return samples[0] if samples else None
    return statistics.quantiles(samples, n=100, method="inclusive")[94]


def worker_node(worker: VM) -> str:
    """The node id of the worker's raylet, asked on vm-w1 until its Ray answers (a readiness
    gate, not a measurement: the agent's join check can pass on the GCS's entry of the
    worker's previous Ray, still listed ALIVE for a while after the head's restart)."""
    found = ""

    def answers() -> bool:
        nonlocal found
        code, out, _ = worker.sh('docker exec ray-worker python3 -c "$NODE_ID"',
                                 env={"NODE_ID": NODE_ID})
        found = next((x.split()[1] for x in out.splitlines() if x.startswith("NODE ")), "")
        return code == 0 and bool(found)

    common.wait_for(answers, 180, "the worker's Ray to answer on vm-w1", interval=1)
    return found


def measure(head: VM, worker: VM, side: Side, repeat: int, tasks: int) -> None:
    """The driver in the head's Ray container; what it could not do counts as failures."""
    node = worker_node(worker)
    side.loads.append(os.getloadavg()[0])
    common.log(f"{side.name}: {repeat} transfers of 100 MB and {tasks} tasks on vm-w1 "
               f"(node {node[:12]}) ...")
    code, out, err = head.sh(
        'docker exec -e SIZE -e REPEAT -e TASKS -e WARMUP -e WORKER -e NODE ray-head '
        'python3 -c "$DRIVER"',
        env={"DRIVER": DRIVER, "SIZE": str(SIZE), "REPEAT": str(repeat), "TASKS": str(tasks),
             "WARMUP": str(WARMUP_TASKS), "WORKER": worker.ip, "NODE": node})
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if code != 0 or line is None:  # the driver itself failed: one failure, nothing measured
        side.failures += 1
        side.errors.append(f"the driver exited {code}: {(out + err)[-1500:]}")
        common.log(f"{side.name}: the driver failed (exit {code}):\n{(out + err)[-1500:]}")
        return
    found: dict[str, Any] = json.loads(line[len("RESULT "):])
    side.ray = str(found["ray"])
    took = [float(x) for x in found["transfer_s"]]
    latency = [float(x) for x in found["latency_ms"]]
    side.transfer_s += took
    side.latency_ms += latency
    side.failures += int(found["failures"])
    side.errors += [str(e) for e in found["errors"]]
    if found["others_alive"]:
        side.notes.append(f"when the driver began, the GCS also listed {found['others_alive']} "
                          f"other node(s) ALIVE at vm-w1's address (the worker's previous Ray)")
    common.log(f"{side.name}: {fmt(median([SIZE / 1e6 / t for t in took]), 0)} MB/s, task "
               f"median {fmt(median(latency), 2)} ms, p95 {fmt(p95(latency), 2)} ms, "
               f"{found['failures']} failure(s)")


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def ratio(tls: float | None, plain: float | None) -> float | None:
    return tls / plain if tls is not None and plain else None


def deploy_plain(lab: Lab, head: VM, worker: VM, common_args: list[str]) -> str:
    """A plain head and its worker; the token."""
    secret = {"SYNTHO_AGENT_REGISTRY_PASSWORD": PASSWORD}
    out = head.agent("head", *common_args, "--no-ray-tls", "--gcs-redis-image",
                     f"{lab.registry}/{GCS_REDIS_REPO}", env=secret)
    assert "ray head ready" in out, out
    code, token, _ = head.sh(f"cat {DATA}/ray-token")
    token = token.strip()
    assert code == 0 and len(token) == 64, token
    out = worker.agent("worker", "--head", head.ip, *common_args, "--no-ray-tls",
                       env={**secret, "SYNTHO_AGENT_TOKEN": token})
    assert "joined the Ray cluster" in out, out
    for vm, ray in ((head, "ray-head"), (worker, "ray-worker")):
        status = vm.agent("status")
        assert "NOT encrypted" in status and not ray_in_tls(vm, ray), f"vm-{vm.name}: {status}"
    return token


def ray_in_tls(vm: VM, container: str) -> bool:
    """Whether the engine started that Ray container with Ray's TLS on."""
    code, out, err = vm.sh(f"docker inspect -f '{{{{json .Config.Env}}}}' {container}")
    assert code == 0, f"vm-{vm.name}: {container}: {out}{err}"
    return "RAY_USE_TLS=1" in json.loads(out)


def switch(lab: Lab, head: VM, worker: VM, common_args: list[str], token: str,
           tls: bool) -> None:
    """docs/security.md, "Switching a running cluster to TLS" (and back): the head with
    --ray-tls (--no-ray-tls), then the worker re-run (no flag: it follows the head)."""
    secret = {"SYNTHO_AGENT_REGISTRY_PASSWORD": PASSWORD}
    out = head.agent("head", *common_args, "--ray-tls" if tls else "--no-ray-tls",
                     "--gcs-redis-image", f"{lab.registry}/{GCS_REDIS_REPO}", env=secret)
    assert "ray head ready" in out, out
    out = worker.agent("worker", "--head", head.ip, *common_args,
                       env={**secret, "SYNTHO_AGENT_TOKEN": token})
    assert "joined the Ray cluster" in out, out
    for vm, ray in ((head, "ray-head"), (worker, "ray-worker")):
        assert ray_in_tls(vm, ray) == tls, f"vm-{vm.name}: {ray}"
        if tls:
            status = vm.agent("status")
            assert "ray traffic: mutual TLS" in status, f"vm-{vm.name}: {status}"
        # Back to plain, `status` on the worker is not asked: it keeps ray-tls/ca.crt and asks
        # the (now plain) dashboard in HTTPS, fails and exits 1 (seen with this agent).


def goals(plain: Side, tls: Side) -> tuple[float | None, bool | None, float | None,
                                          bool | None]:
    """TLS/plain of the median throughput and of the median latency, each with its goal met
    (None: not measured)."""
    through = ratio(median(tls.mbps()), median(plain.mbps()))
    latency = ratio(median(tls.latency_ms), median(plain.latency_ms))
    return (through, None if through is None else through >= 0.8,
            latency, None if latency is None else latency <= 1.2)


def commit() -> str:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "agent"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return f"{sha} + uncommitted changes in agent/" if dirty else sha


def markdown(plain: Side, tls: Side, took: float, started: str, what: str,
             rounds: int) -> str:
    rows = ["| side | 100 MB transfer, MB/s: median (min-max) | task latency median, ms "
            "| task latency p95, ms | failures |", "|---|---|---|---|---|"]
    for s in (plain, tls):
        rates = s.mbps()
        spread = (f"{fmt(median(rates), 0)} ({fmt(min(rates), 0)}-{fmt(max(rates), 0)})"
                  if rates else "-")
        rows.append(f"| {s.name} | {spread} | {fmt(median(s.latency_ms), 2)} | "
                    f"{fmt(p95(s.latency_ms), 2)} | {s.failures} |")
    through, through_met, latency, latency_met = goals(plain, tls)
    tail = ratio(p95(tls.latency_ms), p95(plain.latency_ms))
    met = {True: "met", False: "NOT met", None: "-"}
    rows += ["", "| TLS / plain | ratio | goal | |", "|---|---|---|---|",
             f"| throughput (median MB/s) | {times(through)} | >= 0.8x | {met[through_met]} |",
             f"| task latency (median) | {times(latency)} | <= 1.2x | {met[latency_met]} |",
             f"| task latency (p95) | {times(tail)} | (none) | - |", ""]
    rows += [f"- {what}; Ray {tls.ray if tls.ray != '?' else plain.ray}, vm-head -> vm-w1 "
             f"(two Docker-in-Docker VMs on one host's bridge)",
             f"- commit {commit()}, {started}; the whole run took {took / 60:.1f} min",
             f"- load average (1 min) at each side's start: plain "
             f"{', '.join(f'{x:.1f}' for x in plain.loads)}; TLS "
             f"{', '.join(f'{x:.1f}' for x in tls.loads)} ({os.cpu_count()} cores); sides "
             f"measured one after the other ({rounds} round(s) of plain, then TLS)"]
    if max(plain.loads + tls.loads, default=0.0) > (os.cpu_count() or 1):
        rows.append("- WARNING: the machine was busy (load average above its core count) while "
                    "measuring: the numbers are noisy; compare several runs, or --rounds 3")
    for s in (plain, tls):
        rows += [f"- {s.name}: {e}" for e in s.notes + s.errors]
    return "\n".join(rows)


def main() -> int:
    p = common.parser(__doc__.splitlines()[0] if __doc__ else "", repeat=5)
    p.add_argument("--tasks", type=int, default=1000, help="timed no-op tasks per side "
                   "(default 1000)")
    p.add_argument("--quick", action="store_true", help="2 transfers and 200 tasks per side")
    p.add_argument("--rounds", type=int, default=1, help="plain then TLS, this many times, "
                   "switching the cluster each time (default 1)")
    args = p.parse_args()
    repeat, tasks = (2, 200) if args.quick else (args.repeat, args.tasks)
    what = (f"{repeat} timed transfers of 100 MB (after 1 untimed) and {tasks} sequential "
            f"no-op tasks (after {WARMUP_TASKS}) per side and round")
    client = common.client()
    images = common.images(client)
    if "vm" not in images:
        raise SystemExit("the test image `vm` is missing: run `make images`")
    began, started = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M %Z")
    plain, tls = Side("plain (--no-ray-tls)"), Side("mutual TLS (--ray-tls)")
    with common.Janitor(client) as j, lab_of_vms(client, images, j.tmp) as lab:
        common.log("two VMs (vm-head, vm-w1) ...")
        head = lab.boot("head", f"{lab.prefix}.10")
        worker = lab.boot("w1", f"{lab.prefix}.11")
        common_args = ["--nofile", NOFILE, "--shm-size", "1gb", "--registry", lab.registry,
                       "--registry-user", USER, "--ray-image", RAY_REPO]
        at = time.perf_counter()
        token = deploy_plain(lab, head, worker, common_args)
        common.log(f"plain head and worker deployed in {time.perf_counter() - at:.0f} s")
        for n in range(args.rounds):
            if n > 0:
                at = time.perf_counter()
                switch(lab, head, worker, common_args, token, tls=False)
                common.log(f"switched back to plain in {time.perf_counter() - at:.0f} s")
            measure(head, worker, plain, repeat, tasks)
            at = time.perf_counter()
            switch(lab, head, worker, common_args, token, tls=True)
            common.log(f"switched to TLS (head, then the worker) in "
                       f"{time.perf_counter() - at:.0f} s")
            measure(head, worker, tls, repeat, tasks)
    took = time.perf_counter() - began
    print(markdown(plain, tls, took, started, what, args.rounds))
    if args.json is not None:  # the rows as bench/run_all.py reads them
        _, through_met, _, latency_met = goals(plain, tls)
        rows = [common.Row("10a. 100 MB object to a task on another VM: MB/s", "MB",
                           tls.mbps(), "plain Ray", plain.mbps(), target=">= 0.8x",
                           met=through_met),
                common.Row("10b. no-op task on another VM: latency", "ms", tls.latency_ms,
                           "plain Ray", plain.latency_ms, target="<= 1.2x", met=latency_met)]
        notes = [f"failures: plain {plain.failures}, TLS {tls.failures}", what]
        args.json.write_text(json.dumps({"rows": [r.as_dict() for r in rows], "notes": notes},
                                        indent=2))
    return 1 if plain.failures or tls.failures else 0


if __name__ == "__main__":
    sys.exit(main())
