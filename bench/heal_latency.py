"""3. Heal latency: the frontend killed (SIGKILL) or removed, until it serves again (HTTP 200 on
its published port), with the agent's `app --watch` running vs the engine's restart policy alone.

Three faults:
  - crash: SIGKILL to the container's process from the host (as the OOM killer or a crash
    would end it): the restart policy applies;
  - docker kill: SIGKILL through the engine's API, which the engine records as a manual stop,
    so its restart policy does not restart it ("never");
  - removal: `docker rm -f`; the restart policy cannot bring back a removed container ("never").
The "never" cases are checked once each (still down after 10 s).
Crashes are spaced so that the container has run 11 s each time, or the engine's restart
back-off (100 ms, doubling for a container that ran under 10 s) would grow.
Target: within 2 s for both faults (kill and removal).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, stacks
from tests.support.agent_cli import agent_cmd, agent_env
from tests.support.constants import REPO

TARGET = 2.0  # seconds
SETTLED = 11.0  # seconds a container must have run before it is killed again


def started_at(c: docker.DockerClient, name: str) -> float:
    return common.stamp(c.api.inspect_container(name)["State"]["StartedAt"])


class Watcher:
    """`syntho-agent app --watch` in the background, until stopped."""

    def __init__(self, j: common.Janitor, deployment: stacks.AgentApp, log: Path) -> None:
        self.log = log
        self.out = log.open("w")
        self.proc = j.spawn(agent_cmd("app", *deployment.args(), "--watch"),
                            cwd=REPO, env=agent_env(write_bytecode=True), stdout=self.out,
                            stderr=self.out)
        common.wait_for(lambda: "watching" in log.read_text() or self.proc.poll() is not None,
                        120, "the watcher to start", interval=0.05)
        if self.proc.poll() is not None:
            raise RuntimeError(f"the watcher exited:\n{log.read_text()[-2000:]}")
        time.sleep(1.0)  # it subscribes, then converges once: let that finish

    def stop(self) -> None:
        common.Janitor.stop(self.proc)
        self.out.close()


def serve_again(url: str, t0: float, watcher: Watcher | None,
                timeout: float = 30) -> float | None:
    """Seconds from t0 until url answers 200 again, after it has stopped answering; None if
    the watcher died first, or nothing answered within timeout."""
    down = False
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        if watcher is not None and watcher.proc.poll() is not None:
            return None
        code = common.http_status(url, timeout=0.5)
        if code != 200:
            down = True
        elif down:
            return time.perf_counter() - t0
        elif time.perf_counter() - t0 > 3:
            raise RuntimeError(f"{url} never stopped answering: the fault did not take")
        time.sleep(0.01)
    return None


def main() -> None:
    args = common.parser(__doc__.splitlines()[0], repeat=5).parse_args()
    client = common.client()
    images = common.images(client)
    sides = ("crash", "api-kill", "remove")
    agent: dict[str, list[float]] = {f: [] for f in sides}
    failed: dict[str, list[str]] = {f: [] for f in sides}
    engine_crash: list[float] = []
    never: dict[str, bool] = {}
    notes: list[str] = []
    with common.Janitor(client) as j:
        common.log("setting up the app stack (Ray head + app) ...")
        deployment = stacks.new_app(j, images, "heal")
        name = deployment.name("frontend")
        url = deployment.frontend_url

        def inject(fault: str) -> None:
            if fault == "crash":
                os.kill(client.api.inspect_container(name)["State"]["Pid"], signal.SIGKILL)
            elif fault == "api-kill":
                client.api.kill(name, "SIGKILL")
            else:
                client.api.remove_container(name, force=True)

        def ready_for(fault: str) -> None:
            if common.http_status(url) != 200:
                deployment.run()  # a failed round left it down: the agent puts it back
            if fault == "crash":  # a short-lived container gets a longer restart back-off
                wait = SETTLED - (time.time() - started_at(client, name))
                if wait > 0:
                    time.sleep(wait)
            common.wait_for(lambda: common.http_status(url) == 200, 60, "the frontend")

        def round_of(fault: str, watched: bool) -> Callable[[int], None]:
            side = fault

            def run(i: int) -> None:
                ready_for(fault)
                watcher = (Watcher(j, deployment, j.tmp / f"watch-{side}-{i}.log")
                           if watched else None)
                try:
                    t0 = time.perf_counter()
                    inject(fault)
                    elapsed = serve_again(url, t0, watcher)
                finally:
                    if watcher:
                        watcher.stop()
                how = "agent --watch" if watched else "restart policy"
                if elapsed is None:
                    why = (last_error(watcher.log.read_text()) if watcher
                           else "not back within 30 s")
                    failed[side].append(why)
                    common.log(f"{side}, {how}: FAILED: {why}")
                    return
                (agent[side] if watched else engine_crash).append(elapsed)
                common.log(f"{side}, {how}: {elapsed:.2f} s")
            return run

        common.log(f"{args.repeat} rounds of: crash (watched, then restart policy alone), "
                   "docker kill (watched), removal (watched) ...")
        common.interleave(args.repeat, round_of("crash", True), round_of("crash", False),
                          round_of("api-kill", True), round_of("remove", True))

        for fault in ("api-kill", "remove"):
            common.log(f"{fault} without the agent: does the engine bring it back? (10 s)")
            ready_for(fault)
            inject(fault)
            time.sleep(10)
            never[fault] = common.http_status(url) is None
            deployment.run()  # the agent puts it back

    def row(label: str, side: str, **baseline: Any) -> common.Row:
        runs = len(agent[side]) + len(failed[side])
        note = ""
        if failed[side]:
            kinds = sorted(set(failed[side]))
            note = (f"the watcher failed in {len(failed[side])} of {runs} runs ("
                    + "; ".join(kinds) + "); the figures are the runs that healed")
        met = not failed[side] and bool(agent[side]) and max(agent[side]) <= TARGET
        return common.Row(label, "s", agent[side], "engine restart policy alone",
                          target=f"<= {TARGET:.0f} s", met=met, note=note, **baseline)

    def gone(fault: str) -> str:
        return "never" if never[fault] else "came back"

    rows = [
        row("3a. heal after a crash (SIGKILL from the host) of the frontend", "crash",
            baseline=engine_crash),
        row("3b. heal after `docker kill` (SIGKILL via the API) of the frontend", "api-kill",
            baseline_text=gone("api-kill")),
        row("3c. heal after removal (docker rm -f) of the frontend", "remove",
            baseline_text=gone("remove")),
    ]
    notes.append("latency: from the fault (the call returning) until the frontend's published "
                 "port answers HTTP 200 again, polled every 10 ms; met = every run within target")
    notes.append("a watcher is started before each watched fault and stopped after it; the "
                 "frontend's restart policy is `always` (the agent's spec)")
    common.report(rows, notes, args.json)


def last_error(output: str) -> str:
    """The exception that ended a watcher, from its output."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_.]+(Error|Exception|Problem)\b", line):
            return line[:160]
    return lines[-1][:160] if lines else "no output"


if __name__ == "__main__":
    main()
