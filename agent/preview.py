"""`syntho-agent plan ROLE`: what a run would do, in the words of the run, changing nothing.

The forecast comes from agent.forecast (the run's own resolution and plan); this module only
says it. No secret value appears: files are named, never shown.
"""

from __future__ import annotations

from typing import Callable

from agent.forecast import Forecast
from agent.reconcile import Action

Say = Callable[[str], None]

def action_line(a: Action) -> str:
    if a.verb == "unchanged":
        return f"leave {a.name} alone (up to date)"
    if a.verb == "pull":  # the image is not here yet: a recreate only if it differs
        return f"{a.name}: {a.reason}"
    why = f": {a.reason}" if a.reason else ""
    if a.verb == "create" and not why:
        why = ": missing"
    return f"{a.verb} {a.name}{why}"


def render(f: Forecast, command: str, say: Say) -> None:
    say(f"plan for `syntho-agent {command}` (nothing is changed by this command):")
    say("containers:")
    for a in f.actions:
        if a.verb != "step":
            say(f"  {action_line(a)}")
    for net in f.networks:
        say(f"network: create {net}")
    for vol in f.volumes:
        say(f"volume: create {vol}")
    if f.images:
        say("images:")
        for line in f.images:
            say(f"  {line}")
    if f.files or not f.data_dir_exists:
        say(f"files in {f.data_dir}:")
        if not f.data_dir_exists:
            say("  create the data dir (mode 0700)")
        for name, what in f.files:
            say(f"  {name}: {what}")
    for note in f.notes:
        say(f"note: {note}")
    if f.changes:
        say(f"the run would make these changes: `syntho-agent {command}` with the same options")
    else:
        say("nothing would change")
