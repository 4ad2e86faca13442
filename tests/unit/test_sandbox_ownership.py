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


def test_a_snapshot_keeps_only_labelled_containers_and_named_volumes() -> None:
    """engine_snapshot: an unlabelled container (another test's --rm helper, a build's
    intermediate) and an anonymous volume are nobody's under test; the agent's throw-away
    containers and a sandbox's are kept."""
    from tests.integration.agent_helpers import ANONYMOUS, ours

    assert ours({"io.syntho.agent.temporary": "ray-version", "io.syntho.agent.instance": "x"})
    assert ours({"io.syntho.agent.check": "true"}) and ours({"syntho-test.owner": "t123456"})
    assert not ours(None) and not ours({}) and not ours({"maintainer": "someone"})
    assert ANONYMOUS.fullmatch("a" * 64) and not ANONYMOUS.fullmatch("syntho-database-data")
