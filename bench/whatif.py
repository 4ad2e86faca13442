"""The agent's CLI with a change the benchmarks suggest patched in, to measure its effect without
touching agent/ (a what-if row; the agent itself is unchanged).

    python bench/whatif.py health-poll-ceiling=0.25 -- app --head ... (the CLI's arguments)

health-poll-ceiling=S: wait_ready (the health gates of reconcile) polls at most S seconds apart
instead of backing off to 2 s.
apply-race-retry: a container that vanishes between reconcile's plan and its apply (apply
looks the containers up again, and `docker rm -f` can land in between) is an AgentError, so
--watch tries again, instead of a KeyError that ends the watcher.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import cli, reconcile, waits
from agent import spec as s
from agent.engine import Engine
from agent.errors import EnvironmentProblem

_apply = reconcile.apply


def apply_or_retry(engine: Engine, spec: s.Spec, actions: list[reconcile.Action],
                   say: reconcile.Say, ready_timeout: float) -> int:
    try:
        return _apply(engine, spec, actions, say, ready_timeout)
    except KeyError as exc:
        raise EnvironmentProblem(f"{exc} changed while converging; trying again") from None


def main(argv: list[str]) -> None:
    sep = argv.index("--")
    for change in argv[:sep]:
        name, _, value = change.partition("=")
        if name == "health-poll-ceiling":
            fast = functools.partial(waits.poll, ceiling=float(value))
            reconcile.poll = fast  # type: ignore[attr-defined]
        elif name == "apply-race-retry":
            reconcile.apply = apply_or_retry
        else:
            sys.exit(f"whatif: unknown change {name!r}")
    cli.main(argv[sep + 1:])


if __name__ == "__main__":
    main(sys.argv[1:])
