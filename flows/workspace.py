"""Where each stage reads and writes, relative to the project root. dvc.yaml mirrors these paths.

A stage writes its outputs into a staging folder (`StagedWorkspace`); `move_into_place` then renames
them over the previous ones. A stage killed half-way thus leaves its previous outputs as they were.
The run state of a task (stage records, staging, failed outputs) lives in its own folder, `state`
(`.miniaturize/<task>/`), so two tasks in one project never invalidate each other's stage cache.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def state(self) -> Path:
        """This task's run state: stage records (`stages/`), `staging/`, `failed/` and `trash/`."""
        return self.root / ".miniaturize" / "classification"

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def validation(self) -> Path:
        return self.root / "reports" / "validation"

    @property
    def teacher(self) -> Path:
        return self.root / "models" / "teacher"

    @property
    def student(self) -> Path:
        return self.root / "models" / "student"

    @property
    def pruned(self) -> Path:
        return self.root / "models" / "pruned"

    @property
    def trimmed(self) -> Path:
        return self.root / "models" / "trimmed"

    @property
    def onnx_fp32(self) -> Path:
        return self.root / "models" / "onnx_fp32"

    @property
    def teacher_onnx_fp32(self) -> Path:
        return self.root / "models" / "teacher_onnx_fp32"

    @property
    def final(self) -> Path:
        return self.root / "models" / "final"

    @property
    def baseline_teacher_int8(self) -> Path:
        return self.root / "models" / "baseline_teacher_int8"

    @property
    def seeds(self) -> Path:
        """models/seeds/<seed>/final: the final model re-trained with each of `seeds.extra`."""
        return self.root / "models" / "seeds"

    @property
    def seed_report(self) -> Path:
        return self.reports / "seeds.json"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def report(self) -> Path:
        return self.reports / "compression_report.json"

    @property
    def report_md(self) -> Path:
        return self.reports / "compression_report.md"

    @property
    def report_plot(self) -> Path:
        return self.reports / "compression_plot.png"

    @property
    def registration(self) -> Path:
        return self.reports / "registration.json"


@dataclass(frozen=True)
class LMWorkspace(Workspace):
    """The causal-lm task's paths: the same roles under data/causal-lm, models/causal-lm and reports/causal-lm,
    so both tasks can live in one project."""

    @property
    def state(self) -> Path:
        return self.root / ".miniaturize" / "causal-lm"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "causal-lm" / "prepared"

    @property
    def models(self) -> Path:
        return self.root / "models" / "causal-lm"

    @property
    def teacher(self) -> Path:
        return self.models / "teacher"

    @property
    def student(self) -> Path:
        return self.models / "student"

    @property
    def student_ablation(self) -> Path:
        """The same student trained without the teacher (the report's ablation)."""
        return self.models / "student_without_teacher"

    @property
    def pruned(self) -> Path:
        return self.models / "pruned"

    @property
    def onnx_fp32(self) -> Path:
        return self.models / "onnx_fp32"

    @property
    def final(self) -> Path:
        return self.models / "final"

    @property
    def reports(self) -> Path:
        return self.root / "reports" / "causal-lm"

    @property
    def validation(self) -> Path:
        return self.reports / "validation"


def workspace_for(task: str, root: Path) -> Workspace:
    return LMWorkspace(root) if task == "causal-lm" else Workspace(root)


class StagedWorkspace:
    """The workspace as one stage sees it: the named outputs point into `staging` (same relative paths),
    everything else is the real workspace."""

    def __init__(self, ws: Workspace, outputs: tuple[str, ...], staging: Path):
        self.workspace = ws
        self.moves = [(staging / getattr(ws, name).relative_to(ws.root), getattr(ws, name)) for name in outputs]
        self._staged = {name: staged for name, (staged, _) in zip(outputs, self.moves)}
        for staged, _ in self.moves:
            staged.parent.mkdir(parents=True, exist_ok=True)

    def __getattr__(self, name: str):
        staged = self.__dict__.get("_staged", {})
        return staged[name] if name in staged else getattr(self.__dict__["workspace"], name)

    def real(self, path: Path) -> Path:
        """Where a staged path lands once moved into place."""
        for staged, final in self.moves:
            if path == staged or staged in path.parents:
                return final / path.relative_to(staged)
        return path


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
