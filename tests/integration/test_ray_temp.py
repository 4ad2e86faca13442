"""Ray's temp dir kept bounded (README "Years unattended"), in short ("a year in an hour" at CI's
scale; `make ray-temp-long` for the long one): a head whose tasks each run in a process of
their own and print (the logs of finished processes pile up in /tmp/ray, one file or more per
process), and an old session left behind; a run of the head role then prunes them under the
cap it is given, and keeps the logs of the live processes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.integration.agent_helpers import Node, ok
from tests.support import reads
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

TASKS = int(os.environ.get("SYNTHO_RAY_TEMP_TASKS", "120"))

# In the head's container: TASKS tasks, each in a new worker process (max_calls=1: the
# process exits after it), each printing 64 KB; prints how many ran.
CHATTY = """
import ray, sys
ray.init(address="auto", log_to_driver=False)

@ray.remote(num_cpus=0.5, max_calls=1)
def chatty(i):
    sys.stdout.write(("task %d " % i + "x" * 1000 + "\\n") * 64)
    return i

print(len(ray.get([chatty.remote(i) for i in range({tasks})])))
"""


def temp_size(node: Node) -> int:
    code, out = reads.read(node.container("ray-head"), ["du", "-sk", "/tmp/ray"])
    assert code == 0, out
    return int(out.split()[0]) * 1024


def freed(out: str) -> re.Match[str]:
    said = re.search(r"ray temp dir of \S+: freed ([\d.]+) MB \((\d+) log file\(s\) of "
                     r"finished processes, (\d+) old session\(s\)\); ([\d.]+) MB left", out)
    assert said, out
    return said


def test_the_head_role_prunes_rays_temp_dir_under_its_cap(head: Node) -> None:
    box = head.container("ray-head")
    start = temp_size(head)
    code, out = box.exec_run(["python3", "-c", CHATTY.replace("{tasks}", str(TASKS))])
    assert code == 0 and out.decode().strip().splitlines()[-1] == str(TASKS), out.decode()
    grown = temp_size(head)
    print(f"ray temp: {start / 2**20:.1f} MB, then {grown / 2**20:.1f} MB after {TASKS} "
          f"chatty tasks ({(grown - start) / TASKS * 10_000 / 2**30:.2f} GB per 10,000)",
          flush=True)
    assert grown - start > TASKS * 64 * 1000 * 0.9, "the tasks' logs are on the disk"

    # A cap under what the head held before the tasks: everything that may go, goes.
    said = freed(ok(head.run("head", "--ray-log-retention-days", "0",
                             "--ray-temp-max-size", str(start // 2))))
    assert int(said[2]) >= TASKS, said[0]  # a log file or more per finished process
    after = temp_size(head)
    print(f"ray temp: {after / 2**20:.1f} MB after the retention ({said[0]})", flush=True)
    assert after < start + (grown - start) * 0.1, "the finished processes' logs are gone"
    # The live processes' own logs stay (the raylet's among them), and Ray still works.
    code, listed = reads.read(box, ["ls", "/tmp/ray/session_latest/logs/"])
    assert "raylet.out" in listed, listed
    code, out = box.exec_run(["python3", "-c", CHATTY.replace("{tasks}", "2")])
    assert code == 0, out.decode()

    # A head restarted without GCS fault tolerance starts a new session and leaves the old one
    # (with it, the session is kept: this head's restart would not show it): one is put there
    # as Ray would leave it, and the next run removes it whole, the current one kept.
    box.exec_run(["sh", "-c", "d=/tmp/ray/session_2020-01-01_00-00-00_000000_1/logs && "
                  "mkdir -p $d && head -c 3000000 /dev/zero > $d/raylet.out"])
    said = freed(ok(head.run("head")))
    assert int(said[3]) == 1, said[0]
    code, listed = reads.read(box, ["sh", "-c", "ls -d /tmp/ray/session_2*"])
    assert len(listed.split()) == 1 and "2020-01-01" not in listed, listed


# In the head's container: 8 objects of 20 MB kept referenced, twice the object store's 80 MB:
# Ray spills the rest; every object is read back whole; and while they are still referenced
# (Ray deletes spilled files once their objects are freed), the bytes under the spill dir and
# the files in Ray's own default spill folder are counted.
SPILL = """
import os, ray
ray.init(address="auto", log_to_driver=False)
refs = [ray.put(bytes([i]) * 20_000_000) for i in range(8)]
assert all(ray.get(r)[:1] == bytes([i]) and len(ray.get(r)) == 20_000_000
           for i, r in enumerate(refs))
def walk(top):
    return [os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs]
spilled = sum(os.path.getsize(p) for p in walk("/ray-spill"))
default = [p for p in walk("/tmp/ray") if "ray_spilled_objects" in p]
print("read back", spilled, len(default))
"""


def test_with_a_spill_dir_spilled_objects_go_there_not_into_the_container(
        sandbox: Sandbox, images: dict[str, str], tmp_path: Path) -> None:
    """--spill-dir: the node's spilled objects in the host directory given (a disk of the
    operator's choice), none in /tmp/ray of the container's own files."""
    spill = tmp_path / "spill"
    spill.mkdir()
    sandbox.create_network()
    node = Node(sandbox, images, "spiller",
                extra=["--spill-dir", str(spill), "--ray-arg=--object-store-memory=80000000"])
    ok(node.run("head"))
    box = node.container("ray-head")
    code, out = box.exec_run(["python3", "-c", SPILL])
    said = out.decode().strip().splitlines()[-1].split() if code == 0 else []
    assert said[:2] == ["read", "back"], out.decode()
    # In the spill dir (the host's, mounted at /ray-spill); none in Ray's own default,
    # session_*/ray_spilled_objects (its spill workers' logs stay in logs/).
    assert int(said[2]) > 40_000_000 and said[3] == "0", said
    assert dict(e.split("=", 1) for e in box.attrs["Config"]["Env"])[
        "RAY_local_fs_capacity_threshold"] == "0.95"
    # `status` judges that disk with the others.
    disks = json.loads(node.cmd("status", "--json").stdout)["disk"]["filesystems"]
    assert any(fs["what"] == "Ray's spill dir" and fs["path"] == str(spill) for fs in disks), disks
