"""The app role on the real engine: the whole stack, wired to a real Ray cluster.

One engine stands for the VMs: the head runs on the host network (as on its VM, and as on a
one-VM deployment), a worker beside it on the same network (its own ports), and the app beside
them. A new cluster: its Ray speaks mutual TLS.
"""

from __future__ import annotations

import json
import re
import socket
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import docker
import pytest

from agent import cluster, metrics, ray_tls
from agent.waits import poll
from tests.integration.agent_helpers import App, HeadVM, engine_snapshot, http, ok
from tests.support import reads
from tests.support.agent_cli import agent_cmd, agent_env, run_agent
from tests.support.constants import REPO
from tests.support.ports import free_port
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.integration


def test_the_stack_is_healthy_wired_and_reachable(stack: App, head_vm: HeadVM) -> None:
    for service in ["postgres", "redis", "core", "ray-relay", "backend", "frontend"]:
        assert stack.container(service).attrs["State"]["Health"]["Status"] == "healthy", service
    for service in ["core_worker", "worker"]:
        assert stack.container(service).status == "running"
    # The frontend and the backend answer on their published ports, from the host.
    code, body = http(f"http://127.0.0.1:{stack.frontend_port}/")
    assert code == 200 and body["dependencies"]["backend"]["ok"]
    code, body = http(f"http://localhost:{stack.backend_port}/api/docs/")
    assert code == 200 and body["dependencies"]["core"]["ok"]
    # The backend called the real dashboard at its RAY_URL (version and cluster status),
    # through the relay, which added the token the backend does not have.
    dashboard = body["dependencies"]["ray_dashboard"]
    assert dashboard["ok"] and dashboard["detail"].startswith("Ray "), dashboard
    # core ran a real Ray task on the cluster: head + worker.
    code, out = reads.read(stack.container("core"),
                           ["curl", "-fsS", "http://localhost:8080/api/v1/status"])
    ray = json.loads(out)["dependencies"]["ray"]
    assert ray["task_result"] == 49 and ray["alive_nodes"] == 2
    assert ray["address"] == head_vm.node_ip
    # The admin account works with the generated password, and only with it.
    password = (stack.data_dir / "secrets" / "admin-password").read_text().strip()
    url = f"http://localhost:{stack.backend_port}/api/login/"
    assert http(url, {"username": "admin", "password": password})[0] == 200
    assert http(url, {"username": "admin", "password": "guess"})[0] == 401
    # The contract's wiring, as the containers have it.
    env = dict(e.split("=", 1) for e in stack.container("backend").attrs["Config"]["Env"])
    assert env["RAY_URL"] == "http://ray-relay:8265"
    assert not any(head_vm.token in value for value in env.values())
    relay = stack.container("ray-relay")
    relay_env = dict(e.split("=", 1) for e in relay.attrs["Config"]["Env"])
    assert relay_env["RAY_TOKEN"] == head_vm.token
    assert relay_env["RAY_DASHBOARD_HOST"] == head_vm.node_ip
    assert not relay.attrs["HostConfig"]["PortBindings"]  # the app's network only
    assert env["SYNTHO_ENGINE_URL"] == "http://core:8080/api"
    assert env["DB_NAME"] == "syntho-backend" and env["REDIS_DB_INDEX"] == "1"
    status = ok(stack.cmd("status"))
    assert f"open the app at http://<this VM>:{stack.frontend_port}" in status
    assert "syntho-frontend" in status and "healthy" in status
    assert "the backend reaches the Ray dashboard through the relay (Ray 2." in status
    # Years unattended: every container's logs rotate; status says how full the disks are
    # and what the app holds on them.
    for service in ["postgres", "redis", "core", "core_worker", "ray-relay", "backend",
                    "worker", "frontend"]:
        assert stack.container(service).attrs["HostConfig"]["LogConfig"] == {
            "Type": "json-file", "Config": {"max-file": "5", "max-size": "10m"}}, service
    assert re.search(r"disk: the data dir \S+: \d+% full, \S+ free", status), status
    assert f"disk use: volumes syntho-database-data-{stack.instance} " in status, status


def env_of(container: docker.models.containers.Container) -> dict[str, str]:
    return dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])


def test_each_run_leaves_the_metrics_file_of_its_result_and_the_state(
        stack: App, head_vm: HeadVM) -> None:
    """agent/metrics.py: what node-exporter's textfile collector publishes, written after the
    run, from status's own report (the app's containers, its view of the cluster, its Ray
    certificate) and the run's result; the head's file names its nodes and certificates."""
    text = (stack.data_dir / "metrics" / "syntho_agent.prom").read_text().splitlines()
    for line in ("syntho_agent_ready 1", 'syntho_agent_last_run_success{command="app"} 1',
                 'syntho_agent_last_run_exit_code{command="app"} 0',
                 'syntho_agent_ray_alive_nodes{role="app"} 2',
                 'syntho_agent_ray_dashboard_answers{role="app"} 1',
                 "syntho_agent_ray_tls_encrypted 1"):
        assert line in text, line
    ready = [ln for ln in text if ln.startswith("syntho_agent_container_ready{")]
    assert len(ready) == len(stack.sandbox.client.containers.list(
        filters={"name": stack.instance})) and all(ln.endswith(" 1") for ln in ready), ready
    assert any(ln.startswith('syntho_agent_certificate_expiry_timestamp_seconds{certificate='
                             '"ray_node"} ') for ln in text)
    head = (head_vm.data_dir / "metrics" / "syntho_agent.prom").read_text().splitlines()
    assert 'syntho_agent_last_run_success{command="head"} 1' in head
    assert 'syntho_agent_ray_node_alive{role="head"} 1' in head
    assert (head_vm.data_dir / "metrics" / "syntho-alerts.yml").exists()
    # Ray's own Grafana dashboards, copied from the head for the operator's Grafana.
    board = json.loads((head_vm.data_dir / "metrics" / "grafana" /
                        "default_grafana_dashboard.json").read_text())
    assert board["panels"], board.get("title")


def test_a_new_clusters_ray_and_dashboard_speak_tls_with_the_tokens_ca(
        stack: App, head_vm: HeadVM, docker_client: docker.DockerClient) -> None:
    """Every Ray process (head, worker, the app's core and core_worker) has Ray's TLS
    settings; the dashboard answers other addresses in HTTPS only, verified against the CA the
    token carries (and against no other); the relay and `status` say so. The core's real Ray
    task on the cluster (the test above) ran through it."""
    ca = ray_tls.derived_ca(head_vm.token)
    head = docker_client.containers.get(f"ray-head-{head_vm.instance}")
    for box in (head, stack.container("core"), stack.container("core_worker")):
        env = env_of(box)
        assert env.get("RAY_USE_TLS") == "1" and env["RAY_TLS_CA_CERT"] == "/ray-tls/ca.crt", (
            box.name, env)
    assert env_of(stack.container("ray-relay"))["RAY_DASHBOARD_CA"] == "/ray-tls/ca.crt"
    assert ray_tls.head_speaks(head_vm.node_ip, 6379, ca.pem) == ray_tls.HEAD_TLS

    path = "/api/v0/nodes?limit=10"
    with pytest.raises(OSError):  # plain HTTP on another address: no HTTP answer
        urllib.request.urlopen(f"http://{head_vm.node_ip}:8265{path}", timeout=10)
    with pytest.raises(urllib.error.URLError):  # the system's CAs do not vouch for it
        urllib.request.urlopen(f"https://{head_vm.node_ip}:8265{path}", timeout=10)
    assert len(cluster.alive_nodes(head_vm.node_ip, head_vm.token, ca=ca.pem)) == 2
    other = ray_tls.derived_ca("0" * 64)
    with pytest.raises(urllib.error.URLError):
        cluster.nodes(head_vm.node_ip, head_vm.token, ca=other.pem)

    report = json.loads(ok(stack.cmd("status", "--json")))["ray_tls"]
    assert report["encrypted"] is True and not report["certificate"]["expires_soon"], report
    assert head_vm.node_ip in report["certificate"]["names"], report
    assert "ray traffic: mutual TLS" in ok(stack.cmd("status"))


def test_a_wrong_token_at_the_relay_fails_the_backends_check_and_a_run_heals_it(
        stack: App, head_vm: HeadVM) -> None:
    """The relay re-made by hand with a wrong token: the backend's own call of RAY_URL fails
    (the dashboard answers 401), and `status` says so; a run of the agent puts it right."""
    client = stack.sandbox.client
    relay = stack.container("ray-relay")
    config = relay.attrs["Config"]
    wrong = "f" * 64
    assert wrong != head_vm.token
    network = f"syntho-{stack.instance}"
    relay.remove(force=True)
    api = client.api
    made = api.create_container(
        config["Image"], name=relay.name, entrypoint=config["Entrypoint"],
        environment=[e for e in config["Env"] if not e.startswith("RAY_TOKEN=")]
        + [f"RAY_TOKEN={wrong}"], labels=config["Labels"],
        host_config=api.create_host_config(binds={  # its own: the program, the cluster's CA
            m["Source"]: {"bind": m["Destination"], "mode": "rw" if m["RW"] else "ro"}
            for m in relay.attrs["Mounts"]}),
        networking_config=api.create_networking_config({
            network: api.create_endpoint_config(aliases=["ray-relay"])}))
    api.start(made["Id"])

    def refused() -> bool:
        code, body = http(f"http://localhost:{stack.backend_port}/api/docs/")
        check = (body or {}).get("dependencies", {}).get("ray_dashboard", {})
        error = str(check.get("error"))  # Ray: 401 without a token, 403 with a wrong one
        return code == 503 and not check.get("ok") and ("401" in error or "403" in error)

    assert poll(refused, 60, "the backend's check of the dashboard failing")
    status = stack.cmd("status")
    assert status.returncode != 0, status.stdout
    assert ("the backend does NOT reach the Ray dashboard: the dashboard refuses the relay's "
            "token (403)") in status.stdout
    assert wrong not in status.stdout + status.stderr
    client.containers.get(made["Id"]).remove(force=True)
    out = ok(stack.run())
    assert f"created syntho-ray-relay-{stack.instance}" in out
    code, body = http(f"http://localhost:{stack.backend_port}/api/docs/")
    assert code == 200 and body["dependencies"]["ray_dashboard"]["ok"]
    assert "the backend reaches the Ray dashboard" in ok(stack.cmd("status"))


# In a mount namespace of its own, every mount read-only (the kernel's and /dev's own aside) and
# /dev/shm an empty read-only tmpfs: a file written anywhere fails the command. The namespace is
# proven read-only first (the data dir, /dev/shm, /tmp, /var/tmp, TMPDIR, the working directory).
READ_ONLY = """
mount -t tmpfs -o ro none /dev/shm || exit 91
for m in $(findmnt -rno TARGET | sort -r); do
    case "$m" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/pts|/dev/mqueue|/dev/shm) continue ;; esac
    mount -o remount,bind,ro "$m" || exit 92
done
for place in "$D" /dev/shm /tmp /var/tmp "${TMPDIR:-/tmp}" "$PWD"; do
    touch "$place/.write-probe" 2>/dev/null && exit 93
done
exec "$@"
"""


def test_a_plan_of_the_running_app_writes_nothing_anywhere(stack: App) -> None:
    """`plan app` on a running deployment reads the data dir and the engine and writes
    nowhere: with every file system read-only it says what it says on a writable machine
    (nothing would change), and exits 0. (The plan of earlier agents, which resolved into a
    scratch copy of the data dir, failed here: no usable temporary directory.)"""
    writable = run_agent("plan", "app", *stack.args(), "--exit-code")
    assert writable.returncode == 0, writable.stdout + writable.stderr
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", READ_ONLY, "read-only",
         *agent_cmd("plan", "app", *stack.args(), "--exit-code")],
        cwd=REPO, env=agent_env({"D": str(stack.data_dir)}), capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "nothing would change" in done.stdout
    assert done.stdout == writable.stdout


def test_postgres_and_redis_are_not_published(stack: App) -> None:
    for service in ["postgres", "redis"]:
        assert not stack.container(service).attrs["HostConfig"]["PortBindings"]
    restart = {s: stack.container(s).attrs["HostConfig"]["RestartPolicy"]["Name"]
               for s in ["postgres", "redis", "frontend", "core", "backend"]}
    assert restart == {"postgres": "always", "redis": "always", "frontend": "always",
                       "core": "on-failure", "backend": "on-failure"}


def test_secrets_stay_the_same_over_ten_reruns_and_never_show(stack: App) -> None:
    before = stack.secrets()
    env_file = stack.data_dir / "app.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    for path in (stack.data_dir / "secrets").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    outputs = [stack.first_output]
    snapshot = engine_snapshot(stack.sandbox.client)
    for _ in range(10):
        result = stack.run()
        outputs += [ok(result), result.stderr]
        assert "nothing to do" in result.stdout
    assert stack.secrets() == before
    assert engine_snapshot(stack.sandbox.client) == snapshot
    # The env file has the guide's names and the generated values.
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["CORE_SECRET_KEY"] == before["core-secret-key"].strip()
    for name in ["CORE_IMAGE", "BACKEND_HOST", "CORE_DATABASE_PASSWORD", "CORE_RAY_ADDRESS",
                 "BACKEND_SECRET_KEY", "ADMIN_USERNAME", "FRONTEND_PORT"]:
        assert name in env
    log_file = stack.sandbox.tmp / "syntho_logs.log"
    outputs.append(ok(stack.cmd("logs", "--output", str(log_file))))
    outputs.append(ok(stack.cmd("status")))
    logs = log_file.read_text()
    assert "===== syntho-core-" in logs and "listening on :8080" in logs
    for value in [*before.values(), stack.head.token]:
        for text in [*outputs, logs]:
            assert value.strip() not in text


def test_data_survives_rerun_down_and_a_removed_container(stack: App) -> None:
    stack.psql("syntho-core", "CREATE TABLE IF NOT EXISTS kept (v text);"
                              "INSERT INTO kept VALUES ('core-row')")
    stack.psql("syntho-backend", "CREATE TABLE IF NOT EXISTS kept (v text);"
                                 "INSERT INTO kept VALUES ('backend-row')")

    def rows() -> tuple[str, str]:
        return (stack.psql("syntho-core", "SELECT string_agg(v, ',') FROM kept"),
                stack.psql("syntho-backend", "SELECT string_agg(v, ',') FROM kept"))

    ok(stack.run())
    assert rows() == ("core-row", "backend-row")
    secrets = stack.secrets()
    out = ok(stack.cmd("down"))
    assert "kept volumes" in out
    with pytest.raises(docker.errors.NotFound):
        stack.container("postgres")
    ok(stack.run())
    assert rows() == ("core-row", "backend-row")
    stack.container("postgres").remove(force=True)
    out = ok(stack.run())
    assert f"created syntho-postgres-{stack.instance}" in out
    assert rows() == ("core-row", "backend-row")
    assert stack.secrets() == secrets


def test_a_changed_database_password_is_refused_then_rotated_for_real(stack: App) -> None:
    old = (stack.data_dir / "secrets" / "postgres-password").read_text()
    core_id = stack.container("core").id
    result = stack.run("--db-password", "a-brand-new-password")
    assert result.returncode == 2 and "--rotate-db-password" in result.stderr
    assert (stack.data_dir / "secrets" / "postgres-password").read_text() == old
    assert stack.container("core").id == core_id
    out = ok(stack.run("--db-password", "a-brand-new-password", "--rotate-db-password"))
    assert "changed the database password" in out
    assert (stack.data_dir / "secrets" / "postgres-password").read_text().strip() == \
        "a-brand-new-password"
    env = dict(e.split("=", 1) for e in stack.container("backend").attrs["Config"]["Env"])
    assert env["DB_PASSWORD"] == "a-brand-new-password"
    assert http(f"http://localhost:{stack.backend_port}/api/docs/")[0] == 200
    # Later runs without the flag keep the rotated password.
    assert "nothing to do" in ok(stack.run())


def test_the_database_password_is_proven_again_when_postgres_restarts(stack: App) -> None:
    """A no-op run does not probe the database: the password was proven for this run of the
    Postgres container. A restart (as after swapping the volume's contents) is probed again."""
    secrets = stack.secrets()
    password = secrets["postgres-password"].strip()
    proven = (stack.data_dir / ".db-password-proven").read_text()
    assert "nothing to do" in ok(stack.run())
    assert (stack.data_dir / ".db-password-proven").read_text() == proven
    stack.psql("postgres", "ALTER ROLE syntho PASSWORD 'changed-behind-its-back'")
    stack.container("postgres").restart(timeout=10)
    result = stack.run()
    assert result.returncode == 2 and "refuses the password" in result.stderr, result.stderr
    assert stack.secrets() == secrets
    assert "changed-behind-its-back" not in result.stdout + result.stderr
    stack.psql("postgres", f"ALTER ROLE syntho PASSWORD '{password}'")
    assert "nothing to do" in ok(stack.run())
    assert (stack.data_dir / ".db-password-proven").read_text() != proven


def test_a_hand_edited_env_file_is_kept_aside_and_rewritten(stack: App) -> None:
    env_file = stack.data_dir / "app.env"
    original = env_file.read_text()
    env_file.write_text(original.replace("FRONTEND_PROTOCOL=http", "FRONTEND_PROTOCOL=https"))
    out = ok(stack.run())
    assert "edited by hand" in out
    assert env_file.read_text() == original
    kept = list(stack.data_dir.glob("app.env.edited-*"))
    assert len(kept) == 1 and "FRONTEND_PROTOCOL=https" in kept[0].read_text()
    assert stat.S_IMODE(kept[0].stat().st_mode) == 0o600


@pytest.mark.parametrize("case", ["bad port", "port taken", "port taken, checks skipped",
                                  "unreachable head", "missing image", "bad url", "bad publish"])
def test_wrong_input_is_a_clear_error_and_changes_nothing(
        stack: App, case: str) -> None:
    if case == "unreachable head":
        # A host of the test's own where nothing listens on 6379.
        nobody = stack.sandbox.run(stack.images["busybox"], f"nobody-{case[:3]}",
                                   network=stack.sandbox.network, command=["sleep", "600"])
        nobody.reload()
        nobody_ip = nobody.attrs["NetworkSettings"]["Networks"][stack.sandbox.network][
            "IPAddress"]
    data_before = data_files(stack.data_dir)
    snapshot = engine_snapshot(stack.sandbox.client)
    holder = socket.socket()
    try:
        if case == "bad port":
            result, code, message = stack.run("--frontend-port", "70000"), 2, "out of range"
        elif case.startswith("port taken"):
            holder.bind(("0.0.0.0", 0))
            holder.listen()
            taken = holder.getsockname()[1]
            if case == "port taken":  # the host checks before the run see it
                result = stack.run("--backend-port", str(taken))
                code, message = 3, f"host check(s) failed: ports: {taken} on 0.0.0.0"
            else:  # the engine's refusal, as the run meets it
                result = stack.run("--backend-port", str(taken), "--skip-checks")
                code, message = 3, f"port {taken} on 0.0.0.0 is already taken"
        elif case == "unreachable head":
            result = run_agent("app", *stack.args(), "--head", nobody_ip, "--wait", "1")
            code, message = 3, "did not answer within 1s"
        elif case == "missing image":
            result = stack.run("--core-image", "syntho-test/core:missing")
            code, message = 3, "image syntho-test/core:missing (for core) is not on this engine"
        elif case == "bad url":
            result, code, message = stack.run("--redis-url", "http://x"), 2, "redis://"
        else:
            result = stack.run("--publish-postgres", "5432")
            code, message = 2, "must be ADDRESS:PORT"
    finally:
        holder.close()
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert engine_snapshot(stack.sandbox.client) == snapshot
    assert data_files(stack.data_dir) == data_before
    if code == 3:  # a run that reached the engine: its failure is in the metrics
        assert metrics.runs(stack.data_dir)["app"]["exit_code"] == 3
        assert 'syntho_agent_last_run_success{command="app"} 0' in (
            stack.data_dir / "metrics" / "syntho_agent.prom").read_text()


def data_files(data_dir: Path) -> dict[Path, bytes]:
    """The data dir's files but the lock and the metrics, which tell of the failed run (as
    they must: agent/metrics.py)."""
    return {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()
            and p.name != "agent.lock" and "metrics" not in p.relative_to(data_dir).parts}


def test_publishing_postgres_binds_the_named_address(stack: App) -> None:
    port = free_port()
    out = ok(stack.run("--publish-postgres", f"127.0.0.1:{port}"))
    assert f"recreated syntho-postgres-{stack.instance}" in out
    bindings = stack.container("postgres").attrs["HostConfig"]["PortBindings"]
    assert bindings == {"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    assert poll(lambda: _tcp(("127.0.0.1", port)), 30, "published postgres")
    out = ok(stack.run())
    assert f"recreated syntho-postgres-{stack.instance}" in out
    assert not stack.container("postgres").attrs["HostConfig"]["PortBindings"]


def _tcp(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
        return True
    except OSError:
        return False


def test_external_postgres_and_redis_replace_the_bundled_ones(
        module_sandbox: Sandbox, images: dict[str, str], head_vm: HeadVM) -> None:
    """Started by the test as plain containers, reached at this VM's address."""
    sandbox = module_sandbox
    pg_port, redis_port = free_port(), free_port()
    init = Path(__file__).resolve().parents[2] / "agent/assets/create-multiple-databases.sh"
    pg = sandbox.run(images["postgres"], "ext-pg", ports={"5432/tcp": pg_port},
                     environment={"POSTGRES_USER": "extuser", "POSTGRES_PASSWORD": "ext-secret-pw",
                                  "POSTGRES_MULTIPLE_DATABASES": "syntho-core,syntho-backend"},
                     mounts=[docker.types.Mount(
                         "/docker-entrypoint-initdb.d/create-multiple-databases.sh", str(init),
                         type="bind", read_only=True)])
    sandbox.run(images["redis"], "ext-redis", ports={"6379/tcp": redis_port})
    assert poll(lambda: pg.exec_run(["pg_isready", "-h", "127.0.0.1"]).exit_code == 0, 60, "pg")
    app = App(sandbox, images, head_vm, "ext")
    vm = head_vm.node_ip
    out = ok(app.run("--postgres-url", f"postgresql://extuser:ext-secret-pw@{vm}:{pg_port}",
                     "--redis-url", f"redis://{vm}:{redis_port}"))
    assert "the app is up" in out
    assert "ext-secret-pw" not in out
    names = {c.name for c in sandbox.client.containers.list(
        filters={"label": f"io.syntho.agent.instance={app.instance}"})}
    assert f"syntho-postgres-{app.instance}" not in names
    assert f"syntho-redis-{app.instance}" not in names
    assert not sandbox.client.volumes.list(filters={"name": f"syntho-database-data-{app.instance}"})
    # The backend really used the external database: its admin account is there.
    code, users = reads.psql(pg, "syntho-backend", "SELECT username FROM standin_users",
                             user="extuser")
    assert code == 0 and users == "admin"
