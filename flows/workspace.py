"""Where a task's stages read and write, relative to the project root. dvc.yaml mirrors these paths.

`Workspace` holds the roles every task has (reports, registration, run state); each task's layout adds its
own (flows/tasks/<task>.py, `Task.workspace`). A stage writes its outputs into a staging folder (`staged`,
a `StagedWorkspace`); `move_into_place` then renames them over the previous ones. A stage killed half-way
thus leaves its previous outputs as they were. The run state of a task (stage records, staging, failed
outputs) lives in its own folder, `state` (`.miniaturize/<task>/`), so two tasks in one project never
invalidate each other's stage cache.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


class Place:
    """A role of a layout: a path under the root or under another role, written as one line of the layout's
    table (`teacher = Place("models", "teacher")`); read on a workspace, it is that workspace's path."""

    def __init__(self, base: str, *parts: str):
        self.base, self.parts = base, parts

    def __get__(self, ws, owner=None):
        if ws is None:
            return self
        return Path(getattr(ws, self.base)).joinpath(*self.parts)


@dataclass(frozen=True)
class Workspace:
    """The roles every task's layout has. A task's layout (`Task.workspace`, in flows/tasks/<task>.py) adds
    its models and data, and names its run-state folder (`STATE`)."""

    root: Path
    STATE: ClassVar[str] = ""  # the task's folder under .miniaturize/

    @property
    def state(self) -> Path:
        """This task's run state: stage records (`stages/`), `staging/`, `failed/` and `trash/`."""
        return self.root / ".miniaturize" / self.STATE

    raw = Place("root", "data", "raw")
    reports = Place("root", "reports")
    validation = Place("reports", "validation")
    report = Place("reports", "compression_report.json")
    report_md = Place("reports", "compression_report.md")
    report_plot = Place("reports", "compression_plot.png")
    registration = Place("reports", "registration.json")


class StagedWorkspace:
    """A workspace with some roles at other paths (`paths`: role -> path), every other role the workspace's
    own: a stage's outputs in its staging folder (`staged`), or the caller's paths given to a launched
    process (`miniaturize stage --workspace-path`)."""

    def __init__(self, ws: Workspace, paths: dict[str, Path]):
        self.__dict__.update(workspace=ws, paths=dict(paths))

    def __getattr__(self, name: str):
        paths = self.__dict__["paths"]
        return paths[name] if name in paths else getattr(self.__dict__["workspace"], name)

    @property
    def moves(self) -> list[tuple[Path, Path]]:
        """(staged path, the workspace's own path) of each moved role."""
        return [(path, getattr(self.workspace, name)) for name, path in self.paths.items()]

    def real(self, path: Path) -> Path:
        """Where a staged path lands once moved into place."""
        for staged, final in self.moves:
            if path == staged or staged in path.parents:
                return final / path.relative_to(staged)
        return path


def staged_paths(ws: Workspace, outputs: tuple[str, ...], staging: Path) -> dict[str, Path]:
    """Where the named outputs go in `staging`: the same paths relative to it as to the root."""
    return {name: staging / getattr(ws, name).relative_to(ws.root) for name in outputs}


def staged(ws: Workspace, outputs: tuple[str, ...], staging: Path) -> StagedWorkspace:
    """The workspace as one stage sees it: the named outputs point into `staging`."""
    view = StagedWorkspace(ws, staged_paths(ws, outputs, staging))
    for path in view.paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    return view


def move_into_place(moves: list[tuple[Path, Path]], trash: Path) -> None:
    """Rename each staged output over its final path (an output the stage did not write is removed: no
    stale file outlives its stage). Renames stay on one file system, so each is atomic."""
    shutil.rmtree(trash, ignore_errors=True)
    trash.mkdir(parents=True)
    for number, (staged, final) in enumerate(moves):
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists() or final.is_symlink():
            os.replace(final, trash / f"{number}-{final.name}")
        if staged.exists():
            os.replace(staged, final)
    shutil.rmtree(trash, ignore_errors=True)
