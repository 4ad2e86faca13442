"""The relay between the Syntho backend and the Ray head's dashboard (written by syntho-agent).

The backend's RAY_URL points here, over plain HTTP on the app's Docker network (nothing is
published on the host). Each GET or HEAD request of the dashboard's /api/ is forwarded to the
head with the cluster's token added (RAY_TOKEN, this container's environment: the backend never
holds it); anything else is refused with 403. A log line per request names its method, path
(without the query) and status, never a header.

When the cluster's Ray speaks TLS (RAY_DASHBOARD_CA names the cluster's CA certificate), the
relay reaches the dashboard in HTTPS through the head's TLS front, trusting that CA alone and
checking that the certificate names RAY_DASHBOARD_HOST: the token never crosses a wire in clear.

Runs with the python3 of the core's image (the standard library only), so the app VM needs no
other image. Environment: RAY_DASHBOARD_HOST, RAY_DASHBOARD_PORT, RAY_TOKEN (optional),
RAY_DASHBOARD_CA (optional), RELAY_PORT.
"""

from __future__ import annotations

import http.client
import http.server
import os
import ssl
import sys

ALIVE = "/syntho-relay/alive"  # the container's health check: the relay itself answers
TIMEOUT = 60.0  # seconds for the dashboard to answer one request
# Not passed on: hop-by-hop headers, the backend's own credentials (the relay's token replaces
# them) and Host (the dashboard's own address is sent).
DROPPED = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
           "trailer", "trailers", "transfer-encoding", "upgrade", "authorization", "cookie",
           "host", "content-length"}


class Relay(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "syntho-ray-relay"
    sys_version = ""

    def do_GET(self) -> None:
        self.relay()

    def do_HEAD(self) -> None:
        self.relay()

    def refuse(self) -> None:
        self.answer(403, "the relay forwards only GET and HEAD requests of /api/ to the Ray "
                         "dashboard\n")

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = refuse

    def relay(self) -> None:
        if self.path == ALIVE:
            self.answer(200, "alive\n")
            return
        if not self.path.startswith("/api/"):
            self.refuse()
            return
        host, port = os.environ["RAY_DASHBOARD_HOST"], int(os.environ["RAY_DASHBOARD_PORT"])
        headers = {k: v for k, v in self.headers.items() if k.lower() not in DROPPED}
        token = os.environ.get("RAY_TOKEN")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn = connection(host, port)
        try:
            conn.request(self.command, self.path, headers=headers)
            reply = conn.getresponse()
            body = reply.read()  # the dashboard's API answers are JSON of modest size
        except OSError as exc:
            self.answer(502, f"the Ray dashboard at {host}:{port} did not answer: {exc}\n")
            return
        finally:
            conn.close()
        self.send_response(reply.status, reply.reason)
        for key, value in reply.getheaders():
            if key.lower() not in DROPPED:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.path != ALIVE:  # the health check's requests would drown the rest
            sys.stderr.write(f"{self.command} {self.path.split('?', 1)[0]} {code}\n")

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"relay: {format % args}\n")


def connection(host: str, port: int) -> http.client.HTTPConnection:
    ca = os.environ.get("RAY_DASHBOARD_CA")
    if not ca:
        return http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    context = ssl.create_default_context(cafile=ca)  # the cluster's CA alone
    return http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=context)


def main() -> None:
    port = int(os.environ.get("RELAY_PORT", "8265"))
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Relay)
    server.daemon_threads = True
    scheme = "https" if os.environ.get("RAY_DASHBOARD_CA") else "http"
    sys.stderr.write(f"relaying GET and HEAD of /api/ on port {port} to the Ray dashboard at "
                     f"{scheme}://{os.environ['RAY_DASHBOARD_HOST']}:"
                     f"{os.environ['RAY_DASHBOARD_PORT']}\n")
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
