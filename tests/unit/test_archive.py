"""The backup archive format: round trips, and every way an archive can be wrong refused."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from agent import archive

KEY = b"a passphrase kept off the VM"


def make(tmp_path: Path, key: bytes | None, big: int = 3 * archive.CHUNK + 123) -> Path:
    src = tmp_path / "src"
    (src / "secrets").mkdir(parents=True)
    (src / "core.dump").write_bytes(os.urandom(big))
    (src / "secrets" / "core-secret-key").write_text("k" * 44 + "\n")
    (src / "app.env").write_text("A='b c'\n")
    names = ["core.dump", "secrets/core-secret-key", "app.env"]
    parts = [(archive.file_part(n, src / n), src / n) for n in names]
    out = tmp_path / "backup.syntho"
    with out.open("wb") as f:
        archive.write(f, {"created": "2026-11-26T10:00:00Z", "agent": "0.1.0"}, parts, key)
    return out


@pytest.mark.parametrize("key", [None, KEY])
def test_round_trip(tmp_path: Path, key: bytes | None) -> None:
    path = make(tmp_path, key)
    into = tmp_path / "out"
    header = archive.extract(path, key, into)
    assert header["encrypted"] is (key is not None) and header["agent"] == "0.1.0"
    for name in ("core.dump", "secrets/core-secret-key", "app.env"):
        assert (into / name).read_bytes() == (tmp_path / "src" / name).read_bytes()
        assert (into / name).stat().st_mode & 0o777 == 0o600
    if key is not None:  # the secrets are not readable in the file
        assert b"k" * 44 not in path.read_bytes() and b"A='b c'" not in path.read_bytes()


NAMES = ("core.dump", "secrets/core-secret-key", "app.env")


@pytest.mark.parametrize("key", [None, KEY])
def test_an_empty_last_chunk_and_a_small_archive(tmp_path: Path, key: bytes | None) -> None:
    for size in (0, archive.CHUNK - 51, archive.CHUNK):  # with the two small parts: edges
        path = make(tmp_path / str(size), key, big=size)
        into = tmp_path / f"out{size}"
        archive.extract(path, key, into)
        src = tmp_path / str(size) / "src"
        extracted = sorted(str(p.relative_to(into)) for p in into.rglob("*") if p.is_file())
        assert extracted == sorted(NAMES), size
        for name in NAMES:  # byte for byte what went in
            assert (into / name).read_bytes() == (src / name).read_bytes(), (size, name)
        assert (into / "core.dump").stat().st_size == size


def flip(path: Path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("key,damage,message", [
    (KEY, "wrong key", "the key is wrong"),
    (None, "flip", "does not match its checksum"),
    (KEY, "flip", "cannot be decrypted"),
    (None, "truncate", "truncated"),
    (KEY, "truncate", "truncated"),
    (KEY, "drop last chunk", "truncated"),
    (None, "append", "bytes after"),
    (KEY, "append", "bytes after"),
    (KEY, "header", "cannot be decrypted"),  # a changed header is authenticated data
    (None, "newer", "newer syntho-agent"),
    (None, "not a backup", "not a syntho-agent backup"),
    (None, "escape", "outside the archive"),
    (KEY, "no key", "it is encrypted"),
])
def test_a_bad_archive_is_refused(tmp_path: Path, key: bytes | None, damage: str,
                                  message: str) -> None:
    path = make(tmp_path, key)
    data = path.read_bytes()
    given = key
    if damage == "wrong key":
        given = b"not the passphrase"
    elif damage == "flip":
        flip(path, 1000)
    elif damage == "truncate":
        path.write_bytes(data[:-5000])
    elif damage == "drop last chunk":
        # the last chunk holds the small parts: cut at a chunk boundary
        head_end = data.index(b"\n", len(archive.MAGIC)) + 1
        pos, chunks = head_end, []
        while pos < len(data):
            size = int.from_bytes(data[pos:pos + 4], "big")
            chunks.append((pos, pos + 4 + size))
            pos += 4 + size
        path.write_bytes(data[:chunks[-1][0]])
    elif damage == "append":
        path.write_bytes(data + b"x")
    elif damage == "header":
        path.write_bytes(data.replace(b'"agent": "0.1.0"', b'"agent": "0.1.1"', 1))
    elif damage == "newer":
        path.write_bytes(b"SYNTHO-AGENT-BACKUP 2\n" + data[len(archive.MAGIC):])
    elif damage == "not a backup":
        path.write_bytes(b"PK\x03\x04" + data)
    elif damage == "escape":
        head_end = data.index(b"\n", len(archive.MAGIC)) + 1
        header = json.loads(data[len(archive.MAGIC):head_end])
        header["parts"][2]["name"] = "../escaped"
        path.write_bytes(archive.MAGIC + json.dumps(header).encode() + b"\n" + data[head_end:])
    elif damage == "no key":
        given = None
    with pytest.raises(archive.ArchiveError, match=message):
        archive.extract(path, given, tmp_path / "out")
    assert not (tmp_path / "escaped").exists()


def test_memory_is_one_chunk_whatever_the_size(tmp_path: Path) -> None:
    """The sealer keeps at most one chunk (plus the one being filled) in memory."""
    sink = io.BytesIO()
    sealer = archive._Sealer(sink, b"k" * 32, b"p" * 8, b"a" * 32)
    for _ in range(20):
        sealer.write(b"x" * (archive.CHUNK // 2 + 7))
        assert len(sealer.buffer) <= archive.CHUNK
    sealer.close()
