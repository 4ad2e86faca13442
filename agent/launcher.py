"""`syntho-agent launcher-config`: a cluster config for Ray's own cluster launcher (`ray up`).

Option 1 of the vendor's deployment guide (docs/stack.md): Ray's launcher makes the VMs (aws,
gcp, azure) or uses machines that exist (local), runs the syntho-ray image on each with the
head role's settings, and autoscales the workers. No secret enters the YAML: the registry
password, the Ray token and the license key travel as files (`file_mounts`) and are read on the
node when used.

check() and cluster_config() are pure (settings in, a dict out); command() does the I/O.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from agent import cluster, ray_tls, resolve_tls, store
from agent.config import LauncherSettings
from agent.errors import EnvironmentProblem, UsageError
from agent.roles import ray
from agent.sources import click_options, config_option

Say = Callable[[str], None]

HEAD_TYPE = "ray.head.default"
WORKER_TYPE = "ray.worker.default"
CLOUDS = ("aws", "gcp", "azure")
MIN_WORKERS, MAX_WORKERS = 2, 3  # the guide's example
# Where the delivered files are, inside the Ray container of every node.
NODE_DIR = "/etc/syntho"
TOKEN_ON_NODE = f"{NODE_DIR}/ray-token"
LICENSE_ON_NODE = f"{NODE_DIR}/license-key"
PASSWORD_ON_NODE = f"{NODE_DIR}/registry-password"
PUBLIC_KEY_ON_NODE = "~/.ssh/id_rsa.pub"  # as in the guide
# Ray's TLS: the cluster's CA and the programs, delivered (a directory mount, so that a
# re-synced file is seen in the container); each node's own key and certificate, made on the
# node by ray-tls-issue.sh at every start of Ray, in the container's own files.
TLS_ON_NODE = f"{NODE_DIR}/ray-tls"
NODE_TLS = "/tmp/syntho-ray-tls"
CA_KEY = "ca.key"
FRONT_PID = "/tmp/ray/tls-front.pid"  # the dashboard's TLS front on the head: one at a time
# With docker, Ray copies a file mount to this folder of the VM and bind-mounts it into the
# container (ray.autoscaler.sdk.get_docker_host_mount_location); initialization commands run
# on the VM before the container exists, so they read the file there.
VM_MOUNT_ROOT = "/tmp/ray_tmp_mount"
# `ray up` (Ray 2.50 and later) starts the head with autoscaler v2, which on a local cluster
# counts the head among the nodes of the one node type Ray makes for it, capped at the number of
# --worker-ip: the last worker is never started. The head's own export comes after Ray's, so
# the v1 autoscaler runs, which starts every listed worker.
LOCAL_AUTOSCALER = "export RAY_enable_autoscaler_v2=0"
LICENSE_FILE = "license-key"
MARKET_LABEL = "ray.io/market-type"  # the node label Ray reserves for spot or on-demand


@dataclass(frozen=True)
class Cloud:
    """A cloud's defaults: sizes like the guide's Azure example (4 and 32 CPUs)."""

    region: str | None
    head: str
    worker: str
    image: str | None  # None: the provider's own default (aws: Ray's Deep Learning AMI)
    head_cpus: int = 4
    worker_cpus: int = 32


DEFAULTS = {
    "aws": Cloud("us-east-1", "m5.xlarge", "m5.8xlarge", None),
    "gcp": Cloud(None, "n2-standard-4", "n2-standard-32",
                 "projects/deeplearning-platform-release/global/images/family/common-cpu"),
    "azure": Cloud("westeurope", "Standard_D4s_v4", "Standard_D32s_v4",
                   "microsoft-dsvm:ubuntu-2204:2204-gen2:latest"),
}
IDLE_MINUTES = 5  # Ray's own default, written out so the file says it
# Options that mean something for some providers only: set for another, they are a mistake.
ONLY_FOR: dict[str, tuple[str, ...]] = {
    "region": CLOUDS, "availability_zone": ("aws", "gcp"), "project_id": ("gcp",),
    "resource_group": ("azure",), "subscription_id": ("azure",), "key_name": ("aws",),
    "head_ip": ("local",), "worker_ip": ("local",), "head_instance_type": CLOUDS,
    "worker_instance_type": CLOUDS, "head_cpus": CLOUDS, "worker_cpus": CLOUDS,
    "min_worker_nodes": CLOUDS, "max_worker_nodes": CLOUDS, "spot": CLOUDS, "vm_image": CLOUDS,
    "idle_timeout_minutes": CLOUDS,
}


@dataclass(frozen=True)
class NodeTls:
    """What launcher-config delivers for Ray's TLS: the folder (the cluster's CA and its key,
    the programs) and the programs' names there."""

    folder: Path
    issue: str  # ray-tls-issue-<digest>.sh
    front: str  # front-<digest>.py

    def env(self) -> tuple[tuple[str, str], ...]:
        """Ray's TLS environment: the same names at every start (Ray's launcher keeps a
        running container's options and re-runs its start commands)."""
        return (("RAY_USE_TLS", "1"), ("RAY_TLS_SERVER_CERT", f"{NODE_TLS}/node.crt"),
                ("RAY_TLS_SERVER_KEY", f"{NODE_TLS}/node.key"),
                ("RAY_TLS_CA_CERT", f"{TLS_ON_NODE}/{ray_tls.CA_FILE}"))


# --- checks: every combination `ray up` would refuse, or quietly get wrong ---------------------

def check(settings: LauncherSettings) -> None:
    """Raise UsageError (exit 2, one line) for settings that cannot make a working cluster."""
    provider = settings.provider
    if provider is None:
        raise UsageError("launcher-config needs --provider: aws, gcp, azure or local")
    _check_applies(settings, provider)
    if provider == "local":
        _check_local(settings)
    else:
        _check_cloud(settings, provider)
    _check_registry(settings)
    _check_tls(settings)


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _check_applies(settings: LauncherSettings, provider: str) -> None:
    for key, providers in ONLY_FOR.items():
        if provider not in providers and getattr(settings, key) not in (None, (), False):
            raise UsageError(f"{_flag(key)} does not apply to --provider {provider} "
                             f"(only to {', '.join(providers)})")


def _check_local(settings: LauncherSettings) -> None:
    if not settings.head_ip or not settings.worker_ip:
        raise UsageError("--provider local needs --head-ip and at least one --worker-ip "
                         "(the machines Ray runs on)")
    ips = settings.worker_ip
    if settings.head_ip in ips or len(set(ips)) < len(ips):
        raise UsageError("--head-ip and every --worker-ip must be different machines")
    if settings.ssh_private_key is None:
        raise UsageError("--provider local needs --ssh-private-key (the key `ray up` logs in "
                         "to the machines with)")


def _check_cloud(settings: LauncherSettings, provider: str) -> None:
    if provider == "gcp":
        _check_gcp(settings)
    if provider == "azure":
        _check_azure(settings)
    if provider == "aws" and (settings.key_name is None) != (settings.ssh_private_key is None):
        raise UsageError("on aws, --ssh-private-key and --key-name (its EC2 key pair) go "
                         "together; give both, or neither to let Ray make a key pair")
    low, high = _worker_range(settings)
    if low > high:
        raise UsageError(f"--min-worker-nodes {low} is more than --max-worker-nodes {high}")
    for role in ("head", "worker"):
        if _cpus(settings, provider, role) is None and provider != "aws":
            raise UsageError(f"{provider} cannot tell Ray how many CPUs a "
                             f"--{role}-instance-type has: give --{role}-cpus")


def _check_gcp(settings: LauncherSettings) -> None:
    missing = [_flag(k) for k in ("region", "availability_zone", "project_id")
               if not getattr(settings, k)]
    if missing:
        raise UsageError(f"--provider gcp needs {' and '.join(missing)}")
    if not str(settings.availability_zone).startswith(f"{settings.region}-"):
        raise UsageError(f"--availability-zone {settings.availability_zone} is not a zone of "
                         f"--region {settings.region} (for example {settings.region}-b)")


def _check_azure(settings: LauncherSettings) -> None:
    if not settings.resource_group:
        raise UsageError("--provider azure needs --resource-group")
    if settings.vm_image and len(_azure_image(settings.vm_image)) != 4:
        raise UsageError("--vm-image for azure is PUBLISHER:OFFER:SKU:VERSION, for example "
                         f"{DEFAULTS['azure'].image}")


def _check_tls(settings: LauncherSettings) -> None:
    pki = resolve_tls.own_pki(settings)
    if settings.ray_tls and not settings.auth and not pki:
        raise UsageError("--ray-tls needs token auth (the cluster's CA comes from its token) or "
                         "a CA of your own: drop --no-auth")


def tls_on(settings: LauncherSettings) -> bool:
    """Checked settings: whether the nodes' Ray speaks TLS (unless --no-ray-tls, or --no-auth
    without a CA of the operator's)."""
    if settings.ray_tls is False:
        return False
    return settings.auth or bool(resolve_tls.own_pki(settings))


def _check_registry(settings: LauncherSettings) -> None:
    if not settings.registry:
        for key in ("registry_user", "registry_password_file"):
            if getattr(settings, key) is not None:
                raise UsageError(f"{_flag(key)} needs --registry (the registry to log in to)")
        return
    user = settings.registry_user or ""
    if not user.strip() or any(ch.isspace() for ch in user):
        raise UsageError(f"--registry {settings.registry} needs --registry-user (one word)")
    if settings.registry_password_file is None:
        raise UsageError(f"--registry {settings.registry} needs --registry-password-file: the "
                         "nodes log in with it, and the password never enters the YAML")


# --- the config: pure ---------------------------------------------------------------------------

def cluster_config(settings: LauncherSettings, token_file: Path | None,
                   license_file: Path | None, tls: NodeTls | None = None) -> dict[str, Any]:
    """The whole `ray up` config for checked settings; token_file None means no token auth,
    tls None plain Ray."""
    provider = str(settings.provider)
    low, high = _worker_range(settings)
    config: dict[str, Any] = {
        "cluster_name": settings.cluster_name,
        "max_workers": high,
        "provider": _provider_section(settings, provider),
        "auth": _auth(settings, provider),
        "docker": _docker(settings, tls),
    }
    if provider != "local":  # Ray refuses node types for local: it makes its own
        config["available_node_types"] = {
            HEAD_TYPE: _node_type(settings, provider, "head"),
            WORKER_TYPE: {"min_workers": low, "max_workers": high,
                          **_node_type(settings, provider, "worker")},
        }
        config["head_node_type"] = HEAD_TYPE
        config["idle_timeout_minutes"] = settings.idle_timeout_minutes or IDLE_MINUTES
    config["file_mounts"] = _file_mounts(settings, token_file, license_file, tls)
    config["initialization_commands"] = _initialization(settings)
    # Explicit, so Ray's provider defaults (conda, a nightly Ray) never run in our image.
    config["setup_commands"] = []
    if settings.head_setup_command:  # otherwise Ray's: it installs the cloud SDK its autoscaler
        config["head_setup_commands"] = list(settings.head_setup_command)  # needs on the head
    config["worker_setup_commands"] = []
    secrets = (token_file is not None, license_file is not None)
    # The head role's `ray start` (roles/ray.py), run by Ray's launcher in the foreground of
    # its own SSH session rather than as the container's main process: no --block.
    # With TLS the dashboard keeps the loopback and its TLS front the host's other addresses.
    head_start = _ray_start(
        settings, [*ray.start_command(None, ray.node_ports(settings, "head"), block=False,
                                      dashboard_host="127.0.0.1" if tls else "0.0.0.0"),
                   "--autoscaling-config=~/ray_bootstrap_config.yaml"], *secrets)
    if provider == "local":
        head_start = f"{LOCAL_AUTOSCALER} && {head_start}"
    issue = [_issue(settings, tls)] if tls else []
    config["head_start_ray_commands"] = ["ray stop", *issue, head_start, *(
        [_dashboard_front(tls)] if tls else [])]
    config["worker_start_ray_commands"] = ["ray stop", *issue, _ray_start(
        settings, ray.start_command("$RAY_HEAD_IP", ray.node_ports(settings, "worker"),
                                    block=False), *secrets)]
    return config


def _worker_range(settings: LauncherSettings) -> tuple[int, int]:
    """(min, max) worker VMs; local keeps every machine it is given."""
    if settings.provider == "local":
        return len(settings.worker_ip), len(settings.worker_ip)
    low, high = settings.min_worker_nodes, settings.max_worker_nodes
    if low is None:
        low = MIN_WORKERS if high is None else min(MIN_WORKERS, high)
    if high is None:
        high = max(MAX_WORKERS, low)
    return low, high


def _provider_section(settings: LauncherSettings, provider: str) -> dict[str, Any]:
    if provider == "local":
        return {"type": "local", "head_ip": settings.head_ip,
                "worker_ips": list(settings.worker_ip)}
    region = settings.region or DEFAULTS[provider].region
    section: dict[str, Any] = {"type": provider}
    if provider == "azure":
        section.update(location=region, resource_group=settings.resource_group)
        if settings.subscription_id:
            section["subscription_id"] = settings.subscription_id
        return section
    section["region"] = region
    if settings.availability_zone:
        section["availability_zone"] = settings.availability_zone
    if provider == "gcp":
        section["project_id"] = settings.project_id
    return section


def public_key(settings: LauncherSettings) -> Path:
    """The public key to deliver: given, else the login key's public half, else the guide's."""
    if settings.ssh_public_key is not None:
        return settings.ssh_public_key
    if settings.ssh_private_key is not None:
        return Path(f"{settings.ssh_private_key}.pub")
    return Path("~/.ssh/id_rsa.pub")


def _auth(settings: LauncherSettings, provider: str) -> dict[str, Any]:
    auth: dict[str, Any] = {"ssh_user": settings.ssh_user}
    if settings.ssh_private_key is not None:
        auth["ssh_private_key"] = str(settings.ssh_private_key)
        if provider == "azure":  # azure installs the public half on the VMs
            auth["ssh_public_key"] = str(public_key(settings))
    return auth


def _docker(settings: LauncherSettings, tls: NodeTls | None) -> dict[str, Any]:
    """The head role's container settings, as `docker run` options (Ray adds --net=host); with
    TLS, Ray's environment for it (every process in the container reads it: `ray start`, and
    `ray status` or a job run there by `ray exec`)."""
    tls_env = tls.env() if tls else ()
    return {
        "image": settings.ray_image,
        "container_name": settings.container_name,
        "pull_before_run": True,
        "run_options": [f"--shm-size={_docker_size(settings.shm_size)}",
                        f"--ulimit nofile={settings.nofile}:{settings.nofile}",
                        *(f"-e {k}={v}" for k, v in (*ray.SCHEDULER_ENV, *tls_env))],
    }


def _docker_size(size: int) -> str:
    for unit, factor in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}b"


def _cpus(settings: LauncherSettings, provider: str, role: str) -> int | None:
    """CPUs to declare: given, or known for the default size; None when only aws can tell."""
    given: int | None = getattr(settings, f"{role}_cpus")
    if given is not None:
        return given
    cloud = DEFAULTS[provider]
    size = getattr(settings, f"{role}_instance_type") or getattr(cloud, role)
    return getattr(cloud, f"{role}_cpus") if size == getattr(cloud, role) else None


def _node_type(settings: LauncherSettings, provider: str, role: str) -> dict[str, Any]:
    cloud = DEFAULTS[provider]
    size = getattr(settings, f"{role}_instance_type") or getattr(cloud, role)
    cpus = _cpus(settings, provider, role)
    spot = settings.spot and role == "worker"
    node_config = {"aws": _aws_node, "gcp": _gcp_node, "azure": _azure_node}[provider](
        settings, size, spot)
    # aws fills empty resources in itself at `ray up`; gcp and azure are always given CPUs.
    node: dict[str, Any] = {"resources": {"CPU": cpus} if cpus else {},
                            "node_config": node_config}
    if role == "worker":  # so a job can ask for (or avoid) spot workers: Ray's own label key
        node["labels"] = {MARKET_LABEL: "spot" if spot else "on-demand"}
    return node


def _aws_node(settings: LauncherSettings, size: str, spot: bool) -> dict[str, Any]:
    node: dict[str, Any] = {
        "InstanceType": size,
        "BlockDeviceMappings": [{"DeviceName": "/dev/sda1",
                                 "Ebs": {"VolumeSize": settings.disk_size, "VolumeType": "gp3"}}],
    }
    if settings.vm_image:
        node["ImageId"] = settings.vm_image
    if settings.key_name:
        node["KeyName"] = settings.key_name
    if spot:
        node["InstanceMarketOptions"] = {"MarketType": "spot"}
    return node


def _gcp_node(settings: LauncherSettings, size: str, spot: bool) -> dict[str, Any]:
    image = settings.vm_image or DEFAULTS["gcp"].image
    node: dict[str, Any] = {
        "machineType": size,
        "disks": [{"boot": True, "autoDelete": True, "type": "PERSISTENT",
                   "initializeParams": {"diskSizeGb": settings.disk_size,
                                        "sourceImage": image}}],
    }
    if spot:
        node["scheduling"] = {"preemptible": True}
    return node


def _azure_image(image: str) -> list[str]:
    return [part for part in image.split(":") if part]


def _azure_node(settings: LauncherSettings, size: str, spot: bool) -> dict[str, Any]:
    publisher, offer, sku, version = _azure_image(settings.vm_image or str(DEFAULTS["azure"].image))
    params: dict[str, Any] = {"vmSize": size, "imagePublisher": publisher, "imageOffer": offer,
                              "imageSku": sku, "imageVersion": version,
                              "osDiskSize": settings.disk_size}
    if spot:
        params["priority"] = "Spot"
    return {"azure_arm_parameters": params}


def _file_mounts(settings: LauncherSettings, token_file: Path | None,
                 license_file: Path | None, tls: NodeTls | None) -> dict[str, str]:
    """Node path -> local path: what `ray up` copies to every node (and into its container)."""
    mounts = {PUBLIC_KEY_ON_NODE: str(public_key(settings))}
    if tls is not None:  # the CA's key travels as the token does (0600, never in the YAML)
        mounts[TLS_ON_NODE] = str(tls.folder)
    if settings.registry:
        mounts[PASSWORD_ON_NODE] = str(settings.registry_password_file)
    if token_file is not None:
        mounts[TOKEN_ON_NODE] = str(token_file)
    if license_file is not None:
        mounts[LICENSE_ON_NODE] = str(license_file)
    return mounts


def _initialization(settings: LauncherSettings) -> list[str]:
    """On the VM, before the container: the guide's docker setup, then the registry login with
    the password on standard input (never in the YAML, a command line or shell history)."""
    commands = [
        "sudo usermod -aG docker $USER || true",
        "sleep 10",  # Ray reuses an SSH session ~10 s; the next one is in the docker group
        "touch ~/.sudo_as_admin_successful",
    ]
    if settings.registry:
        on_vm = f"{VM_MOUNT_ROOT}/{settings.cluster_name}{PASSWORD_ON_NODE}"
        commands.append(f"docker login {shlex.quote(settings.registry)} -u "
                        f"{shlex.quote(str(settings.registry_user))} --password-stdin < {on_vm}")
    return commands


def _from_file(variable: str, path: str) -> str:
    """Export a variable read from a delivered file, failing (and so failing `ray up`) when the
    file is missing or empty rather than starting Ray without it."""
    return f'{variable}="$(cat {path})" && test -n "${variable}" && export {variable}'


def _ray_start(settings: LauncherSettings, args: list[str], token: bool, license_key: bool) -> str:
    steps = []
    if license_key:
        steps.append(_from_file(ray.LICENSE_ENV, LICENSE_ON_NODE))
    if token:
        mode, value = ray.AUTH_MODE_ENV
        steps += [_from_file(ray.TOKEN_ENV, TOKEN_ON_NODE), f"export {mode}={value}"]
    extra = [shlex.quote(arg) for arg in settings.ray_arg]
    steps.append(" ".join([*args, *extra]))
    return " && ".join(steps)


def _issue(settings: LauncherSettings, tls: NodeTls) -> str:
    """This node's key and certificate, made on the node before Ray starts (assets/
    ray-tls-issue.sh): it names every address the node holds, known there and then."""
    env = {"RAY_TLS_OUT": NODE_TLS, "RAY_TLS_DAYS": str(settings.ray_tls_days),
           "RAY_TLS_SANS": " ".join(settings.ray_tls_san)}
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return f"{assigns} sh {TLS_ON_NODE}/{tls.issue}"


def _dashboard_front(tls: NodeTls) -> str:
    """Start the dashboard's TLS front (assets/tls-front.py, as the head role's container runs
    it) in the background of the head's container, on every address of the VM but loopback; a
    front started by an earlier `ray up` stops first (FRONT_PIDFILE)."""
    env = {"FRONT_CERT": f"{NODE_TLS}/node.crt", "FRONT_KEY": f"{NODE_TLS}/node.key",
           "FRONT_LISTEN": "*", "FRONT_PORT": str(ray.DASHBOARD_PORT),
           "BACKEND": f"127.0.0.1:{ray.DASHBOARD_PORT}", "FRONT_PIDFILE": FRONT_PID}
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return (f"{assigns} nohup python3 {TLS_ON_NODE}/{tls.front} >> /tmp/ray/tls-front.log "
            "2>&1 &")


def render(config: dict[str, Any], auth: bool) -> str:
    """The YAML, with a header that says how to use it and where the secrets are."""
    header = [
        "# Ray cluster launcher config for Syntho, written by `syntho-agent launcher-config`.",
        "# Create or update the cluster:  ray up <this file>",
        "# No secret is in this file: the registry password, Ray token and license key are",
        "# local files that `ray up` copies to every node (file_mounts), read there when used.",
    ]
    if not auth:
        header.append(f"# {ray.AUTH_OFF_WARNING}")
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=4096)
    return "\n".join(header) + "\n" + body


# --- the command: I/O ---------------------------------------------------------------------------

def _absolute(settings: LauncherSettings) -> LauncherSettings:
    """Local paths as absolute ones (`ray up` may run from another directory), and the public
    key checked: `ray up` would stop at a missing one."""
    def absolute(path: Path | None) -> Path | None:
        return None if path is None else path.expanduser().absolute()

    key = public_key(settings).expanduser().absolute()
    if not key.is_file():
        raise UsageError(f"{key} does not exist: give --ssh-public-key, a public key to deliver "
                         "to the nodes")
    return replace(settings, data_dir=settings.data_dir.expanduser().absolute(),
                   ssh_private_key=absolute(settings.ssh_private_key), ssh_public_key=key,
                   registry_password_file=absolute(settings.registry_password_file))


def _token_file(settings: LauncherSettings, say: Say) -> Path | None:
    """<data-dir>/ray-token, as for the head role: supplied once or generated once."""
    if not settings.auth:
        say(ray.AUTH_OFF_WARNING)
        return None
    store.ensure_dir(settings.data_dir)
    _, done = cluster.head_token(settings, settings.data_dir)
    path = cluster.token_path(settings.data_dir)
    if done:
        say(f"{done} the cluster's Ray token in {path}")
    return path


def _tls(settings: LauncherSettings, token_file: Path | None, say: Say) -> NodeTls | None:
    """<data-dir>/ray-tls: the cluster's CA (the token's, or the operator's) with its key, and
    the programs the nodes run: each issues itself a certificate when Ray starts there."""
    if not tls_on(settings):
        why = "--no-ray-tls" if settings.ray_tls is False else "--no-auth"
        say(f"Ray's traffic between the nodes is NOT encrypted ({why}): see docs/security.md")
        return None
    if settings.ray_tls_ca_cert is not None and settings.ray_tls_ca_key is not None:
        ca = ray_tls.operator_ca(settings.ray_tls_ca_cert, settings.ray_tls_ca_key)
    else:
        assert token_file is not None, "tls_on: token auth, or a CA of the operator's"
        ca = ray_tls.derived_ca((store.read_text(token_file) or "").strip())
    where = store.ensure_dir(ray_tls.folder(settings.data_dir), 0o755, exact=True)
    for name, text, mode in ((ray_tls.CA_FILE, ca.pem, 0o644),
                             (CA_KEY, ray_tls.key_pem(ca.key), 0o600)):
        if store.read_text(where / name) != text:
            store.write_atomic(where / name, text, mode=mode)
    tls = NodeTls(where, ray_tls.write_program(where, ray_tls.ISSUE_ASSET),
                  ray_tls.write_front(where))
    say(f"Ray speaks mutual TLS: each node issues itself a certificate from the cluster's CA "
        f"({where / ray_tls.CA_FILE}) when Ray starts there, valid {settings.ray_tls_days} "
        "days (a `ray up` renews it)")
    return tls


def _license_file(settings: LauncherSettings) -> Path | None:
    """The license key as a 0600 file in the data dir, for file_mounts (never in the YAML)."""
    if not settings.license_key:
        return None
    store.ensure_dir(settings.data_dir)
    path = settings.data_dir / LICENSE_FILE
    store.write_atomic(path, settings.license_key.strip() + "\n")
    return path


def _write(output: str, text: str) -> None:
    if output == "-":
        click.echo(text, nl=False)
        return
    path = Path(output)
    try:
        store.write_atomic(path, text, mode=0o644)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot write {path}: {exc.strerror}; choose another "
                                 "--output") from None


def _next_steps(settings: LauncherSettings, output: str, token_file: Path | None, say: Say) -> None:
    low, high = _worker_range(settings)
    workers = f"{low}" if low == high else f"{low} to {high}"
    say(f"wrote {'the config' if output == '-' else output}: {settings.provider}, a head and "
        f"{workers} workers, image {settings.ray_image}")
    say(f"next: ray up {'<the config>' if output == '-' else output}")
    app = "then, on the app VM: syntho-agent app --head <the head's private IP>"
    if token_file is not None:
        say(f"{app} --token-file ray-token   (copy {token_file} there as ./ray-token)")
    else:
        say(f"{app} --no-auth")


@click.command("launcher-config")
@config_option
@click_options(LauncherSettings)
@click.option("--output", "-o", default="cluster.yaml", show_default=True,
              help="the file to write; - for standard output")
def command(output: str, **params: Any) -> None:
    """Write a cluster config for Ray's cluster launcher (`ray up`): the guide's option 1."""
    settings = LauncherSettings.from_params(params)
    check(settings)

    def say(line: str) -> None:  # keep standard output for the YAML when it goes there
        click.echo(line, err=output == "-")

    settings = _absolute(settings)
    token_file = _token_file(settings, say)
    license_file = _license_file(settings)
    tls = _tls(settings, token_file, say)
    _write(output, render(cluster_config(settings, token_file, license_file, tls), settings.auth))
    _next_steps(settings, output, token_file, say)
