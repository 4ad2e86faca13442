"""An agent upgrade recreates nothing: what the agent deployed today made, this one recognises.

The zipapp built from OLD_COMMIT (out of the repo's history) converges a head, a worker and the
app; then the zipapp built from the work tree runs with exactly the same arguments. No container
may be recreated or restarted (its ID and StartedAt stay), `status` is green, and a second run
of the new agent has nothing to do.

Later work that changes a container's settings on purpose names it in CHANGED_ON_PURPOSE (its
service, and why): the test then asserts that exactly those are recreated by the upgrade, and
nothing else. Move OLD_COMMIT forward only to the agent that runs in the field.

The old zipapp is cached by commit id under dist/upgrade-from/ (git-ignored) and build.py keeps
its wheels in dist/.wheels, so only the first run builds it. A clone without OLD_COMMIT (a
shallow one) fails the test: it cannot prove the upgrade.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import agent_cli
from tests.support.constants import NOFILE, REPO
from tests.support.ports import free_port
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

OLD_COMMIT = "bd4bc9a"  # main when this test was written: the agent deployed today
# Service (io.syntho.agent.service) -> why its container is meant to be recreated by upgrading
# from OLD_COMMIT, e.g. {"backend": "a health check that tests the database too"}.
CHANGED_ON_PURPOSE: dict[str, str] = {
    "ray-head": "every Ray port pinned in `ray start` (README \"Firewall\"): node manager, object "
                "manager, agents, metrics, client server and a bounded worker range",
    "ray-worker": "every Ray port pinned in `ray start` (a worker's defaults, apart from the "
                  "head's): node manager, object manager, agents, metrics, worker range",
    "backend": "RAY_URL names the relay to the Ray dashboard (http://ray-relay:8265), which "
               "adds the token the backend never had (docs/stack.md)",
}

# Service -> why the upgrade adds its container (and the volumes that container mounts).
ADDED_ON_PURPOSE: dict[str, str] = {
    "gcs-redis": "GCS fault tolerance on by default (README \"A head that restarts\"): the head "
                 "keeps the cluster's state in a Redis of its own",
    "ray-relay": "the backend's path to the Ray dashboard: the relay that adds the token",
}

CACHE = REPO / "dist" / "upgrade-from"  # <commit>/syntho-agent, one file per old commit
WHEELS = REPO / "dist" / ".wheels"  # build.py's wheel cache, shared by both builds
BUILD_TIMEOUT = 900  # seconds; a cold wheel cache downloads for 2 CPUs x 5 Pythons
RUN_TIMEOUT = 600
# The labels the old agent puts on what it makes: the contract the new agent must honour.
LABEL_INSTANCE = "io.syntho.agent.instance"
LABEL_SERVICE = "io.syntho.agent.service"
ROLES = ("head", "worker", "app")
# How the agent reports a change: "recreated NAME (why)", "created volume NAME", ...
CHANGE = re.compile(r"^(created|recreated|started|removed) ((?:network |volume )?\S+)",
                    re.MULTILINE)
# A line that speaks of a change in any words: each must be one CHANGE reads (a new wording
# would otherwise pass unseen).
CHANGE_WORDS = re.compile(r"\b(?:re)?(?:creat|start|stopp|remov|replac)ed\b")


# --- the two zipapps ------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would steer the agent, the zipapp, the interpreter, git
    or the build's timestamps."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SYNTHO_AGENT_", "SHIV_", "PYTHONPATH", "PYTHONHOME", "GIT_"))
           and k != "SOURCE_DATE_EPOCH"}
    env.update(extra)
    return env


def git(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, env=clean_env(), capture_output=True,
                          text=True, timeout=120)


def old_commit_id() -> str:
    """OLD_COMMIT's full id; a clone without it fails the test, saying how to get it."""
    found = git("rev-parse", "--verify", "--quiet", f"{OLD_COMMIT}^{{commit}}")
    if found.returncode == 0:
        return found.stdout.strip()
    shallow = git("rev-parse", "--is-shallow-repository").stdout.strip() == "true"
    why = ("this is a shallow clone: run `git fetch --unshallow` (in CI, check out with the "
           "full history, e.g. fetch-depth: 0)" if shallow else
           "fetch the history that holds it (git fetch origin main)")
    pytest.fail(f"commit {OLD_COMMIT}, the agent deployed today that this test upgrades from, "
                f"is not in {REPO}'s git history: {why}", pytrace=False)


@dataclass
class Build:
    """One build.py run of source (with this venv's Python) into dist, under way."""

    source: Path
    dist: Path

    def __post_init__(self) -> None:
        self.log = self.dist.with_name(self.dist.name + ".log")
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(self.source / "build.py"), "--dist", str(self.dist),
                 "--wheels", str(WHEELS)],
                cwd=self.source, env=clean_env(), stdout=log, stderr=subprocess.STDOUT,
                text=True)

    def wait(self) -> Path:
        """This machine's zipapp, once the build is done."""
        try:
            code = self.process.wait(BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        assert code == 0, f"{self.source}/build.py failed (exit {code}):\n{self.log.read_text()}"
        return self.dist / "syntho-agent"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def build_old(commit: str) -> Path:
    """The zipapp of that commit, built once and kept in CACHE.

    The source is a checkout of the commit in a scratch clone (--shared: it reads this repo's
    objects and writes nothing to it), so that its build.py records the commit as a clean one.
    """
    cached = CACHE / commit / "syntho-agent"
    if cached.is_file():
        return cached
    with tempfile.TemporaryDirectory(prefix="syntho-upgrade-") as tmp:
        source = Path(tmp, "source")
        for args, cwd in ((("clone", "--quiet", "--shared", "--no-checkout", str(REPO),
                            str(source)), REPO),
                          (("checkout", "--quiet", "--detach", commit), source)):
            done = git(*args, cwd=cwd)
            assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
        built = Build(source, Path(tmp, "dist")).wait()
        cached.parent.mkdir(parents=True, exist_ok=True)
        part = cached.with_name(f"{cached.name}.part-{os.getpid()}")
        shutil.copy2(built, part)
        part.replace(cached)  # whole or absent, also to a run beside this one
    return cached


@dataclass(frozen=True)
class Agent:
    """One zipapp, run as an operator runs it: `python3 ZIPAPP ...`, nothing from this
    environment steering it, extracted into a root of this module's own."""

    zipapp: Path
    shiv_root: Path
    env: tuple[tuple[str, str], ...] = ()  # what this agent alone is given

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(self.zipapp), *args],
                              cwd=self.shiv_root,
                              env=clean_env(SHIV_ROOT=str(self.shiv_root), **dict(self.env)),
                              capture_output=True, text=True, timeout=RUN_TIMEOUT)


@pytest.fixture(scope="module")
def old_commit() -> str:
    return old_commit_id()


@pytest.fixture(scope="module")
def shiv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shiv-root")


@pytest.fixture(scope="module")
def old_agent(old_commit: str, shiv_root: Path) -> Agent:
    return Agent(build_old(old_commit), shiv_root)


@pytest.fixture(scope="module")
def new_build(old_agent: Agent, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Build]:
    """The work tree's zipapp, built while the old agent converges (mostly waiting for health
    checks). Started once the old zipapp exists: a cold wheel cache is filled by that first
    build, and two builds filling it at once would trip over each other."""
    build = Build(REPO, tmp_path_factory.mktemp("new-zipapp") / "dist")
    try:
        yield build
    finally:
        build.stop()


@pytest.fixture(scope="module")
def new_agent(new_build: Build, shiv_root: Path) -> Agent:
    # The GCS Redis the new head adds (ADDED_ON_PURPOSE) from the test images, not pulled; an
    # option the old agent does not know, so given to the new one alone.
    return Agent(new_build.wait(), shiv_root, ((agent_cli.GCS_REDIS_IMAGE_ENV,
                                                agent_cli.test_redis_image()),))


# --- the deployment -------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One managed container as the engine reports it."""

    service: str
    id: str
    started_at: str
    status: str


def managed(sandbox: Sandbox) -> dict[str, Seen]:
    """Every container of this module's instances, by name (stopped and stray ones too)."""
    found: dict[str, Seen] = {}
    for instance in sandbox.instances:
        for c in sandbox.client.containers.list(
                all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}):
            state = c.attrs["State"]
            found[c.name] = Seen(c.labels.get(LABEL_SERVICE, ""), c.id, state["StartedAt"],
                                 state["Status"])
    return found


def ok(done: subprocess.CompletedProcess[str], what: str) -> str:
    assert done.returncode == 0, f"{what}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass(frozen=True)
class Role:
    """One role's command line, the same for both agents."""

    name: str  # head | worker | app
    data_dir: Path
    instance: str
    args: tuple[str, ...]

    def command(self) -> tuple[str, ...]:
        return (self.name, "--data-dir", str(self.data_dir), "--instance", self.instance,
                *self.args)

    def status(self) -> tuple[str, ...]:
        return ("status", "--data-dir", str(self.data_dir), "--instance", self.instance)


@dataclass
class Deployment:
    sandbox: Sandbox
    roles: list[Role] = field(default_factory=list)
    before: dict[str, Seen] = field(default_factory=dict)  # after the old agent converged
    backend_port: int = 0
    dashboard_before: dict[str, Any] = field(default_factory=dict)  # the backend's check


@pytest.fixture(scope="module")
def report_only_backend(module_sandbox: Sandbox, images: dict[str, str]) -> str:
    """The stand-in backend with its check of RAY_URL reported, not counted in its health: the
    old agent gives the backend the dashboard's own address, which refuses it (no token: the
    defect the relay fixes), so the stand-in as it is would never be healthy under it."""
    tag = f"{images['backend'].replace('/backend:', '/backend-report-only:')}"
    dockerfile = f"FROM {images['backend']}\nENV STANDIN_DASHBOARD_REPORT_ONLY=1\n"
    module_sandbox.client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag,
                                       rm=True, forcerm=True)
    return tag


def backend_dashboard_check(port: int) -> dict[str, Any]:
    """The stand-in backend's own check of RAY_URL, from its health answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/docs/", timeout=20) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
    return dict(body["dependencies"]["ray_dashboard"])


@pytest.fixture(scope="module")
def deployment(module_sandbox: Sandbox, images: dict[str, str], old_agent: Agent,
               new_build: Build, report_only_backend: str) -> Deployment:
    """Head (host network), a worker (on a bridge network) and the app (--head 127.0.0.1), on
    this one engine, converged by the old agent."""
    box = module_sandbox
    box.create_network()
    token = box.tmp / "head" / "ray-token"
    deployed = Deployment(box)

    def converge(name: str, *args: str) -> str:
        role = Role(name, box.tmp / name, box.instance(name), args)
        deployed.roles.append(role)
        return ok(old_agent(*role.command()), f"the old agent's {name}")

    out = converge("head", "--ray-image", images["ray"], "--shm-size", "1gb", "--nofile", NOFILE)
    # The address Ray advertises for the head (this host's), from the join hint it prints.
    join = re.search(r"syntho-agent worker --head (\S+)", out)
    assert join, f"no join hint in the old head's output:\n{out}"
    converge("worker", "--network", box.network, "--head", join[1], "--ray-image", images["ray"],
             "--shm-size", "512mb", "--nofile", NOFILE, "--token-file", str(token))
    deployed.backend_port = free_port()
    out = converge(
        "app", "--head", "127.0.0.1", "--token-file", str(token),
        "--core-image", images["core"], "--backend-image", report_only_backend,
        "--frontend-image", images["frontend"], "--postgres-image", images["postgres"],
        "--redis-image", images["redis"], "--frontend-port", str(free_port()),
        "--backend-port", str(deployed.backend_port), "--ready-timeout", "240")
    assert "the app is up" in out, out
    deployed.before = managed(box)
    deployed.dashboard_before = backend_dashboard_check(deployed.backend_port)
    return deployed


@dataclass
class Upgrade:
    runs: dict[str, subprocess.CompletedProcess[str]]  # by role, in order
    after: dict[str, Seen]


@pytest.fixture(scope="module")
def upgrade(deployment: Deployment, new_agent: Agent) -> Upgrade:
    """The new agent run for head, worker and app, in that order (up to the first failure)."""
    runs = {}
    for role in deployment.roles:
        runs[role.name] = new_agent(*role.command())
        if runs[role.name].returncode != 0:
            break
    return Upgrade(runs, managed(deployment.sandbox))


def changed_on_purpose(seen: dict[str, Seen]) -> set[str]:
    """The container names that CHANGED_ON_PURPOSE names (by service)."""
    return {name for name, c in seen.items() if c.service in CHANGED_ON_PURPOSE}


def added_on_purpose(seen: dict[str, Seen]) -> set[str]:
    """The container names that ADDED_ON_PURPOSE names (by service)."""
    return {name for name, c in seen.items() if c.service in ADDED_ON_PURPOSE}


# --- the tests ------------------------------------------------------------------------------


def test_the_old_agent_is_the_commit_deployed_today(old_agent: Agent, old_commit: str) -> None:
    out = ok(old_agent("version"), "the old agent's version")
    assert f"(commit {old_commit}, built for" in out, out


def test_the_deployment_is_whole(deployment: Deployment) -> None:
    services = sorted(c.service for c in deployment.before.values())
    assert services == sorted(["ray-head", "ray-worker", "postgres", "redis", "core",
                               "core_worker", "backend", "worker", "frontend"]), services
    assert all(c.status == "running" for c in deployment.before.values()), deployment.before
    unknown = set(CHANGED_ON_PURPOSE) - set(services)
    assert not unknown, f"CHANGED_ON_PURPOSE names services that do not exist: {unknown}"


def test_the_new_agent_converges_each_role(upgrade: Upgrade) -> None:
    for name in ROLES:
        assert name in upgrade.runs, f"not run: {name} (an earlier role failed)"
        ok(upgrade.runs[name], f"the new agent's {name}")


def test_the_new_agent_says_it_changed_only_what_changed_on_purpose(
        deployment: Deployment, upgrade: Upgrade) -> None:
    expected = {("recreated", name) for name in changed_on_purpose(deployment.before)}
    expected |= {("created", name) for name in added_on_purpose(upgrade.after)}
    expected |= {("created", f"volume {m['Name']}") for name in added_on_purpose(upgrade.after)
                 for m in deployment.sandbox.client.containers.get(name).attrs["Mounts"]
                 if m["Type"] == "volume"}
    output = "\n".join(run.stdout for run in upgrade.runs.values())
    unread = [line for line in output.splitlines()
              if CHANGE_WORDS.search(line) and not CHANGE.match(line)]
    assert not unread, f"lines that report a change in an unknown wording: {unread}"
    said = {(m[1], m[2]) for m in CHANGE.finditer(output)}
    assert said == expected, (f"the new agent should report exactly {sorted(expected)} (from "
                              f"CHANGED_ON_PURPOSE); it said:\n{output}")


def test_no_container_is_recreated_or_restarted(deployment: Deployment,
                                                upgrade: Upgrade) -> None:
    """Only CHANGED_ON_PURPOSE's containers have a new ID; every other one keeps its ID and
    StartedAt (a restart moves StartedAt); none appears, disappears or stops."""
    before, after = deployment.before, upgrade.after
    added = added_on_purpose(after)
    assert added.isdisjoint(before) and added, f"ADDED_ON_PURPOSE's containers: {sorted(added)}"
    assert sorted(after) == sorted([*before, *added]), "containers appeared or disappeared"
    assert all(c.status == "running" for c in after.values()), after
    recreated = {name for name, was in before.items() if after[name].id != was.id}
    restarted = {name for name, was in before.items()
                 if after[name].id == was.id and after[name].started_at != was.started_at}
    expected = changed_on_purpose(before)
    assert (recreated, restarted) == (expected, set()), (
        f"the upgrade from {OLD_COMMIT} recreated {sorted(recreated) or 'nothing'} and "
        f"restarted {sorted(restarted) or 'nothing'}; CHANGED_ON_PURPOSE expects exactly "
        f"{sorted(expected) or 'nothing'} recreated (name a container there, with why, when its "
        "settings change on purpose)")


def test_the_backend_reaches_the_dashboard_only_after_the_upgrade(
        deployment: Deployment, upgrade: Upgrade) -> None:
    """Under the old agent the backend's RAY_URL is refused (no token); the new agent's relay
    makes the same call work."""
    before = deployment.dashboard_before
    assert not before["ok"] and "401" in before["error"], before
    after = backend_dashboard_check(deployment.backend_port)
    assert after["ok"] and after["detail"].startswith("Ray "), after


def test_status_is_green(deployment: Deployment, upgrade: Upgrade, new_agent: Agent) -> None:
    for role in deployment.roles:
        out = ok(new_agent(*role.status()), f"status of {role.name}")
        for name, c in upgrade.after.items():
            if name.endswith(role.instance):
                assert name in out, f"{name} ({c.service}) not in the status of {role.name}"
        # Made before Ray's TLS: still plain after the upgrade, and `status` says so.
        assert "Ray's traffic between VMs is NOT encrypted" in out, out


def test_a_second_run_of_the_new_agent_does_nothing(deployment: Deployment, upgrade: Upgrade,
                                                    new_agent: Agent) -> None:
    for role in deployment.roles:
        out = ok(new_agent(*role.command()), f"the new agent's second {role.name}")
        assert "nothing to do" in out, out
        assert not CHANGE_WORDS.search(out), out
    assert managed(deployment.sandbox) == upgrade.after
