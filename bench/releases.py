"""8. Releases: upgrade downtime, rollback from a failed release, `--pull always` unchanged.

A local registry (Debian's docker-registry, htpasswd auth, its access log captured) holds
releases A, B and Bx (B whose core never turns healthy) of the test images
(tests/support/releases.py). Two stacks, each with its own Ray head on its own network: the
agent's app, and the same stack as a docker-compose project (bench/stacks.py's compose file,
its images as ${CORE_IMAGE} etc. from the environment; compose logs in with a config.json of
its own in a temporary DOCKER_CONFIG).

- a. upgrade downtime of the frontend, A -> B: a client polls the frontend's published URL
  every 20 ms (1 s timeout); the measure is the total time its requests failed (anything but
  200; the frontend's health needs the backend, so a backend being replaced counts too), and
  the longest gap. Agent: `app --release B --pull always`; compose: `docker-compose pull &&
  docker-compose up -d` with B's references. Each goes back to A (unmeasured) for the next
  round. Target: the agent no worse than compose.
- b. rollback: `app --release Bx --retry-failed --ready-timeout T` from A, from the agent's line
  "did not become healthy: going back to release" (read as it streams) to its exit with the
  frontend serving A again; the baseline is the agent's own fresh up of A (`down`, data dir
  and volume kept, then `app --release A`), process start to exit. Target: at most 0.5x.
- c. `--pull always` with nothing changed: wall time and registry requests of the agent's run
  against `docker-compose pull` of the same images; the agent's engine calls, counted
  in-process (as bench/noop_rerun.py does).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker.errors
import yaml

from agent.waits import poll, tcp_open
from bench import common, stacks
from tests.support.agent_cli import agent_cmd, agent_env, run_agent
from tests.support.constants import REPO
from tests.support.engine_calls import CallCounter, counting_engine
from tests.support.ports import free_port
from tests.support.releases import health_version, make_release, remove_local

USER, PASSWORD = "syntho", "bench-registry-pass-1"
AGENT_ENV = {"SYNTHO_AGENT_REGISTRY_PASSWORD": PASSWORD}
# The agent's line when a release failed its gate (the reason may sit in between).
DECLARED = re.compile(r"did not become healthy.*: going back to release")
# The compose file's image variables, by the release's short names.
IMAGE_VARS = {"core": "CORE_IMAGE", "backend": "BACKEND_IMAGE", "frontend": "FRONTEND_IMAGE",
              "postgres": "POSTGRES_IMAGE", "redis": "REDIS_IMAGE"}
ACCESS = re.compile(r'^\S+ - \S+ \[[^\]]+\] "([A-Z]+) (\S+) HTTP/[0-9.]+" (\d+)', re.M)


# ---- the registry ----

@dataclass
class Registry:
    port: int
    log_file: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def requests(self) -> list[tuple[str, str, str]]:
        """Every request in the access log so far: (method, path, status)."""
        return ACCESS.findall(self.log_file.read_text(errors="replace"))


def start_registry(j: common.Janitor) -> Registry:
    """As tests/integration/agent_helpers.start_registry, with the access log on (captured)."""
    folder = j.tmp / "registry"
    folder.mkdir()
    port = free_port()
    users = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True,
                           capture_output=True, text=True).stdout
    (folder / "htpasswd").write_text(users)
    (folder / "registry.yml").write_text(
        f"version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: test\n"
        f"    path: {folder / 'htpasswd'}\n")
    log_file = folder / "registry.log"
    out = log_file.open("wb")
    j.spawn(["docker-registry", "serve", str(folder / "registry.yml")], stdout=out,
            stderr=subprocess.STDOUT)
    out.close()
    if not poll(lambda: tcp_open("127.0.0.1", port), 20, "registry"):
        raise RuntimeError(f"the registry did not start:\n{log_file.read_text()}")
    return Registry(port, log_file)


class RegistryCount:
    """The registry's requests during a block (the access log is written as they complete)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.found: list[tuple[str, str, str]] = []

    def __enter__(self) -> RegistryCount:
        self.before = len(self.registry.requests())
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)
        self.found = self.registry.requests()[self.before:]

    @property
    def total(self) -> int:
        return len(self.found)

    def kinds(self) -> str:
        def kind(path: str) -> str:
            parts = path.split("?")[0].rstrip("/").split("/")
            for what in ("manifests", "blobs", "tags"):
                if what in parts:
                    return what
            return path
        counts = Counter(f"{m} {kind(p)} {s}" for m, p, s in self.found)
        return ", ".join(f"{k} x{n}" for k, n in counts.most_common())


# ---- the frontend's client ----

def serving(url: str, tag: str) -> bool:
    try:
        return common.http_status(url) == 200 and health_version(url) == tag
    except (OSError, ValueError, KeyError):
        return False


# ---- the two stacks ----

@dataclass
class AgentStack:
    app: stacks.AgentApp
    registry: Registry
    releases: dict[str, dict[str, str]]

    def args(self, tag: str, *more: str) -> list[str]:
        a = self.app
        rel = self.releases[tag]
        return ["--data-dir", str(a.data_dir), "--instance", a.instance, "--head", a.head.ip,
                "--token-file", str(a.head.token_file), "--frontend-port",
                str(a.frontend_port), "--backend-port", str(a.backend_port),
                "--ready-timeout", "300", "--registry", self.registry.host, "--registry-user",
                USER, "--release", tag, "--postgres-image", rel["postgres"], "--redis-image",
                rel["redis"], *more]

    def run(self, tag: str, *more: str) -> subprocess.CompletedProcess[str]:
        return run_agent("app", *self.args(tag, *more), env=AGENT_ENV, check=True,
                         write_bytecode=True, timeout=900)


@dataclass
class ComposeStack:
    project: str
    file: Path
    head: stacks.Head
    frontend_port: int
    docker_config: Path
    releases: dict[str, dict[str, str]]

    def env(self, tag: str) -> dict[str, str]:
        rel = self.releases[tag]
        return {**os.environ, "DOCKER_CONFIG": str(self.docker_config),
                **{var: rel[name] for name, var in IMAGE_VARS.items()}}

    def compose(self, tag: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["docker-compose", "-p", self.project, "-f", str(self.file), *cmd],
                              cwd=REPO, env=self.env(tag), capture_output=True, text=True,
                              timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"docker-compose {' '.join(cmd)} exited {done.returncode}:\n"
                               f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return done

    @property
    def frontend_url(self) -> str:
        return f"http://127.0.0.1:{self.frontend_port}/"


def new_compose(j: common.Janitor, images: dict[str, str], registry: Registry,
                releases: dict[str, dict[str, str]], name: str) -> ComposeStack:
    """bench/stacks.py's compose project of the app, its images from the environment."""
    instance = j.instance(name)
    project = j.project(f"{name}p")
    j.volumes.append(f"syntho-database-data-{instance}")
    head = stacks.start_head(j, images, f"{name}h", f"syntho-{instance}")
    settings = stacks.settings_for(instance, j.tmp / instance, head, releases["A"],
                                   free_port(), free_port())
    spec = stacks.app_spec_for(settings, head)
    data = stacks.compose_file(spec)
    variables = {releases["A"][n]: f"${{{var}}}" for n, var in IMAGE_VARS.items()}
    for svc in data["services"].values():
        svc["image"] = variables[svc["image"]]
    path = j.tmp / f"{project}.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = j.tmp / "docker-config"
    config.mkdir()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    return ComposeStack(project, path, head, settings.frontend_port, config, releases)


# ---- the measures ----

def guarded(flake: stacks.RayFlake, what: str, notes: list[str],
            samples: list[list[float]], round_fn: Callable[[int], None]
            ) -> Callable[[int], None]:
    """round_fn run again (up to twice) when the Ray flake hit it (bench/stacks.RayFlake):
    the samples it added are dropped."""
    def run(i: int) -> None:
        for _ in range(3):
            before, sizes = flake.count(), [len(s) for s in samples]
            round_fn(i)
            if flake.count() == before:
                return
            for s, n in zip(samples, sizes):
                del s[n:]
            notes.append(f"{what}, round {i + 1}: the Ray flake hit it; run again")
            common.log(f"{what}: the Ray flake hit round {i + 1}; again")
        raise RuntimeError(f"{what}: the Ray flake hit three attempts")
    return run


def upgrade(url: str, go: Any, tag: str) -> tuple[float, float, float]:
    """(failed seconds, longest gap, command seconds) of go() moving the frontend to `tag`."""
    with common.Poller(lambda: common.http_status(url, timeout=1.0) == 200 or None) as poller:
        poller.wait_more()
        started = time.perf_counter()
        go()
        elapsed = time.perf_counter() - started
        common.wait_for(lambda: serving(url, tag), 300, f"the frontend serving {tag}",
                        interval=0.05)
        poller.wait_more()
    gaps = poller.gaps()
    return sum(gaps), max(gaps, default=0.0), elapsed


def main() -> None:
    p = common.parser(__doc__.splitlines()[0] if __doc__ else "", repeat=3)
    p.add_argument("--quick", action="store_true", help="a single round of each")
    p.add_argument("--fail-timeout", type=int, default=20,
                   help="--ready-timeout of the failing release's run (default 20)")
    args = p.parse_args()
    repeat = 1 if args.quick else args.repeat
    client = common.client()
    images = common.images(client)
    notes: list[str] = []
    down_agent: list[float] = []
    down_compose: list[float] = []
    gap_agent: list[float] = []
    gap_compose: list[float] = []
    cmd_agent: list[float] = []
    cmd_compose: list[float] = []
    back_agent: list[float] = []
    fresh_agent: list[float] = []
    pull_agent: list[float] = []
    pull_compose: list[float] = []
    reg_agent: list[float] = []
    reg_compose: list[float] = []
    engine_agent: list[float] = []
    made: list[str] = []
    with common.Janitor(client) as j:
        try:
            registry = start_registry(j)
            auth = {"username": USER, "password": PASSWORD}
            common.log(f"releases A, B and Bx into the registry at {registry.host} ...")
            started = time.perf_counter()
            releases = {"A": make_release(client, images, registry.host, "A", auth),
                        "B": make_release(client, images, registry.host, "B", auth),
                        "Bx": make_release(client, images, registry.host, "Bx", auth,
                                           broken=frozenset({"core"}))}
            made = sorted({ref for rel in releases.values() for ref in rel.values()})
            common.log(f"... made and pushed in {time.perf_counter() - started:.0f} s")

            common.log("the agent's app stack (Ray head + app of release A) ...")
            agent = AgentStack(stacks.new_app(j, images, "rla", converge=False), registry,
                               releases)
            agent.run("A")
            common.log("the compose stack (Ray head + compose project of release A) ...")
            compose = new_compose(j, images, registry, releases, "rlc")
            compose.compose("A", "up", "-d")
            common.wait_for(lambda: serving(compose.frontend_url, "A"), 300,
                            "the compose frontend", interval=0.5)
            agent_flake = stacks.RayFlake(j, agent.app.head)
            compose_flake = stacks.RayFlake(j, compose.head)

            # ---- a. upgrade downtime ----
            def agent_upgrade(i: int) -> None:
                down, gap, took = upgrade(agent.app.frontend_url,
                                          lambda: agent.run("B", "--pull", "always"), "B")
                down_agent.append(down)
                gap_agent.append(gap)
                cmd_agent.append(took)
                common.log(f"agent A -> B: failed {down:.2f} s (longest {gap:.2f} s), "
                           f"command {took:.1f} s")
                agent.run("A", "--pull", "always")
                common.wait_for(lambda: serving(agent.app.frontend_url, "A"), 300,
                                "the agent's frontend back on A")

            def compose_upgrade(i: int) -> None:
                def go() -> None:
                    compose.compose("B", "pull")
                    compose.compose("B", "up", "-d")
                down, gap, took = upgrade(compose.frontend_url, go, "B")
                down_compose.append(down)
                gap_compose.append(gap)
                cmd_compose.append(took)
                common.log(f"compose A -> B: failed {down:.2f} s (longest {gap:.2f} s), "
                           f"commands {took:.1f} s")
                compose.compose("A", "pull")
                compose.compose("A", "up", "-d")
                common.wait_for(lambda: serving(compose.frontend_url, "A"), 300,
                                "the compose frontend back on A")

            common.log(f"a. {repeat} upgrades A -> B of each, interleaved ...")
            common.interleave(
                repeat,
                guarded(agent_flake, "agent upgrade", notes,
                        [down_agent, gap_agent, cmd_agent], agent_upgrade),
                guarded(compose_flake, "compose upgrade", notes,
                        [down_compose, gap_compose, cmd_compose], compose_upgrade))

            # ---- b. rollback from a failed release ----
            def agent_rollback(i: int) -> None:
                cmd = agent_cmd("app", *agent.args("Bx", "--retry-failed", "--ready-timeout",
                                                   str(args.fail_timeout)))
                env = agent_env({**AGENT_ENV, "PYTHONUNBUFFERED": "1"}, write_bytecode=True)
                proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, bufsize=1)
                declared = None
                lines = []
                assert proc.stdout is not None
                for line in proc.stdout:
                    lines.append(line)
                    if declared is None and DECLARED.search(line):
                        declared = time.perf_counter()
                rc = proc.wait()
                exited = time.perf_counter()
                if rc != 4 or declared is None:
                    raise RuntimeError(f"the failed release's run exited {rc}:\n"
                                       + "".join(lines[-40:]))
                done = common.wait_for(lambda: serving(agent.app.frontend_url, "A"), 300,
                                       "the frontend serving A after the rollback")
                back_agent.append(max(exited, done) - declared)
                common.log(f"agent Bx -> A: back {back_agent[-1]:.2f} s after it declared "
                           "the release failed")

            def agent_fresh(i: int) -> None:
                run_agent("down", "--data-dir", str(agent.app.data_dir), "--instance",
                          agent.app.instance, check=True, write_bytecode=True)
                started = time.perf_counter()
                agent.run("A")
                fresh_agent.append(time.perf_counter() - started)
                if not serving(agent.app.frontend_url, "A"):
                    raise RuntimeError("the fresh up of A does not serve A")
                common.log(f"agent fresh up of A: {fresh_agent[-1]:.2f} s")

            common.log(f"b. {repeat} rollbacks from Bx and fresh ups of A, interleaved ...")
            common.interleave(
                repeat,
                guarded(agent_flake, "agent rollback", notes, [back_agent], agent_rollback),
                guarded(agent_flake, "agent fresh up", notes, [fresh_agent], agent_fresh))

            try:  # a failure here keeps the rows of a. and b.
                # ---- c. --pull always, nothing changed ----
                agent.run("A", "--pull", "always")  # both on A, every image present
                compose.compose("A", "pull")

                def agent_pull(i: int) -> None:
                    with RegistryCount(registry) as seen:
                        started = time.perf_counter()
                        out = agent.run("A", "--pull", "always").stdout
                        pull_agent.append(time.perf_counter() - started)
                    said = re.findall(r"--pull always: .*", out)
                    if i == 0:
                        notes.append(f"the agent said: {' / '.join(said)}")
                    if not re.search(r"--pull always: 0 of \d+ image", out) or \
                            "nothing to do" not in out:
                        common.log(f"the agent's --pull always was not a no-op:\n{out}")
                        notes.append(f"agent --pull always round {i + 1} was not a no-op: "
                                     + " / ".join(out.strip().splitlines()[-6:]))
                    reg_agent.append(seen.total)
                    if i == 0:
                        notes.append(f"registry requests of one agent run: {seen.kinds()}")

                def compose_pull(i: int) -> None:
                    with RegistryCount(registry) as seen:
                        started = time.perf_counter()
                        compose.compose("A", "pull")
                        pull_compose.append(time.perf_counter() - started)
                    reg_compose.append(seen.total)
                    if i == 0:
                        notes.append(f"registry requests of one `docker-compose pull`: "
                                     f"{seen.kinds()}")

                common.log(f"c. {repeat} unchanged pulls of each, interleaved ...")
                common.interleave(repeat, agent_pull, compose_pull)
                for i in range(repeat):
                    with RegistryCount(registry) as seen:
                        counter, elapsed, out = in_process(agent)
                    engine_agent.append(counter.total)
                    if i == 0:
                        kinds = ", ".join(f"{k} x{n}" for k, n in counter.counts.most_common())
                        notes.append(f"one agent run in-process: {elapsed:.2f} s, "
                                     f"{counter.total} engine calls ({kinds}); "
                                     f"{seen.total} registry requests")
            except Exception as exc:
                common.log("c. failed:\n" + traceback.format_exc())
                notes.append(f"c. failed: {exc!r}")
        finally:
            j.cleanup()  # the containers first: they use the releases' images
            try:
                remove_local(client, made)
            except docker.errors.DockerException as exc:
                common.log(f"the releases' images were not all removed: {exc}")

    rows = [row for row in _rows(down_agent, down_compose, gap_agent, gap_compose, cmd_agent,
                                 cmd_compose, back_agent, fresh_agent, pull_agent, pull_compose,
                                 reg_agent, reg_compose, engine_agent) if row.agent]
    common.report(rows, notes, args.json)


def _rows(down_agent: list[float], down_compose: list[float], gap_agent: list[float],
          gap_compose: list[float], cmd_agent: list[float], cmd_compose: list[float],
          back_agent: list[float], fresh_agent: list[float], pull_agent: list[float],
          pull_compose: list[float], reg_agent: list[float], reg_compose: list[float],
          engine_agent: list[float]) -> list[common.Row]:
    def le(a: list[float], b: list[float], factor: float = 1.0) -> bool | None:
        return _med(a) <= factor * _med(b) if a and b else None

    return [
        common.Row("8a. upgrade A -> B: frontend requests failing (total)", "s", down_agent,
                   "docker-compose pull && up -d", down_compose, target="<= compose",
                   met=le(down_agent, down_compose)),
        common.Row("8a. upgrade A -> B: longest gap", "s", gap_agent,
                   "docker-compose pull && up -d", gap_compose, target="<= compose",
                   met=le(gap_agent, gap_compose)),
        common.Row("8a. upgrade A -> B: the command, start to exit", "s", cmd_agent,
                   "docker-compose pull && up -d", cmd_compose, target="(none)"),
        common.Row("8b. failed release Bx declared -> exit, frontend serving A", "s",
                   back_agent, "the agent's fresh up of A (after down)", fresh_agent,
                   target="<= 0.5x", met=le(back_agent, fresh_agent, 0.5)),
        common.Row("8c. --pull always, nothing changed: wall time", "s", pull_agent,
                   "docker-compose pull", pull_compose, target="<= compose",
                   met=le(pull_agent, pull_compose)),
        common.Row("8c. --pull always, nothing changed: registry requests", "calls", reg_agent,
                   "docker-compose pull", reg_compose, target="<= compose",
                   met=le(reg_agent, reg_compose)),
        common.Row("8c. --pull always, nothing changed: engine calls (in-process)", "calls",
                   engine_agent, "", baseline_text="-", target="(none)"),
    ]


def _med(samples: list[float]) -> float:
    return common.summary(samples).median


def in_process(agent: AgentStack) -> tuple[CallCounter, float, str]:
    """One `app --release A --pull always` of the CLI inside this process, its engine client
    counted (tests.support.engine_calls.counting_engine)."""
    from agent import cli

    os.environ.update(AGENT_ENV)
    try:
        with counting_engine() as counters:
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()) as out:
                try:
                    cli.main(["app", *agent.args("A", "--pull", "always")])
                except SystemExit as exc:
                    if exc.code not in (0, None):
                        raise RuntimeError(f"the in-process run exited {exc.code}:\n"
                                           f"{out.getvalue()}") from None
            elapsed = time.perf_counter() - started
    finally:
        os.environ.pop("SYNTHO_AGENT_REGISTRY_PASSWORD", None)
    if not counters:
        raise RuntimeError(f"the in-process run made no engine client:\n{out.getvalue()}")
    if "nothing to do" not in out.getvalue():
        common.log(f"the in-process run was not a no-op:\n{out.getvalue()}")
    return counters[0], elapsed, out.getvalue()


if __name__ == "__main__":
    main()
