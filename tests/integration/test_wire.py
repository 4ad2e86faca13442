"""The wire between the VMs, as a security reviewer with a packet sniffer sees it.

`life` deploys a Ray head on vm-head and one worker on vm-w1 (images from the lab's registry,
the token in the worker's environment), then, while tcpdump records the lab's network
(tests/support/capture.py), has the two talk as they do in use: a Ray task from vm-head, pinned
to the worker, whose ~1 MB argument and ~0.5 MB result hold a canary string many times (both
cross the wire: Ray's object transfer), and the dashboard's node list asked from vm-w1 with
the token, as the worker's agent asks it.

With --no-ray-tls all of it goes in the clear: the plain-text test finds the canary and the token,
which shows the capture sees what passes. A test with TLS on reuses `life` with the agent's
options for it and asserts that neither is found (the node list then goes to the head's TLS
front, in HTTPS, as the worker's agent does).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import cluster, ray_tls
from agent.waits import poll
from tests.support.capture import capture, flows_holding, found
from tests.support.constants import NOFILE
from tests.support.vms import (
    DATA,
    GCS_REDIS_REPO,
    PASSWORD,
    RAY_REPO,
    USER,
    Lab,
    core_status,
    send_images,
)

pytestmark = pytest.mark.integration

# Run in ray-head on vm-head (its environment has the Ray token): a task on the worker at
# $WORKER, its argument and its result full of $CANARY; prints the node it ran on.
TASK = """
import os, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init(address="auto")
canary, worker = os.environ["CANARY"], os.environ["WORKER"]
alive = [n for n in ray.nodes() if n["Alive"]]
on_worker = [n["NodeID"] for n in alive if n["NodeManagerAddress"] == worker]
assert len(on_worker) == 1, alive

@ray.remote
def answer(data):
    return ray.get_runtime_context().get_node_id(), "answer: " + data[: len(data) // 2]

data = (canary + " ") * (1_000_000 // (len(canary) + 1))
node, result = ray.get(answer.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
    on_worker[0], soft=False)).remote(data))
assert node == on_worker[0] and canary in result, node
print("ran on", node)
"""

# Run on vm-w1: the head's node list, with the token, as the worker's agent asks for it: in
# HTTPS to the head's TLS front, trusting only the cluster's CA, when it is given one ($CA).
NODES = """
import json, os, ssl, urllib.request
ca = os.environ.get("CA")
url = ("https" if ca else "http") + "://" + os.environ["HEAD"] + ":8265"
request = urllib.request.Request(url + "/api/v0/nodes?detail=false&limit=1000",
                                 headers={"Authorization": "Bearer " + os.environ["TOKEN"]})
context = ssl.create_default_context(cadata=ca) if ca else None
with urllib.request.urlopen(request, timeout=10, context=context) as resp:
    print(len(json.load(resp)["data"]["result"]["result"]), "nodes")
"""


@pytest.fixture(scope="module")
def lab(vm_lab: Lab) -> Iterator[Lab]:
    yield vm_lab
    vm_lab.remove_vms()


def life(lab: Lab, extra_args: list[str]) -> tuple[Path, str, str]:
    """New VMs, a head on vm-head and a worker on vm-w1 (both given `extra_args`), and their
    traffic recorded while a pinned task and the dashboard's node list cross it: the capture
    file (in the lab's temporary directory), the Ray token and the canary."""
    began = time.monotonic()
    vms = lab.fresh()
    head, w1 = vms["head"], vms["w1"]
    pull = ["--registry", lab.registry, "--registry-user", USER]
    secret = {"SYNTHO_AGENT_REGISTRY_PASSWORD": PASSWORD}
    common = ["--nofile", NOFILE, "--shm-size", "1gb", *pull, "--ray-image", RAY_REPO,
              *extra_args]
    out = head.agent("head", *common, "--gcs-redis-image", f"{lab.registry}/{GCS_REDIS_REPO}",
                     env=secret)
    assert "ray head ready" in out, out
    code, token, _ = head.sh(f"cat {DATA}/ray-token")
    token = token.strip()
    assert code == 0 and len(token) == 64
    out = w1.agent("worker", "--head", head.ip, *common,
                   env={**secret, "SYNTHO_AGENT_TOKEN": token})
    assert "joined the Ray cluster" in out, out
    # A head whose Ray speaks TLS keeps the cluster's CA in its data dir (agent/ray_tls.py).
    has_ca, ca, _ = head.sh(f"cat {DATA}/ray-tls/ca.crt")
    deployed = time.monotonic()

    canary = f"CANARY-{secrets.token_hex(8)}"
    pcap = lab.sandbox.tmp / f"wire-{canary}.pcap"
    with capture(lab.lan, pcap) as cap:
        code, out, err = head.sh('docker exec -e CANARY -e WORKER ray-head python3 -c "$TASK"',
                                 env={"TASK": TASK, "CANARY": canary, "WORKER": w1.ip})
        assert code == 0 and "ran on" in out, f"{out}\n{err}"
        code, out, err = w1.sh('python3 -c "$NODES"',
                               env={"NODES": NODES, "HEAD": head.ip, "TOKEN": token,
                                    **({"CA": ca} if has_ca == 0 else {})})
        assert code == 0 and "2 nodes" in out, f"{out}\n{err}"
    # What the capture does not hold proves something only when it lost nothing.
    assert cap.flushed and cap.dropped == 0, cap.stderr
    print(f"wire: deployed in {deployed - began:.0f} s, traffic recorded in "
          f"{time.monotonic() - deployed:.0f} s; tcpdump: {'; '.join(cap.stderr[1:])}",
          flush=True)
    return pcap, token, canary


def test_in_plain_text_the_capture_sees_the_canary_and_the_token(lab: Lab) -> None:
    pcap, token, canary = life(lab, ["--no-ray-tls"])  # else a new head speaks TLS
    seen_canary, seen_token = found(pcap, canary.encode()), found(pcap, token.encode())
    print(f"wire, plain text: the canary found {seen_canary} times, the token {seen_token}",
          flush=True)
    assert seen_canary > 0 and seen_token > 0


def test_switched_to_tls_nothing_readable_crosses_the_wire(lab: Lab,
                                                           images: dict[str, str]) -> None:
    """The plain cluster of the test above, switched on as docs/security.md says (the head
    with --ray-tls, then the worker re-run); then a whole life of the TLS cluster recorded: a
    new worker (vm-w2) deployed and joined, the app deployed, a task pinned to vm-w1 whose
    argument and result hold a canary, the app's core running its task, the backend's use of
    RAY_URL (through the relay), `status` on every VM and a restart of the head's Ray. The
    capture holds neither the canary, nor the token, nor any secret the agents generated.

    The switch itself is not recorded: until a plain worker is re-run, its Ray keeps calling
    the head in plain, token and all (docs/security.md says so)."""
    vms = lab.vms
    head, w1, w2, app = vms["head"], vms["w1"], vms["w2"], vms["app"]
    token = head.sh(f"cat {DATA}/ray-token")[1].strip()
    assert len(token) == 64, "the test above made the plain cluster"
    common = ["--nofile", NOFILE, "--shm-size", "1gb", "--registry", lab.registry,
              "--registry-user", USER, "--ray-image", RAY_REPO]
    secret = {"SYNTHO_AGENT_REGISTRY_PASSWORD": PASSWORD}
    head_args = ["head", *common, "--gcs-redis-image", f"{lab.registry}/{GCS_REDIS_REPO}"]
    plan = head.agent("plan", *head_args, "--ray-tls", env=secret)
    assert "recreate ray-head" in plan and "ray-dashboard-tls" in plan, plan
    out = head.agent(*head_args, "--ray-tls", env=secret)
    assert "its traffic in TLS" in out, out
    out = w1.agent("worker", "--head", head.ip, *common,
                   env={**secret, "SYNTHO_AGENT_TOKEN": token})
    assert "joined the Ray cluster" in out and "recreated ray-worker" in out, out
    # The images of the VMs to come, through the engine's API (not the lan: no image in the
    # capture), and the token as a file.
    send_images(w2, [images["ray"]], "/root/images/ray.tar")
    app_refs = [images[n] for n in ("core", "backend", "frontend", "postgres", "redis")]
    send_images(app, app_refs, "/root/images/app.tar")
    for vm in (w2, app):
        vm.sh("mkdir -p /etc/syntho-agent && umask 077 && printf '%s\\n' \"$T\" "
              "> /etc/syntho-agent/ray-token", env={"T": token})
    canary = f"CANARY-{secrets.token_hex(8)}"
    pcap = lab.sandbox.tmp / f"wire-tls-{canary}.pcap"

    with capture(lab.lan, pcap) as cap:
        out = w2.agent("worker", "--head", head.ip, "--nofile", NOFILE, "--shm-size", "1gb",
                       "--images", "/root/images", "--ray-image", images["ray"],
                       "--token-file", "/etc/syntho-agent/ray-token")
        assert "joined the Ray cluster" in out, out
        out = app.agent("app", "--head", head.ip, "--images", "/root/images",
                        "--token-file", "/etc/syntho-agent/ray-token",
                        "--core-image", images["core"], "--backend-image", images["backend"],
                        "--frontend-image", images["frontend"], "--postgres-image",
                        images["postgres"], "--redis-image", images["redis"],
                        "--ready-timeout", "300")
        assert "the app is up" in out, out
        code, out, err = head.sh('docker exec -e CANARY -e WORKER ray-head python3 -c "$TASK"',
                                 env={"TASK": TASK, "CANARY": canary, "WORKER": w1.ip})
        assert code == 0 and "ran on" in out, f"{out}\n{err}"
        ray = core_status(app)["dependencies"]["ray"]  # the core's own task on the cluster
        assert ray["task_result"] == 49 and ray["alive_nodes"] == 3, ray
        # The backend calls RAY_URL: its status check asks the dashboard through the relay.
        code, out, _ = app.sh("docker exec syntho-backend curl -fsS "
                              "http://localhost:8000/api/docs/")
        assert code == 0 and json.loads(out)["dependencies"]["ray_dashboard"]["ok"], out
        for vm in (head, w1, w2, app):
            status = vm.agent("status")
            assert "ray traffic: mutual TLS" in status, (vm.name, status)
        head.inner("docker restart ray-head")
        assert poll(lambda: len(cluster.alive_nodes(
            head.ip, token, ca=ray_tls.derived_ca(token).pem)) == 3, 180,
            "the workers alive after the head's restart")
    assert cap.flushed and cap.dropped == 0, cap.stderr

    generated = {"the token": token}
    for vm, folder in ((head, DATA), (app, DATA)):
        code, out, _ = vm.sh(f"cd {folder} && for f in gcs-redis-password secrets/*; do "
                             "[ -f \"$f\" ] && printf '%s=%s\\n' \"$f\" \"$(cat \"$f\")\"; done")
        for line in out.splitlines():
            name, _, value = line.partition("=")
            if len(value) >= 12:
                generated[f"{vm.name}:{name}"] = value
    assert len(generated) >= 4, generated.keys()  # the token, GCS password, the app's secrets
    seen = {what: found(pcap, canary.encode() if what == "the canary" else value.encode())
            for what, value in {"the canary": canary, **generated}.items()}
    print(f"wire, TLS: {pcap.stat().st_size // 1024} KB captured; found: {seen}", flush=True)
    leaks = {what: flows_holding(pcap, (canary if what == "the canary" else
                                        generated[what]).encode())
             for what, n in seen.items() if n}
    assert not leaks, f"readable on the wire (flows, source port -> destination): {leaks}"
