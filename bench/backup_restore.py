"""7. Backup and restore of a database of a few hundred MB vs pg_dump -Fc / pg_restore by hand.

One agent app stack; its backend database is filled with --mb MB of rows (hard to compress).
Then, interleaved:
- backup: `syntho-agent backup --encrypt-key-file K` (a whole process: dumps of both
  databases, the archive assembled, encrypted, synced) against `pg_dump -Fc` of both
  databases run by hand inside the Postgres container (the floor). Target: at most 1.15x.
- restore: the agent's restore of the databases (checking and decrypting the whole archive,
  then pg_restore of both, as `restore` reports its phases) against `pg_restore --clean` of
  the floor's dumps by hand in the same container. Target: at most 1.15x. The whole `restore`
  command, which also removes and converges the app, is reported beside it.
- the agent's peak memory (max RSS) during an encrypted backup. Target: under 100 MB.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, stacks
from tests.support.agent_cli import agent_cmd, agent_env

DATABASES = ("syntho-core", "syntho-backend")
WRITERS = ("core", "core_worker", "backend", "worker")  # the app's services that write to them
# The agent as a child of a tiny Python: its max RSS is the children's after it exits.
RSS = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], "
       "capture_output=True, text=True); print(done.returncode); print(done.stdout); "
       "print(done.stderr, file=sys.stderr); "
       "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def psql(postgres: str, db: str, sql: str) -> str:
    done = subprocess.run(["docker", "exec", postgres, "psql", "-U", "syntho", "-d", db,
                           "-Atc", sql], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def fill(postgres: str, mb: int) -> float:
    """About mb MB of rows in the backend database (md5 text: it does not compress to nothing);
    the table's size in MB."""
    rows = mb * 1024 * 1024 // 330
    psql(postgres, "syntho-backend", "DROP TABLE IF EXISTS bench_rows; CREATE TABLE bench_rows "
         "AS SELECT i, md5(i::text) || md5((i * 7)::text) || md5((i * 13)::text) || "
         "md5((i * 17)::text) || md5((i * 19)::text) || md5((i * 23)::text) || "
         "md5((i * 29)::text) || md5((i * 31)::text) AS v "
         f"FROM generate_series(1, {rows}) AS i")
    size = psql(postgres, "syntho-backend",
                "SELECT pg_total_relation_size('bench_rows') / 1048576.0")
    return float(size)


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed:\n{done.stdout}\n{done.stderr}")
    return elapsed, done


def main() -> None:
    p = common.parser(__doc__.splitlines()[0] if __doc__ else "", repeat=3)
    p.add_argument("--mb", type=int, default=300, help="rows to add, in MB (default 300)")
    args = p.parse_args()
    client = common.client()
    images = common.images(client)
    backup_agent: list[float] = []
    backup_floor: list[float] = []
    restore_agent: list[float] = []
    restore_whole: list[float] = []
    restore_floor: list[float] = []
    rss: list[float] = []
    notes: list[str] = []
    with common.Janitor(client) as j:
        common.log("setting up the agent's app stack (Ray head + app) ...")
        deployment = stacks.new_app(j, images, "bk")
        postgres = deployment.name("postgres")
        size = fill(postgres, args.mb)
        notes.append(f"the backend database holds a {size:.0f} MB table (bench_rows)")
        key = j.tmp / "backup.key"
        key.write_text("0123456789abcdef0123456789abcdef\n")
        out_dir = j.tmp / "backups"
        out_dir.mkdir()
        base = ["--data-dir", str(deployment.data_dir), "--instance", deployment.instance]

        def agent_backup(i: int) -> None:
            for old in out_dir.glob("*"):
                old.unlink()
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", RSS, *agent_cmd(
                "backup", *base, "--encrypt-key-file", str(key), "--output", str(out_dir))],
                capture_output=True, text=True, env=agent_env(None, write_bytecode=True))
            backup_agent.append(time.perf_counter() - started)
            if not done.stdout.startswith("0"):
                raise RuntimeError(f"the agent's backup failed:\n{done.stdout}{done.stderr}")
            rss.append(int(done.stdout.rsplit("MAXRSS", 1)[1]) / 1024)  # KiB -> MiB

        def floor_dumps() -> float:
            script = "; ".join(f'pg_dump -Fc -U syntho -d "{db}" > /tmp/floor-{n}.dump'
                               for n, db in enumerate(DATABASES))
            return timed(["docker", "exec", postgres, "sh", "-c", script])[0]

        def floor_backup(i: int) -> None:
            backup_floor.append(floor_dumps())

        common.log(f"{args.repeat} backups of each, interleaved ...")
        common.interleave(args.repeat, agent_backup, floor_backup)
        archive = next(out_dir.glob("*.syntho-backup"))
        notes.append(f"the encrypted archive: {archive.stat().st_size / 1e6:.0f} MB")

        def agent_restore(i: int) -> None:
            elapsed, done = timed(agent_cmd(
                "restore", str(archive), *deployment.args(), "--force", "--encrypt-key-file",
                str(key)))
            phases = [float(x) for x in re.findall(
                r"(?:checked in |restored the databases .* \()([0-9.]+)s", done.stdout)]
            if len(phases) != 2:
                raise RuntimeError(f"the restore did not report its phases:\n{done.stdout}")
            restore_agent.append(sum(phases))
            restore_whole.append(elapsed)

        writers = [deployment.name(s) for s in WRITERS]

        def floor_restore(i: int) -> None:
            # As the agent's restore does: nothing else writes while the dumps go in (the
            # stand-ins insert their admin user at start). Stopping them is not timed.
            subprocess.run(["docker", "stop", *writers], capture_output=True, check=True)
            script = "; ".join(f'pg_restore --clean --if-exists --no-owner -U syntho -d "{db}" '
                               f'/tmp/floor-{n}.dump' for n, db in enumerate(DATABASES))
            elapsed, _ = timed(["docker", "exec", postgres, "sh", "-c", script])
            restore_floor.append(elapsed)
            subprocess.run(["docker", "start", *writers], capture_output=True, check=True)

        common.log(f"{args.repeat} restores of each, interleaved ...")
        for i in range(args.repeat):
            agent_restore(i)
            floor_dumps()  # a new Postgres container after each restore: its dumps again
            floor_restore(i)
        notes.append("the whole `restore --force` (a backup of the current state first, the app "
                     "removed and converged again, the databases restored): "
                     f"{common.spread(restore_whole, 's')}")
    b_ratio = common.summary(backup_agent).median / common.summary(backup_floor).median
    r_ratio = common.summary(restore_agent).median / common.summary(restore_floor).median
    rows = [
        common.Row("7a. backup, encrypted (both databases)", "s", backup_agent,
                   "pg_dump -Fc by hand", backup_floor, target="<= 1.15x",
                   met=b_ratio <= 1.15),
        common.Row("7b. restore of the databases (archive checked and decrypted)", "s",
                   restore_agent, "pg_restore by hand", restore_floor, target="<= 1.15x",
                   met=r_ratio <= 1.15),
        common.Row("7c. agent's peak memory during an encrypted backup", "MB", rss,
                   "", baseline_text="-", target="< 100 MB",
                   met=max(rss) < 100),
    ]
    common.report(rows, notes, args.json)


if __name__ == "__main__":
    main()
