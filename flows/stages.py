"""The stage table: each pipeline stage as a call of its component with its config slice and paths.

Both the Prefect flow and `miniaturize stage NAME` (what dvc.yaml runs) go through `run_stage`, so a
stage does the same thing whichever way it is started. The register stage lives in `flows.registry`
because it acts on the MLflow model registry.
"""

from __future__ import annotations

from typing import Callable

from components.config import Params
from components.tracking import PrefixedTracker, StageResult, Tracker
from flows.workspace import Workspace

StageFn = Callable[[Params, Workspace, Tracker], StageResult]


def ingest(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from components import ingest as component

    return component.run(p.data, ws.prepared, tracker, cache_dir=ws.raw)


def validate(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from components import validate as component

    return component.run(p.section("validate"), ws.prepared, ws.validation, tracker, expected_labels=p.data.labels)


def finetune(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from components import finetune as component

    return component.run(p.teacher, ws.prepared, ws.teacher, tracker, seed=p.seed)


def distill(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from components import distill as component

    return component.run(p.distill, ws.teacher, ws.prepared, ws.student, tracker, seed=p.seed)


def prune(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from components import prune as component

    return component.run(p.prune, ws.student, ws.teacher, ws.prepared, ws.pruned, tracker, seed=p.seed)


def trim(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from components import vocab as component

    return component.run(p.trim, ws.pruned, ws.prepared, ws.trimmed, tracker, max_length=p.teacher.max_length)


def export(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    """The compressed model, and the teacher as the quantize-only baseline's starting point."""
    from components import export as component

    final = component.run(p.export, ws.trimmed, ws.prepared, ws.onnx_fp32, tracker, max_length=p.teacher.max_length)
    baseline = component.run(p.export, ws.teacher, ws.prepared, ws.teacher_onnx_fp32, PrefixedTracker(tracker, "teacher."),
                             max_length=p.teacher.max_length)
    return merge(final, baseline, "teacher.")


def quantize(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from components import quantize as component

    final = component.run(p.quantize, ws.onnx_fp32, ws.prepared, ws.final, tracker, max_length=p.teacher.max_length)
    # The baseline is what quantizing alone gives: Optimum's plain dynamic int8 of the teacher.
    plain = p.quantize.model_copy(update={"candidates": ["int8"], "max_accuracy_drop_points": 100.0})
    baseline = component.run(plain, ws.teacher_onnx_fp32, ws.prepared, ws.baseline_teacher_int8,
                             PrefixedTracker(tracker, "teacher."), max_length=p.teacher.max_length)
    return merge(final, baseline, "teacher.")


def evaluated_models(ws: Workspace) -> list:
    """Every model the report covers, each in its deployable runtime."""
    from components.evaluate import ModelSpec

    return [ModelSpec("teacher", ws.teacher, "pytorch"), ModelSpec("student", ws.student, "pytorch"),
            ModelSpec("pruned", ws.pruned, "pytorch"), ModelSpec("trimmed", ws.trimmed, "pytorch"),
            ModelSpec("onnx_fp32", ws.onnx_fp32, "onnxruntime"), ModelSpec("final", ws.final, "onnxruntime"),
            ModelSpec("baseline_teacher_int8", ws.baseline_teacher_int8, "onnxruntime")]


def evaluate(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from components import evaluate as component

    return component.run(p.evaluate, p.register_.gate, ws.prepared, evaluated_models(ws), ws.reports, tracker,
                         max_length=p.teacher.max_length)


def register(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from flows import registry

    return registry.register(p, ws, tracker)


STAGES: dict[str, StageFn] = {
    "ingest": ingest, "validate": validate, "finetune": finetune, "distill": distill, "prune": prune,
    "trim": trim, "export": export, "quantize": quantize, "evaluate": evaluate, "register": register,
}


# The params each stage sees (and whose change should re-run it): its own section, plus what it borrows.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "ingest": ("data",), "validate": ("validate", "data"), "finetune": ("teacher", "seed"),
    "distill": ("distill", "seed"), "prune": ("prune", "seed"), "trim": ("trim",), "export": ("export", "teacher"),
    "quantize": ("quantize", "teacher"), "evaluate": ("evaluate", "register"), "register": ("register",),
}


def stage_config(params: Params, name: str) -> dict:
    tree = params.as_dict()
    return {section: tree[section] for section in STAGE_SECTIONS[name]}


def merge(main: StageResult, extra: StageResult, prefix: str) -> StageResult:
    return StageResult(metrics=main.metrics | {prefix + k: v for k, v in extra.metrics.items()},
                       outputs=main.outputs | {prefix + k: v for k, v in extra.outputs.items()},
                       info=main.info | {prefix.rstrip("."): extra.info})
