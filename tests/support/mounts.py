"""A small file system of a test's own: a tmpfs mounted for the length of a block."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """path made and a tmpfs of `size` (mount's units: 1m, 3g) mounted there; unmounted after,
    pass or fail. Memory is spent only on what is written."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
