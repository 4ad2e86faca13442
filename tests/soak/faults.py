"""The fault injector: for a set time, a fault picked at random (seeded), then a short random
pause; each fault recorded with its kind, target and time."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import docker
import docker.errors

from agent.waits import poll
from tests.soak import health
from tests.soak.lab import AGENT_PID, SoakLab, fresh_client, safe_sh, start_engine
from tests.support.vms import VM

KINDS = ("container-sigkill", "container-docker-kill", "container-rm", "agent-sigkill",
         "engine-restart", "network-cut", "reboot", "head-ray-restart")
# The full soak's mix: container faults most often (the commonest real failure), every kind
# a few times an hour at least.
FULL_WEIGHTS = {"container-sigkill": 3, "container-docker-kill": 3, "container-rm": 3,
                "agent-sigkill": 2, "engine-restart": 1, "network-cut": 2, "reboot": 1,
                "head-ray-restart": 1}


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str  # vm-NAME or vm-NAME/container
    began: float
    ended: float  # when the injection itself was over (a cut VM connected again ...)
    detail: str = ""


class Injector:
    """Injects faults from its own thread until `duration` seconds have passed."""

    def __init__(self, lab: SoakLab, seed: int, duration: float,
                 weights: dict[str, float] | None = None,
                 pause: tuple[float, float] = (2.0, 5.0),
                 say: Callable[[str], None] = print) -> None:
        self.lab = lab
        self.rng = random.Random(seed)
        self.duration = duration
        self.weights = weights or FULL_WEIGHTS
        self.pause = pause
        self.say = say
        self.faults: list[Fault] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-injector", daemon=True)
        self.client: docker.DockerClient | None = None

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        self.client = fresh_client()
        vms = self.lab.on(self.client)
        end = time.time() + self.duration
        kinds = list(self.weights)
        weights = [self.weights[k] for k in kinds]
        # every kind once first (in a seeded order), so that a rare kind is never left out
        first = [k for k in kinds if self.weights[k] > 0]
        self.rng.shuffle(first)
        while time.time() < end and not self._stop.is_set():
            kind = first.pop() if first else self.rng.choices(kinds, weights)[0]
            began = time.time()
            try:
                done = self.inject(kind, vms)
            except (docker.errors.DockerException, OSError, RuntimeError) as exc:
                self.errors.append(f"{kind}: {exc}")
                done = None
            if done is not None:
                target, detail = done
                fault = Fault(kind, target, began, time.time(), detail)
                self.faults.append(fault)
                self.say(f"fault {len(self.faults)}: {kind} {target} {detail}".rstrip())
            self._stop.wait(self.rng.uniform(*self.pause))

    # ---- the faults; each returns (target, detail) or None when it could not apply ----

    def inject(self, kind: str, vms: dict[str, VM]) -> tuple[str, str] | None:
        if kind.startswith("container-"):
            return self.container_fault(kind, vms)
        if kind == "head-ray-restart":
            code, out, err = safe_sh(vms["head"], "docker restart -t 10 ray-head", timeout=60)
            return ("vm-head/ray-head", "") if code == 0 else self.failed(kind, out + err)
        name = self.rng.choice(sorted(vms))
        vm = vms[name]
        if kind == "agent-sigkill":
            # the pid file may be stale after a reboot: kill only if it is the agent
            code, out, err = safe_sh(vm, f"p=$(cat {AGENT_PID}) && grep -q syntho-agent "
                                     f"/proc/$p/cmdline && kill -9 $p")
            # the supervisor (as systemd) starts it again 5 s later
            return (f"vm-{name}", "") if code == 0 else self.failed(kind, out + err)
        if kind == "engine-restart":
            return self.engine_restart(name, vm)
        if kind == "network-cut":
            return self.network_cut(name, vm)
        if kind == "reboot":
            vm.container.restart(timeout=10)  # vm-init.sh starts the engine and the agent
            return f"vm-{name}", ""
        raise ValueError(f"unknown fault kind {kind}")

    def failed(self, kind: str, why: str) -> tuple[str, str] | None:
        """A fault that could not apply: noted, and None for the caller to return."""
        self.errors.append(f"{kind}: {why.strip()[:200]}")
        return None

    def container_fault(self, kind: str, vms: dict[str, VM]) -> tuple[str, str] | None:
        choices = []
        for name, vm in vms.items():
            boxes = health.managed(vm) or []
            choices += [(name, b.name) for b in boxes if b.state == "running"]
        if not choices:
            return self.failed(kind, "no running managed container anywhere")
        name, box = self.rng.choice(sorted(choices))
        script = {
            "container-sigkill": f"kill -9 $(docker inspect -f '{{{{.State.Pid}}}}' {box})",
            "container-docker-kill": f"docker kill {box}",
            "container-rm": f"docker rm -f {box}",
        }[kind]
        code, out, err = safe_sh(vms[name], script)
        return (f"vm-{name}/{box}", "") if code == 0 else self.failed(kind, out + err)

    def engine_restart(self, name: str, vm: VM) -> tuple[str, str] | None:
        """dockerd stopped (SIGTERM, as `systemctl restart docker`) and started again as the
        VM's init starts it."""
        code, out, err = safe_sh(vm, "kill $(cat /var/run/docker.pid)")
        if code != 0:
            return self.failed("engine-restart", out + err)
        gone = poll(lambda: safe_sh(vm, "test -e /var/run/docker.pid")[0] == 1, 60,
                    "dockerd to stop")
        start_engine(vm)
        up = poll(lambda: safe_sh(vm, "docker info >/dev/null 2>&1")[0] == 0, 60,
                  "dockerd to answer")
        return f"vm-{name}", "" if gone and up else "the engine was slow to stop or start"

    def network_cut(self, name: str, vm: VM) -> tuple[str, str]:
        """Off the LAN for a few seconds, then back with the same address."""
        assert self.client is not None
        network = self.client.networks.get(self.lab.lan)
        seconds = self.rng.uniform(3.0, 8.0)
        network.disconnect(vm.container, force=True)
        self._stop.wait(seconds)  # the fault's length, not a synchronisation
        network.connect(vm.container, ipv4_address=vm.ip)
        return f"vm-{name}", f"{seconds:.1f} s"

