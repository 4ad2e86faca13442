"""Releases under bad input and under SIGKILL, on the real engine and a real registry.

Bad input (an unknown tag, a release file with a typo or an unpinned reference, a rollback with
nothing to go back to, a registry that does not answer, two ways of naming the release at
once): one line on stderr, the documented exit code, and nothing changed, neither on the
engine nor in the data dir's releases.json.

Faults: the agent is killed (SIGKILL) at a random point of an upgrade (A -> B) or of a rollback
(B -> A), then the same command runs again to its end: the app runs one release as a whole,
nothing is left over, the history's newest record is healthy and names it, and the data
written before the faults is still there. SYNTHO_RELEASE_KILLS rounds (default 2; 20 for the
full run), their kill points spread over the duration of one uninterrupted upgrade
(tests/support/kills.py; the seed is printed, SYNTHO_RELEASE_SEED replays it), and at least 80%
of the kills must land while the command still runs.

One module-wide registry with releases A and B, a head on A and an app on A (its own: this
module shares no state with test_releases.py).
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.agent_helpers import engine_snapshot, ok
from tests.integration.test_releases import Deployment, release_lab
from tests.support.agent_cli import agent_cmd, agent_env, run_agent
from tests.support.constants import REPO
from tests.support.kills import Kill, enough_landed, fault_seed, kill_at, kill_points
from tests.support.ports import free_port
from tests.support.releases import PASSWORD, USER, ReleaseRegistry

pytestmark = pytest.mark.integration

ENV = {"SYNTHO_AGENT_REGISTRY_PASSWORD": PASSWORD}
KEPT_ROW = "written before the faults"
# A bad input's run: its result, the exit code it must have, words its error line must hold.
Refusal = tuple[subprocess.CompletedProcess[str], int, str]


@pytest.fixture(scope="module")
def faults(release_registry: ReleaseRegistry,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Registry with releases A and B, a head on A, the app on A with one row written."""
    with release_lab(release_registry, tmp_path_factory.mktemp("release-faults"),
                     {"A": {}, "B": {}}) as d:
        ok(d.app("--release", "A"))
        assert d.running_release() == {"A"}
        d.psql(f"CREATE TABLE kept (x text); INSERT INTO kept VALUES ('{KEPT_ROW}')")
        yield d


def releases_json(d: Deployment) -> bytes | None:
    path = d.app_dir / "releases.json"
    return path.read_bytes() if path.exists() else None


def refused(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The one line on stderr of a run that exited `code`."""
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# ---- bad input: one line, the right exit code, nothing changed ----

def release_file(d: Deployment, name: str, body: str) -> Path:
    path = d.sandbox.tmp / name
    path.write_text(body)
    return path


def bad_unknown_tag(d: Deployment) -> Refusal:
    return d.app("--release", "NOPE"), 2, "the registry has no image"


def bad_file_key(d: Deployment) -> Refusal:
    refs = d.releases["B"]
    f = release_file(d, "typo-key.yml", f"release: B\nimagez:\n  core: {refs['core']}\n")
    return d.app("--release-file", str(f)), 2, "images"


def bad_file_image(d: Deployment) -> Refusal:
    refs = d.releases["B"]
    f = release_file(d, "typo-image.yml",
                     f"release: B\nimages:\n  coer: {refs['core']}\n"
                     f"  backend: {refs['backend']}\n")
    return d.app("--release-file", str(f)), 2, "unknown image 'coer'"


def bad_file_untagged(d: Deployment) -> Refusal:
    refs = d.releases["B"]
    untagged = refs["core"].rsplit(":", 1)[0]
    f = release_file(d, "untagged.yml", f"release: B\nimages:\n  core: {untagged}\n"
                                         f"  backend: {refs['backend']}\n")
    return d.app("--release-file", str(f)), 2, "names no tag or digest"


def bad_rollback_fresh(d: Deployment) -> Refusal:
    fresh = d.sandbox.tmp / "fresh-app"
    args = ["--data-dir", str(fresh), "--instance", d.sandbox.instance("fresh"), "--head",
            "127.0.0.1", "--token-file", str(d.head_dir / "ray-token"),
            "--frontend-port", str(free_port()), "--backend-port", str(free_port())]
    done = run_agent("rollback", "app", *args, env=ENV)
    assert not (fresh / "releases.json").exists()
    return done, 2, "nothing to go back to"


def bad_registry_down(d: Deployment) -> Refusal:
    rel = d.releases["A"]
    # A port held and never listened on: a connection is refused, and no other test's server
    # can take it meanwhile (CI once saw a free port picked here become another's registry).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        down = f"127.0.0.1:{held.getsockname()[1]}"
        done = run_agent("app", *d.app_common(), "--registry", down, "--registry-user", USER,
                         "--postgres-image", rel["postgres"], "--redis-image", rel["redis"],
                         "--release", "A", "--pull", "always", env=ENV)
    return done, 3, down


def bad_both(d: Deployment) -> Refusal:
    refs = d.releases["B"]
    f = release_file(d, "valid.yml", f"release: B\nimages:\n  core: {refs['core']}\n")
    return d.app("--release", "A", "--release-file", str(f)), 2, "--release-file"


@pytest.mark.parametrize("case", [bad_unknown_tag, bad_file_key, bad_file_image,
                                  bad_file_untagged, bad_rollback_fresh, bad_registry_down,
                                  bad_both], ids=lambda f: str(f.__name__[4:]))
def test_bad_input_changes_nothing(faults: Deployment, docker_client: docker.DockerClient,
                                   case: Callable[[Deployment], Refusal]) -> None:
    d = faults
    before, history_before = engine_snapshot(docker_client), releases_json(d)
    assert history_before is not None
    done, code, words = case(d)
    line = refused(done, code)
    print(line)
    assert words in line, line
    if case is bad_registry_down:
        assert "registry" in line and ("cannot ask" in line or "cannot log in" in line), line
    assert engine_snapshot(docker_client) == before
    assert releases_json(d) == history_before
    assert d.running_release() == {"A"}


# ---- SIGKILL at random points of upgrades and rollbacks ----

def upgrade_cmd(d: Deployment) -> list[str]:
    # --retry-failed: B was rolled back from in an earlier round; without it the app would
    # keep A (a restarted unit must not undo a rollback).
    rel = d.releases["A"]
    return agent_cmd("app", *d.app_common(), *d.registry_args(), "--postgres-image",
                     rel["postgres"], "--redis-image", rel["redis"], "--release", "B",
                     "--pull", "missing", "--retry-failed")


def rollback_cmd(d: Deployment) -> list[str]:
    return agent_cmd("rollback", "app", *d.app_common())


def run_to_end(cmd: list[str], log: Path) -> int:
    with log.open("a") as out:
        return subprocess.run(cmd, cwd=REPO, env=agent_env(ENV), stdout=out, stderr=out,
                              timeout=900).returncode


def converged(d: Deployment, tag: str) -> list[str]:
    """What is wrong with the app once a run ended, [] when it runs release `tag` as a whole."""
    problems = []
    try:
        running = d.running_release()
    except AssertionError as exc:
        running = {f"not running: {exc}"}
    if running != {tag}:
        problems.append(f"running releases {sorted(running)}, not {tag}")
    if d.leftovers():
        problems.append(f"leftovers {d.leftovers()}")
    newest = d.history()[0]
    if (newest["name"], newest["state"]) != (tag, "healthy"):
        problems.append(f"newest history record {newest['name']} {newest['state']}")
    if d.psql("SELECT x FROM kept") != KEPT_ROW:
        problems.append("the row written before the faults is gone")
    return problems


def test_sigkill_during_upgrades_and_rollbacks(faults: Deployment) -> None:
    d = faults
    rounds = int(os.environ.get("SYNTHO_RELEASE_KILLS", "2"))
    seed = fault_seed("SYNTHO_RELEASE_SEED")
    rng = random.Random(seed)
    print(f"SYNTHO_RELEASE_KILLS={rounds}")
    log = d.sandbox.tmp / "fault-runs.log"

    # One uninterrupted upgrade, A -> B, timed; its images are already on the engine (built
    # there by make_release), so every kill lands in the rollout, not in a pull. Round k of n
    # kills within the k-th slice of its duration, a rollback's round too: a rollback takes
    # longer (77 s to an upgrade's 64 s, seen once), so its kills land as well, over its first
    # ~80% (timing one too would add a whole rollback to the test).
    started = time.monotonic()
    assert run_to_end(upgrade_cmd(d), log) == 0, log.read_text()[-3000:]
    duration = time.monotonic() - started
    assert converged(d, "B") == []
    print(f"one upgrade A -> B takes {duration:.1f}s")

    # Alternate, starting with a rollback (the app is on B).
    kinds = ["rollback" if n % 2 == 0 else "upgrade" for n in range(rounds)]
    points = kill_points(rng, rounds, duration, earliest=0.2)
    failures: list[str] = []
    kills: list[Kill[bytes]] = []
    for n, (kind, at) in enumerate(zip(kinds, points)):
        cmd, tag = (upgrade_cmd(d), "B") if kind == "upgrade" else (rollback_cmd(d), "A")
        with log.open("a") as out:
            out.write(f"\n==== round {n}: {kind}, killed after {at:.2f}s ====\n")
        with log.open("a") as out:
            started = time.monotonic()
            kill = kill_at(subprocess.Popen(cmd, cwd=REPO, env=agent_env(ENV), stdout=out,
                                            stderr=out), started, at)
        kills.append(kill)
        what = (f"round {n} ({kind}, {'killed' if kill.landed else 'ended before the kill'}"
                f" at {at:.2f}s, seed {seed})")
        print(what)
        if not kill.landed and kill.returncode != 0:
            failures.append(f"{what}: the run exited {kill.returncode}")
        # The same command again, to its end. A rollback that ended by itself is not run
        # again: that would be a new rollback, from A, with nothing healthy to go back to.
        if kill.landed or kind == "upgrade":
            with log.open("a") as out:
                out.write(f"\n==== round {n}: re-run ====\n")
            code = run_to_end(cmd, log)
            if code != 0:
                failures.append(f"{what}: the re-run exited {code}")
        failures += [f"{what}: {p}" for p in converged(d, tag)]
        if failures and failures[-1].startswith(what):
            # Leave the app on the release the next round starts from, for the rounds after.
            run_to_end(upgrade_cmd(d) if tag == "B" else agent_cmd(
                "app", *d.app_common(), *d.registry_args(), "--postgres-image",
                d.releases["A"]["postgres"], "--redis-image", d.releases["A"]["redis"],
                "--release", "A", "--retry-failed"), log)
    landed = sum(k.landed for k in kills)
    print(f"{rounds} rounds, {landed} killed while running, {rounds - landed} ended before")
    if enough_landed(kills):
        failures.append(enough_landed(kills))
    assert failures == [], "\n".join(failures) + "\n--- agent output (tail) ---\n" + \
        log.read_text()[-6000:]
