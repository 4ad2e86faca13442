"""One test's engine objects: unique names for them, and their removal afterwards."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path
from typing import Any, ClassVar

import docker
import docker.errors
import docker.models.containers

from tests.support.constants import AGENT_INSTANCE_LABEL, TEST_LABEL


class Sandbox:
    """Names for one test's engine objects, and their removal afterwards, pass or fail.

    Only what carries this sandbox's marks is removed: its TEST_LABEL, the agent instances it
    named, its network and the volumes it recorded. A context manager, or call cleanup().
    """

    # Every sandbox id made by this process: what is labelled with any other is another test
    # process's (the suite runs in shards at once: .ci/run), see owned_elsewhere().
    made_here: ClassVar[set[str]] = set()

    def __init__(self, client: docker.DockerClient, tmp_path: Path) -> None:
        self.client = client
        self.id = "t" + uuid.uuid4().hex[:6]
        Sandbox.made_here.add(self.id)
        self.network = f"sa-{self.id}"
        self.tmp = tmp_path
        self.labels = {TEST_LABEL: self.id}
        self.instances: list[str] = []
        self.routes: list[list[str]] = []  # iptables rules (route_network), removed by cleanup

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def instance(self, name: str) -> str:
        """An agent --instance name unique to this test."""
        full = f"{self.id}{name}"
        self.instances.append(full)
        return full

    def create_network(self) -> str:
        """The sandbox's bridge network, created on the first call (fixtures share it)."""
        if not any(n.name == self.network for n in self.client.networks.list(names=[self.network])):
            self.client.networks.create(self.network, driver="bridge", labels=self.labels)
        return self.network

    def volume(self, name: str) -> str:
        """A named volume of the sandbox's, made now with its labels (a volume that `docker run`
        makes on the fly has none: another test process's "nothing changed" check would see
        it come and go), removed by cleanup()."""
        full = f"{self.id}-{name}"
        self.client.volumes.create(full, labels=self.labels)
        return full

    def route_network(self) -> None:
        """Let the sandbox network's containers and those of every other bridge network reach
        each other, as VMs on one subnet do. The engine keeps its bridge networks apart
        (DOCKER-ISOLATION); rules in DOCKER-USER, the chain the engine leaves to the
        administrator and looks at first, accept what comes from or goes to this network's
        subnet. cleanup() removes them."""
        net = self.client.networks.get(self.create_network())
        subnet = net.attrs["IPAM"]["Config"][0]["Subnet"]
        for way in ("-s", "-d"):
            rule = ["DOCKER-USER", way, subnet, "-m", "comment", "--comment",
                    f"syntho-tests {self.id}", "-j", "ACCEPT"]
            subprocess.run(["iptables", "-I", *rule], check=True)
            self.routes.append(rule)

    def run(self, image: str, name: str, labels: dict[str, str] | None = None,
            **kwargs: Any) -> docker.models.containers.Container:
        """A plain helper container (not the agent's), labelled for clean-up."""
        container: docker.models.containers.Container = self.client.containers.run(
            image, name=f"{self.id}-{name}", labels={**self.labels, **(labels or {})},
            detach=True, **kwargs)
        return container

    def cleanup(self) -> None:
        for rule in self.routes:
            subprocess.run(["iptables", "-D", *rule], check=True)
        self.routes.clear()
        filters = [{"label": f"{TEST_LABEL}={self.id}"}]
        filters += [{"label": f"{AGENT_INSTANCE_LABEL}={i}"} for i in self.instances]
        for f in filters:
            for c in self.client.containers.list(all=True, filters=f):
                c.remove(force=True)
        for f in filters:
            for n in self.client.networks.list(filters=f):
                n.remove()
        for net in self.client.networks.list(names=[self.network]):
            net.remove()
        for f in filters:
            for v in self.client.volumes.list(filters=f):
                v.remove(force=True)


def owned_elsewhere(labels: dict[str, str] | None) -> bool:
    """Whether an engine object belongs to a sandbox of another test process (its test label,
    or the agent instance it was made for, names a sandbox this process did not make). Objects
    without either label, and this process's own, are not: a "nothing changed" check keeps
    them all."""
    labels = labels or {}
    test = labels.get(TEST_LABEL)
    if test is not None and test not in Sandbox.made_here:
        return True
    instance = labels.get(AGENT_INSTANCE_LABEL) or ""
    made_by_a_sandbox = re.match(r"t[0-9a-f]{6}", instance)
    return bool(made_by_a_sandbox) and instance[:7] not in Sandbox.made_here
