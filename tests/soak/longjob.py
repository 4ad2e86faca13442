"""The long job that spans the faults: a detached Ray actor that counts, created and read
through Ray client from a container of the Ray image on vm-head's engine (restart always,
so it comes back with the VM). It prints one JSON line per look; the soak reads its log."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.waits import poll
from tests.soak.lab import SoakLab, safe_sh
from tests.support.vms import DATA

NAME = "soak-long-job"
SCRIPT = r'''
import json, os, threading, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

def say(**kw):
    print(json.dumps({"t": time.time(), **kw}), flush=True)

@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Counter:
    def __init__(self):
        self.n, self.born = 0, time.time()
        threading.Thread(target=self.tick, daemon=True).start()
    def tick(self):
        while True:
            time.sleep(1)
            self.n += 1
    def read(self):
        return {"n": self.n, "born": self.born, "node": ray.util.get_node_ip_address()}

while True:
    try:
        if not ray.is_initialized():
            ray.init("ray://127.0.0.1:10001", namespace="soak", logging_level="ERROR")
        try:
            actor = ray.get_actor("counter")
        except ValueError:
            # on a worker, so that a head restart alone does not take its process down
            others = [n["NodeID"] for n in ray.nodes()
                      if n["Alive"] and n["NodeManagerAddress"] != os.environ["HEAD_IP"]]
            strategy = (NodeAffinitySchedulingStrategy(others[0], soft=True) if others
                        else "DEFAULT")
            actor = Counter.options(name="counter", lifetime="detached", get_if_exists=True,
                                    scheduling_strategy=strategy).remote()
            say(event="created")
        say(event="read", **ray.get(actor.read.remote(), timeout=30))
    except Exception as exc:
        say(event="error", error=f"{type(exc).__name__}: {exc}"[:300])
        try:
            ray.shutdown()
        except Exception:
            pass
    time.sleep(5)
'''


def start(lab: SoakLab) -> None:
    head = lab.vms["head"]
    # The head's Ray speaks TLS: the job's Ray client gets the head's settings and files.
    tls = ("$(docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' ray-head "
           "| grep -E '^RAY_(USE_TLS|TLS_)' | sed 's/^/-e /' | tr '\\n' ' ') "
           f"-v {DATA}/ray-tls:/ray-tls:ro")
    code, out, err = head.sh(
        f"docker run -d --name {NAME} --network host --restart always {tls} "
        f"-e RAY_AUTH_MODE=token -e RAY_AUTH_TOKEN -e HEAD_IP={head.ip} "
        f"$(docker inspect -f '{{{{.Config.Image}}}}' ray-head) python3 -u -c \"$SCRIPT\"",
        env={"SCRIPT": SCRIPT, "RAY_AUTH_TOKEN": lab.token})
    if code != 0:
        raise RuntimeError(f"the long job did not start: {out}{err}")
    if not poll(lambda: any(e.get("event") == "read" for e in events(lab)), 300,
                "the long job's first count"):
        raise RuntimeError("the long job never counted:\n" + "\n".join(
            json.dumps(e) for e in events(lab)[-5:]))


def events(lab: SoakLab) -> list[dict[str, Any]]:
    out = safe_sh(lab.vms["head"], f"docker logs {NAME} 2>/dev/null")[1]
    found = []
    for line in out.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            found.append(item)
    return found


@dataclass(frozen=True)
class JobReport:
    """The actor's fate: alive at the end, the same one as at the start, how far it got."""

    survived: bool  # the first actor (its birth time) still answers at the end
    restarts: int  # times Ray restarted it (a new birth time, same name)
    recreated: int  # times it was gone and the job made a new one
    final_count: int
    expected_count: int  # seconds since its birth at the last read
    longest_gap: float  # the longest time without an answer, seconds
    summary: str
    counted: bool = True  # it read the actor's count at least once


def recreations(found: list[dict[str, Any]]) -> int:
    """Times the actor was gone and the job made a new one, after its first count: a
    "created" whose next read is of an actor born after it (a "created" followed by a read
    of the older actor was not one: get_if_exists found it after all)."""
    first = next((i for i, e in enumerate(found) if e.get("event") == "read"), None)
    if first is None:
        return 0
    count = 0
    for i in range(first + 1, len(found)):
        if found[i].get("event") != "created":
            continue
        nxt = next((e for e in found[i + 1:] if e.get("event") == "read"), None)
        if nxt is None or float(nxt["born"]) >= float(found[i]["t"]) - 1.0:
            count += 1  # a new actor (or none answered after it: lost all the same)
    return count


def report(lab: SoakLab, since: float, until: float) -> JobReport:
    return judge(events(lab), since, until)


def judge(found: list[dict[str, Any]], since: float, until: float) -> JobReport:
    """The report from the job's events (pure)."""
    reads = [e for e in found if e.get("event") == "read"]
    if not reads:
        return JobReport(False, 0, 0, 0, 0, until - since, "it never counted", counted=False)
    recreated = recreations(found)
    births: list[float] = []
    for r in reads:
        if not births or births[-1] != r["born"]:
            births.append(r["born"])
    last = reads[-1]
    times = [since] + [float(r["t"]) for r in reads if float(r["t"]) >= since] + [until]
    gap = max(b - a for a, b in zip(times, times[1:]))
    survived = births[0] == last["born"] and until - float(last["t"]) < 60
    expected = int(float(last["t"]) - float(last["born"]))
    restarts = max(0, len(births) - 1 - recreated)
    text = (f"{'survived' if survived else 'lost'}: count {last['n']} of ~{expected} s alive; "
            f"{restarts} restart(s) by Ray, {recreated} re-creation(s), "
            f"longest gap without an answer {gap:.0f} s")
    return JobReport(survived, restarts, recreated, int(last["n"]), expected, gap, text)
