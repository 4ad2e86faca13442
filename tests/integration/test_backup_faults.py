"""Backups under faults, on the real engine with real Postgres: a disk that fills up during a
backup, rows written while it is taken, and SIGKILL at random points of backups and restores.

The kill points are random (the seed is printed; SYNTHO_BACKUP_SEED replays a run), spread over
the duration of one uninterrupted run of the same command, and enough of the kills must land
while the command still runs; the waits between them are the fault's timing, not
synchronisation: each outcome is checked by reading what is on disk and in the databases.
"""

from __future__ import annotations

import random
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import archive
from tests.integration.agent_helpers import App, engine_snapshot, ok
from tests.support import mounts
from tests.support.agent_cli import agent_cmd, agent_env, run_agent
from tests.support.constants import REPO
from tests.support.kills import enough_landed, fault_seed, kill_at, kill_rounds

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SEED = fault_seed("SYNTHO_BACKUP_SEED")


@pytest.fixture(scope="module")
def rng() -> random.Random:
    print(f"fault seed {SEED} (replay with SYNTHO_BACKUP_SEED={SEED})")
    return random.Random(SEED)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, nearly full."""
    with mounts.tmpfs(tmp_path / "small", "1m") as mount:
        filler = mount / "filler"
        with filler.open("wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"x" * 4096)
            except OSError:
                pass
        filler.write_bytes(filler.read_bytes()[:-16384])  # room for a little, not a dump
        yield mount


def archives_verify(folder: Path) -> list[Path]:
    """Every archive under a final name reads back whole; the list of them."""
    found = sorted(folder.glob("*.syntho-backup"))
    for path in found:
        with tempfile.TemporaryDirectory() as into:
            archive.extract(path, None, Path(into))  # raises on anything damaged
    return found


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*"))


def test_a_disk_that_fills_up_during_a_backup(stack: App, small_disk: Path) -> None:
    stack.psql("syntho-core", "CREATE TABLE IF NOT EXISTS bulk AS SELECT md5(i::text) AS v "
               "FROM generate_series(1, 20000) AS i")
    secrets = stack.secrets()
    snapshot = engine_snapshot(stack.sandbox.client)
    before = sorted(p.name for p in small_disk.iterdir())
    result = stack.cmd("backup", "--output", str(small_disk))
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "No space left on device" in result.stderr
    assert str(small_disk) in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == before  # nothing half-written
    assert stack.secrets() == secrets and engine_snapshot(stack.sandbox.client) == snapshot
    assert "nothing to do" in ok(stack.run())


def test_a_backup_taken_while_rows_are_written_is_consistent(stack: App,
                                                             tmp_path: Path) -> None:
    """Each transaction writes two rows; a restored backup holds both or neither of each."""
    stack.psql("syntho-backend", "CREATE TABLE IF NOT EXISTS pairs (id int, half int)")
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            stack.psql("syntho-backend", f"BEGIN; INSERT INTO pairs VALUES ({n}, 1); "
                       f"SELECT pg_sleep(0.01); INSERT INTO pairs VALUES ({n}, 2); COMMIT")
            written.append(n)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        deadline = time.monotonic() + 60
        while len(written) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        out = ok(stack.cmd("backup", "--output", str(tmp_path)))
    finally:
        stop.set()
        writer.join()
    assert "wrote" in out and len(written) >= 20
    path = next(tmp_path.glob("*.syntho-backup"))
    out = ok(run_agent("restore", str(path), *stack.args(), "--force"))
    assert "took a backup of the current state first" in out
    torn = stack.psql("syntho-backend",
                      "SELECT count(*) FROM (SELECT id FROM pairs GROUP BY id "
                      "HAVING count(*) <> 2) AS t")
    kept = int(stack.psql("syntho-backend", "SELECT count(DISTINCT id) FROM pairs"))
    assert torn == "0" and 20 <= kept <= len(written), (torn, kept, len(written))


def test_sigkill_at_random_points_of_a_backup(stack: App, tmp_path: Path,
                                              rng: random.Random) -> None:
    # Two uninterrupted backups, timed; the kill points are spread over the shorter, and over
    # any round's that ended on its own before its point (the first backups of a stack, or ones
    # beside a busy shard, can take twice as long as the ones after them, and a point past the
    # end of a backup proves nothing).
    args = ["backup", "--data-dir", str(stack.data_dir), "--instance", stack.instance,
            "--output", str(tmp_path)]

    def backup() -> subprocess.Popen[str]:
        return subprocess.Popen(agent_cmd(*args), cwd=REPO, env=agent_env(None),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    took = []
    for _ in range(2):
        run = kill_at(backup(), time.monotonic(), 600)
        assert run.returncode == 0 and run.ended is not None, run
        took.append(run.ended)
    print(f"backups take {took[0]:.1f}s, {took[1]:.1f}s")
    kills = []
    for kill in kill_rounds(rng, 20, min(took), backup):
        kills.append(kill)
        assert kill.landed or kill.returncode == 0, (f"seed {SEED}", kill)
        archives_verify(tmp_path)  # never a damaged archive under a final name
    assert enough_landed(kills) == "", f"seed {SEED}: {enough_landed(kills)}"
    ok(stack.cmd("backup", "--output", str(tmp_path)))  # clears what the killed ones left
    assert leftovers(tmp_path) == [], f"seed {SEED}"
    assert len(archives_verify(tmp_path)) >= 3


def test_sigkill_at_random_points_of_a_restore(stack: App, tmp_path: Path,
                                               rng: random.Random) -> None:
    stack.psql("syntho-core", "CREATE TABLE IF NOT EXISTS marker (v text); "
               "INSERT INTO marker VALUES ('before the kills')")
    ok(stack.cmd("backup", "--output", str(tmp_path)))
    path = next(tmp_path.glob("*.syntho-backup"))
    secrets = stack.secrets()
    # One uninterrupted restore, timed: the kill points are spread over its duration.
    started = time.monotonic()
    out = ok(run_agent("restore", str(path), *stack.args(), "--force"))
    took = time.monotonic() - started
    assert "the app is up" in out
    print(f"one restore takes {took:.1f}s")

    def restore() -> subprocess.Popen[str]:
        return subprocess.Popen(agent_cmd("restore", str(path), *stack.args(), "--force"),
                                cwd=REPO, env=agent_env(None), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    kills = []
    for kill in kill_rounds(rng, 10, took, restore):
        kills.append(kill)
        print(f"restore killed at {kill.at:.2f}s: "
              f"{'landed' if kill.landed else f'came after its end (exit {kill.returncode})'}")
        assert kill.landed or kill.returncode == 0, (f"seed {SEED}", kill)
        assert stack.secrets() == secrets, f"seed {SEED}"  # the same values, whole files
        archives_verify(stack.data_dir / "backups")
    assert enough_landed(kills) == "", f"seed {SEED}: {enough_landed(kills)}"
    out = ok(run_agent("restore", str(path), *stack.args(), "--force"))
    assert "the app is up" in out, f"seed {SEED}"
    assert stack.psql("syntho-core", "SELECT v FROM marker") == "before the kills"
    assert not list(stack.data_dir.glob(".syntho-restore-*"))
    assert "nothing to do" in ok(stack.run())
