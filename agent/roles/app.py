"""The app role: the Syntho application stack, container by container (docs/stack.md).

Pure. `app_values` resolves, once, every value the containers and `app.env` share (the
database and Redis endpoints, the URLs, the secrets, the Ray head); `app_spec` and `env_file`
read them from there, so the env file always says what the containers get.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from agent import relay, tls
from agent import spec as s
from agent.config import AppSettings
from agent.ray_tls import CA_FILE, Material
from agent.ray_tls import INSIDE as TLS_INSIDE
from agent.roles.ray import DASHBOARD_PORT, LICENSE_ENV, auth_env, tls_mounts

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
        # urlsplit leaves the user and password %-escaped; the containers get them as they are
        return Database(u.hostname or "", u.port or 5432, unquote(u.username or DB_USER),
                        unquote(u.password or ""))
    return Database("postgres", 5432, DB_USER, secrets.db_password)


def redis(settings: AppSettings) -> Redis:
    if settings.redis_url:
        u = urlsplit(settings.redis_url)
        return Redis(u.hostname or "", u.port or 6379,
                     None if u.password is None else unquote(u.password))
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
    frontend_domain: str  # the frontend host without its port (the backend's allowed host)
    backend_host: str
    frontend_url: str
    protocol: str  # FRONTEND_PROTOCOL: https with the proxy (it forces it) or as configured
    site: tls.Site | None  # the HTTPS proxy's site, when --tls is on
    ray_tls: Material | None = None  # the app's Ray TLS files, when the cluster's Ray speaks TLS


def app_values(settings: AppSettings, secrets: Secrets, ray_host: str,
               site: tls.Site | None = None, ray_tls: Material | None = None) -> AppValues:
    rd = redis(settings)
    host = site.address if site else frontend_host(settings)
    protocol = "https" if site else settings.frontend_protocol
    return AppValues(
        secrets=secrets, db=database(settings, secrets), redis=rd, ray_host=ray_host,
        broker_url=rd.url(0), backend_redis_db="1",
        frontend_host=host,
        frontend_domain=site.host if site else host.rsplit(":", 1)[0],
        backend_host=backend_host(settings),
        frontend_url=f"{protocol}://{host}", protocol=protocol, site=site, ray_tls=ray_tls,
    )


def _db_url(db: Database, name: str) -> str:
    return (f"postgresql+asyncpg://{quote(db.user, safe='')}:{quote(db.password, safe='')}"
            f"@{_db_address(db)}/{name}")


def _db_address(db: Database) -> str:
    return f"{db.host}:{db.port}"


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
    https = values.protocol == "https"
    site = values.site

    def box(service: str, image: str, **kw: object) -> s.Container:
        return s.Container(service=service, name=settings.suffix(f"syntho-{service}"),
                           image=image, network=net, aliases=(service,), **kw)  # type: ignore[arg-type]

    core_env = dict(
        DATABASE_URL=_db_url(db, settings.core_db_name), APP_ENV="prod",
        SECRET_KEY=secrets.core_secret_key, SECRET_KEY_2=secrets.core_secret_key,
        CELERY_BROKER_URL=values.broker_url, CELERY_RESULT_BACKEND=values.broker_url,
        RAY_ADDRESS=ray, REDIS_HOST=rd.host, REDIS_PORT=str(rd.port),
        **{LICENSE_ENV: settings.license_key}, **auth_env(secrets.ray_token),
        **dict(values.ray_tls.env() if values.ray_tls else ()),
    )
    ray_mounts = tls_mounts(values.ray_tls)  # the core's Ray client speaks TLS with the head
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
        DATA_ACCESS="True", RAY_URL=relay.URL,  # the relay adds the token (relay.py)
        EXTRA_ALLOWED_HOSTS=f"backend {values.frontend_domain}",
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
                            MAX_WORKERS=str(settings.max_workers)), mounts=ray_mounts,
            health=_http_probe(f"http://localhost:{settings.core_port}/api/v1/status")),
        box("core_worker", settings.core_image, restart="on-failure", after=infra,
            command=("celery", "-A", "app.celery", "worker", "--loglevel=info"),
            env=s.env_pairs(**core_env), mounts=ray_mounts),
        ray_relay(settings, ray, secrets.ray_token, values.ray_tls),
        box("backend", settings.backend_image, restart="on-failure",
            after=(*infra, relay.SERVICE),
            env=s.env_pairs(**backend_env),
            ports=_app_port(settings, site, 8000, "backend"),
            health=_http_probe("http://backend:8000/api/docs/")),
        box("worker", settings.backend_image, restart="on-failure", after=infra,
            entrypoint=("python", "manage.py", "subscriber"), env=s.env_pairs(**worker_env)),
        box("frontend", settings.frontend_image, restart="always", after=("backend",),
            # The vendor's compose files set NODE_ENV=development, its Helm chart (the
            # frontend's deployment) defaults to production (`frontend.mode`): the agent keeps
            # the chart's value it has always given; app.env notes the difference.
            env=s.env_pairs(NODE_ENV="production", PORT=str(settings.frontend_port),
                            OPEN_API_URL="http://backend:8000/api/playground/?format=openapi",
                            BACKEND_HOST="backend:8000"),
            ports=_app_port(settings, site, settings.frontend_port, "frontend"),
            health=_http_probe(f"http://localhost:{settings.frontend_port}")),
    ]
    if site is not None:
        containers.append(proxy(settings, site))
    secret_values = [secrets.db_password, secrets.core_secret_key, secrets.backend_secret_key,
                     secrets.admin_password, secrets.ray_token, settings.license_key,
                     db.password, rd.password]
    return s.Spec(
        role="app", instance=settings.instance, containers=tuple(containers),
        networks=(s.Network(net),),
        volumes=tuple(s.Volume(settings.suffix(v)) for v, wanted in (
            ("syntho-database-data", bundled_db), (PROXY_DATA, site is not None),
            (PROXY_CONFIG, site is not None)) if wanted),
        secrets=tuple(v for v in secret_values if v),
    )


def ray_relay(settings: AppSettings, ray_host: str, token: str | None,
              ray_tls: Material | None = None) -> s.Container:
    """The backend's way to the Ray dashboard (relay.py): the core's image running the
    relay's program, on the app's network only, the token in its environment only; in HTTPS
    with the cluster's CA when its Ray speaks TLS."""
    name = relay.file_name(relay.program())
    return s.Container(
        service=relay.SERVICE, name=settings.suffix(f"syntho-{relay.SERVICE}"),
        image=settings.core_image, network=settings.suffix("syntho"), aliases=(relay.SERVICE,),
        restart="always", entrypoint=("python3", f"{relay.INSIDE}/{name}"),
        env=s.env_pairs(RAY_DASHBOARD_HOST=ray_host, RAY_DASHBOARD_PORT=str(DASHBOARD_PORT),
                        RELAY_PORT=str(relay.PORT), PYTHONUNBUFFERED="1", RAY_TOKEN=token,
                        RAY_DASHBOARD_CA=f"{TLS_INSIDE}/{CA_FILE}" if ray_tls else None),
        mounts=(s.Mount(str(settings.data_dir / relay.DIR), relay.INSIDE, read_only=True),
                # the CA alone: the relay has no use for the node's key
                *((s.Mount(str(ray_tls.folder / CA_FILE), f"{TLS_INSIDE}/{CA_FILE}",
                           read_only=True),) if ray_tls else ())),
        health=s.Health(test=relay.health_command(), interval=2.0, timeout=5.0, retries=30,
                        start_period=5.0),
    )


PROXY_DIR = "proxy"  # in the data dir: the Caddyfile and the files it names (/etc/caddy)
PROXY_DATA = "syntho-proxy-data"  # Caddy's /data: the ACME account, certificates, its CA
PROXY_CONFIG = "syntho-proxy-config"  # Caddy's /config: its last configuration


def proxy(settings: AppSettings, site: tls.Site) -> s.Container:
    """Caddy before the frontend and the backend (tls.caddyfile), on the app's network,
    publishing HTTPS and HTTP on the same port numbers inside and out."""
    return s.Container(
        service="proxy", name=settings.suffix("syntho-proxy"), image=settings.proxy_image,
        network=settings.suffix("syntho"), aliases=("proxy",), restart="always",
        after=("frontend", "backend"),
        command=("caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"),
        env=s.env_pairs(XDG_DATA_HOME="/data", XDG_CONFIG_HOME="/config"),
        ports=(s.Port(site.https_port, site.https_port, settings.bind),
               s.Port(site.http_port, site.http_port, settings.bind)),
        mounts=(s.Mount(str(settings.data_dir / PROXY_DIR), "/etc/caddy", read_only=True),
                s.Mount(settings.suffix(PROXY_DATA), "/data"),
                s.Mount(settings.suffix(PROXY_CONFIG), "/config")),
        health=_http_probe(f"http://{tls.ADMIN}/config/"),
    )


def _app_port(settings: AppSettings, site: tls.Site | None, container: int,
              service: str) -> tuple[s.Port, ...]:
    """The frontend's or the backend's host port: --frontend-port/--backend-port on --bind
    without the proxy; with it, none unless --publish-frontend/--publish-backend."""
    if site is None:
        host = settings.frontend_port if service == "frontend" else settings.backend_port
        return (s.Port(container, host, settings.bind),)
    return _published(settings.publish_frontend if service == "frontend"
                      else settings.publish_backend, container)


def _published(address_port: tuple[str, int] | None, container_port: int) -> tuple[s.Port, ...]:
    if address_port is None:
        return ()
    address, port = address_port
    return (s.Port(container_port, port, address),)


class EnvFile(dict[str, str]):
    """app.env's variables in file order, with the comment lines that say where this VM's
    containers differ from what the vendor's compose file makes of the same values."""

    def __init__(self, values: dict[str, str], notes: list[str]) -> None:
        super().__init__(values)
        self.notes = notes


# The vendor's compose file for the app (syntho-ai/syntho-charts, docker-compose/syntho-ui/
# docker-compose.yaml) reads these, in its example .env's order; app.env is a drop-in for it.
# Its postgres service hard-codes its password and databases; it reads no variable.
def env_file(settings: AppSettings, values: AppValues) -> EnvFile:
    """The vendor's .env (docs/stack.md, section 3), as this deployment resolves it: every
    variable the vendor's compose file reads, so that the file gives each container what the
    agent gives it, then the deployment guide's names that the compose file does not read."""
    secrets, db, rd, ray = values.secrets, values.db, values.redis, values.ray_host
    read_by_compose = {
        "FRONTEND_HOST": values.frontend_host,
        "FRONTEND_DOMAIN": values.frontend_domain,
        "FRONTEND_PROTOCOL": values.protocol,
        "SECURED_COOKIES": str(values.protocol == "https"),
        "LICENSE_KEY": settings.license_key,
        "CORE_IMAGE": settings.core_image,
        "BACKEND_IMAGE": settings.backend_image,
        "FRONTEND_IMAGE": settings.frontend_image,
        # The compose file pastes these four into the core's DATABASE_URL as they are:
        # escaped for a URL, and the host with its port.
        "CORE_DATABASE_HOST": _db_address(db),
        "CORE_DATABASE_USER": quote(db.user, safe=""),
        "CORE_DATABASE_PASSWORD": quote(db.password, safe=""),
        "CORE_DATABASE_NAME": settings.core_db_name,
        "CORE_SECRET_KEY": secrets.core_secret_key,
        "CORE_BROKER_URL": values.broker_url,
        "CORE_RESULT_BACKEND": values.broker_url,
        "CORE_RAY_ADDRESS": ray,
        "CORE_PORT": str(settings.core_port),
        "CORE_REDIS_HOST": rd.host,
        "CORE_REDIS_PORT": str(rd.port),
        "BACKEND_PORT": str(settings.backend_port),
        "BACKEND_SECRET_KEY": secrets.backend_secret_key,
        "BACKEND_REDIS_HOST": rd.host,
        "BACKEND_REDIS_PORT": str(rd.port),
        "BACKEND_REDIS_DB_INDEX": values.backend_redis_db,
        "BACKEND_DB_HOST": db.host,
        "BACKEND_DB_NAME": settings.backend_db_name,
        "BACKEND_DB_USER": db.user,
        "BACKEND_DB_PASSWORD": db.password,
        "BACKEND_DB_PORT": str(db.port),
        "BACKEND_DATA_ACCESS": "True",
        "ADMIN_USERNAME": settings.admin_username,
        "ADMIN_PASSWORD": secrets.admin_password,
        "ADMIN_EMAIL": settings.admin_email,
        "FRONTEND_PORT": str(settings.frontend_port),
        "CORE_APP_ENV": "prod",
        "CORE_WORKERS": str(settings.max_workers),
    }
    guide_only = {
        "BACKEND_HOST": values.backend_host,
        "BACKEND_PROTOCOL": settings.backend_protocol,
        "CORE_CELERY_BROKER_URL": values.broker_url,
        "CORE_CELERY_RESULT_BACKEND": values.broker_url,
        "RAY_HEAD_IP": settings.head or "",
    }
    return EnvFile({**read_by_compose, **guide_only}, _differences(settings, values))


_GUIDE_ONLY_FIRST = "BACKEND_HOST"  # the first of the guide's names the compose file ignores


def _differences(settings: AppSettings, values: AppValues) -> list[str]:
    """Where this VM's containers differ, on purpose, from what the vendor's compose file
    makes of app.env."""
    notes = ["backend and worker get BACKEND_SECRET_KEY as SECRET_KEY (the vendor's file "
             "writes $${BACKEND_SECRET_KEY}: the literal text, not the variable)",
             "frontend gets NODE_ENV=production, the vendor's Helm chart's default (the "
             "vendor's compose file sets development)",
             f"backend gets RAY_URL={relay.URL}, the agent's relay to the Ray dashboard "
             "(the ray-relay container, on the core's image), which adds the cluster's token: "
             "the vendor's file gives http://${CORE_RAY_ADDRESS}:8265, which Ray's token "
             "authentication refuses"]
    if values.secrets.ray_token:
        notes.append("core and core_worker also get RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
                     "(the cluster's Ray token, ray-token beside this file)")
    if values.redis.password:
        notes.append("backend and worker also get REDIS_PASSWORD (from --redis-url)")
    if settings.postgres_url is None:
        notes.append("postgres: its password is BACKEND_DB_PASSWORD (secrets/postgres-"
                     "password), its databases CORE_DATABASE_NAME and BACKEND_DB_NAME, its "
                     f"volume {settings.suffix('syntho-database-data')} (the vendor's file "
                     "hard-codes a password and the default names, and has its own volume)")
    else:
        notes.append("no postgres container: the database is --postgres-url's")
    if settings.redis_url is not None:
        notes.append("no redis container: Redis is --redis-url's")
    published = {"postgres": settings.publish_postgres, "redis": settings.publish_redis}
    hidden = [name for name, bundled in (("postgres", settings.postgres_url is None),
                                         ("redis", settings.redis_url is None))
              if bundled and published[name] is None]
    if hidden:
        notes.append(f"{' and '.join(hidden)} not published on the host (the vendor's file "
                     "publishes 5432 and 6379)")
    site = values.site
    if site is not None:
        notes.append(f"proxy: Caddy serves {site.url} (--tls {site.mode}), /api/* to the "
                     "backend and the rest to the frontend; the vendor's file has no proxy")
        hidden = [name for name, published in (("frontend", settings.publish_frontend),
                                               ("backend", settings.publish_backend))
                  if published is None]
        if hidden:
            notes.append(f"{' and '.join(hidden)} not published on the host (the proxy is "
                         "the way in)")
    elif settings.bind != "0.0.0.0":
        notes.append(f"the backend and frontend ports are published on {settings.bind} only")
    return notes


def render_env(values: dict[str, str]) -> str:
    header = ("# Written by syntho-agent: a drop-in .env for the vendor's docker-compose.yaml "
              "(syntho-charts,\n"
              "# docker-compose/syntho-ui), with the values this VM's containers get.\n"
              "# Edits here do not stick: set values in the agent's config file or flags.\n"
              "# Secrets live in secrets/ beside this file and are never regenerated.\n"
              "# Quoting follows docker compose's env-file rules: 'literal', \"with escapes\".\n")
    notes = getattr(values, "notes", [])
    if notes:
        header += "# Where this VM's containers differ from what that file makes of it:\n"
        header += "".join(f"#   {note}\n" for note in notes)
    lines = []
    for key, value in values.items():
        if key == _GUIDE_ONLY_FIRST:
            lines.append("# The deployment guide's names, which the compose file does not read:")
        text, v1_reads_it = quote_env(value)
        if not v1_reads_it:
            lines.append(f"# docker-compose v1 misreads {key} ($ or \\ in it): use docker "
                         "compose v2")
        lines.append(f"{key}={text}")
    return header + "".join(f"{line}\n" for line in lines)


_UNQUOTED = re.compile(r"[A-Za-z0-9_.:/@+=,%-]+")
# compose v2 expands $$, $NAME and ${...} in a double-quoted value: those need `\$`
_EXPANDS = re.compile(r"\$(?=[${_A-Za-z])")
# docker-compose v1 (python-dotenv) expands ${...} in every value, quoted or not
_V1_EXPANDS = re.compile(r"\$\{[^}]*\}")


def quote_env(value: str) -> tuple[str, bool]:
    r"""`value` as docker compose reads it back exactly from an env file, and whether
    docker-compose v1 does too.

    Compose v2's rules (compose-go's dotenv parser; Docker's "Syntax for environment files"):
    an unquoted value loses a ` #` comment and trailing blanks and has `$` expanded; in single
    quotes all is literal except `\'` (a quote) and a `\` just before the closing quote (it
    escapes it); in double quotes `\\`, `\"`, `\n`, `\r`, `\$` and octal `\0NNN` are escapes
    and `$$`, `$NAME`, `${...}` expand. Hence: plain words bare; a value without `'`, `\` or
    a line break in single quotes; any other in double quotes, escaping `\`, `"`, line breaks
    and each `$` that would expand.

    docker-compose v1 (python-dotenv) reads that back the same, except: `${...}` anywhere
    (it expands it, even in single quotes), `\$` (kept as it is), and `\\` just before a
    closing quote (it reads on into the next lines). A trailing backslash is therefore
    written `\0134`, which v2 reads as `\` and v1 at least keeps on its own line.
    """
    v1_exact = _V1_EXPANDS.search(value) is None
    if _UNQUOTED.fullmatch(value) or not value:
        return value, True
    if not any(ch in value for ch in "'\\\n\r"):
        return f"'{value}'", v1_exact
    body = (value.replace("\\", "\\\\").replace('"', '\\"')
            .replace("\n", "\\n").replace("\r", "\\r"))
    body, escaped = _EXPANDS.subn("\\\\$", body)
    if value.endswith("\\"):
        body = body[:-2] + "\\0134"
        escaped += 1
    return f'"{body}"', v1_exact and not escaped
