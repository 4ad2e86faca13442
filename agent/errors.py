"""The agent's errors and their exit codes (documented in README).

Every error the agent expects is one of these, printed as a single line by the CLI.
"""

from __future__ import annotations

EXIT_USAGE = 2  # bad input: a flag, env variable or config-file value (click uses 2 too)
EXIT_ENVIRONMENT = 3  # the machine: engine absent or refused, data dir unreadable, port taken
EXIT_CONVERGE = 4  # the engine accepted the work but the stack did not become healthy in time
EXIT_LOCKED = 5  # another agent holds the data dir's lock


class AgentError(Exception):
    """An error with a one-line message that says what was wrong and what to do."""

    exit_code = EXIT_ENVIRONMENT


class UsageError(AgentError):
    exit_code = EXIT_USAGE


class EnvironmentProblem(AgentError):
    exit_code = EXIT_ENVIRONMENT


class ConvergeError(AgentError):
    exit_code = EXIT_CONVERGE


class LockedError(AgentError):
    exit_code = EXIT_LOCKED
