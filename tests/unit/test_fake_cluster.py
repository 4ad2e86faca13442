"""tests/support/fake_cluster.py: a generated config as a fake-provider config keeps every
value the autoscaler decides with and the market of the worker type; and its readers of the
autoscaler's output, on lines Ray 2.60 wrote in tests/integration/test_autoscaling.py's runs."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from agent import cli
from tests.support import fake_cluster

CLOUDS = {
    "aws": [],
    "gcp": ["--region", "europe-west4", "--availability-zone", "europe-west4-b",
            "--project-id", "syntho-test", "--head-cpus", "4", "--worker-cpus", "8"],
    "azure": ["--resource-group", "syntho-rg"],
}
SIZES = ["--min-worker-nodes", "1", "--max-worker-nodes", "4", "--idle-timeout-minutes", "7"]


def generate(root: Path, provider: str, *more: str) -> dict[str, Any]:
    (root / "id.pub").write_text("ssh-ed25519 AAAAC3Nza test\n")
    out = root / f"{provider}.yaml"
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("SYNTHO_AGENT_")}
    result = CliRunner().invoke(cli.cli, [
        "launcher-config", "--provider", provider, *CLOUDS[provider], *more, "--data-dir",
        str(root / "data"), "--ssh-public-key", str(root / "id.pub"), "--output", str(out)],
        env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config: dict[str, Any] = yaml.safe_load(out.read_text())
    return config


@pytest.mark.parametrize("provider", list(CLOUDS))
@pytest.mark.parametrize("spot", [True, False])
def test_the_autoscalers_values_and_the_market_carry_over(
        tmp_path: Path, provider: str, spot: bool) -> None:
    config = generate(tmp_path, provider, *SIZES, *(["--spot"] if spot else []))
    before = copy.deepcopy(config)
    fake = fake_cluster.translate(config)
    assert config == before  # the generated config is left alone
    head, worker = "ray.head.default", "ray.worker.default"
    assert fake["provider"]["type"] == "fake_multinode"
    assert (fake["max_workers"], fake["idle_timeout_minutes"], fake["head_node_type"]) == (
        4, 7, head)
    types = fake["available_node_types"]
    assert set(types) == {head, worker}
    assert types[worker]["min_workers"] == 1 and types[worker]["max_workers"] == 4
    for name in (head, worker):
        assert types[name]["resources"] == config["available_node_types"][name]["resources"]
        assert types[name]["node_config"] == config["available_node_types"][name]["node_config"]
    assert types[worker]["labels"] == {fake_cluster.MARKET_LABEL: "spot" if spot else "on-demand"}
    assert "labels" not in types[head]
    # Nothing for a cloud launcher: no login, container, files or commands.
    assert (fake["auth"], fake["docker"], fake["file_mounts"]) == ({}, {}, {})
    assert not any(fake[key] for key in fake if key.endswith("_commands"))


def test_a_label_that_contradicts_the_node_config_is_refused(tmp_path: Path) -> None:
    config = generate(tmp_path, "aws", "--spot")
    config["available_node_types"]["ray.worker.default"]["labels"] = {
        fake_cluster.MARKET_LABEL: "on-demand"}
    with pytest.raises(ValueError, match="asks for spot VMs"):
        fake_cluster.translate(config)


def test_the_workers_object_store_is_set_on_the_worker_type_only(tmp_path: Path) -> None:
    config = generate(tmp_path, "gcp")
    types = fake_cluster.translate(config, object_store_bytes=123)["available_node_types"]
    assert types["ray.worker.default"]["resources"] == {"CPU": 8, "object_store_memory": 123}
    assert types["ray.head.default"]["resources"] == {"CPU": 4}
    assert fake_cluster.head_resources(config) == {"CPU": 4}


def test_only_the_clouds_have_a_spot_marker() -> None:
    assert fake_cluster.is_spot("aws", {"InstanceMarketOptions": {"MarketType": "spot"}})
    assert not fake_cluster.is_spot("gcp", {"scheduling": {"preemptible": False}})
    assert fake_cluster.is_spot("azure", {"azure_arm_parameters": {"priority": "Spot"}})
    with pytest.raises(ValueError, match="local"):
        fake_cluster.is_spot("local", {})


STATUS = """======== Autoscaler status: 2026-12-05 08:12:30.1 ========
Node status
---------------------------------------------------------------
Active:
 3 ray.worker.default
Idle:
 1 ray.head.default
Pending:
 (no pending nodes)
Recent failures:
 (no failures)

Resources
---------------------------------------------------------------
Total Usage:
 6.0/8.0 CPU

From request_resources:
 (none)
Pending Demands:
 {'CPU': 2.0}: 3+ pending tasks/actors"""
ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00003"
MONITOR_LOG = f"""\
2026-12-05 08:11:04,833	INFO util.py:402 -- setting max workers for head node type to 0
2026-12-05 08:11:04,941	INFO instance_manager.py:247 -- New instance QUEUED (id=d058, \
type=ray.worker.default, cloud_instance_id=, ray_id=): queuing new instance of \
ray.worker.default from scheduler
2026-12-05 08:11:09,858	INFO util.py:402 -- setting max workers for head node type to 0
2026-12-05 08:14:14,063	INFO instance_manager.py:263 -- Update instance \
RAY_RUNNING->RAY_STOP_REQUESTED (id=d058, type=ray.worker.default, cloud_instance_id={ID}, \
ray_id={ID}): draining ray: idle for 60.188 secs > timeout=60 secs
2026-12-05 08:14:14,063	INFO scheduler.py:2313 -- Node {ID} (idle for 60.171 secs) belongs \
to node_type ray.worker.default and is required by min_worker_nodes, skipping idle termination.
"""
EVENTS = [
    "Adding 2 node(s) of type ray.worker.default.", "Resized to 8 CPUs.",
    "No available node types can fulfill resource requests {'CPU': 2.0}*3 with label "
    "selectors: [ray.io/market-type LABEL_OPERATOR_IN [spot]]. Add suitable node types to this "
    "cluster to resolve this issue.",
    "No available node types can fulfill resource requests {'GPU': 1.0}*1. Add suitable node "
    "types to this cluster to resolve this issue.",
    "Removing 2 nodes of type ray.worker.default (idle).", "Resized to 4 CPUs.",
]


def test_the_readers_of_the_autoscalers_output() -> None:
    assert fake_cluster.pending_demands(STATUS) == {"{'CPU': 2.0}": 3}
    assert fake_cluster.pending_demands(STATUS.replace("3+ pending", "x")) == {}
    assert fake_cluster.updates(MONITOR_LOG) == 2
    assert fake_cluster.queued(MONITOR_LOG, "ray.worker.default") == 1
    assert fake_cluster.queued(MONITOR_LOG, "ray.head.default") == 0
    assert fake_cluster.kept_for_min(MONITOR_LOG) == 1
    assert fake_cluster.idle_drains(MONITOR_LOG) == [(60.188, 60.0)]
    assert fake_cluster.resizes(EVENTS) == [8, 4]
    assert fake_cluster.removals(EVENTS) == [(2, "ray.worker.default", "idle")]
    assert fake_cluster.refusals(EVENTS) == ["{'CPU': 2.0}*3", "{'GPU': 1.0}*1"]
