"""Keeping secrets out of what the agent prints and writes: which values are secret, and
their replacement by *** in any text (log lines, health output, error messages)."""

from __future__ import annotations

import re
from collections.abc import Iterable

_SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|LICENSE|_KEY", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"://[^:/@\s]+:([^@/\s]+)@")


def secrets_in_env(env: Iterable[str]) -> set[str]:
    """The secret values of a container's environment ("KEY=value" items): those of variables
    named like secrets, and passwords inside URLs."""
    values: set[str] = set()
    for item in env:
        key, _, value = item.partition("=")
        if _SECRET_KEY.search(key) and len(value) >= 4:
            values.add(value)
        values.update(m.group(1) for m in _URL_PASSWORD.finditer(value))
    return values


def redact(text: str, secrets: Iterable[str]) -> str:
    """text with every secret replaced by ***, longest first (one may contain another)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
