"""9. HTTPS: requests that fail while the app is upgraded (the agent with its proxy, the agent
without it, docker-compose), and what the proxy costs a request.

Three stacks, each with its own Ray head on its own network: the agent's app with `--tls
internal` (Caddy before the frontend and the backend), the agent's app without it, and the same
stack as a docker-compose project (bench/stacks.py). Releases A and B of the frontend and the
backend are built on this engine (tests/support/releases.build_local); no registry.

- a. upgrade A -> B of the frontend and the backend: a client asks the frontend's `/version`
  (a stand-in route that checks no dependency, so only the way in is measured) every 20 ms, 1 s
  timeout: through the proxy (HTTPS) for the first stack, at the frontend's published port for
  the other two. Measured: requests that failed, and the longest stretch of failures. Agent:
  `app --frontend-image B --backend-image B`; compose: the file with B's references, `up -d`.
  Each goes back to A, unmeasured. Target: 0 failed requests with the proxy.
- b. the proxy's cost: batches of requests to the frontend stand-in's `/version`, one client
  (http.client, keep-alive where the server allows it), through the proxy (HTTPS) and straight
  to the frontend's port, batches interleaved; both at the containers' addresses on the app's
  network, from this host. Targets: at least 0.8x the requests per second, and a p99 at most
  2 ms higher. `--overhead-only` measures this part alone (one stack).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from bench import common, stacks
from tests.support.ports import free_port
from tests.support.releases import build_local, remove_local

ROUTED = ("frontend", "backend")


class Client:
    """One keep-alive connection to host:port (HTTPS for `site`, else HTTP), reopened when the
    server closes it."""

    def __init__(self, port: int, site: str | None = None, timeout: float = 1.0,
                 host: str = "127.0.0.1") -> None:
        self.port, self.site, self.timeout, self.host = port, site, timeout, host
        self.conn: http.client.HTTPConnection | None = None

    def _open(self) -> http.client.HTTPConnection:
        if self.site is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # Caddy's internal CA
        site, address, timeout = self.site, (self.host, self.port), self.timeout

        class Pinned(http.client.HTTPSConnection):
            def connect(self) -> None:
                sock = socket.create_connection(address, timeout)
                self.sock = ctx.wrap_socket(sock, server_hostname=site)

        return Pinned(site, self.port, timeout=timeout, context=ctx)

    def get(self, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):  # a kept-alive connection the server closed: once more
            if self.conn is None:
                self.conn = self._open()
            try:
                self.conn.request("GET", path)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def version(client: Client) -> str | None:
    """The release answering /version, or None for a failed request."""
    try:
        code, body = client.get("/version")
        return str(json.loads(body)["version"]) if code == 200 else None
    except (OSError, ValueError, KeyError, http.client.HTTPException):
        client.close()
        return None


def upgrade(make: Callable[[], Client], go: Callable[[], object], tag: str) -> tuple[int, float]:
    """(failed requests, longest gap) while go() moves the frontend and backend to `tag`."""
    client = make()
    with common.Poller(lambda: version(client)) as poller:
        poller.wait_more()
        go()
        probe = make()
        common.wait_for(lambda: version(probe) == tag, 300, f"the frontend serving {tag}",
                        interval=0.05)
        probe.close()
        poller.wait_more()
    client.close()
    return poller.failed(), max(poller.gaps(), default=0.0)


def batch(client: Client, n: int) -> tuple[float, list[float]]:
    """n requests one after another: (requests per second, each latency in ms)."""
    latencies = []
    began = time.perf_counter()
    for _ in range(n):
        started = time.perf_counter()
        code, _ = client.get("/version")
        if code != 200:
            raise RuntimeError(f"/version answered {code}")
        latencies.append((time.perf_counter() - started) * 1000)
    return n / (time.perf_counter() - began), latencies


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def main() -> None:
    p = common.parser(__doc__.splitlines()[0] if __doc__ else "", repeat=3)
    p.add_argument("--quick", action="store_true", help="one upgrade of each, fewer requests")
    p.add_argument("--overhead-only", action="store_true", help="part b alone")
    args = p.parse_args()
    repeat = 1 if args.quick else args.repeat
    requests = 300 if args.quick else 2000
    client = common.client()
    images = common.images(client)
    failed: dict[str, list[float]] = {"proxy": [], "plain": [], "compose": []}
    gaps: dict[str, list[float]] = {"proxy": [], "plain": [], "compose": []}
    rps_proxy: list[float] = []
    rps_direct: list[float] = []
    lat_proxy: list[float] = []
    lat_direct: list[float] = []
    notes: list[str] = []
    with common.Janitor(client) as j:
        release = {tag: {**images, **{n: build_local(client, images[n], tag) for n in ROUTED}}
                   for tag in ("A", "B")}
        built = [release[tag][n] for tag in release for n in ROUTED]

        def image_args(tag: str) -> list[str]:
            return [a for n in ROUTED for a in (f"--{n}-image", release[tag][n])]

        common.log("the agent's app with the proxy (Ray head + app, --tls internal) ...")
        https, plain_port = free_port(), free_port()
        proxied = stacks.new_app(j, release["A"], "htp", converge=False)
        j.volumes += [f"syntho-proxy-data-{proxied.instance}",
                      f"syntho-proxy-config-{proxied.instance}"]
        tls = ["--tls", "internal", "--frontend-host", "localhost", "--https-port", str(https),
               "--http-port", str(plain_port), "--proxy-image", images["proxy"]]
        proxied.run(*tls)
        if not args.overhead_only:
            common.log("the agent's app without it ...")
            plain = stacks.new_app(j, release["A"], "hpl")
            common.log("the compose project of the same stack ...")
            compose = stacks.new_compose_app(j, release["A"], "hco")

            def compose_to(tag: str) -> None:
                data = yaml.safe_load(compose.file.read_text())
                for n in ROUTED:
                    data["services"][n]["image"] = release[tag][n]
                compose.file.write_text(yaml.safe_dump(data, sort_keys=False))
                compose.up()

            sides: dict[str, tuple[Callable[[], Client], Callable[[str], object]]] = {
                "proxy": (lambda: Client(https, "localhost"),
                          lambda tag: proxied.run(*tls, *image_args(tag))),
                "plain": (lambda: Client(plain.frontend_port),
                          lambda tag: plain.run(*image_args(tag))),
                "compose": (lambda: Client(compose.frontend_port), compose_to),
            }

            def upgrade_of(name: str) -> Callable[[int], None]:
                make, to = sides[name]

                def run(i: int) -> None:
                    lost, gap = upgrade(make, lambda: to("B"), "B")
                    failed[name].append(lost)
                    gaps[name].append(gap)
                    common.log(f"{name} A -> B: {lost} failed request(s), longest gap {gap:.2f} s")
                    to("A")
                    probe = make()
                    common.wait_for(lambda: version(probe) == "A", 300, f"{name} back on A")
                    probe.close()
                return run

            common.log(f"a. {repeat} upgrades A -> B of each, interleaved ...")
            common.interleave(repeat, *(upgrade_of(name) for name in sides))


        common.log(f"b. {repeat * 2} batches of {requests} requests each way, interleaved ...")
        # Both at their addresses on the app's network, which this host reaches: neither
        # through Docker's userland proxy of published ports (and a frontend that publishes a
        # port cannot run beside its successor, so an upgrade would not hand over).
        frontend_ip = common.container_ip(client, proxied.name("frontend"), proxied.network)
        proxy_ip = common.container_ip(client, proxied.name("proxy"), proxied.network)
        through = Client(https, "localhost", host=proxy_ip)  # Caddy listens on the same port
        straight = Client(proxied.frontend_port, host=frontend_ip)  # PORT: --frontend-port
        batch(through, 50)
        batch(straight, 50)  # warm both

        def via_proxy(i: int) -> None:
            rate, lat = batch(through, requests)
            rps_proxy.append(rate)
            lat_proxy.extend(lat)

        def direct_side(i: int) -> None:
            rate, lat = batch(straight, requests)
            rps_direct.append(rate)
            lat_direct.extend(lat)

        common.interleave(repeat * 2, via_proxy, direct_side)
        through.close()
        straight.close()
        j.cleanup()
        remove_local(client, built)
    med = statistics.median
    p99_proxy, p99_direct = p99(lat_proxy), p99(lat_direct)
    notes.append(f"9b. p99 latency: {p99_proxy:.2f} ms through the proxy, {p99_direct:.2f} ms "
                 f"straight ({p99_proxy - p99_direct:+.2f} ms; target at most +2 ms: "
                 f"{'met' if p99_proxy - p99_direct <= 2 else 'NOT met'})")
    p50_proxy, p50_direct = med(lat_proxy), med(lat_direct)
    notes.append(f"9b. median latency: {p50_proxy:.2f} ms through the proxy, {p50_direct:.2f} ms "
                 f"straight: the proxy adds {p50_proxy - p50_direct:.2f} ms to a request")
    rows = [] if args.overhead_only else [
        common.Row("9a. upgrade A -> B of frontend and backend: failed requests", "calls",
                   failed["proxy"], "the agent without the proxy", failed["plain"],
                   target="0 with the proxy", met=max(failed["proxy"]) == 0),
        common.Row("9a. the same: failed requests", "calls", failed["proxy"],
                   "docker-compose up -d", failed["compose"], target="0 with the proxy",
                   met=max(failed["proxy"]) == 0),
        common.Row("9a. the same: longest gap", "s", gaps["proxy"],
                   "the agent without the proxy", gaps["plain"], target="(none)"),
        common.Row("9a. the same: longest gap", "s", gaps["proxy"], "docker-compose up -d",
                   gaps["compose"], target="(none)"),
    ]
    rows += [
        common.Row("9b. requests per second to the frontend stand-in", "calls", rps_proxy,
                   "straight to its port (HTTP)", rps_direct, target=">= 0.8x",
                   met=med(rps_proxy) >= 0.8 * med(rps_direct)),
        common.Row("9b. p99 latency", "ms", [p99_proxy], "straight to its port (HTTP)",
                   [p99_direct], target="<= +2 ms", met=p99_proxy - p99_direct <= 2),
    ]
    common.report(rows, notes, args.json)


if __name__ == "__main__":
    main()
