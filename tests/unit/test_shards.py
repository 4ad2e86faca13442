"""The shards' runner (tests/shards.py): its table and closing line come from pytest's own JUnit
XML, and every test module is in exactly one shard."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests import shards

DEMO = '''
import pytest
def test_a(): pass
def test_b(): assert 0
@pytest.mark.skip
def test_c(): pass
class TestK:
    def test_d(self): pass
@pytest.fixture
def boom(): raise RuntimeError
def test_e(boom): pass
'''


def test_the_counts_and_times_are_pytests_own(tmp_path: Path) -> None:
    module = tmp_path / "test_demo_shard.py"
    module.write_text(DEMO)
    junit = tmp_path / "out.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", str(module)], cwd=tmp_path, capture_output=True)
    seconds, tests, counts = shards.tally([junit, tmp_path / "missing.xml"])
    # a failure and an error both fail the run; a skip is neither passed nor failed
    assert (counts.passed, counts.failed, counts.skipped) == (2, 2, 1)
    assert sum(tests.values()) == 5 and all(s >= 0 for s in seconds.values())
    lines = shards.table(seconds, tests)
    assert lines[-1].strip().endswith("s in all")


def test_a_class_is_counted_for_its_module() -> None:
    assert shards.module_of("tests.unit.test_shards") == "tests/unit/test_shards.py"
    assert shards.module_of("tests.unit.test_shards.Klass") == "tests/unit/test_shards.py"


def test_every_isolated_path_exists_and_no_module_is_in_both() -> None:
    for path in shards.ISOLATED:
        assert (shards.REPO / path).exists(), path


def test_an_isolated_module_with_the_shared_stack_has_its_head_on_a_network() -> None:
    """head_vm's own check, ahead of a run: a module in the isolated shard that asks for the
    `stack` or `head_vm` fixture must be marked head_on_a_network (else its head would take
    the host's Ray ports, which the other shard's heads use). Its tests marked engine_restart
    run alone whatever the shard."""
    for path in shards.ISOLATED:
        for module in sorted((shards.REPO / path).rglob("test_*.py")) if (
                shards.REPO / path).is_dir() else [shards.REPO / path]:
            text = module.read_text()
            if re.search(r"def test_\w+\([^)]*\b(stack|head_vm)\b", text):
                assert "pytest.mark.head_on_a_network" in text, module
