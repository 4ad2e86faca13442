"""Ray's real autoscaler (v2, `ray up`'s default in Ray 2.60) runs what `launcher-config` writes.

The config comes from the real command (aws, --spot, a 2-CPU head, 2-CPU workers, 1 to 3 of
them, a 1-minute idle timeout). tests/support/fake_cluster.py keeps what the autoscaler decides
with and swaps the cloud for Ray's fake multi-node provider, whose "nodes" are raylet processes
in one container of the Ray test image. The head is started by the config's own
head_start_ray_commands (token auth on) with the environment `ray up` gives them, in the
container the docker section describes (its -e options). A thread samples the GCS's node list
(via the dashboard) twice a second throughout; the autoscaler's monitor.log, its events and
`ray status` say what it decided and why.

Proven, each from the autoscaler's own decisions:
1. From the head and min_workers, a job of 2 x max_workers tasks that each need a whole worker
   makes it add workers up to max_workers and no further, while half the tasks still wait (a
   demand of 12 CPUs against 2 + 3 x 2); it says it cannot place the rest.
2. Once the job ends, the extra workers go after idle_timeout_minutes (not before, give or take
   one autoscaler update) and the min_workers worker stays through later updates, the
   autoscaler logging that min_workers keeps it.
3. --spot: the worker type's spot marker becomes the node label Ray reserves for it
   (ray.io/market-type=spot); the tasks select it, so only workers of the configured type can
   run them, and every node launched carries it (the head does not).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.models.containers
import pytest
import yaml
from click.testing import CliRunner

from agent import cli, cluster
from agent.waits import poll
from tests.integration.agent_helpers import ip_on
from tests.support import fake_cluster
from tests.support.engine import tar
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

HEAD_TYPE, WORKER_TYPE = "ray.head.default", "ray.worker.default"
HEAD_CPUS, WORKER_CPUS, MIN_WORKERS, MAX_WORKERS, IDLE_MINUTES = 2, 2, 1, 3, 1
IDLE_S = IDLE_MINUTES * 60
UPDATE_S = 5  # Ray's AUTOSCALER_UPDATE_INTERVAL_S, left at its default
TASKS = 2 * MAX_WORKERS  # each needs a whole worker: twice what the autoscaler may launch
ARGS = ["--provider", "aws", "--head-cpus", str(HEAD_CPUS), "--worker-cpus", str(WORKER_CPUS),
        "--min-worker-nodes", str(MIN_WORKERS), "--max-worker-nodes", str(MAX_WORKERS),
        "--idle-timeout-minutes", str(IDLE_MINUTES), "--spot"]
MONITOR_LOG = "/tmp/ray/session_latest/logs/monitor.log"
# The autoscaler's events (what `ray status` and drivers show as "(autoscaler)" lines).
EVENTS_LOG = "/tmp/ray/session_latest/logs/events/event_AUTOSCALER.log"
JOB_DIR = "/tmp/job"
# The job: TASKS tasks of a worker's CPUs on spot nodes, each holding its CPUs until the test
# creates JOB_DIR/release (every fake node shares the container's file system).
JOB = f'''
import json, os, sys, time
import ray

ray.init(address="auto")

@ray.remote(num_cpus={WORKER_CPUS},
            label_selector={{"{fake_cluster.MARKET_LABEL}": "spot"}})
def hold(i):
    node = ray.get_runtime_context().get_node_id()
    with open(f"{JOB_DIR}/started-{{i}}", "w") as f:
        f.write(node)
    while not os.path.exists("{JOB_DIR}/release"):
        time.sleep(0.2)
    return node

nodes = ray.get([hold.remote(i) for i in range({TASKS})])
with open("{JOB_DIR}/done.tmp", "w") as f:
    json.dump(nodes, f)
os.rename("{JOB_DIR}/done.tmp", "{JOB_DIR}/done.json")
'''
# Ray reads a provider's defaults from a file next to it, which the PyPI wheel leaves out for
# the fake provider; the test's config has every key, so it serves as its own defaults.
DEFAULTS = '''
import os, shutil, sys
import ray.autoscaler._private.fake_multi_node as fake
path = os.path.join(fake.__path__[0], "example.yaml")
if not os.path.exists(path):
    shutil.copy(sys.argv[1], path)
'''
BOOTSTRAP = "/root/ray_bootstrap_config.yaml"  # where `ray up` puts the config on the head


def generate(root: Path) -> tuple[dict[str, Any], str]:
    """The real command's config, and the cluster's token (a file it wrote)."""
    (root / "id.pub").write_text("ssh-ed25519 AAAAC3Nza test\n")
    out = root / "aws.yaml"
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("SYNTHO_AGENT_")}
    # Ray in plain: the fake provider's "nodes" are raylets in one container, not machines
    # that issue their own certificates (test_ray_up runs Ray's TLS from the launcher live).
    result = CliRunner().invoke(cli.cli, [
        "launcher-config", *ARGS, "--data-dir", str(root / "data"), "--ssh-public-key",
        str(root / "id.pub"), "--output", str(out), "--no-ray-tls"], env=env,
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return yaml.safe_load(out.read_text()), cluster.token_path(root / "data").read_text().strip()


class FakeCluster:
    """The head of a fake multi-node cluster in one container, and what it says."""

    def __init__(self, container: docker.models.containers.Container, ip: str,
                 token: str) -> None:
        self.container, self.ip, self.token = container, ip, token

    def sh(self, command: str) -> str:
        code, out = self.container.exec_run(["bash", "-c", command])
        text = str(out.decode(errors="replace"))
        assert code == 0, f"{command}: {text[-3000:]}"
        return text

    def nodes(self) -> list[dict[str, Any]]:
        """Every node the GCS knows, alive and dead (via the dashboard)."""
        return cluster.nodes(self.ip, self.token)

    def status(self) -> str:
        """`ray status`, from the dashboard."""
        request = urllib.request.Request(
            f"http://{self.ip}:8265/api/cluster_status?format=1",
            headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            return str(json.load(resp)["data"]["clusterStatus"])

    def monitor_log(self) -> str:
        return self.sh(f"cat {MONITOR_LOG}")

    def events(self) -> list[str]:
        return [json.loads(line)["message"] for line in self.sh(f"cat {EVENTS_LOG}").splitlines()]

    def job_files(self) -> list[str]:
        return self.sh(f"ls {JOB_DIR}").split()


def start(sandbox: Sandbox, image: str, generated: dict[str, Any], token: str) -> FakeCluster:
    """One container; the head as `ray up` starts it, with the fake provider's config."""
    network = sandbox.create_network()
    run_options = generated["docker"]["run_options"]
    env = dict(opt[3:].split("=", 1) for opt in run_options if opt.startswith("-e "))
    container = sandbox.run(image, "autoscale", command=["sleep", "infinity"], network=network,
                            shm_size="2g", environment=env)
    fake = fake_cluster.translate(generated, object_store_bytes=200 * 1024**2)
    container.put_archive("/", tar({
        BOOTSTRAP: yaml.safe_dump(fake).encode(), "/root/defaults.py": DEFAULTS.encode(),
        "/root/job.py": JOB.encode(), "/etc/syntho/ray-token": f"{token}\n".encode()}))
    head = FakeCluster(container, ip_on(container, network), token)
    head.sh(f"mkdir -p {JOB_DIR} && python /root/defaults.py {BOOTSTRAP}")
    # What `ray up` adds to the head's start commands (ray.autoscaler._private.commands and
    # updater): autoscaler v2, the head's identity and type, its type's resources.
    ray_up_env = {"RAY_enable_autoscaler_v2": "1",
                  "RAY_CLOUD_INSTANCE_ID": fake_cluster.FAKE_HEAD_NODE_ID,
                  "RAY_NODE_TYPE_NAME": generated["head_node_type"],
                  "RAY_OVERRIDE_RESOURCES": json.dumps(fake_cluster.head_resources(generated)),
                  "RAY_FAKE_CLUSTER": "1"}  # the fake provider's switch
    exports = "".join(f"export {k}='{v}'; " for k, v in ray_up_env.items())
    for command in generated["head_start_ray_commands"]:
        head.sh(exports + command.replace("~/", "/root/"))
    return head


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    alive_workers: frozenset[str]  # node ids, from the GCS


@dataclass
class Sampler:
    """Samples the cluster about twice a second, from a thread, until stopped."""

    head: FakeCluster
    samples: list[Sample] = field(default_factory=list)
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)  # every node ever listed
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample(self) -> bool:
        if self._stop.is_set():
            return True
        try:
            nodes = self.head.nodes()
        except cluster.UNANSWERED:
            return False
        self.seen.update({n["node_id"]: n for n in nodes})
        alive = frozenset(n["node_id"] for n in nodes
                          if n["state"] == "ALIVE" and not n["is_head_node"])
        self.samples.append(Sample(time.monotonic(), alive))
        return False

    @property
    def workers(self) -> int:
        return len(self.samples[-1].alive_workers) if self.samples else -1

    def since(self, start: float) -> list[Sample]:
        return [s for s in self.samples if s.at >= start]

    @classmethod
    @contextlib.contextmanager
    def running(cls, head: FakeCluster) -> Iterator[Sampler]:
        sampler = cls(head)
        thread = threading.Thread(target=poll, args=(sampler._sample, 0, "the test's end"),
                                  kwargs={"first": 0.5}, daemon=True)
        thread.start()
        try:
            yield sampler
        finally:
            sampler._stop.set()
            thread.join(timeout=30)


def updates_from(head: FakeCluster, count: int) -> bool:
    """Poll until the autoscaler has run `count` more updates than now."""
    start = fake_cluster.updates(head.monitor_log())
    return poll(lambda: fake_cluster.updates(head.monitor_log()) >= start + count,
                (count + 3) * UPDATE_S, f"{count} autoscaler updates")


def started(head: FakeCluster) -> int:
    """How many of the job's tasks have begun (each holds a worker's CPUs until released)."""
    return sum(name.startswith("started-") for name in head.job_files())


def test_the_autoscaler_scales_within_the_generated_bounds(
        sandbox: Sandbox, images: dict[str, str], tmp_path: Path) -> None:
    began = time.monotonic()
    generated, token = generate(tmp_path)
    workers = generated["available_node_types"][WORKER_TYPE]
    assert (workers["min_workers"], workers["max_workers"], generated["max_workers"],
            generated["idle_timeout_minutes"]) == (MIN_WORKERS, MAX_WORKERS, MAX_WORKERS,
                                                   IDLE_MINUTES)
    assert generated["head_node_type"] == HEAD_TYPE
    head = start(sandbox, images["ray"], generated, token)
    capacity = HEAD_CPUS + MAX_WORKERS * WORKER_CPUS
    shape = f"{{'CPU': {float(WORKER_CPUS)}}}"  # a task's demand, as the autoscaler writes it

    with Sampler.running(head) as sampler:
        # The head and min_workers, and no more while nothing asks for more.
        assert poll(lambda: sampler.workers == MIN_WORKERS, 120, "the min_workers worker"), \
            head.status()
        assert updates_from(head, 2)
        assert {len(s.alive_workers) for s in sampler.samples} <= {0, MIN_WORKERS}
        assert fake_cluster.queued(head.monitor_log(), WORKER_TYPE) == MIN_WORKERS
        ready = time.monotonic()

        # 1. A job that needs twice max_workers workers: up to max_workers, and no further.
        head.container.exec_run(["bash", "-c", 'export RAY_AUTH_TOKEN="$(cat '
                                 '/etc/syntho/ray-token)" RAY_AUTH_MODE=token; python '
                                 f'/root/job.py > {JOB_DIR}/out 2>&1'], detach=True)
        assert poll(lambda: sampler.workers == MAX_WORKERS, 150, f"{MAX_WORKERS} workers"), \
            (head.status(), head.events())
        at_max = time.monotonic()
        assert poll(lambda: started(head) == MAX_WORKERS, 60, "a task on each worker")
        assert updates_from(head, 3)  # the autoscaler decides again, the demand unchanged
        assert started(head) == MAX_WORKERS  # one task per worker; the rest still wait
        waiting = fake_cluster.pending_demands(head.status())
        assert waiting == {shape: TASKS - MAX_WORKERS}
        assert TASKS * WORKER_CPUS > capacity  # the job asked for more than the cluster may be
        events = head.events()
        assert f"{shape}*{TASKS - MAX_WORKERS}" in fake_cluster.refusals(events), events
        assert max(fake_cluster.resizes(events)) == capacity, events
        assert fake_cluster.queued(head.monitor_log(), WORKER_TYPE) == MAX_WORKERS
        peak = max(len(s.alive_workers) for s in sampler.samples)
        assert peak == MAX_WORKERS

        # 2. The job ends: the extra workers idle out after the timeout, min_workers stays.
        released = time.monotonic()
        head.sh(f"touch {JOB_DIR}/release")
        assert poll(lambda: "done.json" in head.job_files(), 60, "the job's end")
        assert poll(lambda: sampler.workers == MIN_WORKERS, IDLE_S + 10 * UPDATE_S,
                    f"back to {MIN_WORKERS} worker"), (head.status(), head.events())
        down = next(s.at for s in sampler.since(released) if len(s.alive_workers) == MIN_WORKERS)
        removed_after = down - released
        kept = fake_cluster.kept_for_min(head.monitor_log())
        assert poll(lambda: fake_cluster.kept_for_min(head.monitor_log()) >= kept + 3,
                    6 * UPDATE_S, "3 updates that keep the min_workers worker")
        assert {len(s.alive_workers) for s in sampler.since(down)} == {MIN_WORKERS}
        log, events = head.monitor_log(), head.events()
    assert IDLE_S - UPDATE_S <= removed_after <= IDLE_S + 6 * UPDATE_S, removed_after
    drains = fake_cluster.idle_drains(log)
    assert len(drains) == MAX_WORKERS - MIN_WORKERS
    assert all(timeout == IDLE_S and idle > IDLE_S for idle, timeout in drains), drains
    assert fake_cluster.removals(events) == [(MAX_WORKERS - MIN_WORKERS, WORKER_TYPE, "idle")]
    assert fake_cluster.resizes(events)[-1] == HEAD_CPUS + MIN_WORKERS * WORKER_CPUS
    assert fake_cluster.queued(log, WORKER_TYPE) == MAX_WORKERS  # none launched again

    # 3. Spot, as configured: the tasks select spot nodes, so the autoscaler met the demand
    # with the worker type; every worker it launched is a spot node, the head is not.
    launched = {i: n for i, n in sampler.seen.items() if not n["is_head_node"]}
    assert len(launched) == MAX_WORKERS  # never a fourth, even briefly
    assert {n["labels"].get(fake_cluster.MARKET_LABEL) for n in launched.values()} == {"spot"}
    assert {n["resources_total"]["CPU"] for n in launched.values()} == {WORKER_CPUS}
    (head_node,) = [n for n in sampler.seen.values() if n["is_head_node"]]
    assert fake_cluster.MARKET_LABEL not in head_node["labels"]
    assert head_node["resources_total"]["CPU"] == HEAD_CPUS
    ran_on = json.loads(head.sh(f"cat {JOB_DIR}/done.json"))
    assert len(ran_on) == TASKS and set(ran_on) <= set(launched)

    print(f"autoscaling: {MIN_WORKERS} worker ready {ready - began:.0f}s after the start; "
          f"{MAX_WORKERS} workers (the max; peak {peak}) {at_max - ready:.0f}s after the job "
          f"began; back to {MIN_WORKERS} {removed_after:.0f}s after it ended (timeout "
          f"{IDLE_S}s; drained at {[round(idle) for idle, _ in drains]}s idle); "
          f"{time.monotonic() - began:.0f}s in all")
