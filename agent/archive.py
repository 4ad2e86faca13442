"""The backup archive: one file, its parts checksummed, optionally encrypted, streamed.

    SYNTHO-AGENT-BACKUP 1\\n
    <header: one line of JSON>\\n            the manifest: parts with sizes and SHA-256,
                                            agent version, time, release; for an encrypted
                                            archive the salt and nonce prefix (not secret)
    <payload>                               the parts, back to back in the manifest's order:
                                            as they are, or encrypted in chunks

Encryption (AES-256-GCM from `cryptography`) is streamed: the payload is cut into 1 MiB
chunks, each sealed with its own nonce (a random prefix and the chunk's number) and the
header's hash, its number and whether it is the last as associated data. So a changed header,
a swapped, dropped or truncated chunk, or a wrong key is refused, and memory use is one chunk,
whatever the archive's size. The key is derived with scrypt from the key file's contents (a
passphrase or a random key) and the archive's salt.

Reading verifies everything (the key, every chunk, every part's checksum) while copying the
parts out to a directory; nothing is applied from an archive until it has been read whole.
Pure file I/O: no engine, no agent state.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"SYNTHO-AGENT-BACKUP 1\n"
FORMAT = 1
CHUNK = 1 << 20  # plaintext bytes per encrypted chunk
COPY = 1 << 20  # bytes per read when copying
SCRYPT = {"n": 1 << 15, "r": 8, "p": 1}  # about 32 MiB and a tenth of a second
MAX_HEADER = 1 << 20


class ArchiveError(Exception):
    """The archive cannot be used: damaged, tampered with, of another format, or the key is
    wrong. The message says which, in one line."""


@dataclass(frozen=True)
class Part:
    name: str  # a relative path: core.dump, secrets/core-secret-key, app.env ...
    size: int
    sha256: str


def file_part(name: str, path: Path) -> Part:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(COPY):
            digest.update(block)
            size += len(block)
    return Part(name, size, digest.hexdigest())


# ---- writing -----------------------------------------------------------------------------------

def write(out: IO[bytes], manifest: dict[str, Any], parts: list[tuple[Part, Path]],
          key: bytes | None) -> None:
    """The archive into `out`: the header (manifest + parts), then each part's bytes."""
    header: dict[str, Any] = {**manifest, "format": FORMAT, "encrypted": key is not None,
                              "parts": [vars(p) for p, _ in parts]}
    sealer = None
    derived = b""
    if key is not None:
        salt, prefix = secrets.token_bytes(16), secrets.token_bytes(8)
        derived = derive(key, salt)
        header["kdf"] = {"name": "scrypt", "salt": salt.hex(), **SCRYPT}
        header["cipher"] = {"name": "AES-256-GCM", "nonce_prefix": prefix.hex(),
                            "chunk": CHUNK, "key_check": _key_check(derived)}
    line = json.dumps(header, sort_keys=True).encode() + b"\n"
    out.write(MAGIC + line)
    if key is not None:
        sealer = _Sealer(out, derived, bytes.fromhex(header["cipher"]["nonce_prefix"]),
                         _aad(line))
    for _, path in parts:
        with path.open("rb") as f:
            while block := f.read(COPY):
                (sealer.write if sealer else out.write)(block)
    if sealer:
        sealer.close()


class _Sealer:
    """Encrypts a stream chunk by chunk: [length, 4 bytes][ciphertext + tag] each."""

    def __init__(self, out: IO[bytes], key: bytes, prefix: bytes, aad: bytes) -> None:
        self.out, self.aead, self.prefix, self.aad = out, AESGCM(key), prefix, aad
        self.buffer = bytearray()
        self.count = 0

    def write(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) > CHUNK:  # keep one back: the last chunk is marked as such
            self._seal(bytes(self.buffer[:CHUNK]), last=False)
            del self.buffer[:CHUNK]

    def close(self) -> None:
        self._seal(bytes(self.buffer), last=True)
        self.buffer.clear()

    def _seal(self, chunk: bytes, last: bool) -> None:
        sealed = self.aead.encrypt(_nonce(self.prefix, self.count), chunk,
                                   _chunk_aad(self.aad, self.count, last))
        self.out.write(struct.pack(">I", len(sealed)) + sealed)
        self.count += 1


def derive(key: bytes, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, **SCRYPT).derive(key)


def _key_check(derived: bytes) -> str:
    """Tells a wrong key from a damaged archive (no more help to a guesser than trying to
    decrypt the first chunk would be)."""
    return hmac.new(derived, b"syntho-agent backup key check", hashlib.sha256).hexdigest()[:32]


def _nonce(prefix: bytes, count: int) -> bytes:
    return prefix + struct.pack(">I", count)


def _aad(header_line: bytes) -> bytes:
    return hashlib.sha256(header_line).digest()


def _chunk_aad(aad: bytes, count: int, last: bool) -> bytes:
    return aad + struct.pack(">IB", count, 1 if last else 0)


# ---- reading -----------------------------------------------------------------------------------

def read_header(f: IO[bytes]) -> tuple[dict[str, Any], bytes]:
    """The header (and its line, for the cipher's associated data); f is left at the payload."""
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        if magic.startswith(b"SYNTHO-AGENT-BACKUP "):
            raise ArchiveError("it was written by a newer syntho-agent (archive format "
                               f"{magic[20:].strip().decode(errors='replace')}): restore it "
                               "with that version or newer")
        raise ArchiveError("it is not a syntho-agent backup (no header)")
    line = f.readline(MAX_HEADER)
    try:
        header = json.loads(line)
        parts = [Part(**p) for p in header["parts"]]
        if header["format"] != FORMAT or not isinstance(header["encrypted"], bool):
            raise ValueError
        for p in parts:
            _safe_name(p.name)
    except (ValueError, KeyError, TypeError):
        raise ArchiveError("its header is damaged") from None
    return header, line


def parts_of(header: dict[str, Any]) -> list[Part]:
    return [Part(**p) for p in header["parts"]]


def extract(path: Path, key: bytes | None, into: Path) -> dict[str, Any]:
    """Every part of the archive at path into the directory `into` (files 0600), each checked
    against its size and SHA-256, the key and every chunk too; the header. Raises ArchiveError
    at the first thing that does not hold (what was extracted is then the caller's to drop)."""
    with path.open("rb") as f:
        header, line = read_header(f)
        if header["encrypted"] and key is None:
            raise ArchiveError("it is encrypted: give its key (--encrypt-key-file or "
                               "SYNTHO_AGENT_BACKUP_KEY)")
        stream: Iterator[bytes]
        if header["encrypted"]:
            assert key is not None
            stream = _opened(f, header, line, key)
        else:
            stream = _blocks(f)
        _split(stream, parts_of(header), into)
    return header


def _blocks(f: IO[bytes]) -> Iterator[bytes]:
    while block := f.read(COPY):
        yield block


def _opened(f: IO[bytes], header: dict[str, Any], line: bytes, key: bytes) -> Iterator[bytes]:
    """The decrypted payload, chunk by chunk, each authenticated before it is given out."""
    try:
        kdf, cipher = header["kdf"], header["cipher"]
        derived = derive(key, bytes.fromhex(kdf["salt"]))
        prefix = bytes.fromhex(cipher["nonce_prefix"])
        check = str(cipher["key_check"])
    except (KeyError, ValueError, TypeError):
        raise ArchiveError("its header is damaged (encryption settings)") from None
    if not hmac.compare_digest(_key_check(derived), check):
        raise ArchiveError("it cannot be decrypted: the key is wrong")
    aead = AESGCM(derived)
    aad = _aad(line)
    count = 0
    while True:
        size = f.read(4)
        if len(size) < 4:
            raise ArchiveError("it is truncated (its last encrypted chunk is missing)")
        length = struct.unpack(">I", size)[0]
        sealed = f.read(length)
        if len(sealed) < length:
            raise ArchiveError(f"it is truncated (in encrypted chunk {count})")
        last = False
        try:
            chunk = aead.decrypt(_nonce(prefix, count), sealed, _chunk_aad(aad, count, False))
        except InvalidTag:
            try:
                chunk = aead.decrypt(_nonce(prefix, count), sealed, _chunk_aad(aad, count, True))
                last = True
            except InvalidTag:
                raise ArchiveError(f"it cannot be decrypted: chunk {count} was changed "
                                   "(damaged or tampered with)") from None
        yield chunk
        count += 1
        if last:
            if f.read(1):
                raise ArchiveError("it has bytes after its last chunk (tampered with)")
            return


def _split(stream: Iterator[bytes], parts: list[Part], into: Path) -> None:
    """Cut the payload into its parts, checking each one's size and checksum."""
    pending = b""
    for part in parts:
        target = into / _safe_name(part.name)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        digest = hashlib.sha256()
        left = part.size
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            while left:
                if not pending:
                    pending = next(stream, b"")
                    if not pending:
                        raise ArchiveError(f"it is truncated (in {part.name})")
                piece, pending = pending[:left], pending[left:]
                out.write(piece)
                digest.update(piece)
                left -= len(piece)
        if digest.hexdigest() != part.sha256:
            raise ArchiveError(f"{part.name} does not match its checksum (damaged or "
                               "tampered with)")
    if pending or next(stream, b""):
        raise ArchiveError("it has bytes after its last part (damaged or tampered with)")


def _safe_name(name: str) -> str:
    """A part's name as a relative path inside the extraction directory, never outside it."""
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ArchiveError(f"its header names a part outside the archive ({name!r})")
    return str(path)
