"""Stand-ins for the proprietary Syntho images (core-api, backend, frontend).

They honour the same contract as the real images (commands, env variables, ports, health
endpoints) and they USE the wiring they are given: a wrong database password, broker URL, Ray
address or backend host makes the health endpoint answer 503 with the failing dependency
named in its JSON body. Only the standard library, psycopg2, redis and ray are used.

    standin.py core                  core-api server on $PORT, /api/v1/status
    standin.py core-worker ARGS      what `celery -A app.celery worker ...` runs
    standin.py backend               backend server on 8000, /api/docs/
    standin.py backend-subscriber    what `python manage.py subscriber` runs
    standin.py frontend              frontend server on $PORT, /

Every health answer carries "version": $STANDIN_VERSION (empty when unset), the release the
image was made as. A server whose role $STANDIN_BROKEN names (a comma-separated list of core,
backend, frontend) is a broken release: its health endpoint always answers 503, and it runs on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Check = Callable[[], Any]


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        log(f"missing required env variable {name}")
        sys.exit(2)
    return value


# ---- dependency checks: each returns a detail on success and raises on failure ----

def pg_check(host: str, port: int, user: str, password: str, dbname: str) -> Check:
    def check() -> str:
        import psycopg2

        conn = psycopg2.connect(host=host, port=port, user=user, password=password,
                                dbname=dbname, connect_timeout=3)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_database()")
                return f"connected to {cur.fetchone()[0]} as {user}@{host}:{port}"
        finally:
            conn.close()
    return check


def pg_from_url(url: str) -> tuple[str, int, str, str, str]:
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme.startswith("postgresql"):
        raise ValueError(f"not a postgresql URL: scheme {parts.scheme!r}")
    return (parts.hostname or "", parts.port or 5432, urllib.parse.unquote(parts.username or ""),
            urllib.parse.unquote(parts.password or ""), parts.path.lstrip("/"))


def redis_check(url: str) -> Check:
    def check() -> str:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
        client.ping()
        return f"ping ok at {url}"
    return check


def http_check(url: str, headers: dict[str, str] | None = None) -> Check:
    def check() -> str:
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return f"{resp.status} from {url}"
    return check


def run_checks(checks: dict[str, Check]) -> tuple[bool, dict[str, Any]]:
    """Run every check at once (a slow one does not delay the others)."""
    def one(check: Check) -> dict[str, Any]:
        try:
            return {"ok": True, "detail": check()}
        except Exception as exc:  # any failure of a dependency is reported, never raised
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}

    with ThreadPoolExecutor(max_workers=max(1, len(checks))) as pool:
        futures = {name: pool.submit(one, check) for name, check in checks.items()}
        report = {name: f.result() for name, f in futures.items()}
    return all(r["ok"] for r in report.values()), report


# ---- HTTP ----

def serve(port: int, routes: dict[str, Callable[[Any], tuple[int, Any]]],
          allowed_hosts: list[str] | None = None) -> None:
    class Handler(BaseHTTPRequestHandler):
        # Keep connections alive, as the real frontend and backend do (a proxy reuses its
        # upstream connections): every reply carries a Content-Length.
        protocol_version = "HTTP/1.1"
        # The headers and the body go out in two writes: with Nagle's algorithm the second
        # waits for the client's delayed ACK (40 ms) on a kept-alive connection.
        disable_nagle_algorithm = True

        def _reply(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self) -> None:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
            if allowed_hosts is not None and host not in allowed_hosts:
                self.close_connection = True  # its body, if any, is left unread
                self._reply(400, {"error": f"host {host!r} not in ALLOWED_HOSTS"})
                return
            path = urllib.parse.urlsplit(self.path).path
            handler = routes.get(path)
            if handler is None:
                self.close_connection = True
                self._reply(404, {"error": f"no route {path}"})
                return
            code, body = handler(self)
            self._reply(code, body)

        do_GET = _route
        do_POST = _route

        def log_message(self, fmt: str, *args: Any) -> None:
            log(f"http {self.address_string()} {fmt % args}")

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    log(f"listening on :{port}")
    server.serve_forever()


def release_version() -> str:
    return os.environ.get("STANDIN_VERSION", "")


def broken_release(role: str) -> bool:
    return role in {name.strip() for name in os.environ.get("STANDIN_BROKEN", "").split(",")}


def health_route(role: str, checks: dict[str, Check],
                 extra: Callable[[], dict[str, Any]] | None = None,
                 reported: dict[str, Check] | None = None
                 ) -> Callable[[Any], tuple[int, Any]]:
    """The health answer: every check in `checks` and `extra` must pass; `reported` ones are
    in the answer without counting."""
    version = release_version()
    if broken_release(role):
        log(f"{role}: a broken release (STANDIN_BROKEN): health answers 503")
        return lambda _: (503, {"error": "broken release", "version": version})

    def route(_: Any) -> tuple[int, Any]:
        healthy, report = run_checks({**checks, **(reported or {})})
        if reported:
            healthy = all(r["ok"] for name, r in report.items() if name not in reported)
        if extra:
            more = extra()
            report.update(more)
            healthy = healthy and all(v.get("ok") for v in more.values())
        return (200 if healthy else 503), {"healthy": healthy, "dependencies": report,
                                           "version": version}
    return route


def version_route(role: str) -> Callable[[Any], tuple[int, Any]]:
    """Which release answers, and nothing else (no dependency checked): what a client polling
    through a proxy during an upgrade reads."""
    answer = {"role": role, "version": release_version()}
    return lambda _: (200, answer)


# ---- core-api ----

class RayProbe:
    """Connects to the Ray cluster at RAY_ADDRESS (Ray client, port 10001) and runs a task."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.state: dict[str, Any] = {"ok": False, "error": "not connected yet"}
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        import ray

        while True:
            try:
                if not ray.is_initialized():
                    ray.init(f"ray://{self.address}:10001", logging_level="WARNING")

                @ray.remote
                def square(x: int) -> tuple[int, str]:
                    return x * x, socket.gethostname()

                result, host = ray.get(square.remote(7), timeout=60)
                nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
                self.state = {"ok": True, "task_result": result, "task_ran_on": host,
                              "alive_nodes": nodes, "address": self.address}
            except Exception as exc:
                self.state = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
                try:
                    ray.shutdown()
                except Exception:
                    pass
            time.sleep(10 if self.state["ok"] else 3)

    def report(self) -> dict[str, Any]:
        return {"ray": self.state}


def fernet_key_ok(key: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(key.encode())) == 32
    except Exception:
        return False


def core_common() -> dict[str, Check]:
    app_env = env("APP_ENV", "dev")
    if app_env == "prod" and not os.environ.get("RAY_ADDRESS"):
        log("APP_ENV=prod needs RAY_ADDRESS")
        sys.exit(2)
    for name in ("SECRET_KEY", "SECRET_KEY_2"):
        if not fernet_key_ok(env(name)):
            log(f"{name} is not a Fernet key")
            sys.exit(2)
    host, port, user, password, dbname = pg_from_url(env("DATABASE_URL"))
    return {
        "postgres": pg_check(host, port, user, password, dbname),
        "broker": redis_check(env("CELERY_BROKER_URL")),
        "result_backend": redis_check(env("CELERY_RESULT_BACKEND")),
    }


def core() -> None:
    checks = core_common()
    probe = RayProbe(env("RAY_ADDRESS"))
    port = int(env("PORT", "8000"))
    serve(port, {"/api/v1/status": health_route("core", checks, probe.report)})


def heartbeat_loop(name: str, checks: dict[str, Check], redis_url: str) -> None:
    """A worker's life: check its dependencies, and leave a heartbeat in Redis when healthy."""
    import redis

    last = None
    while True:
        healthy, report = run_checks(checks)
        if healthy:
            try:
                redis.Redis.from_url(redis_url, socket_timeout=3).set(
                    f"standin:{name}:{socket.gethostname()}", str(time.time()), ex=60)
            except Exception as exc:
                healthy, report = False, {"heartbeat": str(exc)}
        state = json.dumps(report, sort_keys=True) if not healthy else "healthy"
        if state != last:
            log(f"{name}: {state}")
            last = state
        time.sleep(5)


def core_worker(args: list[str]) -> None:
    if args[:3] != ["-A", "app.celery", "worker"]:
        log(f"celery stand-in: unsupported arguments {args}")
        sys.exit(2)
    heartbeat_loop("core_worker", core_common(), env("CELERY_BROKER_URL"))


# ---- backend ----

def backend_common() -> tuple[dict[str, Check], str]:
    redis_url = (f"redis://{env('REDIS_HOST')}:{env('REDIS_PORT', '6379')}/"
                 f"{env('REDIS_DB_INDEX', '0')}")
    pg = (env("DB_HOST"), int(env("DB_PORT", "5432")), env("DB_USER"), env("DB_PASSWORD"),
          env("DB_NAME"))
    if len(env("SECRET_KEY")) < 32:
        log("SECRET_KEY is too short for Django production")
        sys.exit(2)
    return {"postgres": pg_check(*pg), "redis": redis_check(redis_url)}, redis_url


def dashboard_check(url: str) -> Check:
    """What the backend asks the Ray dashboard at RAY_URL, as the vendor's would: its version
    and the cluster's status, with no token (the agent's relay adds it)."""
    def check() -> str:
        answers = {}
        for path in ("/api/version", "/api/cluster_status"):
            with urllib.request.urlopen(f"{url}{path}", timeout=10) as resp:
                answers[path] = json.loads(resp.read())
        return f"Ray {answers['/api/version']['ray_version']} at {url}"
    return check


def ensure_admin() -> None:
    """Create the admin account from USER_NAME/USER_PASSWORD/USER_EMAIL once, as Django would."""
    import psycopg2

    conn = psycopg2.connect(host=env("DB_HOST"), port=int(env("DB_PORT", "5432")),
                            user=env("DB_USER"), password=env("DB_PASSWORD"),
                            dbname=env("DB_NAME"), connect_timeout=3)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS standin_users (username text PRIMARY KEY,"
                    " email text, password_sha256 text)")
        digest = hashlib.sha256(env("USER_PASSWORD").encode()).hexdigest()
        cur.execute("INSERT INTO standin_users VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    (env("USER_NAME"), env("USER_EMAIL", ""), digest))
    conn.close()


def backend() -> None:
    checks, _ = backend_common()
    engine = env("SYNTHO_ENGINE_URL").rstrip("/")
    checks["core"] = http_check(f"{engine}/v1/status")
    env("FRONTEND_URL")
    dashboard = dashboard_check(env("RAY_URL").rstrip("/"))
    # STANDIN_DASHBOARD_REPORT_ONLY (an image variant of test_upgrade's): the check reported,
    # not counted in health (the agent before the relay gave no working RAY_URL).
    reported = {"ray_dashboard": dashboard} if os.environ.get(
        "STANDIN_DASHBOARD_REPORT_ONLY") else {}
    if not reported:
        checks["ray_dashboard"] = dashboard
    allowed = ["localhost", "127.0.0.1", *env("EXTRA_ALLOWED_HOSTS", "").split()]

    def admin_ready() -> dict[str, Any]:
        try:
            ensure_admin()
            return {"admin": {"ok": True, "detail": f"account {env('USER_NAME')}"}}
        except Exception as exc:
            return {"admin": {"ok": False, "error": str(exc)[:300]}}

    def login(handler: Any) -> tuple[int, Any]:
        import psycopg2

        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length) or b"{}")
        digest = hashlib.sha256(str(body.get("password", "")).encode()).hexdigest()
        conn = psycopg2.connect(host=env("DB_HOST"), port=int(env("DB_PORT", "5432")),
                                user=env("DB_USER"), password=env("DB_PASSWORD"),
                                dbname=env("DB_NAME"), connect_timeout=3)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM standin_users WHERE username=%s AND password_sha256=%s",
                        (body.get("username"), digest))
            ok = cur.fetchone() is not None
        conn.close()
        return (200, {"login": "ok"}) if ok else (401, {"login": "refused"})

    def upload(handler: Any) -> tuple[int, Any]:
        """A dataset upload: the body's size and SHA-256, read as it streams in."""
        left = int(handler.headers.get("Content-Length") or 0)
        digest, size = hashlib.sha256(), 0
        while left:
            chunk = handler.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
            left -= len(chunk)
        return 200, {"bytes": size, "sha256": digest.hexdigest()}

    serve(8000, {"/api/docs/": health_route("backend", checks, admin_ready, reported),
                 "/api/login/": login, "/api/upload/": upload,
                 "/api/version/": version_route("backend")},
          allowed_hosts=allowed)


def backend_subscriber() -> None:
    checks, redis_url = backend_common()
    heartbeat_loop("worker", checks, redis_url)


# ---- frontend ----

def frontend() -> None:
    backend_host = env("BACKEND_HOST")
    env("OPEN_API_URL")
    checks = {"backend": http_check(f"http://{backend_host}/api/docs/")}
    serve(int(env("PORT", "3000")), {"/": health_route("frontend", checks),
                                     "/version": version_route("frontend")})


def main(argv: list[str]) -> None:
    if not argv:
        print(__doc__)
        sys.exit(2)
    role, args = argv[0], argv[1:]
    roles: dict[str, Callable[[], None]] = {
        "core": core,
        "core-worker": lambda: core_worker(args),
        "backend": backend,
        "backend-subscriber": backend_subscriber,
        "frontend": frontend,
    }
    if role not in roles:
        log(f"unknown role {role}")
        sys.exit(2)
    roles[role]()


if __name__ == "__main__":
    main(sys.argv[1:])
