"""The agent's metrics file (agent/metrics.py) and the alert rules that read it
(agent/assets/syntho-alerts.yml), judged by Prometheus' own promtool (Debian's `prometheus`
package; .ci/run installs it): the file is valid exposition text, and each alert fires on its
cause and clears without it, fed with the very series names and labels the agent writes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import metrics

RULES = Path(__file__).parents[2] / "agent" / "assets" / metrics.RULES_ASSET
NOW = 1_800_000_000.0
TARGET = {"instance": "vm-a:9100", "job": "syntho-nodes"}  # what Prometheus adds to a scrape


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: install Debian's prometheus package (.ci/run does)")
    return found


def report(schedule: int | None = None, **changes: Any) -> dict[str, Any]:
    """A status report of a VM that runs a worker and the app, everything well (backups
    every `schedule` seconds by the installed timer, if given)."""
    base: dict[str, Any] = {
        "roles": ["worker", "app"], "ready": True,
        "containers": [
            {"name": "ray-worker", "role": "worker", "service": "ray-worker", "ready": True,
             "restart_count": 0},
            {"name": "syntho-core", "role": "app", "service": "core", "ready": True,
             "restart_count": 2}],
        "ray": {"worker": {"joined": True, "answers": True, "matches_head": True},
                "app": {"alive": 3, "answers": True, "head_runs": {"release": "r1"}}},
        "releases": {"app": {"name": "r1", "state": "healthy"}},
        "ray_tls": {"encrypted": True,
                    "certificate": {"not_after": "2027-01-15T00:00:00+00:00"},
                    "ca": {"not_after": "2050-01-01T00:00:00+00:00"}},
        "https": {"certificate": {"not_after": "2027-03-01T00:00:00+00:00"}},
        "disk": {"filesystems": [{"what": "the data dir", "path": "/var/lib/syntho-agent",
                                  "used_share": 0.42, "free_bytes": 5 * 1024**3}],
                 "volumes": {"syntho-database-data": 123456},
                 "writable_layers": {"ray-worker": 7890},
                 "backups": {"count": 2, "bytes": 4096,
                             "newest_created": "2027-01-10T03:00:00Z",
                             "schedule_seconds": schedule}},
    }
    base.update(changes)
    return base


RUNS = {"worker": {"ended": NOW - 60, "seconds": 12.5, "exit_code": 0},
        "backup": {"ended": NOW - 3600, "seconds": 30, "exit_code": 4}}


def test_the_file_is_valid_exposition_text_with_every_part_of_the_report(tmp_path: Path) -> None:
    text = metrics.render(metrics.samples(report(), RUNS, NOW))
    lint = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    for line in (
            'syntho_agent_container_restarts_total{container="syntho-core",role="app",'
            'service="core"} 2',
            'syntho_agent_ray_node_alive{role="worker"} 1',
            'syntho_agent_release_matches_head{role="app"} 1',
            'syntho_agent_certificate_expiry_timestamp_seconds{certificate="ray_node"} 1799971200',
            'syntho_agent_disk_used_ratio{what="the data dir",path="/var/lib/syntho-agent"} 0.42',
            "syntho_agent_backup_last_success_timestamp_seconds 1799550000",
            'syntho_agent_last_run_success{command="backup"} 0',
            'syntho_agent_last_run_exit_code{command="backup"} 4',
            f"syntho_agent_sampled_timestamp_seconds {int(NOW)}"):
        assert line in text.splitlines(), line
    assert text.count("# TYPE syntho_agent_last_run_success gauge") == 1


def test_a_run_is_recorded_and_written_with_the_rules_beside_it(tmp_path: Path) -> None:
    metrics.record_run(tmp_path, "worker", started=NOW - 10, exit_code=0, now=NOW)
    metrics.record_run(tmp_path, "backup", started=NOW - 5, exit_code=3, now=NOW)
    path = metrics.write(tmp_path, None, now=NOW)
    text = path.read_text()
    assert 'syntho_agent_last_run_duration_seconds{command="worker"} 10' in text
    assert 'syntho_agent_last_run_exit_code{command="backup"} 3' in text
    assert "syntho_agent_ready" not in text  # no report: the engine was not asked
    assert (tmp_path / "metrics" / metrics.RULES_ASSET).read_text() == RULES.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o644"  # node-exporter runs as nobody


def series(sample_report: dict[str, Any], family: str, values: str,
           runs: dict[str, Any] | None = None, **match: str) -> dict[str, str]:
    """The promtool input series of a family the agent writes for sample_report (the one
    whose labels include `match`), with Prometheus' target labels."""
    found = [labels for f, labels, _ in metrics.samples(sample_report, runs or {}, NOW)
             if f == family and match.items() <= labels.items()]
    assert found, f"the agent writes no {family} {match}"
    labels = {**found[0], **TARGET}
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{family}{{{text}}}", "values": values}


# Each case: the alert, the input series, when it must fire, when it must be clear again.
# Values: promtool's expanding notation, one value per minute ("a x n" is n+1 values).
CASES = {
    "SynthoVMUnreachable": (
        [{"series": 'up{instance="vm-a:9100",job="syntho-nodes"}', "values": "1x3 0x5 1x10"}],
        "7m", "12m", {}),
    "SynthoRayNodeDown": (
        [series(report(), "syntho_agent_ray_node_alive", "1x2 0x5 1x10", role="worker")],
        "6m", "10m", {"role": "worker"}),
    "SynthoRayNodesFewer": (
        [series(report(ray={"head": {"nodes": [], "alive": 4, "answers": True}}),
                "syntho_agent_ray_alive_nodes", "4x5 3x5 4x10", role="head")],
        "9m", "14m", {"role": "head"}),
    "SynthoRayHeadUnhealthy": (
        [series(report(ray={"head": {"nodes": [], "alive": 4, "answers": True}}),
                "syntho_agent_ray_dashboard_answers", "1x2 0x5 1x10", role="head")],
        "6m", "10m", {"role": "head"}),
    "SynthoContainerRestarting": (
        [series(report(), "syntho_agent_container_restarts_total", "2x5 3 4 5 5x30",
                container="syntho-core")],
        "9m", "30m", {"container": "syntho-core", "role": "app", "service": "core"}),
    "SynthoNotReady": (
        [series(report(), "syntho_agent_ready", "1x2 0x15 1x10")],
        "14m", "19m", {}),
    "SynthoDiskFilling": (
        [series(report(), "syntho_agent_disk_used_ratio", "0.5x2 0.9x10 0.6x10")],
        "9m", "14m", {"what": "the data dir", "path": "/var/lib/syntho-agent"}),
    "SynthoBackupStale": (
        # The newest backup 20 h old at first (0 is now on promtool's clock): a day old at
        # 240m, alerting an hour later; a new backup at 400m.
        [series(report(), "syntho_agent_backup_last_success_timestamp_seconds",
                "-72000x400 24000x60")],
        "330m", "420m", {}),
    # With the timer `install app --backup-every 1h` wrote: twice that, not a day. The newest
    # backup an hour old at first: two hours old at 60m, alerting an hour later; a new one at 300m.
    "SynthoBackupStale/scheduled": (
        [series(report(schedule=3600), "syntho_agent_backup_last_success_timestamp_seconds",
                "-3600x300 18000x60"),
         series(report(schedule=3600), "syntho_agent_backup_schedule_seconds", "3600x360")],
        "125m", "305m", {}),
    "SynthoCertificateExpiring": (
        [series(report(), "syntho_agent_certificate_expiry_timestamp_seconds",
                "2592000x2 864000x3 31536000x3", certificate="ray_node")],
        "4m", "8m", {"certificate": "ray_node"}),
    "SynthoReleaseDiffers": (
        [series(report(), "syntho_agent_release_matches_head", "1x2 0x20 1x5", role="worker")],
        "20m", "24m", {"role": "worker"}),
    "SynthoRunFailed": (
        [series(report(), "syntho_agent_last_run_success", "1x2 0x3 1x3", RUNS,
                command="backup")],
        "3m", "8m", {"command": "backup"}),
    "SynthoAgentSilent": (
        # Written every minute, then not for 20 minutes (a stopped watcher), then again.
        [series(report(), "syntho_agent_sampled_timestamp_seconds",
                "0+60x5 300x20 1560+60x5")],
        "24m", "29m", {}),
}


def test_every_rule_has_a_case() -> None:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    assert sorted(r["alert"] for r in rules) == sorted({case.split("/")[0] for case in CASES})


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_alert_fires_on_its_cause_and_clears_without_it(case: str, tmp_path: Path) -> None:
    inputs, fires, clears, labels = CASES[case]
    alert = case.split("/")[0]
    # The annotations' templates are checked by `promtool check rules`; promtool's test
    # compares them word for word, so this copy has none.
    lint = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    severity = next(r["labels"]["severity"] for r in rules["groups"][0]["rules"]
                    if r["alert"] == alert)
    expected = {**labels, **TARGET, "severity": severity}
    test = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": inputs,
        "alert_rule_test": [
            {"eval_time": fires, "alertname": alert,
             "exp_alerts": [{"exp_labels": expected}]},
            {"eval_time": clears, "alertname": alert, "exp_alerts": []}]}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    run = subprocess.run([promtool(), "test", "rules", "test.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_run_that_fails_is_recorded_with_its_exit_code_and_still_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.engine import Engine
    from agent.errors import ConvergeError

    monkeypatch.setattr(Engine, "connect", classmethod(lambda cls: None))  # no engine asked
    said: list[str] = []
    with metrics.recorded(tmp_path, "", "app", said.append):
        pass
    with pytest.raises(ConvergeError), metrics.recorded(tmp_path, "", "backup", said.append):
        raise ConvergeError("the backend did not become healthy")
    found = metrics.runs(tmp_path)
    assert found["app"]["exit_code"] == 0 and found["backup"]["exit_code"] == 4
    text = (tmp_path / "metrics" / metrics.FILE).read_text()
    assert 'syntho_agent_last_run_success{command="backup"} 0' in text
    assert 'syntho_agent_last_run_success{command="app"} 1' in text
    assert said == []


def test_grafana_and_prometheus_urls_reach_the_heads_dashboard_and_nothing_else() -> None:
    """--grafana-url and --prometheus-url: the environment Ray's dashboard reads for its
    metrics tab, on the head's Ray container only; not given, the head is as before."""
    from agent.config import HeadSettings
    from agent.roles import ray

    plain = ray.head_spec(HeadSettings(), "t" * 64)
    given = ray.head_spec(HeadSettings(grafana_url="https://grafana.example:3000",
                                       prometheus_url="http://10.0.0.9:9090"), "t" * 64)
    env = dict(given.containers[0].env)
    assert env["RAY_GRAFANA_HOST"] == env["RAY_GRAFANA_IFRAME_HOST"] == (
        "https://grafana.example:3000")
    assert env["RAY_PROMETHEUS_HOST"] == "http://10.0.0.9:9090"
    assert not any(k.startswith(("RAY_GRAFANA", "RAY_PROMETHEUS"))
                   for c in plain.containers for k, _ in c.env)
    assert [c.env for c in plain.containers[1:]] == [c.env for c in given.containers[1:]]


def test_a_write_killed_before_leaves_no_temporary_file_for_long(tmp_path: Path) -> None:
    import os

    where = tmp_path / "metrics"
    where.mkdir()
    old, new = where / ".syntho_agent.prom.a1b2c3", where / ".runs.json.d4e5f6"
    for p in (old, new):
        p.write_text("half")
    os.utime(old, (NOW - 3600, NOW - 3600))
    os.utime(new, (NOW - 60, NOW - 60))
    metrics.write(tmp_path, None, now=NOW)
    assert not old.exists() and new.exists()  # a younger one may be another run's, writing


def test_what_the_metrics_cannot_tell_never_fails_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A report the file cannot be made of (a damaged backup's header, an engine's odd
    answer) is one line; the run it follows ends as it would have."""
    odd = report()
    odd["disk"]["backups"]["newest_created"] = "not a time"
    assert "backup_last_success" not in metrics.render(metrics.samples(odd, {}, NOW))
    monkeypatch.setattr(metrics, "_report", lambda *args, **kw: {"containers": [{"name": "x"}]})
    said: list[str] = []
    with metrics.recorded(tmp_path, "", "worker", said.append):
        pass
    assert said == ["metrics: not written (KeyError: 'ready')"]
    assert metrics.runs(tmp_path)["worker"]["exit_code"] == 0
