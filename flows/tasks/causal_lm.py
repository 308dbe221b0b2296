"""The causal-lm task (configs/causal-lm.yaml): its workspace layout, its stages and its record, `TASK`.

The same stage names as the classification task, each calling a causal-LM component (components/causal_lm/):
ingest (corpus + byte-level BPE) -> validate (text checks) -> finetune (teacher, from scratch or a hub
model) -> distill (fewer blocks, token-level KL + CE, and the ablation without the teacher) -> prune
(MLP neurons, physically, then recovery) -> export (ONNX with past key values, greedy output checked
against PyTorch) -> quantize (dynamic int8) -> evaluate (perplexity, BLEU, tokens/s, size, RSS; the gate)
-> register (the same registry code as classification, `flows.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from components.causal_lm import KIND, NAME
from components.config import Params
from components.kit import gate
from components.kit.tracking import PrefixedTracker, StageResult, Tracker
from flows import registry
from flows.preflight import require_layers, teacher_depth
from flows.stages import Axis, Judging, Plots, Stage, StageIO, Task, merge
from flows.workspace import Place, Workspace


@dataclass(frozen=True)
class LMWorkspace(Workspace):
    """The causal-lm task's paths: the same roles under data/causal-lm, models/causal-lm and reports/causal-lm,
    so both tasks can live in one project."""

    STATE: ClassVar[str] = KIND  # .miniaturize/causal-lm

    prepared = Place("root", "data", KIND, "prepared")
    models = Place("root", "models", KIND)
    teacher = Place("models", "teacher")
    student = Place("models", "student")
    student_ablation = Place("models", "student_without_teacher")  # the same student trained without the teacher
    pruned = Place("models", "pruned")
    onnx_fp32 = Place("models", "onnx_fp32")
    final = Place("models", "final")
    # the teacher exported as it is (timed in ONNX Runtime like the students) and int8-quantized: the
    # quantize-only baseline
    teacher_onnx_fp32 = Place("models", "teacher_onnx_fp32")
    baseline_teacher_int8 = Place("models", "baseline_teacher_int8")
    reports = Place("root", "reports", KIND)


# ------------------------------------------------------------------ the stages


def ingest(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components.causal_lm import data

    return data.run(p.lm.data, ws.prepared, tracker, seed=p.seed, cache_dir=ws.raw, root=ws.root)


def validate(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components import validate as component

    return component.run(p.validate_, ws.prepared, ws.validation, tracker, text_only=True)


def training(p: Params) -> dict:
    """What every training stage of this task takes besides its own section and folders."""
    return {"seed": p.seed, "max_length": p.lm.teacher.max_length, "dist": p.distributed}


def finetune(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components.causal_lm import train

    return train.train_teacher(p.lm.teacher, ws.prepared, ws.teacher, tracker, seed=p.seed, dist=p.distributed)


def distill(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components.causal_lm import train

    return train.distill(
        p.lm.distill,
        ws.teacher,
        ws.prepared,
        ws.student,
        ws.student_ablation,
        tracker,
        extra_seeds=p.seeds.extra,
        **training(p),
    )


def prune(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components.causal_lm import train

    return train.prune(
        p.lm.prune, ws.student, ws.teacher, ws.prepared, ws.pruned, tracker, distill_cfg=p.lm.distill, **training(p)
    )


def export(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    """The compressed decoder, and the teacher as it is: the like-for-like runtime reference and the
    quantize-only baseline's starting point."""
    from components.causal_lm import export as component

    final = component.export(ws.pruned, ws.prepared, ws.onnx_fp32, tracker)
    teacher = component.export(ws.teacher, ws.prepared, ws.teacher_onnx_fp32, PrefixedTracker(tracker, "teacher."))
    return merge(final, teacher, "teacher.")


def quantize(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    """The compressed decoder's int8 variant and the quantize-only baseline (the teacher's)."""
    from components.causal_lm import export as component

    final = component.quantize(ws.onnx_fp32, ws.prepared, ws.final, tracker)
    baseline = component.quantize(
        ws.teacher_onnx_fp32, ws.prepared, ws.baseline_teacher_int8, PrefixedTracker(tracker, "teacher.")
    )
    return merge(final, baseline, "teacher.")


def evaluated_models(ws: LMWorkspace) -> list:
    """Every model the report covers, each in its deployable runtime."""
    from components.kit.report import ModelSpec

    models = [
        ModelSpec("teacher", ws.teacher, "pytorch"),
        # intermediates of the chain: measured like the rest, but for peak memory (never served)
        ModelSpec("student", ws.student, "pytorch", memory=False),
        ModelSpec("pruned", ws.pruned, "pytorch", memory=False),
        ModelSpec("onnx_fp32", ws.onnx_fp32, "onnxruntime"),
        ModelSpec("final", ws.final, "onnxruntime"),
        # like for like: the teacher in the students' runtime, and quantized alone (the baseline)
        ModelSpec("teacher_onnx_fp32", ws.teacher_onnx_fp32, "onnxruntime", memory=False),
        ModelSpec("baseline_teacher_int8", ws.baseline_teacher_int8, "onnxruntime"),
    ]
    if ws.student_ablation.exists():
        models.insert(2, ModelSpec("student_without_teacher", ws.student_ablation, "pytorch", memory=False))
    return models


def evaluate(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    from components.causal_lm import evaluate as component

    return component.run(
        p.lm.evaluate,
        p.lm.gate,
        ws.prepared,
        evaluated_models(ws),
        ws.report.parent,
        tracker,
        seed=p.seed,
        max_length=p.lm.teacher.max_length,
    )


def register(p: Params, ws: LMWorkspace, tracker: Tracker) -> StageResult:
    return registry.register(TASK, p, ws, tracker)


_TRAIN = ("causal_lm.train", "kit.training", "kit.modeling", "kit.losses", "kit.distributed", "kit.pruning")
_EXPORT = ("causal_lm.export", "kit.generation", "kit.quantization", "kit.onnx_models", "kit.files", "kit.latency")
_MAX_LENGTH = "lm.teacher.max_length"
STAGES: dict[str, Stage] = {
    "ingest": Stage(
        ingest,
        StageIO((), ("prepared",), ("causal_lm.data", "kit.data", "kit.hashing", "kit.text")),
        ("lm.data", "seed"),
        reads_data_source=True,
    ),
    "validate": Stage(validate, StageIO(("prepared",), ("validation",), ("validate", "kit.text")), ("validate",)),
    "finetune": Stage(
        finetune,
        StageIO(("prepared", "validation"), ("teacher",), _TRAIN),
        ("lm.teacher", "seed", "distributed"),
        data_parallel=True,
    ),
    "distill": Stage(
        distill,
        StageIO(("prepared", "teacher"), ("student", "student_ablation"), _TRAIN, optional=("student_ablation",)),
        ("lm.distill", _MAX_LENGTH, "seed", "seeds.extra", "distributed"),
        data_parallel=True,
    ),
    "prune": Stage(
        prune,
        StageIO(("prepared", "teacher", "student"), ("pruned",), _TRAIN),
        ("lm.prune", "lm.distill", _MAX_LENGTH, "seed", "distributed"),
        data_parallel=True,
    ),
    "export": Stage(
        export, StageIO(("prepared", "pruned", "teacher"), ("onnx_fp32", "teacher_onnx_fp32"), _EXPORT), ()
    ),
    "quantize": Stage(
        quantize,
        StageIO(("prepared", "onnx_fp32", "teacher_onnx_fp32"), ("final", "baseline_teacher_int8"), _EXPORT),
        (),
    ),
    "evaluate": Stage(
        evaluate,
        StageIO(
            (
                "prepared",
                "teacher",
                "student",
                "student_ablation",
                "pruned",
                "onnx_fp32",
                "final",
                "teacher_onnx_fp32",
                "baseline_teacher_int8",
            ),
            ("report", "report_md"),
            (
                "causal_lm.evaluate",
                "causal_lm.export",
                "causal_lm.train",
                "kit.generation",
                "kit.latency",
                "kit.rss_probe",
                "kit.gate",
                "kit.report",
                "kit.files",
            ),
        ),
        ("lm.evaluate", "lm.gate", _MAX_LENGTH, "seed"),
    ),
    "register": Stage(
        register,
        StageIO(("final", "report"), ("registration",), ("kit.gate", "kit.promotion", "flows.registry")),
        ("register", "lm.gate"),
        registers=True,
    ),
}


# ------------------------------------------------------------------ what else differs from another task


def remeasure(model: Path, prepared: Path, split: str, p: Params) -> float | None:
    from components.causal_lm.evaluate import split_perplexity

    return split_perplexity(model, prepared, split, p.lm.evaluate.threads, p.lm.teacher.max_length)


def bundle_metrics(final: dict) -> dict:
    return {k: final[k] for k in ("perplexity", "bleu", "tokens_per_s", "size_bytes") if k in final}


def summary(report: dict) -> list[str]:
    ratios, teacher, final = report["final_vs_teacher"], report["models"]["teacher"], report["models"]["final"]
    return [
        f"  perplexity {teacher['perplexity']:.2f} -> {final['perplexity']:.2f} "
        f"({ratios['perplexity_ratio']:.3f}x), BLEU {teacher['bleu']:.2f} -> {final['bleu']:.2f} "
        f"(drop {ratios['bleu_drop_points']:.2f} points)",
        f"  size {ratios['size_ratio']:.2f}x smaller, greedy generation {ratios['generation_speedup']:.2f}x "
        f"faster ({teacher['tokens_per_s']:.0f} -> {final['tokens_per_s']:.0f} tokens/s)",
    ]


def preflight(params: Params, root: Path, search: bool = False) -> None:
    """A hub or local teacher can be read and has the blocks the student keeps (a teacher trained from scratch
    is checked by the params themselves: lm.distill.layers against architecture.n_layer)."""
    teacher = params.lm.teacher
    if teacher.init == "scratch":
        return
    depth = teacher_depth("lm.teacher.model", teacher.model, root)
    require_layers("lm.distill.layers", params.lm.distill.layers, depth, teacher.model)


TASK = Task(
    name=NAME,
    params_file="configs/causal-lm.yaml",
    stages=STAGES,
    workspace=LMWorkspace,
    data_source="lm.data.source",
    bundle_kind=KIND,
    dvc_prefix="lm-",
    dvc_note=(
        "The causal-lm task (configs/causal-lm.yaml): the same stages over data/causal-lm, models/causal-lm",
        "and reports/causal-lm.",
    ),
    judging=Judging(
        quality="perplexity",
        settings=lambda p: p.lm.gate,
        against_teacher=lambda report, cfg: gate.decide_lm(report["final_vs_teacher"], cfg),
        against_champion=gate.compare_lm_to_champion,
        remeasure=remeasure,
    ),
    plots=Plots(
        curves=("train_loss", "val_perplexity"),
        models=(
            Axis("perplexity", "perplexity", higher_is_better=False),
            Axis("tokens_per_s", "tokens_per_s", higher_is_better=True),
            Axis("size_bytes", "size_mb", higher_is_better=False, scale=1e-6),
        ),
    ),
    bundle_metrics=bundle_metrics,
    summary=summary,
    report_files=".json",
    preflight=preflight,
)
