import os
import stat
from pathlib import Path

import pytest

from agent import store
from agent.errors import EnvironmentProblem


def test_secret_is_generated_once_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    first, created = store.secret(path, store.token_hex(32))
    assert created and len(first) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created = store.secret(path, store.token_hex(32))
    assert again == first and not created


@pytest.mark.parametrize("content", ["", "\n", "a\nb\n"])
def test_damaged_secret_is_an_error_never_replaced(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(EnvironmentProblem, match="damaged"):
        store.secret(path, store.token_hex())
    assert path.read_text() == content


def test_unreadable_secret_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.mkdir()  # reading a directory fails even as root
    with pytest.raises(EnvironmentProblem, match=str(path)):
        store.read_secret(path)


def test_write_atomic_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    store.write_atomic(path, "A=1\n")
    store.write_atomic(path, "A=2\n")
    assert path.read_text() == "A=2\n"
    assert os.listdir(tmp_path) == ["app.env"]


def test_fernet_key_is_valid() -> None:
    from cryptography.fernet import Fernet

    Fernet(store.fernet_key().encode())
