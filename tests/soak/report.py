"""The soak's result as a markdown table."""

from __future__ import annotations

from collections import Counter

from tests.soak import verdict
from tests.soak.run import Result, percentile


def seconds(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"{percentile(values, 50):.0f} / {percentile(values, 95):.0f} / "
            f"{max(values):.0f}")


def markdown(result: Result, command: str) -> str:
    by_kind = Counter(f.kind for f in result.faults)
    judged = verdict.judged_per_kind(result.judged)
    acked, attempted = result.writes
    problems = result.problems()
    distinct = verdict.tally([v.what for v in result.violations])
    failed = ", ".join(rule for rule, found in problems.items() if found)
    outcome = f"FAILED: {failed}" if failed else "passed"
    share = f" ({100 * acked / attempted:.0f}%)" if attempted else ""
    final = ("never" if result.final_recovery is None else f"{result.final_recovery:.0f} s")
    lines = [
        "| what | value |", "|---|---|",
        f"| command | `{command}` |",
        f"| seed | {result.seed} |",
        f"| faults for | {result.duration / 60:.1f} min (setup {result.setup:.0f} s) |",
        f"| faults injected | {len(result.faults)} |",
        f"| verdict | {outcome} |",
        f"| violations | {len(result.violations)} ({len(distinct)} distinct) |",
        f"| rows acknowledged (all checked at the end) | {result.rows} "
        f"({result.writes_refused} writes not acknowledged) |",
        f"| writes acknowledged while no database fault was active | {acked} of {attempted}"
        f"{share} (at least {100 * verdict.WRITE_SHARE:.0f}% needed) |",
        f"| looks fully healthy during the faults | {100 * result.healthy_share:.0f}% |",
        f"| time to fully healthy after the faults stop | "
        f"{final} (limit {result.final_limit:.0f} s) |",
        f"| long job (detached Ray actor) | {result.job.summary} |",
        f"| agent exits (each restarted as systemd would) | "
        f"{', '.join(f'vm-{k} {v}' for k, v in sorted(result.agent_exits.items()))} |",
        "", "| fault | injected | healthy again, s: p50 / p95 / max (all) | "
        "p50 / p95 / max (not overlapped) | never | limit, s | judged (by its own limit) | "
        "too slow |", "|---|---|---|---|---|---|---|---|",
    ]
    for kind in sorted(by_kind):
        mine = [r for r in result.recoveries if r.fault.kind == kind]
        times = [r.seconds for r in mine if r.seconds is not None]
        alone = [r.seconds for r in mine if r.seconds is not None and not r.overlapped]
        never = sum(1 for r in mine if r.seconds is None)
        n, own, late = judged.get(kind, (0, 0, 0))
        limit = result.limits.get(kind)
        lines.append(f"| {kind} | {by_kind[kind]} | {seconds(times)} | {seconds(alone)} | "
                     f"{never} | {'-' if limit is None else round(limit)} | {n} ({own}) | "
                     f"{late} |")
    if result.violations:
        lines += ["", "Violations (times seen):", ""]
        lines += [f"- {what} ({n})" for what, n in distinct]
    for rule, found in problems.items():
        if found and rule != "violations":
            lines += ["", f"Failed, {rule}:", ""]
            lines += [f"- {p}" for p in found[:30]]
    if result.notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {n}" for n in result.notes]
    if result.injection_errors:
        lines += ["", f"Faults that could not be injected ({len(result.injection_errors)}):", ""]
        lines += [f"- {e}" for e in result.injection_errors[:20]]
    return "\n".join(lines)
