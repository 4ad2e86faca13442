"""A `launcher-config` cluster config as a config for Ray's fake multi-node provider.

Ray's `fake_multinode` provider (ray.autoscaler._private.fake_multi_node) runs each node the
real autoscaler launches as a raylet process on the same machine. translate() keeps what the
autoscaler decides with: the node types (their resources, labels, min/max workers and node
config), the cluster-wide max_workers, upscaling_speed, idle_timeout_minutes and the head type.
It drops what only a cloud launcher uses (auth, docker, file mounts, commands) and sets the
provider to the fake one with the keys it needs. A test helper, not a product feature.

The generated config has one worker type whose node_config carries the cloud's spot marker
with --spot, and whose labels say the same under the key Ray reserves for it
(ray.io/market-type, "spot" or "on-demand"). The fake provider ignores node_config, so the
translation checks that the two agree; the autoscaler gives a node its type's labels (the head
has none), and tasks that select the label show that it launches nodes of the configured (spot)
type for them.
"""

from __future__ import annotations

import copy
import re
from typing import Any

# Ray's own constants (ray._raylet, ray.autoscaler._private.fake_multi_node.node_provider).
MARKET_LABEL = "ray.io/market-type"
FAKE_HEAD_NODE_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"
# What the autoscaler reads from the launcher config; the rest is for `ray up` on a cloud.
KEPT = ("cluster_name", "max_workers", "upscaling_speed", "idle_timeout_minutes",
        "head_node_type")
NODE_TYPE_KEYS = ("resources", "labels", "min_workers", "max_workers", "node_config")
# The fake provider starts no VMs: no login, container, files or commands.
EMPTY: dict[str, Any] = {
    "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
    "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
    "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
}


def is_spot(provider: str, node_config: dict[str, Any]) -> bool:
    """Whether a node_config asks the cloud for spot (preemptible) VMs, in each cloud's terms."""
    if provider == "aws":
        return bool(node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot")
    if provider == "gcp":
        return bool(node_config.get("scheduling", {}).get("preemptible") is True)
    if provider == "azure":
        return bool(node_config.get("azure_arm_parameters", {}).get("priority") == "Spot")
    raise ValueError(f"no spot marker known for provider {provider!r}")


# The fake provider's section, as Ray's AutoscalingCluster writes it (launch_multiple and
# head_node_id are what autoscaler v2, `ray up`'s default since Ray 2.50, needs).
FAKE_PROVIDER: dict[str, Any] = {
    "type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
    "disable_launch_config_check": True, "launch_multiple": True,
    "head_node_id": FAKE_HEAD_NODE_ID}


def translate(config: dict[str, Any], object_store_bytes: int | None = None) -> dict[str, Any]:
    """The fake-provider config for a generated cloud config (aws, gcp or azure).

    object_store_bytes sets each worker's object store (the fake provider reads it from the
    node type's resources; Ray's default, a share of the machine's memory, is for one node per
    machine).
    """
    provider = config["provider"]["type"]
    head_type = config["head_node_type"]
    fake: dict[str, Any] = {key: copy.deepcopy(config[key]) for key in KEPT if key in config}
    fake["provider"] = copy.deepcopy(FAKE_PROVIDER)
    fake["available_node_types"] = {}
    for name, node_type in config["available_node_types"].items():
        kept = {key: copy.deepcopy(node_type[key]) for key in NODE_TYPE_KEYS if key in node_type}
        kept.setdefault("node_config", {})
        if name != head_type:
            market = "spot" if is_spot(provider, kept["node_config"]) else "on-demand"
            if kept.get("labels", {}).get(MARKET_LABEL) != market:
                raise ValueError(f"{name}: node_config asks for {market} VMs, the labels say "
                                 f"{kept.get('labels')}")
            if object_store_bytes is not None:
                kept["resources"] = {**kept["resources"], "object_store_memory": object_store_bytes}
        fake["available_node_types"][name] = kept
    fake.update(copy.deepcopy(EMPTY))
    return fake


def head_resources(config: dict[str, Any]) -> dict[str, Any]:
    """The head type's resources: `ray up` hands them to the head's `ray start` (as
    RAY_OVERRIDE_RESOURCES), since the head is started by a command, not by the autoscaler."""
    resources: dict[str, Any] = config["available_node_types"][config["head_node_type"]][
        "resources"]
    return dict(resources)


# --- reading the autoscaler (v2): `ray status` and its monitor.log --------------------------

def pending_demands(status: str) -> dict[str, int]:
    """`ray status`'s pending demands: resource shape -> how many tasks/actors wait for it."""
    return {shape: int(count) for shape, count in
            re.findall(r"^ (\{.*\}): (\d+)\+? pending tasks/actors$", status, re.MULTILINE)}


# The autoscaler re-reads its config at every update, and Ray logs this line each time the
# head type sets no max_workers (as generated: Ray fills in 0).
UPDATE_MARK = "setting max workers for head node type"
# An idle worker kept because its type's min_workers needs it.
KEPT_FOR_MIN = "is required by min_worker_nodes, skipping idle termination"


def updates(log: str) -> int:
    """How many updates the autoscaler has run, from its monitor.log."""
    return log.count(UPDATE_MARK)


def queued(log: str, node_type: str) -> int:
    """How many nodes of a type the autoscaler has decided to launch (each a new instance)."""
    return len(re.findall(rf"New instance QUEUED \(id=[^,]*, type={re.escape(node_type)},", log))


def kept_for_min(log: str) -> int:
    """How many times the autoscaler has kept an idle node because min_workers needs it."""
    return log.count(KEPT_FOR_MIN)


def idle_drains(log: str) -> list[tuple[float, float]]:
    """(idle seconds, timeout seconds) of every node the autoscaler removed for idleness."""
    return [(float(idle), float(timeout)) for idle, timeout in re.findall(
        r"draining ray: idle for ([\d.]+) secs > timeout=([\d.]+) secs", log)]


# The autoscaler's events (logs/events/event_AUTOSCALER.log; drivers print them).

def resizes(events: list[str]) -> list[int]:
    """The cluster's CPUs after each change the autoscaler made (launching nodes included)."""
    return [int(m[1]) for e in events if (m := re.fullmatch(r"Resized to (\d+) CPUs.*", e))]


def removals(events: list[str]) -> list[tuple[int, str, str]]:
    """(count, node type, cause) of each removal the autoscaler decided."""
    return [(int(m[1]), m[2], m[3]) for e in events
            if (m := re.fullmatch(r"Removing (\d+) nodes of type (\S+) \((.+)\)\.", e))]


def refusals(events: list[str]) -> list[str]:
    """The demands it said no node type it may launch can fulfil (shape*count, ...)."""
    mark = "No available node types can fulfill resource requests "
    return [e[len(mark):].split(" with label selectors")[0].split(". Add")[0]
            for e in events if e.startswith(mark)]
