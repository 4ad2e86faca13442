"""Image references, split by the SDK's rules (agent/engine.py): what a pull asks the engine
for, and which registry a reference names (so that only its own registry gets the login)."""

import pytest

from agent.engine import registry_of, split_reference

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize("ref,expected", [
    ("syntho-ray", ("syntho-ray", "latest")),
    ("syntho-ray:1.2", ("syntho-ray", "1.2")),
    ("reg.example:5000/syntho/ray:1", ("reg.example:5000/syntho/ray", "1")),
    ("reg.example:5000/syntho/ray", ("reg.example:5000/syntho/ray", "latest")),
    # A digest is pulled as such: the engine takes it in place of a tag.
    ("ray@" + DIGEST, ("ray", DIGEST)),
    ("host:5000/syntho/ray@" + DIGEST, ("host:5000/syntho/ray", DIGEST)),
    ("host:5000/repo:tag", ("host:5000/repo", "tag")),
    ("localhost/repo", ("localhost/repo", "latest")),
    ("localhost:5000/repo:2", ("localhost:5000/repo", "2")),
    ("ray", ("ray", "latest")),
])
def test_split_reference(ref: str, expected: tuple[str, str]) -> None:
    assert split_reference(ref) == expected


@pytest.mark.parametrize("ref,expected", [
    ("ray", None),
    ("ray:1.2", None),
    ("syntho/ray:1", None),
    ("ray@" + DIGEST, None),
    ("host:5000/repo:tag", "host:5000"),
    ("host:5000/repo@" + DIGEST, "host:5000"),
    ("reg.example/syntho/ray", "reg.example"),
    ("localhost/repo", "localhost"),
    ("localhost:5000/repo", "localhost:5000"),
    ("127.0.0.1:5000/syntho/ray:1", "127.0.0.1:5000"),
    ("localhost", None),  # a bare name, not a registry
    ("host:5000", None),  # "host" tagged 5000
])
def test_registry_of(ref: str, expected: str | None) -> None:
    assert registry_of(ref) == expected
