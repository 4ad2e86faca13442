"""Which engine objects a "nothing changed" snapshot leaves out when the suite runs in shards:
only another test process's (tests/support/sandbox.py, owned_elsewhere)."""

from __future__ import annotations

from pathlib import Path

from tests.support.constants import AGENT_INSTANCE_LABEL, TEST_LABEL
from tests.support.sandbox import Sandbox, owned_elsewhere


def test_only_another_processs_sandboxes_are_left_out(tmp_path: Path) -> None:
    mine = Sandbox(None, tmp_path)  # no engine call is made
    instance = mine.instance("app")
    other = "tf00ba4"  # a sandbox id this process never made
    assert other not in Sandbox.made_here
    # another shard's: its test label, or an agent instance named after its sandbox
    assert owned_elsewhere({TEST_LABEL: other})
    assert owned_elsewhere({AGENT_INSTANCE_LABEL: f"{other}app"})
    # this process's own, and whatever no sandbox made, stay in every snapshot
    assert not owned_elsewhere({TEST_LABEL: mine.id})
    assert not owned_elsewhere({AGENT_INSTANCE_LABEL: instance})
    assert not owned_elsewhere({AGENT_INSTANCE_LABEL: ""})  # a real VM's agent
    assert not owned_elsewhere({AGENT_INSTANCE_LABEL: "chk"})  # a test's own fixed name
    assert not owned_elsewhere({"io.syntho.agent.managed": "true"})
    assert not owned_elsewhere(None)
