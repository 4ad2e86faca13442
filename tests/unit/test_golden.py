"""Golden files: the exact containers each role asks the engine for, for a few representative
settings. A change to a container's contract (an env value, a flag, a port, a health check)
or to its config hash shows up here as a readable diff in review.

After a deliberate change: UPDATE_GOLDEN=1 make unit (it rewrites the files, and those tests fail:
a run that rewrote them proves nothing), then read the diff of tests/unit/golden/ and run again.
A changed `config_hash` means every VM recreates that container on the agent's next run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent import spec as s
from agent import tls
from agent.config import AppSettings, HeadSettings, WorkerSettings
from agent.engine import create_args
from agent.roles import app, ray

GOLDEN = Path(__file__).parent / "golden"
IMAGE_ID = "sha256:" + "0" * 64
TOKEN = "0123456789abcdef" * 4
SECRETS = app.Secrets(db_password="db-pass-0123", core_secret_key="core-fernet-key=",
                      backend_secret_key="backend-secret-key", admin_password="admin-pass-0",
                      ray_token=TOKEN)
HEAD_IP = "10.0.0.4"

CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-services": {
        "app": {"postgres_url": "postgresql://syntho:p%40ss@db.example.com:5433",
                "redis_url": "redis://:redis-pass@cache.example.com:6380"}},
    "https": {
        "app": {"frontend_protocol": "https", "frontend_host": "syntho.example.com",
                "backend_protocol": "https", "backend_host": "api.example.com"}},
    # The HTTPS proxy (Caddy's internal CA: no files to read), on a port other than 443, the
    # backend also published on loopback.
    "https-proxy": {
        "app": {"tls": "internal", "frontend_host": "syntho.example.com", "https_port": 8443,
                "publish_backend": ("127.0.0.1", 8000)}},
    "instance": {
        "all": {"instance": "blue"},
        "ray": {"network": "syntho-net", "shm_size": 1024**3, "nofile": 20000, "cpus": 2.0,
                "memory": 8 * 1024**3, "node_ip": "10.0.0.9", "ray_arg": ("--num-gpus=0",)},
        "app": {"publish_postgres": ("127.0.0.1", 5432), "frontend_port": 3100,
                "backend_port": 8100, "bind": "10.0.0.9", "max_workers": 8}},
    "license-key": {"all": {"license_key": "a$b #c \"d\" 'e' f"}},
}


def settings(case: str) -> tuple[HeadSettings, WorkerSettings, AppSettings]:
    given = CASES[case]
    common, ray_only, app_only = given.get("all", {}), given.get("ray", {}), given.get("app", {})
    return (HeadSettings(**common, **ray_only),
            WorkerSettings(head=HEAD_IP, **common, **ray_only),
            AppSettings(head=HEAD_IP, **common, **app_only))


GCS_PASSWORD = "gcs-redis-password-of-the-golden-files"


def gcs_password(head: HeadSettings) -> str | None:
    """The GCS Redis password a run resolves (none with GCS fault tolerance off)."""
    return GCS_PASSWORD if head.gcs_ft else None


def described(spec: s.Spec) -> dict[str, Any]:
    """A spec as the engine receives it: create arguments (labels and hash included)."""
    containers = []
    for c in spec.containers:
        config_hash = c.config_hash(IMAGE_ID)
        containers.append({"service": c.service, "start_after": list(c.after),
                           "config_hash": config_hash,
                           "create_args": create_args(c, spec.labels(c, config_hash))})
    return {"role": spec.role, "networks": [n.name for n in spec.networks],
            "volumes": [v.name for v in spec.volumes], "containers": containers}


def produced(case: str) -> tuple[str, str]:
    head, worker, app_settings = settings(case)
    values = app.app_values(app_settings, SECRETS, HEAD_IP, tls.site(app_settings))
    roles = {"head": described(ray.head_spec(head, TOKEN, gcs_password(head))),
             "worker": described(ray.worker_spec(worker, TOKEN)),
             "app": described(app.app_spec(app_settings, values))}
    text = json.dumps(roles, indent=1, sort_keys=True, default=list) + "\n"
    return text, app.render_env(app.env_file(app_settings, values))


def compare(path: Path, text: str) -> None:
    """The golden file holds text; with UPDATE_GOLDEN set, write it and fail (a run that rewrote
    the golden files proves nothing until someone reviews the diff)."""
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        pytest.fail(f"{path.name} rewritten: review the diff (git diff tests/unit/golden/), "
                    "then run the tests again without UPDATE_GOLDEN", pytrace=False)
    assert path.exists(), f"{path} is missing: UPDATE_GOLDEN=1 make unit writes it"
    assert text == path.read_text(), (
        f"{path.name} differs from what the code produces: if the change is deliberate, "
        "UPDATE_GOLDEN=1 make unit and review the diff")


@pytest.mark.parametrize("case", sorted(CASES))
def test_containers_match_their_golden_file(case: str) -> None:
    specs, _ = produced(case)
    compare(GOLDEN / f"{case}.json", specs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_env_file_matches_its_golden_file(case: str) -> None:
    _, env = produced(case)
    compare(GOLDEN / f"{case}.app.env", env)


def test_the_default_hashes_are_pinned() -> None:
    """The config hash of every default container: changing it recreates that container on
    every VM at the next agent upgrade, so it must be a deliberate, reviewed decision."""
    head, worker, app_settings = settings("defaults")
    values = app.app_values(app_settings, SECRETS, HEAD_IP)
    hashes = {c.name: c.config_hash(IMAGE_ID)[:16]
              for spec in (ray.head_spec(head, TOKEN, gcs_password(head)),
                           ray.worker_spec(worker, TOKEN), app.app_spec(app_settings, values))
              for c in spec.containers}
    compare(GOLDEN / "default-hashes.json", json.dumps(hashes, indent=1, sort_keys=True) + "\n")


def test_the_env_file_says_what_the_containers_get() -> None:
    """app.env and the containers are made from the same values."""
    _, _, app_settings = settings("external-services")
    values = app.app_values(app_settings, SECRETS, HEAD_IP)
    env = app.env_file(app_settings, values)
    by_service = {c.service: c.env_dict() for c in app.app_spec(app_settings, values).containers}
    assert by_service["core"]["CELERY_BROKER_URL"] == env["CORE_CELERY_BROKER_URL"]
    assert by_service["core"]["RAY_ADDRESS"] == env["CORE_RAY_ADDRESS"]
    assert by_service["core"]["SECRET_KEY"] == env["CORE_SECRET_KEY"]
    assert by_service["backend"]["DB_HOST"] == env["BACKEND_DB_HOST"] == "db.example.com"
    assert by_service["backend"]["USER_PASSWORD"] == env["ADMIN_PASSWORD"]
    assert by_service["worker"]["REDIS_DB_INDEX"] == env["BACKEND_REDIS_DB_INDEX"]
