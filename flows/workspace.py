"""Where each stage reads and writes, relative to the project root. dvc.yaml mirrors these paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

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
