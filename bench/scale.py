"""6. Scale: a no-op reconcile of 10, 50 and 100 managed containers (the busybox test image
running `sleep`, on a bridge network with an alias each, as the app's containers are), timed
and with its engine API calls counted, vs the engine's floor for observing the same containers.

The reconcile runs in this process (agent.reconcile.reconcile with a Spec of N containers),
its Docker client's requests counted by kind. The floor: one list call plus one inspect per
container (docker-py's containers.list(), the least that still sees what the agent's drift
check reads: Env, Cmd, restart policy, network aliases).
Target: linear, with no per-container engine call that could be batched.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import spec as s
from agent.engine import Engine
from agent.reconcile import reconcile
from bench import common
from tests.support.engine_calls import CallCounter

SIZES = (10, 50, 100)


def spec_of(instance: str, n: int, image: str, network: str) -> s.Spec:
    containers = tuple(
        s.Container(service=f"s{i:03d}", name=f"{instance}-s{i:03d}", image=image,
                    command=("sleep", "86400"), network=network, aliases=(f"s{i:03d}",),
                    restart="always")
        for i in range(n))
    return s.Spec(role="bench", instance=instance, containers=containers,
                  networks=(s.Network(network),))


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], repeat=5)
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = p.parse_args()
    client = common.client()
    images = common.images(client)
    counted = common.client()
    engine = Engine(counted)
    counter = CallCounter(counted)
    agent: dict[int, list[float]] = {}
    floor: dict[int, list[float]] = {}
    calls: dict[int, dict[str, int]] = {}
    create: dict[int, tuple[float, int]] = {}
    sparse: dict[int, float] = {}
    create_kinds: dict[int, dict[str, int]] = {}
    notes: list[str] = []

    def quiet(line: str) -> None:
        pass

    with common.Janitor(client) as j:
        network = f"{j.id}-scale"
        j.networks.append(network)
        for n in args.sizes:
            instance = j.instance(f"sc{n}")
            spec = spec_of(instance, n, images["busybox"], network)
            common.log(f"{n} containers: creating ...")
            with counter.measure() as counts:
                started = time.perf_counter()
                reconcile(engine, spec, quiet, ready_timeout=120)
                create[n] = (time.perf_counter() - started, counter.total)
                create_kinds[n] = dict(counts)
            filters = {"label": [f"{s.LABEL_MANAGED}=true", f"{s.LABEL_INSTANCE}={instance}"]}

            def agent_run(i: int, spec: s.Spec = spec, n: int = n) -> None:
                with counter.measure() as counts:
                    started = time.perf_counter()
                    changes = reconcile(engine, spec, quiet, ready_timeout=120)
                    agent.setdefault(n, []).append(time.perf_counter() - started)
                if changes:
                    raise RuntimeError(f"the no-op reconcile made {changes} change(s)")
                calls[n] = dict(counts)

            def floor_run(i: int, n: int = n, filters: dict[str, list[str]] = filters) -> None:
                started = time.perf_counter()
                found = client.containers.list(all=True, filters=filters)
                floor.setdefault(n, []).append(time.perf_counter() - started)
                if len(found) != n:
                    raise RuntimeError(f"the floor saw {len(found)} containers, not {n}")

            common.log(f"{n} containers: {args.repeat} no-op reconciles and floor reads ...")
            common.interleave(args.repeat, agent_run, floor_run)
            started = time.perf_counter()
            client.api.containers(all=True, filters=filters)
            sparse[n] = time.perf_counter() - started
            j.remove_containers()  # before the next size, so the engine holds one size at once

    rows: list[common.Row] = []
    for n in args.sizes:
        total = sum(calls[n].values())
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(calls[n].items(), key=lambda kv: -kv[1]))
        seconds, made = create[n]
        rows.append(common.Row(
            f"6. no-op reconcile, {n} containers", "s", agent[n],
            "floor: list + inspect each", floor[n], target="linear, nothing batchable",
            note=f"{total} engine calls ({total / n:.2f} per container: {kinds}); the floor "
                 f"makes {n + 1}; one sparse list alone: {sparse[n] * 1000:.0f} ms; creating "
                 f"the {n} took {seconds:.1f} s and {made} calls ({made / n:.1f} per container)"))
    # Linear: the marginal cost per container stays the same from one size to the next.
    sizes = sorted(args.sizes)
    medians = {n: common.summary(agent[n]).median for n in sizes}
    marginal = [(medians[b] - medians[a]) / (b - a) for a, b in zip(sizes, sizes[1:])]
    linear = bool(marginal) and max(marginal) <= 1.5 * min(marginal) and min(marginal) > 0
    per_container = [sum(calls[n].values()) / n for n in sizes]
    batched = all(round(c) <= 1 for c in per_container)
    for row in rows:
        row.met = linear and batched
    rows.append(common.Row(
        "6. engine calls per container, no-op reconcile", "calls", per_container,
        "floor (list + inspect each)", [(n + 1) / n for n in sizes],
        target="no batchable per-container call", met=batched,
        note="per size " + ", ".join(f"{n}: {c:.2f}" for n, c in zip(sizes, per_container))))
    largest = sizes[-1]
    notes.append(f"creating {largest}: " + ", ".join(
        f"{k} x{v}" for k, v in sorted(create_kinds[largest].items(), key=lambda kv: -kv[1])))
    notes.append("marginal cost per container between sizes: "
                 + ", ".join(f"{a}->{b}: {m * 1000:.2f} ms" for (a, b), m
                             in zip(zip(sizes, sizes[1:]), marginal))
                 + (" (linear)" if linear else " (not linear)"))
    common.report(rows, notes, args.json)


if __name__ == "__main__":
    main()
