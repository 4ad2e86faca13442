"""The full chaos soak on four simulated VMs, with a markdown table of what it found.

Every role runs with --watch, random faults for the set time, an independent checker
(docs/soak.md).

    python bench/soak.py                          # 30 minutes, a random seed (printed)
    python bench/soak.py --minutes 60 --seed 7    # SYNTHO_SOAK_SEED overrides --seed
    python bench/soak.py --no-gcs-ft              # the head without GCS fault tolerance
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from tests.soak import report
from tests.soak.lab import soak_lab
from tests.soak.run import choose_seed, soak


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=30.0, help="how long to inject faults")
    p.add_argument("--seed", type=int, help="the fault sequence's seed (default: random)")
    p.add_argument("--no-gcs-ft", action="store_true",
                   help="run the head with --no-gcs-ft (GCS fault tolerance off)")
    p.add_argument("--pause", type=float, nargs=2, default=(5.0, 20.0), metavar=("MIN", "MAX"),
                   help="seconds between faults, drawn uniformly (default 5 20)")
    p.add_argument("--markdown", type=Path, help="also write the table here")
    p.add_argument("--logs", type=Path, help="keep each VM's agent log in this directory")
    args = p.parse_args()
    seed = choose_seed(args.seed)
    client = common.client()
    images = common.images(client)
    if "vm" not in images:
        raise SystemExit("the test image `vm` is missing: run `make images`")
    command = " ".join(["python bench/soak.py", "--minutes", f"{args.minutes:g}", "--seed",
                        str(seed), *(["--no-gcs-ft"] if args.no_gcs_ft else [])])
    with tempfile.TemporaryDirectory(prefix="syntho-soak-") as tmp, \
            soak_lab(client, images, Path(tmp), gcs_ft=not args.no_gcs_ft) as lab:
        result = soak(lab, seed, args.minutes * 60, common.log, pause=tuple(args.pause),
                      logs=args.logs)
    table = report.markdown(result, command)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    common.log(f"repeat with: {shlex.quote(command)}")
    for rule, found in result.problems().items():
        for problem in found:
            common.log(f"failed ({rule}): {problem}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
