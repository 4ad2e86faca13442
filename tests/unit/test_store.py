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


def test_a_dry_run_holds_every_write_in_memory_and_reads_them_back(tmp_path: Path) -> None:
    """Inside store.dry_run nothing is made, written or removed; the writes are held with how
    the run would come by them, and read_secret sees them (a later step reads what an earlier
    one would have written)."""
    kept = tmp_path / "kept"
    kept.write_text("old\n")
    before = sorted(tmp_path.rglob("*"))
    with store.dry_run() as held:
        folder = store.ensure_dir(tmp_path / "secrets", exact=True)
        value, created = store.secret(folder / "token", store.token_hex(8))
        assert created and store.read_secret(folder / "token") == value
        again, created = store.secret(folder / "token", store.token_hex(8))
        assert again == value and not created
        store.write_atomic(kept, "new\n", how="restore it from the container c")
        store.write_with(tmp_path / "blob", 0o644, lambda f: f.write(b"\x00\x01"))
        store.remove(kept)
    assert sorted(tmp_path.rglob("*")) == before and kept.read_text() == "old\n"
    assert held.files == {
        folder / "token": store.Pending(f"{value}\n".encode(), "generate it"),
        kept: store.Pending(b"new\n", "restore it from the container c"),
        tmp_path / "blob": store.Pending(b"\x00\x01")}
    store.write_atomic(kept, "after\n")  # the dry run is over: writes are made again
    assert kept.read_text() == "after\n"
