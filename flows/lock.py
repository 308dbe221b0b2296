"""One run at a time per workspace: `workspace_lock(root)` holds `.miniaturize/run.lock` for a run.

The lock is an OS file lock (`filelock`, flock on POSIX): the kernel releases it when its process ends,
even by SIGKILL, so a crashed run never blocks the next one. A second run in the same workspace waits up
to `wait_seconds` for it, then stops with `WorkspaceLocked`, which names the run that holds it
(`.miniaturize/run.lock.json`: pid, host, command, start time).

The holder adds to that file what a later run needs to clean up after it (`note`: its Prefect flow run and
MLflow run). The file is removed when the holder lets go, so a file found by the run that takes the lock was
left by a run that died holding it (SIGKILL, power loss): it is kept in `.miniaturize/killed/` until a
pipeline run has marked that run's Prefect and MLflow runs as crashed (`killed_runs`, `settled`,
`flows.pipeline.settle_killed_runs`), so a command that does not settle them (`stage`, `search`) loses nothing.
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


def info_path(root: Path) -> Path:
    return lock_path(root).with_suffix(".lock.json")


def holder(root: Path) -> dict:
    try:
        return json.loads(info_path(root).read_text())
    except (OSError, ValueError):
        return {}


def killed_dir(root: Path) -> Path:
    return root / ".miniaturize" / "killed"


def killed_runs(root: Path) -> list[tuple[Path, dict]]:
    """The records of runs that died holding the workspace and are not yet settled, oldest first."""
    found = []
    for path in sorted(killed_dir(root).glob("*.json")):
        try:
            found.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return found


def settled(path: Path) -> None:
    """The Prefect and MLflow runs of that killed run are marked ended: forget it."""
    path.unlink(missing_ok=True)


def note(root: Path, **fields) -> None:
    """Add `fields` to the holder's record (call it while holding the lock)."""
    write_record(root, holder(root) | fields)


def write_record(root: Path, record: dict) -> None:
    """Written whole, then renamed: a kill mid-write leaves the previous record, never half of one."""
    partial = info_path(root).with_suffix(".json.partial")
    partial.write_text(json.dumps(record))
    os.replace(partial, info_path(root))


@contextmanager
def workspace_lock(root: Path, what: str, wait_seconds: float = 0.0):
    """Hold the workspace for the block (see the module's docstring)."""
    from filelock import FileLock, Timeout

    path = lock_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=wait_seconds, poll_interval=min(1.0, max(wait_seconds, 0.05)))
    except Timeout:
        held = holder(root)
        by = (
            (
                f"{held.get('what', 'a run')} (pid {held.get('pid', '?')} on {held.get('host', '?')}, "
                f"started {held.get('started', '?')})"
            )
            if held
            else "another run"
        )
        raise WorkspaceLocked(
            f"the workspace {root} is in use by {by}; nothing was changed. Wait for it to finish, "
            f"or run again with --wait SECONDS to queue behind it"
        ) from None
    info = info_path(root)
    if info.exists():  # its run never reached the `finally` below
        killed_dir(root).mkdir(exist_ok=True)
        os.replace(info, killed_dir(root) / f"{time.time_ns()}.json")
    try:
        write_record(
            root,
            {
                "what": what,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": " ".join(sys.argv[:3]),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        yield
    finally:
        info.unlink(missing_ok=True)
        lock.release()
