"""Content-addressed stage keys, and the record that lets an unchanged stage be skipped.

A stage's key hashes its name, its config slice, the key of the stage before it (or of the earlier stage
its record names in `after`), the sha256 of every
input file it reads and of the source of the components it runs. After a stage finishes, its key, the
sha256 of its outputs, its metrics and the MLflow run that produced it are written to
`.miniaturize/<task>/stages/<stage>.json` (`StageCache(workspace.state)`). The next run skips the stage when the key is the same and every
output still has the recorded hash; otherwise it runs it (and, because keys chain, every stage after it).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.config import section_hash
from components.kit.hashing import file_sha256


def tree_sha256(path: Path) -> str | None:
    """sha256 of a file, or of a folder's sorted (relative name, file sha256) pairs; None if missing."""
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(f"{item.relative_to(path).as_posix()}\0{file_sha256(item)}\n".encode())
    return digest.hexdigest()


def hashes(paths: dict[str, Path]) -> dict[str, str | None]:
    return {name: tree_sha256(path) for name, path in sorted(paths.items())}


def stage_key(
    name: str,
    config: dict,
    parent_key: str,
    inputs: dict[str, str | None],
    code: dict[str, str | None],
    extra: dict | None = None,
) -> str:
    return section_hash(
        {"stage": name, "config": config, "parent": parent_key, "inputs": inputs, "code": code, "extra": extra or {}}
    )


@dataclass(frozen=True)
class Record:
    """What a finished stage left behind: enough to skip it next time and to trace where it came from."""

    stage: str
    key: str
    outputs: dict[str, str | None]
    run_id: str
    metrics: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    finished_at: str = ""
    # What the stage could not log while MLflow was unreachable, replayed into `run_id` by the next run.
    journal: list = field(default_factory=list)


class StageCache:
    def __init__(self, state: Path):
        """`state`: the task's run-state folder (`Workspace.state`), so each task keeps its own records."""
        self.folder = state / "stages"

    def path(self, stage: str) -> Path:
        return self.folder / f"{stage}.json"

    def read(self, stage: str) -> Record | None:
        """The last record of `stage`, whatever its key; None when there is none (or it cannot be read)."""
        path = self.path(stage)
        if not path.is_file():
            return None
        try:
            return Record(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            return None  # an unreadable record only costs a re-run

    def lookup(self, stage: str, key: str, outputs: dict[str, Path]) -> Record | None:
        """The record of `stage` if it was made with this key and its outputs are unchanged since."""
        record = self.read(stage)
        if record is None or record.key != key or set(record.outputs) != set(outputs):
            return None
        if hashes(outputs) != record.outputs:  # changed, or gone (an output a stage may skip stays absent)
            return None
        return record

    def store(
        self,
        stage: str,
        key: str,
        outputs: dict[str, Path],
        run_id: str,
        metrics: dict,
        info: dict,
        journal: list | None = None,
    ) -> Record:
        record = Record(
            stage=stage,
            key=key,
            outputs=hashes(outputs),
            run_id=run_id,
            metrics=metrics,
            info=info,
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            journal=list(journal or []),
        )
        self.write(record)
        return record

    def write(self, record: Record) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path(record.stage).with_suffix(".tmp")
        tmp.write_text(json.dumps(record.__dict__, indent=2, default=str))
        os.replace(tmp, self.path(record.stage))  # never a half-written record

    def forget(self, stage: str) -> None:
        self.path(stage).unlink(missing_ok=True)
