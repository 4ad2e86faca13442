"""Backups of the app VM, on the real engine with real Postgres: a round trip through `down
--purge`, listing and retention, and every bad input refused in one line with nothing changed.
"""

from __future__ import annotations

import functools
import json
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from agent.waits import poll
from tests.integration.agent_helpers import App, HeadVM, engine_snapshot, http, ok
from tests.support import reads
from tests.support.agent_cli import run_agent
from tests.support.sandbox import Sandbox

pytestmark = [pytest.mark.integration, pytest.mark.head_on_a_network]

SECRET_VALUE = "a value only the core's key opens"


def key_file(tmp: Path) -> Path:
    path = tmp / "backup.key"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    path.chmod(0o600)
    return path


def write_rows(stack: App) -> str:
    """A row in each database, and a value encrypted with the core's Fernet key."""
    key = (stack.data_dir / "secrets" / "core-secret-key").read_text().strip()
    token = Fernet(key.encode()).encrypt(SECRET_VALUE.encode()).decode()
    stack.psql("syntho-core", "CREATE TABLE IF NOT EXISTS kept (v text); "
               f"INSERT INTO kept VALUES ('core-row'), ('{token}')")
    stack.psql("syntho-backend", "CREATE TABLE IF NOT EXISTS kept (v text); "
               "INSERT INTO kept VALUES ('backend-row')")
    return token


def test_round_trip_through_a_purged_vm(stack: App, tmp_path: Path) -> None:
    token = write_rows(stack)
    secrets = stack.secrets()
    key = key_file(tmp_path)
    out = ok(stack.cmd("backup", "--encrypt-key-file", str(key), "--output", str(tmp_path)))
    archive = next(tmp_path.glob("*.syntho-backup"))
    assert f"wrote {archive}" in out and "encrypted" in out
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging, no temp
    raw = archive.read_bytes()
    assert all(v.strip().encode() not in raw for v in secrets.values())
    assert b"core-row" not in raw

    ok(stack.cmd("down", "--purge", "--yes"))
    assert not stack.data_dir.exists()
    out = ok(run_agent("restore", str(archive), *stack.args(), "--encrypt-key-file", str(key)))
    assert "every checksum matches" in out
    assert "restored the databases syntho-core and syntho-backend" in out
    assert "the app is up" in out and "generated" not in out
    assert stack.secrets() == secrets
    assert stack.psql("syntho-backend", "SELECT v FROM kept") == "backend-row"
    rows = stack.psql("syntho-core", "SELECT v FROM kept ORDER BY v").splitlines()
    assert "core-row" in rows and token in rows
    restored_key = (stack.data_dir / "secrets" / "core-secret-key").read_text().strip()
    assert Fernet(restored_key.encode()).decrypt(token.encode()).decode() == SECRET_VALUE
    password = secrets["admin-password"].strip()
    assert http(f"http://localhost:{stack.backend_port}/api/login/",
                {"username": "admin", "password": password})[0] == 200
    for service in ["postgres", "redis", "core", "backend", "frontend"]:
        assert stack.container(service).attrs["State"]["Health"]["Status"] == "healthy"
    assert "nothing to do" in ok(stack.run())


def test_list_and_retention(stack: App, tmp_path: Path) -> None:
    made = []
    for _ in range(3):
        out = ok(stack.cmd("backup", "--keep", "2"))
        made.append(out.split("wrote ", 1)[1].split(" (", 1)[0])
    listed = json.loads(ok(stack.cmd("backup", "--list", "--json")))
    names = [b["name"] for b in listed]
    assert names == [Path(made[2]).name, Path(made[1]).name]  # newest first, oldest gone
    assert listed[0]["encrypted"] is False and listed[0]["core_image"] == stack.images["core"]
    # A backup this agent did not make (copied in from elsewhere) is never pruned.
    foreign = Path(made[2]).with_name("syntho-00000000T000000Z.syntho-backup")
    data = Path(made[2]).read_bytes().replace(b'"agent_id": "', b'"agent_id": "x', 1)
    foreign.write_bytes(data)
    ok(stack.cmd("backup", "--keep", "1"))
    assert foreign.exists()
    text = ok(stack.cmd("backup", "--list"))
    assert foreign.name in text and "ENCRYPTED" in text


@pytest.mark.parametrize("case", ["truncated", "flipped", "wrong key", "newer", "no force",
                                  "keep 0", "no target"])
def test_bad_input_is_one_line_and_changes_nothing(stack: App, tmp_path: Path,
                                                   case: str) -> None:
    key = key_file(tmp_path)
    out = ok(stack.cmd("backup", "--encrypt-key-file", str(key), "--output", str(tmp_path)))
    assert "wrote" in out
    archive = next(tmp_path.glob("*.syntho-backup"))
    data = archive.read_bytes()
    # --force: even replacing the current state, a bad archive changes nothing.
    args = ["restore", str(archive), *stack.args(), "--force", "--encrypt-key-file", str(key)]
    expected = 3
    if case == "truncated":
        archive.write_bytes(data[:len(data) // 2])
    elif case == "flipped":
        archive.write_bytes(data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    elif case == "wrong key":
        other = tmp_path / "other.key"
        other.write_text("another key of enough length\n")
        args[-1], expected = str(other), 2
    elif case == "newer":
        archive.write_bytes(b"SYNTHO-AGENT-BACKUP 9\n" + data.split(b"\n", 1)[1])
    elif case == "no force":  # a restore onto a VM with its database: refused without it
        args.remove("--force")
        expected = 2
    elif case == "keep 0":
        args, expected = ["backup", "--data-dir", str(stack.data_dir), "--instance",
                          stack.instance, "--keep", "0"], 2
    else:
        args, expected = ["backup", "--data-dir", str(stack.data_dir), "--instance",
                          stack.instance, "--backup-target", str(tmp_path / "absent")], 2
    secrets = stack.secrets()
    snapshot = engine_snapshot(stack.sandbox.client)
    result = run_agent(*args)
    assert result.returncode == expected, (case, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert stack.secrets() == secrets
    assert engine_snapshot(stack.sandbox.client) == snapshot
    assert not list(stack.data_dir.glob(".syntho-restore-*"))


def test_an_external_postgres_is_backed_up_and_restored(
        module_sandbox: Sandbox, images: dict[str, str], head_vm: HeadVM,
        tmp_path: Path) -> None:
    """--postgres-url: pg_dump and pg_restore run in a throw-away container on the app's
    network, reaching the server as the app does (here a Postgres the test runs itself)."""
    app = App(module_sandbox, images, head_vm, "ext")
    network = f"syntho-{app.instance}"
    module_sandbox.client.networks.create(network, driver="bridge",
                                          labels=module_sandbox.labels)
    db = module_sandbox.run(images["postgres"], "extdb", network=network,
                            environment={"POSTGRES_USER": "syntho",
                                         "POSTGRES_PASSWORD": "external-pass"})
    module_sandbox.client.api.disconnect_container_from_network(db.id, network)
    module_sandbox.client.api.connect_container_to_network(db.id, network, aliases=["extdb"])

    def psql(database: str, sql: str) -> tuple[int, str]:
        return reads.psql(db, database, sql)

    def created(name: str) -> bool:  # (its server restarts once after initialising)
        code, out = psql("postgres", f'CREATE DATABASE "{name}"')
        return code == 0 or "already exists" in out

    for name in ("syntho-core", "syntho-backend"):
        assert poll(functools.partial(created, name), 120, f"the external {name}")
    url = "postgresql://syntho:external-pass@extdb:5432"
    assert "the app is up" in ok(app.run("--postgres-url", url))
    assert psql("syntho-core", "CREATE TABLE kept (v text); INSERT INTO kept "
                "VALUES ('external-row')")[0] == 0
    env = {"SYNTHO_AGENT_POSTGRES_URL": url}
    out = ok(run_agent("backup", "--data-dir", str(app.data_dir), "--instance", app.instance,
                       "--postgres-image", images["postgres"], "--output", str(tmp_path),
                       env=env))
    assert "dumped syntho-core" in out and "external-pass" not in out
    archive = next(tmp_path.glob("*.syntho-backup"))
    assert psql("syntho-core", "DELETE FROM kept")[0] == 0  # the loss a restore undoes
    refused = run_agent("restore", str(archive), *app.args(), env=env)
    assert refused.returncode == 2 and "holds tables" in refused.stderr, refused.stderr
    out = ok(run_agent("restore", str(archive), *app.args(), "--force", env=env))
    assert "restored the databases syntho-core and syntho-backend" in out and "the app is up" in out
    assert psql("syntho-core", "SELECT v FROM kept") == (0, "external-row")
    assert "external-pass" not in out
