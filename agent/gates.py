"""The readiness gate of each role, after its plan is applied: the head answers and lists
itself, the worker has joined, the app is healthy end to end. A gate that is not met within
--ready-timeout raises ConvergeError (exit 4) with what the operator looks at next.
"""

from __future__ import annotations

from typing import Callable

from agent import cluster, proxy, ray_tls
from agent.config import AppSettings, HeadSettings, WorkerSettings
from agent.engine import Engine
from agent.errors import ConvergeError
from agent.inputs import Inputs
from agent.reconcile import Plan, wait_all_ready
from agent.redact import redact
from agent.roles import ray
from agent.spec import Spec
from agent.waits import http_ok, poll, tcp_open

Say = Callable[[str], None]


def container_ip(engine: Engine, name: str, network: str) -> str | None:
    found = engine.observe(name)
    return found.ip_on(network) if found is not None else None


def head_address(engine: Engine, settings: HeadSettings) -> str:
    """Where this machine reaches the head it runs."""
    if settings.network != "host":
        ip = container_ip(engine, settings.suffix("ray-head"), settings.network)
        if ip:
            return ip
    return settings.node_ip or "127.0.0.1"


def head_gate(engine: Engine, settings: HeadSettings, inputs: Inputs, spec: Spec, plan: Plan,
              changes: int, say: Say) -> None:
    """The GCS answers, and the dashboard lists the head node alive (what workers and the app
    ask for next), with the address Ray advertises for it; then how to join a worker."""
    token = inputs.token
    address = head_address(engine, settings)
    advertised: list[str] = []

    def head_ready() -> bool:
        if not (tcp_open(address, ray.GCS_PORT) and
                http_ok(f"http://{address}:{ray.DASHBOARD_PORT}/api/gcs_healthz")):
            return False
        advertised[:] = [str(n.get("node_ip")) for n in cluster.alive_nodes(address, token)
                         if n.get("is_head_node")]
        return bool(advertised)

    ready = poll(head_ready, settings.ready_timeout,
                 f"the Ray head at {address}:{ray.GCS_PORT}", say)
    if not ready:
        raise ConvergeError(
            f"the Ray head did not answer on {address}:{ray.GCS_PORT} within "
            f"{settings.ready_timeout:.0f}s; see `syntho-agent logs`")
    material = inputs.ray_tls
    if material is not None and material.front:
        front = material.listen[0]
        if not poll(lambda: ray_tls.front_answers(front, ray.DASHBOARD_PORT, material),
                    settings.ready_timeout, f"the dashboard's TLS front at {front}", say):
            raise ConvergeError(
                f"the dashboard's TLS front did not answer on {front}:{ray.DASHBOARD_PORT} "
                f"within {settings.ready_timeout:.0f}s; see `syntho-agent logs --service "
                f"{ray.DASHBOARD_FRONT}`")
        say(f"ray head ready at {address}:{ray.GCS_PORT}, its traffic in TLS (dashboard "
            f"https://{front}:{ray.DASHBOARD_PORT} for other VMs, the cluster's CA in "
            f"{material.folder / ray_tls.CA_FILE})")
    else:
        say(f"ray head ready at {address}:{ray.GCS_PORT} "
            f"(dashboard http://{address}:{ray.DASHBOARD_PORT})")
    say("join a worker (on its VM):")
    join = f"  syntho-agent worker --head {advertised[0]}"
    if token:
        join += " --token-file ray-token"
        path = cluster.token_path(settings.data_dir)
        say(f"  copy {path} to the worker as ./ray-token, then")
    say(join)


def worker_gate(engine: Engine, settings: WorkerSettings, inputs: Inputs, spec: Spec,
                plan: Plan, changes: int, say: Say) -> None:
    """The head lists this worker's node (`status` asks the same question: agent.ops)."""
    assert settings.head
    name = settings.suffix("ray-worker")
    my_ip = cluster.worker_ip(settings.head, settings.node_ip,
                              container_ip(engine, name, settings.network)
                              if settings.network != "host" else None)
    port = ray.node_ports(settings, "worker").node_manager_port  # the head's differs
    found = engine.observe(name)
    since = cluster.started_epoch(found.started_at) if found is not None else None

    def joined() -> bool:
        return cluster.has_joined(cluster.summaries_or_none(
            settings.head or "", inputs.token, ca=ray_tls.ca_pem_of(inputs.ray_tls)), my_ip, port,
            since)

    if not poll(joined, settings.ready_timeout, f"{name} to join the head", say):
        raise ConvergeError(
            f"{name} did not join the Ray head at {settings.head} within "
            f"{settings.ready_timeout:.0f}s (a wrong token is the usual cause); "
            f"last log: {last_log_line(engine, name, spec.secrets)}")
    say(f"{name} joined the Ray cluster at {settings.head} as {my_ip}")


def last_log_line(engine: Engine, name: str, secrets: tuple[str, ...]) -> str:
    if engine.observe(name) is None:
        return "container missing"
    lines = engine.logs(name, tail=1)
    return redact(lines[-1] if lines else "(no output)", list(secrets))[:300]


def app_gate(engine: Engine, settings: AppSettings, inputs: Inputs, spec: Spec, plan: Plan,
             changes: int, say: Say) -> None:
    """Every container healthy, and the frontend answering (through the HTTPS proxy when there
    is one)."""
    wait_all_ready(engine, spec, plan, settings.ready_timeout, say)
    # Every container left alone and ready when read (the frontend's own health check is
    # an HTTP request): the app is up as it was. Anything else is proven from the host.
    if not changes and all(plan.ready(c) for c in spec.containers):
        return
    host = "127.0.0.1" if settings.bind == "0.0.0.0" else settings.bind
    site = inputs.site
    if site is not None:  # through the proxy: its frontend port is not published
        if not poll(lambda: proxy.https_ok(host, site), settings.ready_timeout,
                    f"the app through the HTTPS proxy ({site.url})", say):
            raise ConvergeError(f"the app did not answer through the HTTPS proxy at "
                                f"{host}:{site.https_port} (for {site.url}) within "
                                f"{settings.ready_timeout:.0f}s; see `syntho-agent logs "
                                "--service proxy`")
        return
    url = f"http://{host}:{settings.frontend_port}/"
    if not poll(lambda: http_ok(url), settings.ready_timeout, f"the frontend at {url}", say):
        raise ConvergeError(f"the frontend did not answer at {url} within "
                            f"{settings.ready_timeout:.0f}s; see `syntho-agent logs`")


def unhealthy(engine: Engine, spec: Spec) -> str:
    """The containers with a health check that are not healthy now, in start order, each with
    the tail of its health log: the first is where a failed release broke (the later ones
    often wait on it)."""
    found = []
    for c in spec.ordered():
        o = engine.observe(c.name)
        if c.health and (o is None or o.health != "healthy"):
            state = "missing" if o is None else (o.health or o.status)
            found.append(f"{c.name} is {state}, last health output: "
                         f"{engine.health_log_tail(c.name, lines=1)}")
    return "; ".join(found)
