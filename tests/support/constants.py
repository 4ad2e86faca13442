"""Values every suite (and bench/) shares."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
# The label on the engine objects a test makes outside the agent (its own are labelled by it).
TEST_LABEL = "syntho-test.owner"
# The label the agent puts on everything it makes, valued with the --instance.
AGENT_INSTANCE_LABEL = "io.syntho.agent.instance"
# This machine refuses nofile 65536 (see README); tests and benchmarks use what it allows.
NOFILE = os.environ.get("SYNTHO_TEST_NOFILE", "20000")
