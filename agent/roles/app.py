"""The app role: the Syntho application stack, container by container, as the stack contract
defines it. Pure: settings and the resolved secrets in, a Spec (and the env file's values) out.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from agent import spec as s
from agent.config import Settings
from agent.roles.ray import DASHBOARD_PORT

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


def database(settings: Settings, secrets: Secrets) -> Database:
    if settings.postgres_url:
        u = urlsplit(settings.postgres_url)
        return Database(u.hostname or "", u.port or 5432, u.username or DB_USER,
                        u.password or "")
    return Database("postgres", 5432, DB_USER, secrets.db_password)


def redis(settings: Settings) -> Redis:
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


def frontend_host(settings: Settings) -> str:
    return settings.frontend_host or f"localhost:{settings.frontend_port}"


def backend_host(settings: Settings) -> str:
    return settings.backend_host or f"localhost:{settings.backend_port}"


def _db_url(db: Database, name: str) -> str:
    return (f"postgresql+asyncpg://{quote(db.user, safe='')}:{quote(db.password, safe='')}"
            f"@{db.host}:{db.port}/{name}")


def _health(command: str) -> s.Health:
    return s.Health(test=("CMD-SHELL", command), interval=2.0, timeout=5.0, retries=30,
                    start_period=5.0)


def _http_probe(url: str) -> s.Health:
    """curl where the image has it, wget otherwise (alpine and node images)."""
    return _health(f"curl -fsS -o /dev/null {url} || wget -q -O /dev/null {url}")


def app_spec(settings: Settings, secrets: Secrets, data_dir: Path, ray: str) -> s.Spec:
    """ray: the head's address as the containers reach it (CORE_RAY_ADDRESS)."""
    net = settings.suffix("syntho")
    db = database(settings, secrets)
    rd = redis(settings)
    bundled_db = settings.postgres_url is None
    bundled_redis = settings.redis_url is None
    infra = tuple(x for x, bundled in (("postgres", bundled_db), ("redis", bundled_redis))
                  if bundled)
    ray_auth = ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.ray_token}
                if secrets.ray_token else {})
    https = settings.frontend_protocol == "https"
    domain = frontend_host(settings).rsplit(":", 1)[0]

    def box(service: str, image: str, **kw: object) -> s.Container:
        return s.Container(service=service, name=settings.suffix(f"syntho-{service}"),
                           image=image, network=net, aliases=(service,), **kw)  # type: ignore[arg-type]

    core_env = dict(
        DATABASE_URL=_db_url(db, settings.core_db_name), APP_ENV="prod",
        SECRET_KEY=secrets.core_secret_key, SECRET_KEY_2=secrets.core_secret_key,
        CELERY_BROKER_URL=rd.url(0), CELERY_RESULT_BACKEND=rd.url(0), RAY_ADDRESS=ray,
        LICENSE_KEY_SIGNED=settings.license_key, REDIS_HOST=rd.host, REDIS_PORT=str(rd.port),
        **ray_auth,
    )
    worker_env = dict(
        SYNTHO_ENGINE_URL=f"http://core:{settings.core_port}/api",
        SYNTHO_WEBSOCKET_URL=f"ws://core:{settings.core_port}/websocket/",
        SECRET_KEY=secrets.backend_secret_key, DJANGO_PRODUCTION="True",
        FRONTEND_URL=f"{settings.frontend_protocol}://{frontend_host(settings)}",
        REDIS_HOST=rd.host, REDIS_PORT=str(rd.port), REDIS_DB_INDEX="1",
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


def env_file(settings: Settings, secrets: Secrets, ray: str) -> dict[str, str]:
    """The guide's .env, with its variable names, as this deployment resolves them."""
    db = database(settings, secrets)
    rd = redis(settings)
    return {
        "CORE_IMAGE": settings.core_image,
        "BACKEND_IMAGE": settings.backend_image,
        "FRONTEND_IMAGE": settings.frontend_image,
        "BACKEND_HOST": backend_host(settings),
        "FRONTEND_HOST": frontend_host(settings),
        "BACKEND_PROTOCOL": settings.backend_protocol,
        "FRONTEND_PROTOCOL": settings.frontend_protocol,
        "LICENSE_KEY": settings.license_key,
        "CORE_DATABASE_HOST": db.host,
        "CORE_DATABASE_USER": db.user,
        "CORE_DATABASE_PASSWORD": db.password,
        "CORE_DATABASE_NAME": settings.core_db_name,
        "CORE_CELERY_BROKER_URL": rd.url(0),
        "CORE_CELERY_RESULT_BACKEND": rd.url(0),
        "CORE_RAY_ADDRESS": ray,
        "CORE_SECRET_KEY": secrets.core_secret_key,
        "CORE_PORT": str(settings.core_port),
        "BACKEND_DB_HOST": db.host,
        "BACKEND_DB_NAME": settings.backend_db_name,
        "BACKEND_REDIS_HOST": rd.host,
        "BACKEND_REDIS_PORT": str(rd.port),
        "BACKEND_REDIS_DB_INDEX": "1",
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

