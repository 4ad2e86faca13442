"""The app role: the Syntho application stack, container by container (docs/stack.md).

Pure. `app_values` resolves, once, every value the containers and `app.env` share (the
database and Redis endpoints, the URLs, the secrets, the Ray head); `app_spec` and `env_file`
read them from there, so the env file always says what the containers get.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from agent import spec as s
from agent.config import AppSettings
from agent.roles.ray import DASHBOARD_PORT, LICENSE_ENV, auth_env

DB_USER = "syntho"
INIT_SCRIPT = "create-multiple-databases.sh"


@dataclass(frozen=True)
class Secrets:
    db_password: str
    core_secret_key: str  # a Fernet key
    backend_secret_key: str
    admin_password: str
    ray_token: str | None


@dataclass(frozen=True)
class Database:
    host: str
    port: int
    user: str
    password: str


@dataclass(frozen=True)
class Redis:
    host: str
    port: int
    password: str | None

    def url(self, db: int) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{db}"


def database(settings: AppSettings, secrets: Secrets) -> Database:
    if settings.postgres_url:
        u = urlsplit(settings.postgres_url)
        return Database(u.hostname or "", u.port or 5432, u.username or DB_USER,
                        u.password or "")
    return Database("postgres", 5432, DB_USER, secrets.db_password)


def redis(settings: AppSettings) -> Redis:
    if settings.redis_url:
        u = urlsplit(settings.redis_url)
        return Redis(u.hostname or "", u.port or 6379, u.password)
    return Redis("redis", 6379, None)


def head_is_local(head: str) -> bool:
    """A head on this VM's loopback, which the app's containers cannot reach as such."""
    try:
        return ipaddress.ip_address(head).is_loopback
    except ValueError:
        return head == "localhost"


def frontend_host(settings: AppSettings) -> str:
    return settings.frontend_host or f"localhost:{settings.frontend_port}"


def backend_host(settings: AppSettings) -> str:
    return settings.backend_host or f"localhost:{settings.backend_port}"


@dataclass(frozen=True)
class AppValues:
    """Every value the app's containers and app.env share, resolved once."""

    secrets: Secrets
    db: Database
    redis: Redis
    ray_host: str  # the head's address as the containers reach it (CORE_RAY_ADDRESS)
    broker_url: str  # Celery's broker and result backend (Redis db 0)
    backend_redis_db: str  # the backend's Redis database index
    frontend_host: str
    backend_host: str
    frontend_url: str


def app_values(settings: AppSettings, secrets: Secrets, ray_host: str) -> AppValues:
    rd = redis(settings)
    return AppValues(
        secrets=secrets, db=database(settings, secrets), redis=rd, ray_host=ray_host,
        broker_url=rd.url(0), backend_redis_db="1",
        frontend_host=frontend_host(settings), backend_host=backend_host(settings),
        frontend_url=f"{settings.frontend_protocol}://{frontend_host(settings)}",
    )


def _db_url(db: Database, name: str) -> str:
    return (f"postgresql+asyncpg://{quote(db.user, safe='')}:{quote(db.password, safe='')}"
            f"@{db.host}:{db.port}/{name}")


def _health(command: str) -> s.Health:
    return s.Health(test=("CMD-SHELL", command), interval=2.0, timeout=5.0, retries=30,
                    start_period=5.0)


def _http_probe(url: str) -> s.Health:
    """curl where the image has it, wget otherwise (alpine and node images)."""
    return _health(f"curl -fsS -o /dev/null {url} || wget -q -O /dev/null {url}")


def app_spec(settings: AppSettings, values: AppValues) -> s.Spec:
    net = settings.suffix("syntho")
    secrets, db, rd, ray = values.secrets, values.db, values.redis, values.ray_host
    data_dir: Path = settings.data_dir
    bundled_db = settings.postgres_url is None
    bundled_redis = settings.redis_url is None
    infra = tuple(x for x, bundled in (("postgres", bundled_db), ("redis", bundled_redis))
                  if bundled)
    https = settings.frontend_protocol == "https"
    domain = values.frontend_host.rsplit(":", 1)[0]

    def box(service: str, image: str, **kw: object) -> s.Container:
        return s.Container(service=service, name=settings.suffix(f"syntho-{service}"),
                           image=image, network=net, aliases=(service,), **kw)  # type: ignore[arg-type]

    core_env = dict(
        DATABASE_URL=_db_url(db, settings.core_db_name), APP_ENV="prod",
        SECRET_KEY=secrets.core_secret_key, SECRET_KEY_2=secrets.core_secret_key,
        CELERY_BROKER_URL=values.broker_url, CELERY_RESULT_BACKEND=values.broker_url,
        RAY_ADDRESS=ray, REDIS_HOST=rd.host, REDIS_PORT=str(rd.port),
        **{LICENSE_ENV: settings.license_key}, **auth_env(secrets.ray_token),
    )
    worker_env = dict(
        SYNTHO_ENGINE_URL=f"http://core:{settings.core_port}/api",
        SYNTHO_WEBSOCKET_URL=f"ws://core:{settings.core_port}/websocket/",
        SECRET_KEY=secrets.backend_secret_key, DJANGO_PRODUCTION="True",
        FRONTEND_URL=values.frontend_url,
        REDIS_HOST=rd.host, REDIS_PORT=str(rd.port), REDIS_DB_INDEX=values.backend_redis_db,
        DB_HOST=db.host, DB_NAME=settings.backend_db_name, DB_USER=db.user,
        DB_PASSWORD=db.password, DB_PORT=str(db.port),
    )
    if rd.password:
        worker_env["REDIS_PASSWORD"] = rd.password
    backend_env = dict(
        worker_env, SECURE_COOKIES=str(https), USER_NAME=settings.admin_username,
        USER_PASSWORD=secrets.admin_password, USER_EMAIL=settings.admin_email,
        DATA_ACCESS="True", RAY_URL=f"http://{ray}:{DASHBOARD_PORT}",
        EXTRA_ALLOWED_HOSTS=f"backend {domain}",
    )

    containers = []
    if bundled_db:
        containers.append(box(
            "postgres", settings.postgres_image, restart="always",
            env=s.env_pairs(POSTGRES_USER=DB_USER, POSTGRES_PASSWORD=secrets.db_password,
                            POSTGRES_MULTIPLE_DATABASES=f'"{settings.core_db_name}",'
                                                        f'"{settings.backend_db_name}"'),
            mounts=(s.Mount(settings.suffix("syntho-database-data"), "/var/lib/postgresql/data"),
                    s.Mount(str(data_dir / "postgres-init" / INIT_SCRIPT),
                            f"/docker-entrypoint-initdb.d/{INIT_SCRIPT}", read_only=True)),
            ports=_published(settings.publish_postgres, 5432),
            health=_health(f"pg_isready -h 127.0.0.1 -U {DB_USER} -d {settings.backend_db_name}"),
        ))
    if bundled_redis:
        containers.append(box(
            "redis", settings.redis_image, restart="always",
            ports=_published(settings.publish_redis, 6379),
            health=_health("redis-cli ping | grep -q PONG"),
        ))
    containers += [
        box("core", settings.core_image, restart="on-failure", after=infra,
            env=s.env_pairs(**core_env, PORT=str(settings.core_port),
                            MAX_WORKERS=str(settings.max_workers)),
            health=_http_probe(f"http://localhost:{settings.core_port}/api/v1/status")),
        box("core_worker", settings.core_image, restart="on-failure", after=infra,
            command=("celery", "-A", "app.celery", "worker", "--loglevel=info"),
            env=s.env_pairs(**core_env)),
        box("backend", settings.backend_image, restart="on-failure", after=infra,
            env=s.env_pairs(**backend_env),
            ports=(s.Port(8000, settings.backend_port, settings.bind),),
            health=_http_probe("http://backend:8000/api/docs/")),
        box("worker", settings.backend_image, restart="on-failure", after=infra,
            entrypoint=("python", "manage.py", "subscriber"), env=s.env_pairs(**worker_env)),
        box("frontend", settings.frontend_image, restart="always", after=("backend",),
            env=s.env_pairs(NODE_ENV="production", PORT=str(settings.frontend_port),
                            OPEN_API_URL="http://backend:8000/api/playground/?format=openapi",
                            BACKEND_HOST="backend:8000"),
            ports=(s.Port(settings.frontend_port, settings.frontend_port, settings.bind),),
            health=_http_probe(f"http://localhost:{settings.frontend_port}")),
    ]
    secret_values = [secrets.db_password, secrets.core_secret_key, secrets.backend_secret_key,
                     secrets.admin_password, secrets.ray_token, settings.license_key,
                     db.password, rd.password]
    return s.Spec(
        role="app", instance=settings.instance, containers=tuple(containers),
        networks=(s.Network(net),),
        volumes=(s.Volume(settings.suffix("syntho-database-data")),) if bundled_db else (),
        secrets=tuple(v for v in secret_values if v),
    )


def _published(address_port: tuple[str, int] | None, container_port: int) -> tuple[s.Port, ...]:
    if address_port is None:
        return ()
    address, port = address_port
    return (s.Port(container_port, port, address),)


def env_file(settings: AppSettings, values: AppValues) -> dict[str, str]:
    """The guide's .env (docs/stack.md, section 3), as this deployment resolves it."""
    secrets, db, rd, ray = values.secrets, values.db, values.redis, values.ray_host
    return {
        "CORE_IMAGE": settings.core_image,
        "BACKEND_IMAGE": settings.backend_image,
        "FRONTEND_IMAGE": settings.frontend_image,
        "BACKEND_HOST": values.backend_host,
        "FRONTEND_HOST": values.frontend_host,
        "BACKEND_PROTOCOL": settings.backend_protocol,
        "FRONTEND_PROTOCOL": settings.frontend_protocol,
        "LICENSE_KEY": settings.license_key,
        "CORE_DATABASE_HOST": db.host,
        "CORE_DATABASE_USER": db.user,
        "CORE_DATABASE_PASSWORD": db.password,
        "CORE_DATABASE_NAME": settings.core_db_name,
        "CORE_CELERY_BROKER_URL": values.broker_url,
        "CORE_CELERY_RESULT_BACKEND": values.broker_url,
        "CORE_RAY_ADDRESS": ray,
        "CORE_SECRET_KEY": secrets.core_secret_key,
        "CORE_PORT": str(settings.core_port),
        "BACKEND_DB_HOST": db.host,
        "BACKEND_DB_NAME": settings.backend_db_name,
        "BACKEND_REDIS_HOST": rd.host,
        "BACKEND_REDIS_PORT": str(rd.port),
        "BACKEND_REDIS_DB_INDEX": values.backend_redis_db,
        "ADMIN_USERNAME": settings.admin_username,
        "ADMIN_PASSWORD": secrets.admin_password,
        "ADMIN_EMAIL": settings.admin_email,
        "BACKEND_PORT": str(settings.backend_port),
        "BACKEND_SECRET_KEY": secrets.backend_secret_key,
        "FRONTEND_PORT": str(settings.frontend_port),
        "RAY_HEAD_IP": settings.head or "",
    }


def render_env(values: dict[str, str]) -> str:
    header = ("# Written by syntho-agent: the deployment guide's .env, as this VM runs it.\n"
              "# Edits here do not stick: set values in the agent's config file or flags.\n"
              "# Secrets live in secrets/ beside this file and are never regenerated.\n")
    return header + "".join(f"{k}={_quote_env(v)}\n" for k, v in values.items())


def _quote_env(value: str) -> str:
    if value and all(ch.isalnum() or ch in "-_.:/@+=" for ch in value):
        return value
    return "'" + value.replace("'", "'\\''") + "'"

