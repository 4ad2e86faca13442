"""4. Join latency: from the moment the head's 6379 opens until the worker's container starts.

The worker side is started first and left waiting (long enough for its back-off to reach its
cap), then the head's port opens; the worker container's start time is read from the engine.
  - agent: `syntho-agent worker --head IP --wait 0` (polls with back-off capped at 0.5 s)
  - floor: bench/floor.py polling every 10 ms, then creating the same worker container
Two ways for the port to open:
  a. on a live address (a head VM that is up; its head starts listening): one Ray head (the
     agent's head role) runs throughout; a REJECT rule in the head container's own network
     namespace makes 6379 refuse connections until the moment it is deleted;
  b. from nothing (a head VM booting): on a new network, `syntho-agent head` is started while
     the worker waits; the moment 6379 opens is read from the head's socket table
     (/proc/PID/net/tcp, every 5 ms). Until the head container exists its address does not
     answer at all, so a connection attempt hangs for its whole timeout.
Target: the agent notices within one poll interval (0.5 s): in every run, its line saying
that the head answers (read from its unbuffered output as it comes) follows the port's
opening by at most 0.5 s. The container's create and start come on top, as for the floor.
"""

from __future__ import annotations

import json
import random
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import docker
import docker.errors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import WorkerSettings
from agent.resolve import HEAD_POLL
from agent.roles import ray
from agent.validate import size
from bench import common, stacks
from tests.support.agent_cli import agent_cmd, agent_env
from tests.support.constants import AGENT_INSTANCE_LABEL, NOFILE, REPO

FLOOR = Path(__file__).resolve().parent / "floor.py"
POLL_CEILING = HEAD_POLL  # agent/resolve.py wait_for_head: a look every 0.5 s at most
ANSWERS = f":{ray.GCS_PORT} answers"  # wait_for_head's line once the port took a connection
SETTLE = 3.0  # seconds the worker side waits before the port opens (its back-off is capped)
REJECT = ["INPUT", "-p", "tcp", "--dport", str(ray.GCS_PORT), "-j", "REJECT",
          "--reject-with", "tcp-reset"]


def running(client: docker.DockerClient, name: str) -> bool:
    try:
        return bool(client.api.inspect_container(name)["State"].get("Running"))
    except docker.errors.NotFound:
        return False


def listening_since(client: docker.DockerClient, name: str, port: int) -> float:
    """The time.time() at which the container's process started listening on port, read
    from its network namespace's socket tables every 5 ms (no packet is sent to it)."""
    common.wait_for(lambda: running(client, name), 120, f"{name} to run", interval=0.005)
    pid = client.api.inspect_container(name)["State"]["Pid"]
    wanted = f":{port:04X}"

    def listening() -> bool:
        for table in ("tcp", "tcp6"):
            try:
                rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            if any(f[1].endswith(wanted) and f[3] == "0A" for f in (r.split() for r in rows)):
                return True
        return False

    common.wait_for(listening, 120, f"{name} to listen on {port}", interval=0.005)
    return time.time()


def in_netns(pid: int, *iptables: str) -> None:
    """iptables in a container's own network namespace (the host's rules are not touched)."""
    # -w: wait for the xtables lock, which dockerd takes while it sets up containers.
    subprocess.run(["nsenter", "-t", str(pid), "-n", "iptables", "-w", "10", *iptables],
                   check=True)


class Side:
    """The worker side of one round: the agent or the floor, waiting for the head at ip."""

    def __init__(self, j: common.Janitor, images: dict[str, str], kind: str, tag: str,
                 network: str, ip: str, token: str, phase: float) -> None:
        self.j = j
        self.instance = j.instance(f"{tag}w")
        self.name = f"ray-worker-{self.instance}"
        self.log = j.tmp / f"{tag}.log"
        # Unbuffered: each line is read (and timestamped) the moment the agent says it.
        env = agent_env({"SYNTHO_AGENT_TOKEN": token, "PYTHONUNBUFFERED": "1"},
                        write_bytecode=True)
        if kind == "agent":
            cmd = agent_cmd(
                "worker", "--data-dir", str(j.tmp / self.instance), "--instance", self.instance,
                "--network", network, "--head", ip, "--wait", "0", "--ray-image", images["ray"],
                "--shm-size", "512mb", "--nofile", NOFILE)
        else:
            settings = WorkerSettings(data_dir=j.tmp / self.instance, instance=self.instance,
                                      head=ip, network=network, ray_image=images["ray"],
                                      shm_size=size("512mb"), nofile=int(NOFILE))
            plan = stacks.floor_plan(ray.worker_spec(settings, token), j.labels,
                                     wait_tcp=(ip, ray.GCS_PORT))
            path = j.tmp / f"{tag}.json"
            path.write_text(json.dumps(plan))
            cmd = [common.PY, str(FLOOR), str(path)]
        self.out = self.log.open("w")
        self.env = env
        self.lines: list[tuple[float, str]] = []
        self.proc = j.spawn(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()
        common.wait_for(lambda: "waiting for" in self.log.read_text(), 120,
                        f"the {kind} to wait for the head", interval=0.05)
        # Long enough for the back-off to reach its cap, plus a random fraction of a cycle:
        # the port must open at any point of the agent's poll interval, not always the same.
        time.sleep(SETTLE + phase)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.time(), line))
            self.out.write(line)
            self.out.flush()

    def noticed_at(self) -> float:
        """When the agent said that the head answers (time.time())."""
        common.wait_for(lambda: any(ANSWERS in line for _, line in self.lines), 30,
                        "the agent to say the head answers", interval=0.01)
        return next(at for at, line in self.lines if ANSWERS in line)

    def started_at(self) -> float:
        client = self.j.client
        common.wait_for(lambda: running(client, self.name), 120, f"{self.name} to start",
                        interval=0.05)
        return common.stamp(client.api.inspect_container(self.name)["State"]["StartedAt"])

    def end(self) -> None:
        common.Janitor.stop(self.proc)
        self.reader.join(timeout=10)
        self.out.close()
        for ctr in self.j.client.containers.list(
                all=True, sparse=True,
                filters={"label": f"{AGENT_INSTANCE_LABEL}={self.instance}"}):
            ctr.remove(force=True)


def main() -> None:
    args = common.parser(__doc__.splitlines()[0], repeat=5).parse_args()
    client = common.client()
    images = common.images(client)
    times: dict[str, list[float]] = {k: [] for k in ("a-agent", "a-floor", "b-agent", "b-floor")}
    noticed: dict[str, list[float]] = {"a": [], "b": []}  # port open -> the agent says so
    notes: list[str] = []
    rng = random.Random(4)  # the same phases on both sides, round by round
    phases = [rng.uniform(0, POLL_CEILING) for _ in range(args.repeat)]
    with common.Janitor(client) as j:
        common.log("a. starting a Ray head on a bridge network, its 6379 closed by a rule ...")
        network = f"syntho-{j.id}-join"
        head = stacks.start_head(j, images, "joinh", network)
        pid = client.api.inspect_container(f"ray-head-{head.instance}")["State"]["Pid"]
        in_netns(pid, "-I", *REJECT)

        def live(kind: str) -> Callable[[int], None]:
            def run(i: int) -> None:
                side = Side(j, images, kind, f"ja{kind[0]}{i}", network, head.ip, head.token,
                            phases[i])
                try:
                    in_netns(pid, "-D", *REJECT)
                    opened = time.time()
                    latency = side.started_at() - opened
                    if kind == "agent":
                        noticed["a"].append(side.noticed_at() - opened)
                finally:
                    side.end()
                    in_netns(pid, "-I", *REJECT)
                times[f"a-{kind}"].append(latency)
                common.log(f"a. {kind}: worker container started {latency:.2f} s after 6379 "
                           "opened")
            return run

        def booting(kind: str) -> Callable[[int], None]:
            def run(i: int) -> None:
                tag = f"jb{kind[0]}{i}"
                net_name = f"{j.id}-{tag}"
                j.networks.append(net_name)
                net = client.networks.create(net_name, driver="bridge", labels=j.labels)
                net.reload()
                # The first container on a new network gets .2: the head will.
                ip = str(net.attrs["IPAM"]["Config"][0]["Gateway"]).rsplit(".", 1)[0] + ".2"
                token = secrets.token_hex(32)
                side = Side(j, images, kind, tag, net_name, ip, token, phases[i])
                head_instance = j.instance(f"{tag}h")
                starter = j.spawn(agent_cmd("head", *stacks.head_args(
                    j, images, head_instance, net_name)), cwd=REPO, env=side.env,
                    stdout=side.out, stderr=side.out)
                try:
                    opened = listening_since(client, f"ray-head-{head_instance}", ray.GCS_PORT)
                    latency = side.started_at() - opened
                    if kind == "agent":
                        noticed["b"].append(side.noticed_at() - opened)
                    got = common.container_ip(client, f"ray-head-{head_instance}", net_name)
                finally:
                    common.Janitor.stop(starter)
                    side.end()
                    for ctr in client.containers.list(all=True, sparse=True, filters={
                            "label": f"{AGENT_INSTANCE_LABEL}={head_instance}"}):
                        ctr.remove(force=True)
                    net.remove()
                if got != ip:
                    raise RuntimeError(f"the head got {got}, not the predicted {ip}")
                times[f"b-{kind}"].append(latency)
                common.log(f"b. {kind}: worker container started {latency:.2f} s after 6379 "
                           "opened")
            return run

        common.interleave(args.repeat, live("agent"), live("floor"))
        common.log("b. the head started from nothing while the worker waits ...")
        common.interleave(args.repeat, booting("agent"), booting("floor"))

    notes.append(f"the agent looks at 6379 every {POLL_CEILING} s at most (agent/resolve.py "
                 "wait_for_head), a look that finds no answer at all (the address not up yet) "
                 "giving up within that interval; after 6379 answers the agent plans, creates "
                 "and starts the container, which the floor does too, without any wait")

    def row(label: str, case: str) -> common.Row:
        seen = noticed[case]
        return common.Row(label, "s", times[f"{case}-agent"],
                          "floor (10 ms polls, then create+start)", times[f"{case}-floor"],
                          target=f"noticed within one poll interval ({POLL_CEILING} s)",
                          met=bool(seen) and max(seen) <= POLL_CEILING,
                          note=f"the agent said the head answers {common.spread(seen, 's')} "
                               "after 6379 opened; the rest is planning, creating and "
                               "starting the container")

    rows = [row("4a. join: 6379 opens on a live head address -> worker container starts", "a"),
            row("4b. join: the head started from nothing -> worker container starts", "b")]
    common.report(rows, notes, args.json)


if __name__ == "__main__":
    main()
