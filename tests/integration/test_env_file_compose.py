"""app.env read by the real docker compose: every value comes back byte for byte, and the
vendor's compose file, given app.env, hands each container what the agent hands it.

Runs `docker compose` (v2) where the Docker CLI has it, else Debian's `docker-compose` (v1,
the one bench/ uses). v1 cannot read some values (see app.quote_env): app.env flags each one
with a comment, and the test holds v1 to exactly the values the flag does not name.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from agent.config import AppSettings
from agent.roles import app
from tests.support.constants import TEST_LABEL
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration

NASTY = [
    "a$b #c \"d\" 'e' f",  # the golden license key
    "back\\slash", "ends in a backslash\\", "\\\\two\\\\", "\\'", "\\\"", "\\n is not a newline",
    "  leading and trailing  ", "\ttab", "${X}", "$X and $$", "$ alone $", "a'${HOME}'b",
    "it's", 'say "hi"', "#not a comment", "a #b", "x=y", "line\nbreak", "ünïcödé €",
    "p@ss:w/rd?&%41", "", " ", "'", '"', "$", "\\", "$\\",
]

# The vendor's compose file for the app (syntho-ai/syntho-charts, docker-compose/syntho-ui/
# docker-compose.yaml): how each service's environment is made of the .env's variables.
VENDOR_ENV: dict[str, dict[str, str]] = {
    "core": {
        "DATABASE_URL": "postgresql+asyncpg://${CORE_DATABASE_USER}:${CORE_DATABASE_PASSWORD}"
                        "@${CORE_DATABASE_HOST}/${CORE_DATABASE_NAME}",
        "APP_ENV": "${CORE_APP_ENV}", "SECRET_KEY": "${CORE_SECRET_KEY}",
        "SECRET_KEY_2": "${CORE_SECRET_KEY}", "CELERY_BROKER_URL": "${CORE_BROKER_URL}",
        "CELERY_RESULT_BACKEND": "${CORE_RESULT_BACKEND}", "RAY_ADDRESS": "${CORE_RAY_ADDRESS}",
        "PORT": "${CORE_PORT}", "LICENSE_KEY_SIGNED": "${LICENSE_KEY}",
        "MAX_WORKERS": "${CORE_WORKERS:-4}", "REDIS_HOST": "${CORE_REDIS_HOST}",
        "REDIS_PORT": "${CORE_REDIS_PORT}",
    },
    "backend": {
        "FRONTEND_URL": "${FRONTEND_PROTOCOL}://${FRONTEND_HOST}",
        "SYNTHO_ENGINE_URL": "http://core:${CORE_PORT}/api",
        "SYNTHO_WEBSOCKET_URL": "ws://core:${CORE_PORT}/websocket/",
        "SECRET_KEY": "$${BACKEND_SECRET_KEY}", "SECURE_COOKIES": "${SECURED_COOKIES}",
        "DJANGO_PRODUCTION": "True", "REDIS_HOST": "${BACKEND_REDIS_HOST}",
        "REDIS_PORT": "${BACKEND_REDIS_PORT}", "REDIS_DB_INDEX": "${BACKEND_REDIS_DB_INDEX}",
        "DB_HOST": "${BACKEND_DB_HOST}", "DB_NAME": "${BACKEND_DB_NAME}",
        "DB_USER": "${BACKEND_DB_USER}", "DB_PASSWORD": "${BACKEND_DB_PASSWORD}",
        "DB_PORT": "${BACKEND_DB_PORT}", "USER_NAME": "${ADMIN_USERNAME}",
        "USER_PASSWORD": "${ADMIN_PASSWORD}", "USER_EMAIL": "${ADMIN_EMAIL}",
        "DATA_ACCESS": "${BACKEND_DATA_ACCESS}", "RAY_URL": "http://${CORE_RAY_ADDRESS}:8265",
        "EXTRA_ALLOWED_HOSTS": "backend ${FRONTEND_DOMAIN}",
    },
    "frontend": {
        "NODE_ENV": "development", "PORT": "${FRONTEND_PORT}",
        "OPEN_API_URL": "http://backend:8000/api/playground/?format=openapi",
        "BACKEND_HOST": "backend:8000",
    },
}
VENDOR_ENV["core_worker"] = {k: v for k, v in VENDOR_ENV["core"].items()
                             if k not in ("PORT", "MAX_WORKERS")}
VENDOR_ENV["worker"] = {k: v for k, v in VENDOR_ENV["backend"].items()
                        if k in ("FRONTEND_URL", "SYNTHO_ENGINE_URL", "SYNTHO_WEBSOCKET_URL",
                                 "SECRET_KEY", "DJANGO_PRODUCTION") or k.startswith(("REDIS_",
                                                                                     "DB_"))}
VENDOR_IMAGES = {"core": "${CORE_IMAGE}", "core_worker": "${CORE_IMAGE}",
                 "backend": "${BACKEND_IMAGE}", "worker": "${BACKEND_IMAGE}",
                 "frontend": "${FRONTEND_IMAGE}"}
VENDOR_PORTS = {"backend": "${BACKEND_PORT}:8000", "frontend": "${FRONTEND_PORT}:${FRONTEND_PORT}"}
# Where the agent differs on purpose: app.env's header says so for each.
DIFFERS = {("backend", "SECRET_KEY"): "BACKEND_SECRET_KEY as SECRET_KEY",
           ("worker", "SECRET_KEY"): "BACKEND_SECRET_KEY as SECRET_KEY",
           ("frontend", "NODE_ENV"): "NODE_ENV=production",
           ("backend", "RAY_URL"): "RAY_URL=http://ray-relay:8265"}
ONLY_THE_AGENTS = {"RAY_AUTH_MODE": "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN": "RAY_AUTH_TOKEN",
                   "REDIS_PASSWORD": "REDIS_PASSWORD"}


def compose_command() -> list[str]:
    """docker compose v2 if the CLI has it, else docker-compose v1; neither fails the test."""
    for command in (["docker", "compose"], ["docker-compose"]):
        try:
            if subprocess.run([*command, "version"], capture_output=True).returncode == 0:
                return command
        except FileNotFoundError:
            continue
    pytest.fail("neither `docker compose` nor `docker-compose` runs here: install Debian's "
                "docker-compose (.ci/run does)", pytrace=False)


@pytest.fixture(scope="module")
def compose() -> list[str]:
    return compose_command()


def is_v1(compose: list[str]) -> bool:
    return compose == ["docker-compose"]


def config(compose: list[str], folder: Path, services: dict[str, Any]) -> dict[str, Any]:
    """`compose --env-file app.env config` of these services: the file as compose reads it."""
    (folder / "docker-compose.yaml").write_text(
        yaml.safe_dump({"version": "3", "services": services}))
    done = subprocess.run([*compose, "--env-file", str(folder / "app.env"), "-f",
                           str(folder / "docker-compose.yaml"), "config"],
                          capture_output=True, text=True, cwd=folder, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "not set" not in done.stderr, done.stderr  # every variable the file reads is there
    parsed: dict[str, Any] = yaml.safe_load(done.stdout)["services"]
    return parsed


def unescaped(value: str) -> str:
    """`config` prints a literal `$` as `$$` (so that its output reads back the same)."""
    return value.replace("$$", "$")


def test_compose_hands_a_container_every_value_byte_for_byte(
        compose: list[str], sandbox: Sandbox, images: dict[str, str],
        docker_client: docker.DockerClient) -> None:
    names = [f"V{i}" for i in range(len(NASTY))]
    text = app.render_env(dict(zip(names, NASTY, strict=True)))
    (sandbox.tmp / "app.env").write_text(text)
    (sandbox.tmp / "docker-compose.yaml").write_text(yaml.safe_dump({"version": "3", "services": {
        "env": {"image": images["busybox"], "command": ["env", "-0"], "network_mode": "none",
                "labels": sandbox.labels,
                "environment": {name: "${" + name + "}" for name in names}}}}))
    project = f"{sandbox.id}env"
    try:
        done = subprocess.run([*compose, "--env-file", "app.env", "-p", project, "run", "--rm",
                               "-T", "env"], capture_output=True, cwd=sandbox.tmp, timeout=120)
    finally:
        subprocess.run([*compose, "--env-file", "app.env", "-p", project, "down"],
                       capture_output=True, cwd=sandbox.tmp, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    got = dict(entry.decode().split("=", 1) for entry in done.stdout.split(b"\0") if entry)
    flagged = {line.split()[4] for line in text.splitlines() if "v1 misreads" in line}
    assert flagged, "the nasty values include some docker-compose v1 cannot read"
    for name, value in zip(names, NASTY, strict=True):
        if is_v1(compose) and name in flagged:
            assert got.get(name) != value, f"{name} is flagged but v1 reads {value!r} back"
        else:
            assert got.get(name) == value, (name, value, got.get(name))
    assert not docker_client.containers.list(all=True, filters={"label": f"{TEST_LABEL}="
                                                                          f"{sandbox.id}"})


@pytest.mark.parametrize("case", ["bundled", "external"])
def test_the_vendors_compose_file_gives_each_container_what_the_agent_gives_it(
        compose: list[str], tmp_path: Path, case: str) -> None:
    # Values v1 reads too (quotes, backslashes, spaces, a `$` that expands nothing).
    nasty = "k\\ey 'with' \"quotes\" #1 $ 5"
    given: dict[str, Any] = {"license_key": nasty, "frontend_host": "syntho.example.com:8443",
                             "frontend_protocol": "https", "max_workers": 6}
    if case == "external":
        given |= {"postgres_url": "postgresql://us%40er:p%40ss%20w%27rd@db.example.com:5433",
                  "redis_url": "redis://:r%2Fpass@cache.example.com:6380"}
    settings = AppSettings(head="10.0.0.4", **given)
    secrets = app.Secrets(db_password="d'b \\pass\"", core_secret_key="core-fernet-key=",
                          backend_secret_key="b$ck #end", admin_password="adm'in p\\w",
                          ray_token="0123456789abcdef" * 4)
    values = app.app_values(settings, secrets, "10.0.0.4")
    env = app.env_file(settings, values)
    wiring = json.dumps([VENDOR_ENV, VENDOR_IMAGES, VENDOR_PORTS])
    read_by_vendor = set(re.findall(r"(?<!\$)\$\{([A-Z_0-9]+)", wiring))
    assert len(read_by_vendor) == 35 and read_by_vendor <= set(env), read_by_vendor - set(env)
    text = app.render_env(env)
    assert "v1 misreads" not in text
    (tmp_path / "app.env").write_text(text)
    services = {name: {"image": VENDOR_IMAGES[name], "environment": VENDOR_ENV[name],
                       **({"ports": [VENDOR_PORTS[name]]} if name in VENDOR_PORTS else {})}
                for name in VENDOR_ENV}
    read = config(compose, tmp_path, services)
    spec = {c.service: c for c in app.app_spec(settings, values).containers}
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for name in VENDOR_ENV:
        ours = spec[name].env_dict()
        theirs = {k: unescaped(str(v)) for k, v in read[name]["environment"].items()}
        assert unescaped(read[name]["image"]) == spec[name].image
        for key, value in theirs.items():
            if (name, key) in DIFFERS:
                assert value != ours[key] and DIFFERS[name, key] in header, (name, key)
            else:
                assert value == ours[key], (name, key, value, ours[key])
        for key in set(ours) - set(theirs):
            assert ONLY_THE_AGENTS[key] in header, (name, key)
        if name in VENDOR_PORTS:
            published = {(p.host, p.container) for p in spec[name].ports}
            port = read[name]["ports"][0]
            pair = ((int(port["published"]), int(port["target"])) if isinstance(port, dict)
                    else tuple(int(x) for x in port.split(":")))
            assert published == {pair}
    assert spec["backend"].env_dict()["SECURE_COOKIES"] == "True"
    if case == "external":
        # What the core and the backend get is the password the URL spells, unescaped.
        assert spec["backend"].env_dict()["DB_PASSWORD"] == "p@ss w'rd"
        assert spec["worker"].env_dict()["REDIS_PASSWORD"] == "r/pass"
