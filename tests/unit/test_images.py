import pytest

from agent.images import split_tag


@pytest.mark.parametrize("ref,expected", [
    ("syntho-ray", ("syntho-ray", "latest")),
    ("syntho-ray:1.2", ("syntho-ray", "1.2")),
    ("reg.example:5000/syntho/ray:1", ("reg.example:5000/syntho/ray", "1")),
    ("reg.example:5000/syntho/ray", ("reg.example:5000/syntho/ray", "latest")),
    ("ray@sha256:" + "a" * 64, ("ray@sha256:" + "a" * 64, None)),
])
def test_split_tag(ref: str, expected: tuple[str, str | None]) -> None:
    assert split_tag(ref) == expected
