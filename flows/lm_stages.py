"""The causal-lm task's stage table: the same stage names, config-slice, input/output and code
declarations as the classification table in `flows.stages`, each stage calling a causal-LM component.

ingest (corpus + byte-level BPE) -> validate (text checks) -> finetune (teacher, from scratch or a hub
model) -> distill (fewer blocks, token-level KL + CE, and the ablation without the teacher) -> prune
(MLP neurons, physically, then recovery) -> export (ONNX with past key values, greedy output checked
against PyTorch) -> quantize (dynamic int8) -> evaluate (perplexity, BLEU, tokens/s, size, RSS; the gate)
-> register (the same registry code as classification).
"""

from __future__ import annotations

from components.config import Params
from components.tracking import StageResult, Tracker
from flows.workspace import LMWorkspace


def ingest(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components import lm_data

    return lm_data.run(p.lm.data, ws.prepared, tracker, seed=p.seed, cache_dir=ws.raw, root=ws.root)


def validate(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components import validate as component

    return component.run(p.validate_, ws.prepared, ws.validation, tracker, text_only=True)


def finetune(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components import lm_train

    return lm_train.train_teacher(p.lm.teacher, ws.prepared, ws.teacher, tracker, seed=p.seed, dist=p.distributed)


def distill(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components import lm_train

    return lm_train.distill(p.lm.distill, ws.teacher, ws.prepared, ws.student, ws.student_ablation, tracker,
                            seed=p.seed, max_length=p.lm.teacher.max_length, dist=p.distributed)


def prune(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components import lm_train

    return lm_train.prune(p.lm.prune, ws.student, ws.teacher, ws.prepared, ws.pruned, tracker, seed=p.seed,
                          max_length=p.lm.teacher.max_length, distill_cfg=p.lm.distill, ffn_ratio=p.lm.prune.ffn_ratio,
                          dist=p.distributed)


def export(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components import lm_export

    return lm_export.export(ws.pruned, ws.prepared, ws.onnx_fp32, tracker)


def quantize(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components import lm_export

    return lm_export.quantize(ws.onnx_fp32, ws.prepared, ws.final, tracker)


def evaluated_models(ws: LMWorkspace) -> list:
    """Every model the report covers, each in its deployable runtime."""
    from components.evaluate import ModelSpec

    models = [ModelSpec("teacher", ws.teacher, "pytorch"), ModelSpec("student", ws.student, "pytorch"),
              ModelSpec("pruned", ws.pruned, "pytorch"), ModelSpec("onnx_fp32", ws.onnx_fp32, "onnxruntime"),
              ModelSpec("final", ws.final, "onnxruntime")]
    if ws.student_ablation.exists():
        models.insert(2, ModelSpec("student_without_teacher", ws.student_ablation, "pytorch"))
    return models


def evaluate(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components import lm_evaluate

    return lm_evaluate.run(p.lm.evaluate, p.lm.gate, ws.prepared, evaluated_models(ws), ws.report.parent, tracker,
                           seed=p.seed, max_length=p.lm.teacher.max_length)


def register(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from flows import registry

    return registry.register(p, ws, tracker)


STAGES = {"ingest": ingest, "validate": validate, "finetune": finetune, "distill": distill, "prune": prune,
          "export": export, "quantize": quantize, "evaluate": evaluate, "register": register}

STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "ingest": ("lm.data", "seed"), "validate": ("validate",), "finetune": ("lm.teacher", "seed", "distributed"),
    "distill": ("lm.distill", "lm.teacher.max_length", "seed", "distributed"),
    "prune": ("lm.prune", "lm.distill", "lm.teacher.max_length", "seed", "distributed"), "export": (), "quantize": (),
    "evaluate": ("lm.evaluate", "lm.gate", "lm.teacher.max_length", "seed"), "register": ("register", "lm.gate"),
}


def stage_io():
    from flows.stages import StageIO

    return {
        "ingest": StageIO((), ("prepared",), ("lm_data", "ingest")),
        "validate": StageIO(("prepared",), ("validation",), ("validate",)),
        "finetune": StageIO(("prepared", "validation"), ("teacher",), ("lm_train", "distributed")),
        "distill": StageIO(("prepared", "teacher"), ("student", "student_ablation"), ("lm_train", "distributed")),
        "prune": StageIO(("prepared", "teacher", "student"), ("pruned",), ("lm_train", "distributed")),
        "export": StageIO(("prepared", "pruned"), ("onnx_fp32",), ("lm_export",)),
        "quantize": StageIO(("prepared", "onnx_fp32"), ("final",), ("lm_export",)),
        "evaluate": StageIO(("prepared", "teacher", "student", "student_ablation", "pruned", "onnx_fp32", "final"),
                            ("report", "report_md"), ("lm_evaluate", "lm_export", "lm_train", "gate")),
        "register": StageIO(("final", "report"), ("registration",), ("gate", "promotion", "flows.registry")),
    }
