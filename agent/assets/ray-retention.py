"""Ray's temp dir kept bounded (run by syntho-agent inside a Ray container, with its python3).

Ray writes its session logs, one file per worker process, under /tmp/ray and prunes none of
them (a restarted container also leaves its old sessions behind). This removes, and only this:
- every session directory but the current one (session_latest's): its processes are gone;
- in the current session's logs (and logs/old), the files of processes that are no longer
  alive and the files Ray rotated aside, once older than KEEP_DAYS;
- then, while the whole temp dir is above CAP_BYTES, more of those same files, oldest first.
The logs of live processes, spilled objects and everything else are never touched. Prints one
JSON line: what it found and freed. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time

ROOT = os.environ.get("RAY_TEMP", "/tmp/ray")
# The pid at the end of a process's log file name: worker-<id>-<job>-<pid>.out,
# python-core-worker-<id>_<pid>.log, raylet.<n>.err ... (a rotated copy ends in .<n>).
PID = re.compile(r"[-_](\d+)\.(?:out|err|log)(?:\.\d+)?$")
ROTATED = re.compile(r"\.(?:out|err|log)\.\d+$")


def size_of(path: str) -> int:
    if os.path.islink(path) or not os.path.isdir(path):
        try:
            return os.lstat(path).st_blocks * 512
        except OSError:
            return 0
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except OSError:
                pass
    return total


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def prunable(logs: str) -> list[tuple[float, str, int]]:
    """(mtime, path, bytes) of the files this may remove, in the current session's logs."""
    found = []
    for folder in (logs, os.path.join(logs, "old")):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            match = PID.search(name)
            dead = match is not None and not alive(int(match.group(1)))
            if dead or ROTATED.search(name) or folder.endswith("old"):
                st = os.lstat(path)
                found.append((st.st_mtime, path, st.st_blocks * 512))
    return sorted(found)


def main() -> None:
    keep = float(os.environ.get("KEEP_DAYS", "7")) * 86400
    cap = int(os.environ.get("CAP_BYTES", str(10 * 1024 ** 3)))
    before = freed = files = sessions = 0
    current = None
    if os.path.isdir(ROOT):
        before = size_of(ROOT)
        latest = os.path.join(ROOT, "session_latest")
        current = os.path.realpath(latest) if os.path.exists(latest) else None
        for name in sorted(os.listdir(ROOT)):
            path = os.path.join(ROOT, name)
            if (name.startswith("session_") and name != "session_latest"
                    and os.path.isdir(path) and not os.path.islink(path)
                    and os.path.realpath(path) != current):
                freed += size_of(path)
                shutil.rmtree(path, ignore_errors=True)
                sessions += 1
    candidates = prunable(os.path.join(current, "logs")) if current else []
    now, kept = time.time(), []
    for mtime, path, size in candidates:
        if now - mtime > keep and _remove(path):
            freed += size
            files += 1
        else:
            kept.append((mtime, path, size))
    total = before - freed
    for _, path, size in kept:  # oldest first
        if total <= cap:
            break
        if _remove(path):
            freed += size
            files += 1
            total -= size
    after = size_of(ROOT) if os.path.isdir(ROOT) else 0
    print(json.dumps({"root": ROOT, "before": before, "after": after, "freed": freed,
                      "files": files, "sessions": sessions}))


def _remove(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
    sys.stdout.flush()
