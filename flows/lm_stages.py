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
from components.kit.tracking import StageResult, Tracker
from flows.workspace import LMWorkspace


def ingest(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components.causal_lm import data

    return data.run(p.lm.data, ws.prepared, tracker, seed=p.seed, cache_dir=ws.raw, root=ws.root)


def validate(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components import validate as component

    return component.run(p.validate_, ws.prepared, ws.validation, tracker, text_only=True)


def finetune(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components.causal_lm import train

    return train.train_teacher(p.lm.teacher, ws.prepared, ws.teacher, tracker, seed=p.seed, dist=p.distributed)


def distill(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components.causal_lm import train

    return train.distill(p.lm.distill, ws.teacher, ws.prepared, ws.student, ws.student_ablation, tracker,
                         seed=p.seed, max_length=p.lm.teacher.max_length, dist=p.distributed)


def prune(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components.causal_lm import train

    return train.prune(p.lm.prune, ws.student, ws.teacher, ws.prepared, ws.pruned, tracker, seed=p.seed,
                       max_length=p.lm.teacher.max_length, distill_cfg=p.lm.distill, ffn_ratio=p.lm.prune.ffn_ratio,
                       dist=p.distributed)


def export(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components.causal_lm import export as component

    return component.export(ws.pruned, ws.prepared, ws.onnx_fp32, tracker)


def quantize(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components.causal_lm import export as component

    return component.quantize(ws.onnx_fp32, ws.prepared, ws.final, tracker)


def evaluated_models(ws: LMWorkspace) -> list:
    """Every model the report covers, each in its deployable runtime."""
    from components.kit.report import ModelSpec

    models = [ModelSpec("teacher", ws.teacher, "pytorch"), ModelSpec("student", ws.student, "pytorch"),
              ModelSpec("pruned", ws.pruned, "pytorch"), ModelSpec("onnx_fp32", ws.onnx_fp32, "onnxruntime"),
              ModelSpec("final", ws.final, "onnxruntime")]
    if ws.student_ablation.exists():
        models.insert(2, ModelSpec("student_without_teacher", ws.student_ablation, "pytorch"))
    return models


def evaluate(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components.causal_lm import evaluate as component

    return component.run(p.lm.evaluate, p.lm.gate, ws.prepared, evaluated_models(ws), ws.report.parent, tracker,
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

    train = ("causal_lm.train", "kit.training", "kit.modeling", "kit.losses", "kit.distributed", "kit.pruning")
    export = ("causal_lm.export", "kit.generation", "kit.quantization", "kit.onnx_models", "kit.files", "kit.latency")
    return {
        "ingest": StageIO((), ("prepared",), ("causal_lm.data", "kit.data", "kit.hashing", "kit.text")),
        "validate": StageIO(("prepared",), ("validation",), ("validate", "kit.text")),
        "finetune": StageIO(("prepared", "validation"), ("teacher",), train),
        "distill": StageIO(("prepared", "teacher"), ("student", "student_ablation"), train),
        "prune": StageIO(("prepared", "teacher", "student"), ("pruned",), train),
        "export": StageIO(("prepared", "pruned"), ("onnx_fp32",), export),
        "quantize": StageIO(("prepared", "onnx_fp32"), ("final",), export),
        "evaluate": StageIO(("prepared", "teacher", "student", "student_ablation", "pruned", "onnx_fp32", "final"),
                            ("report", "report_md"),
                            ("causal_lm.evaluate", "causal_lm.export", "causal_lm.train", "kit.generation",
                             "kit.latency", "kit.rss_probe", "kit.gate", "kit.report", "kit.files")),
        "register": StageIO(("final", "report"), ("registration",), ("kit.gate", "kit.promotion", "flows.registry")),
    }
