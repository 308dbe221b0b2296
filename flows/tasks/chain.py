"""The classification compression chain as stages and as one call, shared by the tasks built on it.

The classification task and the multitask task (a classifier with one block of logits per task) run the same
components from the trim stage on (`trim`, `export`, `quantize`: the stage functions both tasks' records
list), and re-run the student chain from a trained teacher (`student_chain`): the classification task's seeds
stage and search, the multitask task's single-task baselines. A workspace here is any layout with the
classification roles (prepared, teacher, student, pruned, trimmed, onnx_fp32, teacher_onnx_fp32, final,
baseline_teacher_int8).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from components.config import Params, PruneConfig
from components.kit.budget import AccuracyBudget, accuracy_budget as budget_of
from components.kit.tracking import PrefixedTracker, StageResult, Tracker
from flows.stages import merge

if TYPE_CHECKING:  # the training loop imports torch, which the commands that train nothing never need
    from components.kit.training import TaskMix

# What the prune stage reads besides its own section: what an "auto" accuracy budget is made of.
PRUNE_BUDGET = ("register.gate.max_drop_vs_teacher_points", "quantize.max_drop_vs_fp32_points")
# What the distill stage reads of it: the same budget chooses how deep the student is.
DISTILL_BUDGET = (
    "prune.accuracy_budget_points",
    "prune.budget_margin_points",
    "prune.budget_confidence",
    *PRUNE_BUDGET,
)


def budget_points(p: Params) -> float | None:
    """The prune section's accuracy budget as a number of points, or None (fixed ratios): "auto" is the gate's
    tolerance against the teacher less what quantization may still spend and the margin for validation not
    being test."""
    # computed whatever the setting, so that the keys a stage reads do not depend on their values
    auto = max(
        0.0,
        p.register_.gate.max_drop_vs_teacher_points - p.quantize.max_drop_vs_fp32_points - p.prune.budget_margin_points,
    )
    budget = p.prune.accuracy_budget_points
    return auto if budget == "auto" else budget


def prune_settings(p: Params) -> PruneConfig:
    """The prune section as the prune component takes it, its accuracy budget resolved (`budget_points`)."""
    return p.prune.model_copy(update={"accuracy_budget_points": budget_points(p)})


def accuracy_budget(p: Params) -> AccuracyBudget | None:
    """The accuracy budget of the student chain (None: fixed ratios, no budget), as prune and distill test it;
    reads only the budget's keys (`DISTILL_BUDGET`), so that other prune settings leave the distill stage be."""
    return budget_of(budget_points(p), p.prune.budget_margin_points, p.prune.budget_confidence)


def soft_cache(ws: Any) -> Path:
    """Teacher soft targets the teacher's folder lacks, computed once (beside the stage cache, not a DVC output)."""
    return ws.root / ".miniaturize" / "soft_targets"


def training(p: Params, ws: Any) -> dict:
    """What the student's training stages take besides their own section and folders."""
    return {"seed": p.seed, "dist": p.distributed, "soft_cache": soft_cache(ws)}


def trim(p: Params, ws: Any, tracker: Tracker) -> StageResult:
    from components.classification import trim as component

    return component.run(p.trim, ws.pruned, ws.prepared, ws.trimmed, tracker, max_length=p.teacher.max_length)


def export(p: Params, ws: Any, tracker: Tracker) -> StageResult:
    """The compressed model, and the teacher as the quantize-only baseline's starting point."""
    from components.classification import export as component

    teacher_tracker, max_length = PrefixedTracker(tracker, "teacher."), p.teacher.max_length
    final = component.run(p.export, ws.trimmed, ws.prepared, ws.onnx_fp32, tracker, max_length=max_length)
    baseline = component.run(
        p.export, ws.teacher, ws.prepared, ws.teacher_onnx_fp32, teacher_tracker, max_length=max_length
    )
    return merge(final, baseline, "teacher.")


def quantize(p: Params, ws: Any, tracker: Tracker) -> StageResult:
    """The compressed model's int8 variant and the quantize-only baseline, timed at the evaluate stage's
    thread count."""
    from components.classification import quantize as component

    teacher_tracker, max_length, threads = (
        PrefixedTracker(tracker, "teacher."),
        p.teacher.max_length,
        p.evaluate.threads,
    )
    final = component.run(
        p.quantize, ws.onnx_fp32, ws.prepared, ws.final, tracker, max_length=max_length, threads=threads
    )
    # The baseline is what quantizing alone gives: Optimum's plain dynamic int8 of the teacher.
    plain = p.quantize.model_copy(
        update={"candidates": ["int8"], "per_channel": [False], "max_drop_vs_fp32_points": 100.0}
    )
    baseline = component.run(
        plain,
        ws.teacher_onnx_fp32,
        ws.prepared,
        ws.baseline_teacher_int8,
        teacher_tracker,
        max_length=max_length,
        threads=threads,
    )
    return merge(final, baseline, "teacher.")


def student_chain(
    p: Params,
    teacher: Path,
    prepared: Path,
    out: dict[str, Path],
    tracker: Tracker,
    prefix: str,
    seed: int,
    soft: Path,
    distill_cfg: BaseModel,
    prune_cfg: BaseModel | None,
    trim_cfg: BaseModel | None,
    quantize_cfg: BaseModel | None,
    mix: TaskMix | None = None,
    budget: AccuracyBudget | None = None,
) -> tuple[Path, str]:
    """The student chain from a trained teacher, as the seeds stage re-runs it per seed and the search builds
    each candidate (flows/search.py): distill -> prune -> trim -> export -> quantize.

    `out` says where each step writes (student, pruned, trimmed, onnx_fp32, final). A step whose folder
    already exists is reused (search candidates share students, pruned and exported models); a step given
    no config (None) is skipped, its input passed on. Each step logs under `<prefix><step>.`. `mix`: how the
    tasks of multitask data share distill and prune; `budget`: the accuracy budget a deeper student is tried
    against (`distill.deeper_layers`; None: the student keeps `distill_cfg.layers`). Returns the final folder and what it ships (the chosen
    quantization, or fp32)."""
    from components.classification import distill, export, prune, quantize, trim

    length = p.teacher.max_length
    log = {
        name: PrefixedTracker(tracker, f"{prefix}{name}.")
        for name in ("distill", "prune", "trim", "export", "quantize")
    }
    student = model = out["student"]
    if not student.exists():
        distill.run(
            distill_cfg,
            teacher,
            prepared,
            student,
            log["distill"],
            seed=seed,
            dist=p.distributed,
            soft_cache=soft,
            mix=mix,
            budget=budget,
        )
    if prune_cfg is not None:
        model = out["pruned"]
        if not model.exists():
            prune.run(
                prune_cfg,
                student,
                teacher,
                prepared,
                model,
                log["prune"],
                seed=seed,
                dist=p.distributed,
                soft_cache=soft,
                mix=mix,
            )
    onnx_dir = out["onnx_fp32"]
    if not onnx_dir.exists():
        if trim_cfg is not None:
            trim.run(trim_cfg, model, prepared, out["trimmed"], log["trim"], max_length=length)
            model = out["trimmed"]
        export.run(p.export, model, prepared, onnx_dir, log["export"], max_length=length)
    if quantize_cfg is None:
        return onnx_dir, "fp32"
    chosen = quantize.run(
        quantize_cfg, onnx_dir, prepared, out["final"], log["quantize"], max_length=length, threads=p.evaluate.threads
    )
    return out["final"], chosen.info["chosen"]
