"""agent/deploy.py's table of roles: every command that converges a role finds its row."""

from __future__ import annotations

from agent.config import AppSettings, HeadSettings, RestoreSettings, WorkerSettings
from agent.deploy import ROLES


def test_every_command_that_converges_has_its_role() -> None:
    for settings in (HeadSettings, WorkerSettings, AppSettings, RestoreSettings):
        assert settings.command in ROLES, settings.command
    assert ROLES[RestoreSettings.command] is ROLES[AppSettings.command]
