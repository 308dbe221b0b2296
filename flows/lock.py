"""One run at a time per workspace: `workspace_lock(root)` holds `.miniaturize/run.lock` for a run.

The lock is an OS file lock (`filelock`, flock on POSIX): the kernel releases it when its process ends,
even by SIGKILL, so a crashed run never blocks the next one. A second run in the same workspace waits up
to `wait_seconds` for it, then stops with `WorkspaceLocked`, which names the run that holds it
(`.miniaturize/run.lock.json`: pid, host, command, start time).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path


class WorkspaceLocked(RuntimeError):
    """Another run holds the workspace."""


def lock_path(root: Path) -> Path:
    return root / ".miniaturize" / "run.lock"


def holder(root: Path) -> dict:
    try:
        return json.loads(lock_path(root).with_suffix(".lock.json").read_text())
    except (OSError, ValueError):
        return {}


@contextmanager
def workspace_lock(root: Path, what: str, wait_seconds: float = 0.0):
    from filelock import FileLock, Timeout

    path = lock_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=wait_seconds, poll_interval=min(1.0, max(wait_seconds, 0.05)))
    except Timeout:
        held = holder(root)
        by = (f"{held.get('what', 'a run')} (pid {held.get('pid', '?')} on {held.get('host', '?')}, "
              f"started {held.get('started', '?')})") if held else "another run"
        raise WorkspaceLocked(f"the workspace {root} is in use by {by}; nothing was changed. Wait for it to finish, "
                              f"or run again with --wait SECONDS to queue behind it") from None
    info = path.with_suffix(".lock.json")
    try:
        info.write_text(json.dumps({"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                                    "command": " ".join(sys.argv[:3]),
                                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
        yield
    finally:
        info.unlink(missing_ok=True)
        lock.release()
