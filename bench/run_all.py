"""Run every benchmark (each a script in bench/, each cleaning up after itself) and print one
table, with the machine's description; see bench/RESULTS.md for a recorded run.

    python bench/run_all.py                 # everything, each script's default repeat count
    python bench/run_all.py --repeat 3      # the same repeat count for all
    python bench/run_all.py --only noop_rerun scale --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from tests.support.constants import REPO

HERE = Path(__file__).resolve().parent
SCRIPTS = ("noop_rerun", "cold_converge", "heal_latency", "join_latency", "zipapp_start",
           "scale", "backup_restore", "https")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, help="runs of each side, for every benchmark "
                   "(default: each script's own)")
    p.add_argument("--only", nargs="+", choices=SCRIPTS, help="run only these")
    p.add_argument("--markdown", type=Path, help="also write the table, notes and machine here")
    args = p.parse_args()
    client = common.client()
    common.images(client)  # fail early, before anything runs, if the test images are missing
    machine = common.machine(client)
    rows: list[common.Row] = []
    notes: list[str] = []
    failed: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="syntho-bench-results-") as tmp:
        for name in args.only or SCRIPTS:
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(HERE / f"{name}.py"), "--json", str(out)]
            if args.repeat:
                cmd += ["--repeat", str(args.repeat)]
            common.log(f"=== {name} ===")
            began = time.perf_counter()
            done = subprocess.run(cmd, cwd=REPO)
            took = time.perf_counter() - began
            if done.returncode != 0 or not out.exists():
                failed.append(name)
                common.log(f"=== {name} FAILED (exit {done.returncode}) after {took:.0f} s ===")
                continue
            data = json.loads(out.read_text())
            rows += [common.Row.from_dict(r) for r in data["rows"]]
            notes += [f"{name}: {n}" for n in data["notes"]]
            notes += [f"{name}: {r['name']}: {r['note']}" for r in data["rows"] if r["note"]]
            common.log(f"=== {name} done in {took:.0f} s ===")
    total = time.perf_counter() - started

    print()
    print(common.table(rows))
    print()
    for note in notes:
        print(f"- {note}")
    print()
    for key, value in machine.items():
        print(f"{key}: {value}")
    print(f"total time: {total / 60:.1f} min")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    if args.markdown:
        text = ["## Results", "", common.table(rows, markdown=True), "", "### Notes", ""]
        text += [f"- {n}" for n in notes]
        text += ["", "### Machine", ""]
        text += [f"- {k}: {v}" for k, v in machine.items()]
        text += [f"- total time: {total / 60:.1f} min"]
        args.markdown.write_text("\n".join(text) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
