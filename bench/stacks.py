"""The deployments the benchmarks run: a Ray head on a user-defined bridge network, the app
stack made by the agent, and the same stack as a docker-compose project.

Every app stack gets a Ray head of its own on the stack's network (the core's health needs a
Ray task to run, and containers on one bridge cannot reach another), so nothing publishes
6379 on the host. The compose file is written from the agent's own Spec, so services, env,
networks, ports, mounts, restart policies and health checks are the same by construction.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent import relay, store
from agent import spec as s
from agent.app_setup import write_init_script
from agent.config import AppSettings
from agent.engine import create_args
from agent.roles import app
from bench.common import Janitor, container_ip, http_status, log, wait_for
from tests.support.agent_cli import run_agent
from tests.support.constants import NOFILE, REPO
from tests.support.ports import free_port


@dataclass(frozen=True)
class Head:
    instance: str
    data_dir: Path
    network: str
    ip: str

    @property
    def token_file(self) -> Path:
        return self.data_dir / "ray-token"

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()


def head_args(j: Janitor, images: dict[str, str], instance: str, network: str) -> list[str]:
    return ["--data-dir", str(j.tmp / instance), "--instance", instance, "--network", network,
            "--ray-image", images["ray"], "--shm-size", "512mb", "--nofile", NOFILE,
            "--ready-timeout", "300"]


def start_head(j: Janitor, images: dict[str, str], name: str, network: str) -> Head:
    """The agent's head role on `network` (a bridge the head agent creates if missing)."""
    instance = j.instance(name)
    j.networks.append(network)
    run_agent("head", *head_args(j, images, instance, network), check=True, write_bytecode=True)
    ip = container_ip(j.client, f"ray-head-{instance}", network)
    return Head(instance, j.tmp / instance, network, ip)


class RayFlake:
    """Counts how often the head's Ray client server lost a client's session at its start.

    A Ray flake seen on this machine (about one core start in four, under load): the proxier
    forks a server for each client while gRPC threads run ("skipping fork() handlers"); the
    child dies at once ("SpecificServer startup failed") or aborts in gRPC ("Check failed",
    then "Timeout waiting for channel"), and the core's first connection hangs 30-40 s before
    its retry. It depends on neither the agent nor the engine, so a benchmark round that hits
    it is stopped as soon as the log says so, and run again (and counted).
    The log is read through /proc/PID/root (no engine call, so the watching adds no load).
    """

    MARKS = ("SpecificServer startup failed", "Timeout waiting for channel", "Check failed")

    def __init__(self, j: Janitor, head: Head) -> None:
        pid = j.client.api.inspect_container(f"ray-head-{head.instance}")["State"]["Pid"]
        self.root = Path(f"/proc/{pid}/root")

    def log(self) -> str:
        try:
            session = os.readlink(self.root / "tmp/ray/session_latest").lstrip("/")
            return (self.root / session / "logs/ray_client_server.err").read_text()
        except OSError:
            return ""

    def count(self) -> int:
        text = self.log()
        return sum(text.count(mark) for mark in self.MARKS)


@dataclass
class AgentApp:
    """One app deployment by the agent (as `syntho-agent app` on its own VM)."""

    instance: str
    data_dir: Path
    head: Head
    images: dict[str, str]
    frontend_port: int
    backend_port: int

    @property
    def network(self) -> str:
        return f"syntho-{self.instance}"

    def name(self, service: str) -> str:
        return f"syntho-{service}-{self.instance}"

    def args(self) -> list[str]:
        i = self.images
        return ["--data-dir", str(self.data_dir), "--instance", self.instance,
                "--head", self.head.ip, "--token-file", str(self.head.token_file),
                "--core-image", i["core"], "--backend-image", i["backend"],
                "--frontend-image", i["frontend"], "--postgres-image", i["postgres"],
                "--redis-image", i["redis"], "--frontend-port", str(self.frontend_port),
                "--backend-port", str(self.backend_port), "--ready-timeout", "300"]

    def run(self, *more: str) -> subprocess.CompletedProcess[str]:
        return run_agent("app", *self.args(), *more, check=True, write_bytecode=True)

    @property
    def frontend_url(self) -> str:
        return f"http://127.0.0.1:{self.frontend_port}/"


def new_app(j: Janitor, images: dict[str, str], name: str, converge: bool = True) -> AgentApp:
    """A Ray head on the app's network, then (converge) the app role run once."""
    instance = j.instance(name)
    j.volumes.append(f"syntho-database-data-{instance}")
    head = start_head(j, images, f"{name}h", f"syntho-{instance}")
    deployment = AgentApp(instance, j.tmp / instance, head, images, free_port(), free_port())
    if converge:
        deployment.run()
    return deployment


# ---- the same stack without the agent ----

def settings_for(instance: str, data_dir: Path, head: Head, images: dict[str, str],
                 frontend_port: int, backend_port: int) -> AppSettings:
    return AppSettings(data_dir=data_dir, instance=instance, head=head.ip,
                    token_file=head.token_file, core_image=images["core"],
                    backend_image=images["backend"], frontend_image=images["frontend"],
                    postgres_image=images["postgres"], redis_image=images["redis"],
                    frontend_port=frontend_port, backend_port=backend_port)


def fresh_secrets(token: str | None) -> app.Secrets:
    """New values from the agent's own generators (as a first run makes them)."""
    return app.Secrets(db_password=store.token_urlsafe(24)(), core_secret_key=store.fernet_key(),
                       backend_secret_key=store.token_urlsafe(48)(),
                       admin_password=store.token_urlsafe(15)(), ray_token=token)


def app_spec_for(settings: AppSettings, head: Head) -> s.Spec:
    """The agent's Spec for these settings, with fresh secrets, and the init script and the
    Ray relay's program in place."""
    store.ensure_dir(settings.data_dir)
    write_init_script(settings)
    relay.write_files(settings.data_dir)
    return app.app_spec(settings, app.app_values(settings, fresh_secrets(head.token), head.ip))


def _seconds(value: float) -> str:
    return f"{value:g}s"


def compose_file(spec: s.Spec) -> dict[str, Any]:
    """The Spec as a compose file (format 2.4: healthy-dependency gating, start_period)."""
    by_service = {c.service: c for c in spec.containers}
    services: dict[str, Any] = {}
    for c in spec.containers:
        if c.shm_size or c.nofile or c.cpus or c.memory:
            raise ValueError(f"{c.name}: resource limits are not translated")
        svc: dict[str, Any] = {
            "image": c.image,
            "container_name": c.name,
            "restart": c.restart,
            "environment": {k: v.replace("$", "$$") for k, v in c.env},
            "networks": {c.network: {"aliases": list(c.aliases)}},
        }
        if c.command is not None:
            svc["command"] = list(c.command)
        if c.entrypoint is not None:
            svc["entrypoint"] = list(c.entrypoint)
        if c.ports:
            svc["ports"] = [f"{p.host_ip or '0.0.0.0'}:{p.host}:{p.container}" for p in c.ports]
        if c.mounts:
            svc["volumes"] = [f"{m.source}:{m.target}{':ro' if m.read_only else ''}"
                              for m in c.mounts]
        if c.health:
            svc["healthcheck"] = {"test": list(c.health.test),
                                  "interval": _seconds(c.health.interval),
                                  "timeout": _seconds(c.health.timeout),
                                  "retries": c.health.retries,
                                  "start_period": _seconds(c.health.start_period)}
        deps = [d for d in c.after if d in by_service]
        if deps:
            svc["depends_on"] = {d: {"condition": "service_healthy" if by_service[d].health
                                     else "service_started"} for d in deps}
        services[c.service] = svc
    return {
        "version": "2.4",
        "services": services,
        "networks": {n.name: {"external": True} for n in spec.networks},
        "volumes": {v.name: {"name": v.name} for v in spec.volumes},
    }


def floor_plan(spec: s.Spec, labels: dict[str, str], url: str | None = None,
               wait_tcp: tuple[str, int] | None = None) -> dict[str, Any]:
    """bench/floor.py's input: the Spec's containers in start order, as the agent makes them
    (its labels too, plus `labels`), with the names each waits for."""
    by_service = {c.service: c for c in spec.containers}
    containers = [{"name": c.name, "create": create_args(c, {**spec.labels(c), **labels}),
                   "health": c.health is not None,
                   "after": [by_service[d].name for d in c.after if d in by_service]}
                  for c in spec.ordered()]
    volume_labels = {**labels, s.LABEL_MANAGED: "true", s.LABEL_INSTANCE: spec.instance}
    return {"wait_tcp": list(wait_tcp) if wait_tcp else None,
            "volumes": [{"name": v.name, "labels": volume_labels} for v in spec.volumes],
            "containers": containers, "url": url}


@dataclass
class ComposeApp:
    """The same app stack as a docker-compose project (Debian's docker-compose 1.29)."""

    project: str
    file: Path
    spec: s.Spec
    frontend_port: int

    def up(self) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["docker-compose", "-p", self.project, "-f", str(self.file),
                               "up", "-d"], cwd=REPO, capture_output=True, text=True,
                              timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"docker-compose up exited {done.returncode}:\n"
                               f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return done

    @property
    def frontend_url(self) -> str:
        return f"http://127.0.0.1:{self.frontend_port}/"


def new_compose_app(j: Janitor, images: dict[str, str], name: str) -> ComposeApp:
    """A Ray head on its own network, and the compose project of the app stack beside it."""
    instance = j.instance(name)  # names the containers, network and volume as the agent would
    project = j.project(f"{name}p")
    j.volumes.append(f"syntho-database-data-{instance}")
    head = start_head(j, images, f"{name}h", f"syntho-{instance}")
    settings = settings_for(instance, j.tmp / instance, head, images, free_port(), free_port())
    spec = app_spec_for(settings, head)
    path = j.tmp / f"{project}.yml"
    path.write_text(yaml.safe_dump(compose_file(spec), sort_keys=False))
    stack = ComposeApp(project, path, spec, settings.frontend_port)
    log(f"docker-compose up -d ({project}) ...")
    stack.up()
    wait_for(lambda: http_status(stack.frontend_url) == 200, 300, "the compose frontend",
             interval=0.5)
    return stack
