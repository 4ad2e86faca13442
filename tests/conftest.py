"""Test wiring shared by every suite: the real engine, the test images, clean-up, and an
environment without the agent's own variables.

A test that needs Docker fails (never skips) when the engine does not answer. The helpers the
fixtures use live in tests/support (shared with bench/).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
from _pytest.terminal import TerminalReporter

from tests import shards
from tests.images import build as image_build
from tests.support import summary
from tests.support.engine import connect
from tests.support.processes import default_signals
from tests.support.sandbox import Sandbox
from tests.support.vms import Lab, lab_of_vms


def pytest_configure(config: pytest.Config) -> None:
    """Every child a test starts gets default signal dispositions, however the suite was
    started (nohup, cron or a CI runner start it with SIGINT and SIGQUIT ignored, and children
    inherit an ignored signal: the SIGINT a test sends them would do nothing). And what tests
    note for the log is written in the summary."""
    default_signals()
    config.pluginmanager.register(_Notes(), "syntho-notes")


class _Notes:
    """What tests noted for the log (tests/support/summary.py: a fuzz's seed, the Pythons a
    test ran on), in every run's summary, `pytest -q` included."""

    def pytest_terminal_summary(self, terminalreporter: TerminalReporter) -> None:
        for who, line in sorted(summary.LINES.items()):
            terminalreporter.write_line(f"{who}: {line}")


@pytest.fixture(autouse=True)
def _no_agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SYNTHO_AGENT_* from the environment the tests run in reaches any test."""
    for key in list(os.environ):
        if key.startswith("SYNTHO_AGENT_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        return connect(timeout=120)
    except docker.errors.DockerException as exc:
        pytest.fail(f"the Docker engine does not answer ({exc}); start it (see .ci/run) and "
                    "run the tests again", pytrace=False)


@pytest.fixture(scope="session")
def images(docker_client: docker.DockerClient) -> dict[str, str]:
    """The test images' references, built first if their recipe changed (cached by hash)."""
    return image_build.build_all(docker_client)


@pytest.fixture(scope="session")
def vm_lab(docker_client: docker.DockerClient, images: dict[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The simulated VMs' network, registry and zipapp, made once for every module that uses
    VMs (each starts from four new VMs: `vm_lab.fresh()`)."""
    with lab_of_vms(docker_client, images, tmp_path_factory.mktemp("vms")) as lab:
        yield lab


@pytest.fixture
def sandbox(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[Sandbox]:
    with Sandbox(docker_client, tmp_path) as box:
        yield box


# Where the time goes, per module (setup, call and teardown of its tests; a module-scoped
# fixture counts for the module that first used it, a session-scoped one for the first module
# that asked for it). Printed after pytest's --durations, for whoever aims at the slow ones.
_MODULE_SECONDS: dict[str, float] = {}
_MODULE_TESTS: dict[str, int] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = report.nodeid.split("::", 1)[0]
    _MODULE_SECONDS[module] = _MODULE_SECONDS.get(module, 0.0) + report.duration
    if report.when == "call":
        _MODULE_TESTS[module] = _MODULE_TESTS.get(module, 0) + 1


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if not _MODULE_SECONDS:
        return
    terminalreporter.write_sep("=", "time per module (slowest first)")
    for line in shards.table(_MODULE_SECONDS, _MODULE_TESTS)[1:]:  # the rows, as the runner's
        terminalreporter.write_line(line)
