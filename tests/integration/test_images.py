"""Smoke tests of the test images: each does what it claims, on the real engine."""

from __future__ import annotations

import functools
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import docker
import pytest

from agent import relay
from agent.waits import poll
from tests.support.constants import REPO
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

INIT_SCRIPT = REPO / "agent/assets/create-multiple-databases.sh"
PG_PASSWORD = "smoke-test-password-1"


def ip_of(container: docker.models.containers.Container, network: str) -> str:
    container.reload()
    return str(container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


def get_json(url: str) -> tuple[int, Any]:
    """GET with Host: localhost (the backend, like Django, checks ALLOWED_HOSTS)."""
    req = urllib.request.Request(url, headers={"Host": "localhost"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
    except OSError as exc:
        return 0, str(exc)


def answers(url: str, status: int) -> bool:
    """get_json(url) answers with this HTTP status."""
    return get_json(url)[0] == status


def exec_ok(container: docker.models.containers.Container, cmd: list[str],
            env: dict[str, str] | None = None) -> str:
    code, out = container.exec_run(cmd, environment=env or {})
    text: str = out.decode(errors="replace")
    assert code == 0, f"{cmd} exited {code}: {text}"
    return text


def start_postgres(sandbox: Sandbox, images: dict[str, str], name: str = "pg",
                   password: str = PG_PASSWORD, volume: str | None = None
                   ) -> docker.models.containers.Container:
    mounts = [docker.types.Mount("/docker-entrypoint-initdb.d/create-multiple-databases.sh",
                                 str(INIT_SCRIPT), type="bind", read_only=True)]
    if volume:
        mounts.append(docker.types.Mount("/var/lib/postgresql/data", volume, type="volume"))
    pg = sandbox.run(images["postgres"], name, network=sandbox.network, mounts=mounts,
                     environment={"POSTGRES_USER": "syntho", "POSTGRES_PASSWORD": password,
                                  "POSTGRES_MULTIPLE_DATABASES": '"syntho-core","syntho-backend"'},
                     labels={}, hostname=name)
    ready = poll(lambda: pg.exec_run(["pg_isready", "-U", "syntho", "-d", "syntho-backend",
                                      "-h", "127.0.0.1"]).exit_code == 0, 60, "postgres")
    assert ready, pg.logs().decode()[-2000:]
    return pg


def test_busybox_runs(sandbox: Sandbox, images: dict[str, str]) -> None:
    out = sandbox.client.containers.run(images["busybox"], ["echo", "hello"], remove=True)
    assert out.strip() == b"hello"


def test_ray_two_containers_form_a_cluster(sandbox: Sandbox, images: dict[str, str]) -> None:
    net = sandbox.create_network()
    ray_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "a" * 64}
    head = sandbox.run(images["ray"], "head", network=net, shm_size="512m", environment=ray_env,
                       command=["ray", "start", "--head", "--port=6379", "--dashboard-host",
                                "0.0.0.0", "--block", "--disable-usage-stats"])
    head_ip = ip_of(head, net)
    sandbox.run(images["ray"], "worker", network=net, shm_size="512m", environment=ray_env,
                command=["ray", "start", f"--address={head_ip}:6379", "--block",
                         "--disable-usage-stats"])

    def two_nodes() -> bool:
        code, out = head.exec_run(["ray", "status"])
        text: str = out.decode(errors="replace")
        active = text.split("Active:")[-1].split("Pending:")[0]
        return bool(code == 0) and active.count("node_") == 2

    assert poll(two_nodes, 120, "2 active Ray nodes"), head.exec_run(["ray", "status"]).output


def test_postgres_creates_the_listed_databases_once(sandbox: Sandbox,
                                                    images: dict[str, str]) -> None:
    sandbox.create_network()
    volume = sandbox.volume("pgdata")
    pg = start_postgres(sandbox, images, volume=volume)
    out = exec_ok(pg, ["psql", "-U", "syntho", "-d", "postgres", "-Atc",
                       "SELECT datname FROM pg_database ORDER BY 1"])
    assert {"syntho-core", "syntho-backend", "syntho"} <= set(out.split())
    # Over TCP the password is required and checked (scram), as with the official image.
    bad = pg.exec_run(["psql", "-h", pg.name, "-U", "syntho", "-d", "syntho-core", "-c",
                       "SELECT 1"], environment={"PGPASSWORD": "wrong"})
    assert bad.exit_code != 0 and b"password authentication failed" in bad.output
    exec_ok(pg, ["psql", "-h", pg.name, "-U", "syntho", "-d", "syntho-core", "-c",
                 "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before')"],
            env={"PGPASSWORD": PG_PASSWORD})
    # A new container on the same volume: init scripts do not run again, data and the
    # first password stay (a new POSTGRES_PASSWORD is ignored, as upstream).
    pg.remove(force=True)
    pg2 = start_postgres(sandbox, images, name="pg2", password="another-password", volume=volume)
    assert b"creating database" not in pg2.logs()
    out = exec_ok(pg2, ["psql", "-h", pg2.name, "-U", "syntho", "-d", "syntho-core", "-Atc",
                        "SELECT v FROM kept"], env={"PGPASSWORD": PG_PASSWORD})
    assert out.strip() == "before"


def test_redis_answers_ping(sandbox: Sandbox, images: dict[str, str]) -> None:
    net = sandbox.create_network()
    redis = sandbox.run(images["redis"], "redis", network=net)
    client = sandbox.run(images["redis"], "cli", network=net, command=["sleep", "120"])
    assert poll(lambda: client.exec_run(["redis-cli", "-h", redis.name, "ping"]).output.strip()
                == b"PONG", 30, "redis ping")


def test_standins_are_unhealthy_until_their_dependencies_answer(
        sandbox: Sandbox, images: dict[str, str], tmp_path: Path) -> None:
    """The frontend, backend and core report each dependency; 200 only when all answer."""
    net = sandbox.create_network()
    sid = sandbox.id
    core_port = 8080
    fernet = "x" * 43 + "="  # 32 bytes in urlsafe base64
    db = f"postgresql+asyncpg://syntho:{PG_PASSWORD}@{sid}-pg/syntho-core"
    broker = f"redis://{sid}-redis:6379/0"
    core_env = {"DATABASE_URL": db, "APP_ENV": "prod", "SECRET_KEY": fernet,
                "SECRET_KEY_2": fernet, "CELERY_BROKER_URL": broker,
                "CELERY_RESULT_BACKEND": broker, "RAY_ADDRESS": f"{sid}-head",
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "b" * 64, "PORT": str(core_port)}
    backend_env = {"SYNTHO_ENGINE_URL": f"http://{sid}-core:{core_port}/api",
                   "SECRET_KEY": "s" * 50, "DB_HOST": f"{sid}-pg", "DB_NAME": "syntho-backend",
                   "DB_USER": "syntho", "DB_PASSWORD": PG_PASSWORD, "DB_PORT": "5432",
                   "REDIS_HOST": f"{sid}-redis", "REDIS_PORT": "6379", "REDIS_DB_INDEX": "1",
                   "USER_NAME": "admin", "USER_PASSWORD": "admin-pass", "USER_EMAIL": "a@b.c",
                   "FRONTEND_URL": "http://localhost:3000", "RAY_URL": f"http://{sid}-relay:8265",
                   "EXTRA_ALLOWED_HOSTS": f"backend {sid}-backend"}
    frontend_env = {"PORT": "3000", "BACKEND_HOST": f"{sid}-backend:8000",
                    "OPEN_API_URL": "http://backend:8000/api/playground/?format=openapi"}
    # The backend reaches the dashboard as on the app VM: through the agent's relay (relay.py),
    # which adds the token.
    relay.write_files(tmp_path)
    sandbox.run(images["core"], "relay", network=net,
                entrypoint=["python3", f"{relay.INSIDE}/{relay.file_name(relay.program())}"],
                environment={"RAY_DASHBOARD_HOST": f"{sid}-head", "RAY_DASHBOARD_PORT": "8265",
                             "RELAY_PORT": str(relay.PORT), "RAY_TOKEN": "b" * 64},
                volumes={str(tmp_path / relay.DIR): {"bind": relay.INSIDE, "mode": "ro"}})
    frontend = sandbox.run(images["frontend"], "frontend", network=net, environment=frontend_env)
    backend = sandbox.run(images["backend"], "backend", network=net, environment=backend_env)
    core = sandbox.run(images["core"], "core", network=net, environment=core_env)
    worker = sandbox.run(images["core"], "core-worker", network=net, environment=core_env,
                         command=["celery", "-A", "app.celery", "worker", "--loglevel=info"])
    sub = sandbox.run(images["backend"], "subscriber", network=net, environment=backend_env,
                      entrypoint=["python", "manage.py", "subscriber"])
    urls = {"frontend": f"http://{ip_of(frontend, net)}:3000/",
            "backend": f"http://{ip_of(backend, net)}:8000/api/docs/",
            "core": f"http://{ip_of(core, net)}:{core_port}/api/v1/status"}

    # Nothing they depend on runs yet: each answers 503 and names what is missing.
    failing = {"frontend": ["backend"], "backend": ["postgres", "redis", "core", "ray_dashboard"],
               "core": ["postgres", "broker", "ray"]}
    for name, url in urls.items():
        assert poll(functools.partial(answers, url, 503), 30, f"{name} to answer"), name
        code, body = get_json(url)
        for dep in failing[name]:
            assert body["dependencies"][dep]["ok"] is False, (name, dep, body)

    start_postgres(sandbox, images)
    sandbox.run(images["redis"], "redis", network=net)
    sandbox.run(images["ray"], "head", network=net, shm_size="512m",
                environment={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "b" * 64},
                command=["ray", "start", "--head", "--port=6379", "--dashboard-host", "0.0.0.0",
                         "--block", "--disable-usage-stats"])
    for name in ["core", "backend", "frontend"]:
        assert poll(functools.partial(answers, urls[name], 200), 180, f"{name} healthy"), (
            name, get_json(urls[name]))
    _, body = get_json(urls["core"])
    assert body["dependencies"]["ray"]["task_result"] == 49  # a real Ray task ran
    # The workers use their wiring too: each left a heartbeat in its Redis database.
    redis_cli = sandbox.run(images["redis"], "cli", network=net, command=["sleep", "120"])

    def heartbeats(db: int, prefix: str) -> bool:
        out = redis_cli.exec_run(["redis-cli", "-h", f"{sid}-redis", "-n", str(db), "--scan",
                                  "--pattern", f"standin:{prefix}:*"]).output
        return bool(out.strip())

    assert poll(lambda: heartbeats(0, "core_worker"), 60, "core_worker heartbeat"), worker.logs()
    assert poll(lambda: heartbeats(1, "worker"), 60, "subscriber heartbeat"), sub.logs()
