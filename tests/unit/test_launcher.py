"""`launcher-config`: the `ray up` config per provider, its defaults and overrides (flag > env >
config file > default), every refused combination, and no secret in what it writes."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import cli, launcher
from agent.config import LauncherSettings as Settings

# Every port pinned (README "Firewall"): the head's and a worker's defaults differ.
HEAD_PORTS = ("--node-manager-port=6380 --object-manager-port=6381 --runtime-env-agent-port=6382 "
              "--dashboard-agent-grpc-port=6383 --dashboard-agent-listen-port=6384 "
              "--metrics-export-port=6385 --min-worker-port=10002 --max-worker-port=10999")
WORKER_PORTS = ("--node-manager-port=6390 --object-manager-port=6391 "
                "--runtime-env-agent-port=6392 --dashboard-agent-grpc-port=6393 "
                "--dashboard-agent-listen-port=6394 --metrics-export-port=6395 "
                "--min-worker-port=11000 --max-worker-port=11999")
HEAD_START = ("ray start --head --port=6379 --dashboard-host 0.0.0.0 "
              f"--ray-client-server-port=10001 {HEAD_PORTS} --disable-usage-stats "
              "--autoscaling-config=~/ray_bootstrap_config.yaml")
WORKER_START = f"ray start --address=$RAY_HEAD_IP:6379 {WORKER_PORTS} --disable-usage-stats"
TOKEN_STEPS = ('RAY_AUTH_TOKEN="$(cat /etc/syntho/ray-token)" && test -n "$RAY_AUTH_TOKEN" && '
               "export RAY_AUTH_TOKEN && export RAY_AUTH_MODE=token && ")
# Local clusters only: the head's autoscaler is v1 (see test_local_keeps_every_worker).
V1_AUTOSCALER = "export RAY_enable_autoscaler_v2=0 && "
PASSWORD = "registry-pass-7f3a9c"
TOKEN = "0123456789abcdef0123456789abcdef-token"
LICENSE = "signed-license-key-b3c7e1"
# Ray's TLS environment of a local cluster's containers: the same names across renewals.
TLS_ENV = ["-e RAY_USE_TLS=1", "-e RAY_TLS_SERVER_CERT=/tmp/syntho-ray-tls/node.crt",
           "-e RAY_TLS_SERVER_KEY=/tmp/syntho-ray-tls/node.key",
           "-e RAY_TLS_CA_CERT=/etc/syntho/ray-tls/ca.crt"]


class Files:
    """A scratch operator machine: keys, a registry password file, a data dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = root / "id_ed25519"
        self.key.write_text("not a real private key\n")
        self.pub = root / "id_ed25519.pub"
        self.pub.write_text("ssh-ed25519 AAAAC3Nza operator\n")
        self.password = root / "registry-password"
        self.password.write_text(PASSWORD + "\n")
        self.data = root / "data"
        self.out = root / "cluster.yaml"

    def base(self) -> list[str]:
        return ["launcher-config", "--data-dir", str(self.data), "--ssh-public-key",
                str(self.pub), "--output", str(self.out)]

    def registry(self) -> list[str]:
        return ["--registry", "registry.example.com", "--registry-user", "syntho",
                "--registry-password-file", str(self.password)]


PROVIDER_ARGS = {
    "aws": [],
    "gcp": ["--region", "europe-west4", "--availability-zone", "europe-west4-b",
            "--project-id", "syntho-test"],
    "azure": ["--resource-group", "syntho-rg"],
    "local": ["--head-ip", "10.0.0.2", "--worker-ip", "10.0.0.3", "--worker-ip", "10.0.0.4"],
}


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Files:
    monkeypatch.chdir(tmp_path)
    return Files(tmp_path)


def run(argv: list[str], capsys: pytest.CaptureFixture[str],
        env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The real entry point: (exit code, stdout, stderr)."""
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        cli.main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out, err = capsys.readouterr()
    return code, out, err


def generate(files: Files, capsys: pytest.CaptureFixture[str], provider: str, *more: str,
             env: dict[str, str] | None = None) -> dict[str, Any]:
    extra = ["--ssh-private-key", str(files.key)] if provider == "local" else []
    code, out, err = run([*files.base(), "--provider", provider, *PROVIDER_ARGS[provider],
                          *extra, *more], capsys, env)
    assert code == 0, out + err
    config: dict[str, Any] = yaml.safe_load(files.out.read_text())
    return config


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure", "local"])
def test_every_provider_gets_the_head_roles_ray_settings(
        files: Files, capsys: pytest.CaptureFixture[str], provider: str) -> None:
    config = generate(files, capsys, provider)
    local = provider == "local"
    assert config["cluster_name"] == "syntho-cluster"
    assert config["provider"]["type"] == provider
    assert config["docker"] == {
        "image": "syntho-ray:latest", "container_name": "syntho-ray", "pull_before_run": True,
        "run_options": ["--shm-size=4g", "--ulimit nofile=65536:65536",
                        "-e RAY_SCHEDULER_SPREAD_THRESHOLD=0.0", *TLS_ENV]}
    assert config["auth"]["ssh_user"] == "ubuntu"
    v1 = V1_AUTOSCALER if local else ""
    # Ray's TLS (test_each_node_issues_itself_a_certificate_from_the_tokens_ca): each node
    # issues its certificate first; the head's dashboard on loopback, its TLS front last.
    head = HEAD_START.replace("0.0.0.0", "127.0.0.1")
    assert config["head_start_ray_commands"][2] == v1 + TOKEN_STEPS + head
    assert len(config["head_start_ray_commands"]) == 4
    assert config["worker_start_ray_commands"][2:] == [TOKEN_STEPS + WORKER_START]
    assert config["setup_commands"] == [] and config["worker_setup_commands"] == []
    assert "head_setup_commands" not in config  # Ray's default: the cloud SDK for the autoscaler
    assert config["file_mounts"] == {
        "~/.ssh/id_rsa.pub": str(files.pub), "/etc/syntho/ray-token": str(files.data / "ray-token"),
        "/etc/syntho/ray-tls": str(files.data / "ray-tls")}
    assert config["initialization_commands"] == [
        "sudo usermod -aG docker $USER || true", "sleep 10", "touch ~/.sudo_as_admin_successful"]
    assert os.stat(files.out).st_mode & 0o777 == 0o644


@pytest.mark.parametrize("provider,region_key,region,head,worker", [
    ("aws", "region", "us-east-1", "m5.xlarge", "m5.8xlarge"),
    ("gcp", "region", "europe-west4", "n2-standard-4", "n2-standard-32"),
    ("azure", "location", "westeurope", "Standard_D4s_v4", "Standard_D32s_v4"),
])
def test_cloud_defaults(files: Files, capsys: pytest.CaptureFixture[str], provider: str,
                        region_key: str, region: str, head: str, worker: str) -> None:
    config = generate(files, capsys, provider)
    assert config["provider"][region_key] == region
    assert config["max_workers"] == 3
    assert config["head_node_type"] == "ray.head.default"
    types = config["available_node_types"]
    assert set(types) == {"ray.head.default", "ray.worker.default"}
    assert types["ray.head.default"]["resources"] == {"CPU": 4}
    assert types["ray.worker.default"]["resources"] == {"CPU": 32}
    assert (types["ray.worker.default"]["min_workers"],
            types["ray.worker.default"]["max_workers"]) == (2, 3)
    assert head in str(types["ray.head.default"]["node_config"])
    assert worker in str(types["ray.worker.default"]["node_config"])
    assert "ssh_private_key" not in config["auth"]  # the cloud provider makes a key
    assert types["ray.worker.default"]["labels"] == {"ray.io/market-type": "on-demand"}
    assert config["idle_timeout_minutes"] == 5  # Ray's default, said in the file
    assert generate(files, capsys, provider, "--idle-timeout-minutes", "12")[
        "idle_timeout_minutes"] == 12


def test_azure_uses_the_guides_sizes_and_dsvm_image(
        files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    config = generate(files, capsys, "azure", "--subscription-id", "sub-1")
    assert config["provider"] == {"type": "azure", "location": "westeurope",
                                  "resource_group": "syntho-rg", "subscription_id": "sub-1"}
    worker = config["available_node_types"]["ray.worker.default"]["node_config"]
    assert worker["azure_arm_parameters"] == {
        "vmSize": "Standard_D32s_v4", "imagePublisher": "microsoft-dsvm",
        "imageOffer": "ubuntu-2204", "imageSku": "2204-gen2", "imageVersion": "latest",
        "osDiskSize": 100}


def test_gcp_needs_its_project_and_zone(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    config = generate(files, capsys, "gcp")
    assert config["provider"] == {"type": "gcp", "region": "europe-west4",
                                  "availability_zone": "europe-west4-b",
                                  "project_id": "syntho-test"}
    disk = config["available_node_types"]["ray.head.default"]["node_config"]["disks"][0]
    assert disk["initializeParams"]["sourceImage"].startswith("projects/deeplearning-platform")


def test_local_lists_the_machines_and_no_node_types(
        files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    config = generate(files, capsys, "local")
    assert config["provider"] == {"type": "local", "head_ip": "10.0.0.2",
                                  "worker_ips": ["10.0.0.3", "10.0.0.4"]}
    assert config["max_workers"] == 2
    assert config["auth"] == {"ssh_user": "ubuntu", "ssh_private_key": str(files.key)}
    # Ray refuses node types for local clusters (it makes its own).
    assert "available_node_types" not in config and "head_node_type" not in config


def test_local_keeps_every_worker(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    """`ray up` (Ray 2.60) starts the head with autoscaler v2, which on a local cluster counts
    the head among its capped node type and never starts the last worker (the live run: 2 of 3
    nodes, "Adding 1 nodes to satisfy min count" forever); the head's command turns it off
    after Ray's own export, and only for local."""
    head = generate(files, capsys, "local")["head_start_ray_commands"][2]  # after TLS's
    assert head.startswith(V1_AUTOSCALER)
    assert "RAY_enable_autoscaler_v2" not in generate(files, capsys, "local")[
        "worker_start_ray_commands"][2]
    for cloud in ("aws", "gcp", "azure"):
        assert "autoscaler_v2" not in str(generate(files, capsys, cloud))


def test_azure_logs_in_with_the_private_keys_public_half(
        files: Files, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(files.root / "home"))  # no ~/.ssh/id_rsa.pub there
    code, out, err = run(["launcher-config", "--data-dir", str(files.data), "--output",
                          str(files.out), "--provider", "azure", *PROVIDER_ARGS["azure"],
                          "--ssh-private-key", str(files.key)], capsys)
    assert code == 0, out + err
    config = yaml.safe_load(files.out.read_text())
    assert config["auth"] == {"ssh_user": "ubuntu", "ssh_private_key": str(files.key),
                              "ssh_public_key": str(files.pub)}
    assert config["file_mounts"]["~/.ssh/id_rsa.pub"] == str(files.pub)


def test_a_missing_default_public_key_is_a_usage_error(
        files: Files, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    home = files.root / "home"
    monkeypatch.setenv("HOME", str(home))
    code, out, err = run(["launcher-config", "--data-dir", str(files.data), "--output",
                          str(files.out), "--provider", "aws"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"{home}/.ssh/id_rsa.pub does not exist: give --ssh-public-key" in err
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa.pub").write_text("ssh-rsa AAAA operator\n")
    code, out, err = run(["launcher-config", "--data-dir", str(files.data), "--output",
                          str(files.out), "--provider", "aws"], capsys)
    assert code == 0, err
    assert yaml.safe_load(files.out.read_text())["file_mounts"]["~/.ssh/id_rsa.pub"] == str(
        home / ".ssh" / "id_rsa.pub")


def test_flags_override_every_default(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    config = generate(
        files, capsys, "aws", "--region", "eu-west-1", "--availability-zone", "eu-west-1a",
        "--cluster-name", "prod", "--ray-image", "reg.example/syntho-ray:2.1",
        "--container-name", "ray", "--shm-size", "12gb", "--nofile", "20000",
        "--head-instance-type", "m5.2xlarge", "--head-cpus", "8",
        "--worker-instance-type", "c5.4xlarge", "--min-worker-nodes", "0",
        "--max-worker-nodes", "10", "--spot", "--disk-size", "250", "--vm-image", "ami-123",
        "--ssh-user", "ec2-user", "--ssh-private-key", str(files.key), "--key-name", "ops",
        "--ray-arg", "--num-gpus=0", "--ray-arg", "--labels=a b",
        "--head-setup-command", "pip install -q boto3")
    assert config["cluster_name"] == "prod" and config["max_workers"] == 10
    assert config["provider"] == {"type": "aws", "region": "eu-west-1",
                                  "availability_zone": "eu-west-1a"}
    assert config["auth"] == {"ssh_user": "ec2-user", "ssh_private_key": str(files.key)}
    assert config["docker"]["image"] == "reg.example/syntho-ray:2.1"
    assert config["docker"]["container_name"] == "ray"
    assert config["docker"]["run_options"][:2] == ["--shm-size=12g",
                                                   "--ulimit nofile=20000:20000"]
    head = config["available_node_types"]["ray.head.default"]
    worker = config["available_node_types"]["ray.worker.default"]
    assert head["resources"] == {"CPU": 8}
    assert worker["resources"] == {}  # aws detects a custom size's CPUs itself
    assert head["node_config"] == {
        "InstanceType": "m5.2xlarge", "ImageId": "ami-123", "KeyName": "ops",
        "BlockDeviceMappings": [{"DeviceName": "/dev/sda1",
                                 "Ebs": {"VolumeSize": 250, "VolumeType": "gp3"}}]}
    assert worker["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    # Ray's label for it, so a job can select (or avoid) spot workers; the head is never spot.
    assert worker["labels"] == {"ray.io/market-type": "spot"} and "labels" not in head
    assert (worker["min_workers"], worker["max_workers"]) == (0, 10)
    assert config["head_setup_commands"] == ["pip install -q boto3"]
    assert config["head_start_ray_commands"][2].endswith(
        HEAD_START.replace("0.0.0.0", "127.0.0.1") + " --num-gpus=0 '--labels=a b'")


@pytest.mark.parametrize("provider,path,value", [
    ("gcp", ["scheduling"], {"preemptible": True}),
    ("azure", ["azure_arm_parameters", "priority"], "Spot"),
])
def test_spot_workers(files: Files, capsys: pytest.CaptureFixture[str], provider: str,
                      path: list[str], value: object) -> None:
    config = generate(files, capsys, provider, "--spot")
    node: Any = config["available_node_types"]["ray.worker.default"]["node_config"]
    head: Any = config["available_node_types"]["ray.head.default"]["node_config"]
    for key in path[:-1]:
        node, head = node[key], head[key]
    assert node[path[-1]] == value and path[-1] not in head


def test_only_min_or_only_max_keeps_a_valid_range(
        files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    worker = generate(files, capsys, "aws", "--min-worker-nodes", "5")
    assert worker["available_node_types"]["ray.worker.default"]["max_workers"] == 5
    worker = generate(files, capsys, "aws", "--max-worker-nodes", "1")
    assert worker["available_node_types"]["ray.worker.default"]["min_workers"] == 1


def test_precedence_flag_env_file_default(files: Files,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    conf = files.root / "agent.yaml"
    conf.write_text("provider: local\nhead-ip: 10.1.0.1\nworker_ip: [10.1.0.2, 10.1.0.3]\n"
                    "shm-size: 2gb\nnofile: 1000\ncluster-name: from-file\n"
                    f"ssh-private-key: {files.key}\nssh_user: file-user\n")
    code, out, err = run([*files.base(), "--config", str(conf), "--nofile", "3000"], capsys,
                         env={"SYNTHO_AGENT_NOFILE": "2000", "SYNTHO_AGENT_SSH_USER": "env-user",
                              "SYNTHO_AGENT_WORKER_IP": "10.2.0.2 10.2.0.3 10.2.0.4"})
    assert code == 0, out + err
    config = yaml.safe_load(files.out.read_text())
    assert "--ulimit nofile=3000:3000" in config["docker"]["run_options"]  # flag > env > file
    assert config["auth"]["ssh_user"] == "env-user"  # env > file
    assert config["provider"]["worker_ips"] == ["10.2.0.2", "10.2.0.3", "10.2.0.4"]
    assert "--shm-size=2g" in config["docker"]["run_options"]  # file > default
    assert config["cluster_name"] == "from-file"
    assert config["docker"]["image"] == "syntho-ray:latest"  # default


def test_the_config_file_alone_is_enough(files: Files, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    conf = tmp_path / "agent.yaml"
    conf.write_text(f"provider: azure\nresource_group: rg-from-file\nregion: northeurope\n"
                    f"ssh_public_key: {files.pub}\ndata_dir: {files.data}\n")
    code, out, err = run(["launcher-config"], capsys, env={"SYNTHO_AGENT_CONFIG": str(conf)})
    assert code == 0, out + err
    config = yaml.safe_load((tmp_path / "cluster.yaml").read_text())  # the default --output
    assert config["provider"]["location"] == "northeurope"
    assert config["provider"]["resource_group"] == "rg-from-file"


def test_token_is_generated_once_mounted_and_never_written_into_the_yaml(
        files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    generate(files, capsys, "aws")
    token_file = files.data / "ray-token"
    token = token_file.read_text().strip()
    assert len(token) == 64 and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    generate(files, capsys, "aws")
    assert token_file.read_text().strip() == token  # kept, never regenerated
    assert token not in files.out.read_text()


def test_registry_password_travels_as_a_file_and_logs_in_on_stdin(
        files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    config = generate(files, capsys, "gcp", *files.registry())
    assert config["docker"]["image"] == "registry.example.com/syntho-ray:latest"
    assert config["file_mounts"]["/etc/syntho/registry-password"] == str(files.password)
    assert config["initialization_commands"][-1] == (
        "docker login registry.example.com -u syntho --password-stdin < "
        "/tmp/ray_tmp_mount/syntho-cluster/etc/syntho/registry-password")


def test_no_secret_reaches_the_yaml_or_the_terminal(
        files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"SYNTHO_AGENT_TOKEN": TOKEN, "SYNTHO_AGENT_LICENSE_KEY": LICENSE}
    args = [*files.base(), "--provider", "azure", *PROVIDER_ARGS["azure"], *files.registry()]
    code, out, err = run(args, capsys, env)
    assert code == 0, out + err
    code2, yaml_out, err2 = run([*args, "--output", "-"], capsys, env)
    assert code2 == 0
    for text in (files.out.read_text(), out, err, yaml_out, err2):
        for secret in (PASSWORD, TOKEN, LICENSE):
            assert secret not in text
    config = yaml.safe_load(files.out.read_text())
    license_file = files.data / "license-key"
    assert license_file.read_text().strip() == LICENSE
    assert stat.S_IMODE(license_file.stat().st_mode) == 0o600
    assert config["file_mounts"]["/etc/syntho/license-key"] == str(license_file)
    assert (files.data / "ray-token").read_text().strip() == TOKEN
    assert config["head_start_ray_commands"][2].startswith(
        'LICENSE_KEY_SIGNED="$(cat /etc/syntho/license-key)" && test -n "$LICENSE_KEY_SIGNED" '
        "&& export LICENSE_KEY_SIGNED && RAY_AUTH_TOKEN=")


def test_no_auth_is_loud_and_mounts_no_token(files: Files,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([*files.base(), "--provider", "aws", "--no-auth"], capsys)
    assert code == 0
    assert "WARNING: Ray token auth is OFF" in out
    text = files.out.read_text()
    assert "# WARNING: Ray token auth is OFF" in text
    config = yaml.safe_load(text)
    assert "/etc/syntho/ray-token" not in config["file_mounts"]
    assert config["head_start_ray_commands"] == ["ray stop", HEAD_START]
    assert config["worker_start_ray_commands"] == ["ray stop", WORKER_START]
    assert not (files.data / "ray-token").exists()


def test_stdout_gets_the_yaml_alone(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([*files.base(), "--provider", "aws", "--output", "-"], capsys)
    assert code == 0
    assert yaml.safe_load(out)["provider"]["type"] == "aws"
    assert "next: ray up" in err and not files.out.exists()


def test_an_unwritable_output_is_one_line_and_exit_3(
        files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([*files.base(), "--provider", "aws", "--output",
                          str(files.root / "missing" / "c.yaml")], capsys)
    assert code == 3 and err.count("\n") == 1 and "cannot write" in err


INVALID = [
    ([], "needs --provider"),
    (["--provider", "openstack"], "is not a provider"),
    (["--provider", "aws", "--min-worker-nodes", "4", "--max-worker-nodes", "2"],
     "--min-worker-nodes 4 is more than --max-worker-nodes 2"),
    (["--provider", "aws", "--max-worker-nodes", "-1"], "must be 0 or more"),
    (["--provider", "gcp", "--project-id", "p"],
     "gcp needs --region and --availability-zone"),
    (["--provider", "gcp", "--region", "us-east1", "--availability-zone", "us-east1-b"],
     "gcp needs --project-id"),
    (["--provider", "gcp", *PROVIDER_ARGS["gcp"][:2], "--availability-zone", "us-east1-b",
      "--project-id", "p"], "not a zone of --region europe-west4"),
    ([*["--provider", "gcp"], *PROVIDER_ARGS["gcp"], "--worker-instance-type", "n2-highmem-8"],
     "give --worker-cpus"),
    (["--provider", "azure"], "azure needs --resource-group"),
    (["--provider", "azure", "--resource-group", "rg", "--vm-image", "ubuntu"],
     "PUBLISHER:OFFER:SKU:VERSION"),
    (["--provider", "local", "--worker-ip", "10.0.0.3"], "local needs --head-ip"),
    (["--provider", "local", "--head-ip", "10.0.0.2"], "at least one --worker-ip"),
    (["--provider", "local", "--head-ip", "10.0.0.2", "--worker-ip", "10.0.0.2"],
     "must be different machines"),
    (["--provider", "local", *PROVIDER_ARGS["local"]], "local needs --ssh-private-key"),
    (["--provider", "local", *PROVIDER_ARGS["local"], "--max-worker-nodes", "1"],
     "--max-worker-nodes does not apply to --provider local"),
    (["--provider", "local", *PROVIDER_ARGS["local"], "--idle-timeout-minutes", "3"],
     "--idle-timeout-minutes does not apply to --provider local"),
    (["--provider", "aws", "--idle-timeout-minutes", "0"], "--idle-timeout-minutes"),
    (["--provider", "aws", "--project-id", "p"], "--project-id does not apply"),
    (["--provider", "aws", "--key-name", "ops"], "--ssh-private-key and --key-name"),
    (["--provider", "aws", "--registry", "reg.example.com", "--registry-password-file",
      "PASSWORD"], "needs --registry-user"),
    (["--provider", "aws", "--registry", "reg.example.com", "--registry-user", "u"],
     "needs --registry-password-file"),
    (["--provider", "aws", "--registry", "reg.example.com", "--registry-user", "u",
      "--registry-password-file", "no-such-file"], "no-such-file is not a readable file"),
    (["--provider", "aws", "--registry-user", "u"], "--registry-user needs --registry"),
    (["--provider", "aws", "--shm-size", "lots"], "not a size"),
    (["--provider", "aws", "--cluster-name", "Has Spaces"], "lowercase letters"),
    (["--provider", "aws", "--ssh-public-key", "no-such.pub"], "is not a readable file"),
    (["--provider", "aws", "--token", "short"], "the Ray token given is not valid"),
]


@pytest.mark.parametrize("args,message", INVALID)
def test_invalid_combinations_are_one_line_and_exit_2(
        files: Files, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    args = [str(files.password) if a == "PASSWORD" else a for a in args]
    code, out, err = run([*files.base(), *args], capsys)
    assert code == 2, out + err
    assert err.count("\n") == 1 and message in err, err
    assert not files.out.exists()
    assert "short" not in err  # a bad token is never echoed


def test_the_builder_is_pure(tmp_path: Path) -> None:
    """Settings in, a dict out: nothing is read or written, and the same input gives the same
    config."""
    settings = Settings(provider="local", head_ip="10.0.0.2", worker_ip=("10.0.0.3",),
                        ssh_private_key=Path("/keys/id"), ssh_public_key=Path("/keys/id.pub"),
                        data_dir=tmp_path / "never-made")
    launcher.check(settings)
    first = launcher.cluster_config(settings, Path("/tok"), None)
    assert first == launcher.cluster_config(settings, Path("/tok"), None)
    assert first["file_mounts"] == {"~/.ssh/id_rsa.pub": "/keys/id.pub",
                                    "/etc/syntho/ray-token": "/tok"}
    assert not (tmp_path / "never-made").exists()


@pytest.mark.parametrize("provider", ["local", "aws"])
def test_each_node_issues_itself_a_certificate_from_the_tokens_ca(
        files: Files, capsys: pytest.CaptureFixture[str], provider: str, tmp_path: Path) -> None:
    """The cluster's CA (the token's) and its key go to every node as the token does (0600,
    never in the YAML); before Ray starts, each node runs ray-tls-issue.sh, which makes its key
    and a certificate naming every address it holds (run here for real, with openssl); the
    head's dashboard on loopback behind the TLS front."""
    from cryptography import x509

    from agent import ray_tls, tls

    config = generate(files, capsys, provider, "--token", TOKEN, "--ray-tls-san", "ray.example")
    folder = files.data / "ray-tls"
    ca = ray_tls.derived_ca(TOKEN)
    assert (folder / "ca.crt").read_text() == ca.pem
    assert stat.S_IMODE((folder / "ca.key").stat().st_mode) == 0o600
    assert (folder / "ca.key").read_text() == ray_tls.key_pem(ca.key)
    assert (folder / "ca.key").read_text() not in files.out.read_text()
    program = next(folder.glob("ray-tls-issue-*.sh")).name
    issue = ("RAY_TLS_OUT=/tmp/syntho-ray-tls RAY_TLS_DAYS=365 RAY_TLS_SANS=ray.example "
             f"sh /etc/syntho/ray-tls/{program}")
    assert config["head_start_ray_commands"][:2] == ["ray stop", issue]
    assert config["worker_start_ray_commands"][:2] == ["ray stop", issue]
    front = config["head_start_ray_commands"][3]
    assert front == (
        "FRONT_CERT=/tmp/syntho-ray-tls/node.crt FRONT_KEY=/tmp/syntho-ray-tls/node.key "
        "FRONT_LISTEN='*' FRONT_PORT=8265 BACKEND=127.0.0.1:8265 "
        "FRONT_PIDFILE=/tmp/ray/tls-front.pid nohup python3 "
        f"/etc/syntho/ray-tls/{next(folder.glob('front-*.py')).name} "
        ">> /tmp/ray/tls-front.log 2>&1 &")

    # The script as a node runs it: this machine for the node, the folder as delivered.
    out = tmp_path / "node-tls"
    run_it = subprocess.run(
        ["sh", str(folder / program)], capture_output=True, text=True, timeout=60,
        env={**os.environ, "RAY_TLS_OUT": str(out), "RAY_TLS_DAYS": "30",
             "RAY_TLS_SANS": "ray.example 203.0.113.9"})
    assert run_it.returncode == 0, run_it.stderr
    cert = x509.load_pem_x509_certificate((out / "node.crt").read_bytes())
    assert ray_tls.signed_by(cert, ca)
    names = tls.info_of(cert).names
    assert {"localhost", "127.0.0.1", "ray.example", "203.0.113.9",
            *ray_tls.local_ipv4()} <= set(names), names
    assert stat.S_IMODE((out / "node.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in out.iterdir()) == ["node.crt", "node.key"]
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert days == 30
    # A re-run (the next `ray up`) changes nothing it delivered.
    delivered = {p.name: p.read_bytes() for p in folder.iterdir()}
    generate(files, capsys, provider, "--token", TOKEN, "--ray-tls-san", "ray.example")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == delivered


def test_without_its_ca_the_script_says_so_in_one_line(tmp_path: Path) -> None:
    from agent import ray_tls

    script = tmp_path / "issue.sh"
    script.write_text(ray_tls.program(ray_tls.ISSUE_ASSET))
    run_it = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "RAY_TLS_OUT": str(tmp_path / "out")})
    assert run_it.returncode == 1
    assert run_it.stderr == f"ray-tls-issue: the cluster's CA is not in {tmp_path}\n"


@pytest.mark.parametrize("provider,more,why", [
    ("local", ["--no-ray-tls"], "--no-ray-tls"),
    ("aws", ["--no-auth"], "--no-auth"),
])
def test_without_tls_the_config_is_plain_and_says_so(
        files: Files, capsys: pytest.CaptureFixture[str], provider: str, more: list[str],
        why: str) -> None:
    extra = ["--ssh-private-key", str(files.key)] if provider == "local" else []
    code, out, err = run([*files.base(), "--provider", provider, *PROVIDER_ARGS[provider],
                          *extra, *more], capsys)
    assert code == 0, out + err
    assert f"Ray's traffic between the nodes is NOT encrypted ({why})" in out
    config = yaml.safe_load(files.out.read_text())
    assert not any("TLS" in option for option in config["docker"]["run_options"])
    assert "--dashboard-host 0.0.0.0" in config["head_start_ray_commands"][1]
    assert not (files.data / "ray-tls").exists()


@pytest.mark.parametrize("more,message", [
    (["--provider", "aws", "--ray-tls-ca-cert", "PASSWORD"], "--ray-tls-ca-cert and "
     "--ray-tls-ca-key go together"),
    (["--provider", "local", *PROVIDER_ARGS["local"], "--ray-tls", "--no-auth"],
     "--ray-tls needs token auth"),
])
def test_tls_that_cannot_work_is_one_line_and_exit_2(
        files: Files, capsys: pytest.CaptureFixture[str], more: list[str], message: str) -> None:
    key = ["--ssh-private-key", str(files.key)] if "local" in more else []
    more = [str(files.password) if a == "PASSWORD" else a for a in more]
    code, out, err = run([*files.base(), *key, *more], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, out + err
    assert not files.out.exists() and not (files.data / "ray-tls").exists()
