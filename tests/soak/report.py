"""The soak's result as a markdown table."""

from __future__ import annotations

from collections import Counter

from tests.soak.run import Result, percentile


def seconds(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"{percentile(values, 50):.0f} / {percentile(values, 95):.0f} / "
            f"{max(values):.0f}")


def markdown(result: Result, command: str) -> str:
    by_kind = Counter(f.kind for f in result.faults)
    lines = [
        "| what | value |", "|---|---|",
        f"| command | `{command}` |",
        f"| seed | {result.seed} |",
        f"| faults for | {result.duration / 60:.1f} min (setup {result.setup:.0f} s) |",
        f"| faults injected | {len(result.faults)} |",
        f"| violations | {len(result.violations)} |",
        f"| rows acknowledged (all checked at the end) | {result.rows} "
        f"({result.writes_refused} writes not acknowledged) |",
        f"| looks fully healthy during the faults | {100 * result.healthy_share:.0f}% |",
        f"| time to fully healthy after the faults stop | "
        f"{'never' if result.final_recovery is None else f'{result.final_recovery:.0f} s'} |",
        f"| long job (detached Ray actor) | {result.job.summary} |",
        f"| agent exits (each restarted as systemd would) | "
        f"{', '.join(f'vm-{k} {v}' for k, v in sorted(result.agent_exits.items()))} |",
        "", "| fault | injected | healthy again, s: p50 / p95 / max (all) | "
        "p50 / p95 / max (not overlapped) | never |", "|---|---|---|---|---|",
    ]
    for kind in sorted(by_kind):
        mine = [r for r in result.recoveries if r.fault.kind == kind]
        times = [r.seconds for r in mine if r.seconds is not None]
        alone = [r.seconds for r in mine if r.seconds is not None and not r.overlapped]
        never = sum(1 for r in mine if r.seconds is None)
        lines.append(f"| {kind} | {by_kind[kind]} | {seconds(times)} | {seconds(alone)} | "
                     f"{never} |")
    if result.violations:
        lines += ["", "Violations:", ""]
        lines += [f"- {v.what}" for v in result.violations]
    if result.injection_errors:
        lines += ["", f"Faults that could not be injected ({len(result.injection_errors)}):", ""]
        lines += [f"- {e}" for e in result.injection_errors[:20]]
    return "\n".join(lines)
