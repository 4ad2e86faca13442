"""What a user who installs the package gets is what the tests pass with.

requirements.txt pins the versions the tests run with (and the zipapp carries); pyproject.toml's
dependencies are what `pip install syntho-agent` (or `pip install -e .`) may choose. Every pin
must be allowed by pyproject, and pyproject must exclude the versions known to fail the tests.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.constants import REPO

# Versions the unit suite was run against (a scratch venv: `pip install --target DIR click==V`,
# then PYTHONPATH=DIR .venv/bin/python -m pytest tests/unit). click 8.2 words its errors
# differently: "Invalid value for '--head' (env var: 'SYNTHO_AGENT_HEAD')", not the agent's
# one line README promises (test_errors, test_fuzz_cli fail, 14 tests).
KNOWN_TO_PASS = {"click": ("8.1.0", "8.1.3", "8.1.7", "8.1.8")}
KNOWN_TO_FAIL = {"click": ("8.2.0", "8.2.1", "8.2.2", "8.3.0", "8.3.3", "8.4.2", "8.5.0",
                           "8.5.1")}


def pyproject_dependencies() -> dict[str, Requirement]:
    text = (REPO / "pyproject.toml").read_text()
    if sys.version_info >= (3, 11):
        import tomllib

        listed: list[str] = tomllib.loads(text)["project"]["dependencies"]
    else:  # the one array this test reads: `dependencies = [ "...", ... ]` under [project]
        project = text.split("[project]", 1)[1].split("\n[", 1)[0]
        block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", project, re.S | re.M)
        assert block, "no dependencies = [...] under [project] in pyproject.toml"
        listed = re.findall(r"\"([^\"]+)\"", block.group(1))
    return {canonicalize_name(r.name): r for r in map(Requirement, listed)}


def pinned() -> dict[str, Version]:
    """requirements.txt: NAME==VERSION lines (comments and blank lines aside)."""
    pins: dict[str, Version] = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and name and version, f"requirements.txt: not NAME==VERSION: {line!r}"
        pins[canonicalize_name(name.strip())] = Version(version.strip())
    return pins


def test_every_pin_of_requirements_txt_is_allowed_by_pyproject() -> None:
    deps, pins = pyproject_dependencies(), pinned()
    assert sorted(pins) == sorted(deps), "requirements.txt pins what pyproject depends on"
    wrong = {name: f"{version} not in {deps[name].specifier}" for name, version in pins.items()
             if not deps[name].specifier.contains(version, prereleases=True)}
    assert not wrong, wrong


def test_pyproject_excludes_the_versions_known_to_fail_the_tests() -> None:
    deps = pyproject_dependencies()
    allowed = {name: [v for v in versions if deps[name].specifier.contains(v)]
               for name, versions in KNOWN_TO_FAIL.items()}
    assert not any(allowed.values()), f"pyproject.toml allows versions that fail: {allowed}"


def test_pyproject_allows_the_versions_known_to_pass() -> None:
    deps, pins = pyproject_dependencies(), pinned()
    refused: dict[str, Any] = {name: [v for v in versions if not deps[name].specifier.contains(v)]
                               for name, versions in KNOWN_TO_PASS.items()}
    assert not any(refused.values()), f"pyproject.toml refuses versions that pass: {refused}"
    for name, versions in KNOWN_TO_PASS.items():  # the pin is one of those checked
        assert str(pins[name]) in versions, (name, pins[name])
