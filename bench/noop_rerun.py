"""1. No-op re-run of the app role vs a second `docker-compose up -d` of the same stack.

Both stacks are up and converged first (each with its own Ray head); then, alternately, the
agent's `app` command and compose's `up -d` run with nothing to change, each timed from process
start to exit. Target: the agent takes at most half of compose's time.

Afterwards one more agent run, in-process, counts the engine API calls a no-op makes.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, stacks
from tests.support.agent_cli import run_agent
from tests.support.constants import AGENT_INSTANCE_LABEL
from tests.support.engine_calls import CallCounter, counting_engine


def in_process_calls(deployment: stacks.AgentApp) -> tuple[CallCounter, float]:
    """One no-op run of the CLI inside this process, its engine client counted."""
    from agent import cli

    with counting_engine() as counters:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()) as out:
            cli.main(["app", *deployment.args()])
        elapsed = time.perf_counter() - started
    if "nothing to do" not in out.getvalue() or not counters:
        raise RuntimeError(f"the in-process run was not a no-op:\n{out.getvalue()}")
    return counters[0], elapsed


def main() -> None:
    args = common.parser(__doc__.splitlines()[0], repeat=5).parse_args()
    client = common.client()
    images = common.images(client)
    agent_times: list[float] = []
    compose_times: list[float] = []
    notes: list[str] = []
    with common.Janitor(client) as j:
        common.log("setting up the agent's app stack (Ray head + app) ...")
        deployment = stacks.new_app(j, images, "noa")
        common.log("setting up the compose stack (Ray head + compose project) ...")
        compose = stacks.new_compose_app(j, images, "noc")
        ids_before = {c.id for c in client.containers.list(
            filters={"label": f"{AGENT_INSTANCE_LABEL}={deployment.instance}"})}
        # One unmeasured run of each: caches warm, and proof that both are no-ops.
        first = deployment.run().stdout
        if "nothing to do" not in first:
            raise RuntimeError(f"the agent's re-run was not a no-op:\n{first}")
        up = compose.up().stderr
        if "up-to-date" not in up or any(w in up for w in ("Recreating", "Creating", "Starting")):
            raise RuntimeError(f"compose's re-run was not a no-op:\n{up}")

        def agent_run(i: int) -> None:
            started = time.perf_counter()
            out = deployment.run().stdout
            agent_times.append(time.perf_counter() - started)
            assert "nothing to do" in out, out

        def compose_run(i: int) -> None:
            started = time.perf_counter()
            compose.up()
            compose_times.append(time.perf_counter() - started)

        common.log(f"{args.repeat} no-op runs of each, interleaved ...")
        common.interleave(args.repeat, agent_run, compose_run)
        ids_after = {c.id for c in client.containers.list(
            filters={"label": f"{AGENT_INSTANCE_LABEL}={deployment.instance}"})}
        if ids_after != ids_before or len(ids_after) != 7:
            raise RuntimeError("the agent's no-op runs changed containers")

        counter, inproc = in_process_calls(deployment)
        kinds = ", ".join(f"{k} x{n}" for k, n in counter.counts.most_common())
        notes.append(f"one no-op run in-process: {inproc:.2f} s, {counter.total} engine API calls "
                     f"taking {counter.seconds:.2f} s ({kinds})")
        started = time.perf_counter()
        run_agent("--help", check=True, write_bytecode=True)
        notes.append(f"the CLI's start alone (`--help`, interpreter + imports): "
                     f"{time.perf_counter() - started:.2f} s")

    agent_med = common.summary(agent_times).median
    compose_med = common.summary(compose_times).median
    rows = [common.Row(
        "1. no-op re-run of the app role (7 containers)", "s", agent_times,
        "docker-compose up -d (2nd run)", compose_times, target="<= 0.5x compose",
        met=agent_med <= 0.5 * compose_med)]
    common.report(rows, notes, args.json)


if __name__ == "__main__":
    main()
