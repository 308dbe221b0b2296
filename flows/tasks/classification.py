"""The sequence-classification task (params.yaml): its workspace layout, its stages and its record, `TASK`.

ingest (labelled sentences -> parquet splits) -> validate -> finetune (the teacher) -> distill (fewer
layers, from the teacher's soft targets) -> prune (attention heads and FFN neurons, then recovery) -> trim
(the vocabulary the data uses) -> export (ONNX, and the teacher as the quantize-only baseline's start) ->
quantize (int8 chosen by measurement) -> seeds (the student chain again per extra seed) -> evaluate
(accuracy, latency, size, RSS; the gate) -> register (`flows.registry`). Each stage calls its component
(components/classification/) with its config slice and paths.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from components.classification import KIND, NAME
from components.config import Params
from components.kit import gate
from components.kit.hashing import prepared_sha256
from components.kit.tracking import StageResult, Tracker
from flows import registry
from flows.preflight import require_layers, teacher_depth
from flows.stages import Axis, Judging, Plots, Stage, StageIO, Task
from flows.tasks.chain import (
    DISTILL_BUDGET,
    PRUNE_BUDGET,
    accuracy_budget,
    export,
    prune_settings,
    quantize,
    soft_cache,
    student_chain,
    training,
    trim,
)
from flows.workspace import Place, Workspace


@dataclass(frozen=True)
class ClassificationWorkspace(Workspace):
    """The classification task's paths: data/prepared, models/<stage>, reports/."""

    STATE: ClassVar[str] = KIND  # .miniaturize/classification

    prepared = Place("root", "data", "prepared")
    teacher = Place("root", "models", "teacher")
    student = Place("root", "models", "student")
    pruned = Place("root", "models", "pruned")
    trimmed = Place("root", "models", "trimmed")
    onnx_fp32 = Place("root", "models", "onnx_fp32")
    teacher_onnx_fp32 = Place("root", "models", "teacher_onnx_fp32")
    final = Place("root", "models", "final")
    baseline_teacher_int8 = Place("root", "models", "baseline_teacher_int8")
    seeds = Place("root", "models", "seeds")  # models/seeds/<seed>/final: re-trained with each of `seeds.extra`
    seed_report = Place("reports", "seeds.json")


# ------------------------------------------------------------------ the stages


def ingest(p: Params, ws: ClassificationWorkspace, tracker: Tracker) -> StageResult:
    from components.classification import ingest as component

    return component.run(p.data, ws.prepared, tracker, cache_dir=ws.raw, root=ws.root)


def validate(p: Params, ws: ClassificationWorkspace, tracker: Tracker) -> StageResult:
    from components import validate as component

    return component.run(p.section("validate"), ws.prepared, ws.validation, tracker, expected_labels=p.data.labels)


def finetune(p: Params, ws: ClassificationWorkspace, tracker: Tracker) -> StageResult:
    from components.classification import finetune as component

    return component.run(p.teacher, ws.prepared, ws.teacher, tracker, seed=p.seed, dist=p.distributed)


def distill(p: Params, ws: ClassificationWorkspace, tracker: Tracker) -> StageResult:
    from components.classification import distill as component

    return component.run(
        p.distill, ws.teacher, ws.prepared, ws.student, tracker, budget=accuracy_budget(p), **training(p, ws)
    )


def prune(p: Params, ws: ClassificationWorkspace, tracker: Tracker) -> StageResult:
    from components.classification import prune as component

    return component.run(prune_settings(p), ws.student, ws.teacher, ws.prepared, ws.pruned, tracker, **training(p, ws))


def seeds(p: Params, ws: ClassificationWorkspace, tracker: Tracker) -> StageResult:
    """The student chain again for each of `seeds.extra` (teacher and data fixed), each final model measured.

    Intermediate models of a seed are removed once its final model exists; reports/seeds.json holds the rows.
    """
    from components.kit.seeds import measure_final

    rows, metrics = [], {}
    shutil.rmtree(ws.seeds, ignore_errors=True)
    for seed in p.seeds.extra:
        out = ws.seeds / str(seed)
        print(f"  seeds: re-training the student chain with seed {seed}", flush=True)
        final, shipped = student_chain(
            p,
            ws.teacher,
            ws.prepared,
            {step: out / step for step in ("student", "pruned", "trimmed", "onnx_fp32", "final")},
            tracker,
            f"seed{seed}.",
            seed,
            soft_cache(ws),
            p.distill.model_copy(update={"ablation": False}),
            prune_settings(p),
            p.trim,
            p.quantize,
            budget=accuracy_budget(p),
        )
        row = {
            "seed": seed,
            "quantization": shipped,
            **measure_final(final, ws.teacher, ws.prepared, p.teacher.max_length),
        }
        print(
            f"  seeds: seed {seed} final model test acc {row['accuracy']:.4f}, "
            f"agreement with the teacher {row['agreement_with_teacher']:.4f}",
            flush=True,
        )
        for stage_dir in ("student", "pruned", "trimmed", "onnx_fp32"):
            shutil.rmtree(out / stage_dir)
        rows.append(row)
        metrics |= {
            f"seed{seed}.accuracy": row["accuracy"],
            f"seed{seed}.agreement_with_teacher": row["agreement_with_teacher"],
        }
    ws.seeds.mkdir(parents=True, exist_ok=True)  # an output even when seeds.extra is empty
    ws.seed_report.parent.mkdir(parents=True, exist_ok=True)
    ws.seed_report.write_text(json.dumps({"seed": p.seed, "extra": rows}, indent=2))
    tracker.log_metrics(metrics)
    return StageResult(metrics=metrics, outputs={"seeds": ws.seeds, "report": ws.seed_report})


def evaluated_models(ws: ClassificationWorkspace) -> list:
    """Every model the report covers, each in its deployable runtime."""
    from components.kit.report import ModelSpec

    return [
        ModelSpec("teacher", ws.teacher, "pytorch"),
        # intermediates of the chain: measured like the rest, but for peak memory (never served)
        ModelSpec("student", ws.student, "pytorch", memory=False),
        ModelSpec("pruned", ws.pruned, "pytorch", memory=False),
        ModelSpec("trimmed", ws.trimmed, "pytorch", memory=False),
        ModelSpec("onnx_fp32", ws.onnx_fp32, "onnxruntime"),
        ModelSpec("final", ws.final, "onnxruntime"),
        ModelSpec("baseline_teacher_int8", ws.baseline_teacher_int8, "onnxruntime"),
    ]


def evaluate(p: Params, ws: ClassificationWorkspace, tracker: Tracker) -> StageResult:
    from components.classification import evaluate as component

    extra = json.loads(ws.seed_report.read_text())["extra"] if ws.seed_report.exists() else []
    return component.run(
        p.evaluate,
        p.register_.gate,
        ws.prepared,
        evaluated_models(ws),
        ws.report.parent,
        tracker,
        max_length=p.teacher.max_length,
        seed=p.seed,
        seed_runs=extra,
    )


def register(p: Params, ws: ClassificationWorkspace, tracker: Tracker) -> StageResult:
    return registry.register(TASK, p, ws, tracker)


_TRAIN = ("kit.training", "kit.modeling", "kit.losses", "kit.distributed", "kit.soft_targets")
_EXPORT = ("classification.export", "kit.onnx_models", "kit.files", "kit.modeling")
_QUANTIZE = ("classification.quantize", "kit.quantization", "kit.onnx_models", "kit.files", "kit.latency")
_MAX_LENGTH = "teacher.max_length"
STAGES: dict[str, Stage] = {
    "ingest": Stage(
        ingest,
        StageIO((), ("prepared",), ("classification.ingest", "kit.data", "kit.hashing", "kit.text")),
        ("data",),
        reads_data_source=True,
    ),
    "validate": Stage(
        validate, StageIO(("prepared",), ("validation",), ("validate", "kit.text")), ("validate", "data.labels")
    ),
    "finetune": Stage(
        finetune,
        StageIO(("prepared", "validation"), ("teacher",), ("classification.finetune", *_TRAIN)),
        ("teacher", "seed", "distributed"),
        data_parallel=True,
    ),
    "distill": Stage(
        distill,
        StageIO(("prepared", "teacher"), ("student",), ("classification.distill", "kit.budget", *_TRAIN)),
        ("distill", *DISTILL_BUDGET, "seed", "distributed"),
        data_parallel=True,
    ),
    "prune": Stage(
        prune,
        StageIO(
            ("prepared", "teacher", "student"),
            ("pruned",),
            ("classification.prune", "kit.pruning", "kit.budget", *_TRAIN),
        ),
        ("prune", *PRUNE_BUDGET, "seed", "distributed"),
        data_parallel=True,
    ),
    "trim": Stage(trim, StageIO(("prepared", "pruned"), ("trimmed",), ("classification.trim",)), ("trim", _MAX_LENGTH)),
    "export": Stage(
        export,
        StageIO(("prepared", "trimmed", "teacher"), ("onnx_fp32", "teacher_onnx_fp32"), _EXPORT),
        ("export", _MAX_LENGTH),
    ),
    "quantize": Stage(
        quantize,
        StageIO(("prepared", "onnx_fp32", "teacher_onnx_fp32"), ("final", "baseline_teacher_int8"), _QUANTIZE),
        ("quantize", _MAX_LENGTH, "evaluate.threads"),  # candidates are timed at the evaluate stage's threads
    ),
    "seeds": Stage(
        seeds,
        StageIO(
            ("prepared", "teacher"),
            ("seeds", "seed_report"),
            (
                "kit.seeds",
                "classification.distill",
                "classification.prune",
                "classification.trim",
                "classification.export",
                "classification.quantize",
                "kit.pruning",
                "kit.budget",
                "kit.onnx_models",
                "kit.quantization",
                "kit.files",
                "kit.latency",
                *_TRAIN,
            ),
        ),
        (
            "seeds.extra",
            "seed",
            "distill",
            "prune",
            "register.gate.max_drop_vs_teacher_points",  # an "auto" prune budget reads it
            "trim",
            "export",
            "quantize",
            "evaluate.threads",
            _MAX_LENGTH,
            "distributed",
        ),
        trains=True,
    ),
    "evaluate": Stage(
        evaluate,
        StageIO(
            (
                "prepared",
                "teacher",
                "student",
                "pruned",
                "trimmed",
                "onnx_fp32",
                "final",
                "baseline_teacher_int8",
                "seed_report",
            ),
            ("report", "report_md", "report_plot"),
            (
                "classification.evaluate",
                "kit.latency",
                "kit.rss_probe",
                "kit.gate",
                "kit.seeds",
                "kit.report",
                "kit.files",
            ),
        ),
        ("evaluate", "register.gate", _MAX_LENGTH, "seed"),
    ),
    "register": Stage(
        register,
        StageIO(
            ("final", "report", "teacher", "trimmed", "prepared"),
            ("registration",),
            ("kit.gate", "kit.promotion", "flows.registry", "classification.update", "kit.batches", "kit.replay"),
        ),
        ("register", "data.source", "incremental.replay_size", "seed"),
        registers=True,
    ),
}


# ------------------------------------------------------------------ what else differs from another task


def remeasure(model: Path, prepared: Path, split: str, p: Params) -> float | None:
    from components.classification.evaluate import split_accuracy

    return split_accuracy(model, prepared, split, p.evaluate.threads, p.teacher.max_length)


def bundle_metrics(final: dict) -> dict:
    metrics = {k: final[k] for k in ("accuracy", "size_bytes") if k in final}
    if "batch1_p50" in final.get("latency_ms", {}):
        metrics["batch1_p50_ms"] = final["latency_ms"]["batch1_p50"]
    return metrics


def summary(report: dict) -> list[str]:
    ratios, teacher, final = report["final_vs_teacher"], report["models"]["teacher"], report["models"]["final"]
    return [
        f"  teacher accuracy {teacher['accuracy']:.4f} -> final {final['accuracy']:.4f} "
        f"(drop {ratios['accuracy_drop_points']:.2f} points)",
        f"  size {ratios['size_ratio']:.2f}x smaller, batch-1 p50 {ratios['speedup_batch1_p50']:.2f}x faster",
    ]


def preflight(params: Params, root: Path, search: bool = False) -> None:
    """The teacher can be read, and has the layers the student (and, with `search`, each candidate) keeps."""
    depth = teacher_depth("teacher.model", params.teacher.model, root)
    require_layers("distill.layers", params.distill.layers, depth, params.teacher.model)
    if search:
        for layers in params.search.layers:
            require_layers("search.layers", layers, depth, params.teacher.model)


def warm_start(p: Params, ws: ClassificationWorkspace, out: Path) -> dict[str, str]:
    """What an update of this run's version starts from: its teacher, its compressed student before export
    (trimmed), its data as the first batch and the first replay buffer (`components.classification.update`)."""
    from components.classification import update
    from components.kit.batches import batch_name

    name = batch_name(p.data.source)
    # the teacher layers the student kept: the distill stage's choice (a deeper one than distill.layers when
    # the budget asked for it)
    distilled = ws.student / "metrics.json"
    layers = json.loads(distilled.read_text()).get("layers") if distilled.is_file() else None
    update.warm_start_folder(
        ws.teacher, ws.trimmed, ws.prepared, name, p.incremental.replay_size, p.seed, out, layers or p.distill.layers
    )
    return {
        "incremental.kind": "full run",
        "incremental.batch": name,
        "incremental.batches": json.dumps([{"name": name, "sha256": prepared_sha256(ws.prepared)}]),
    }


def bench(p: Params, ws: ClassificationWorkspace, repeats: int) -> tuple[dict, str]:
    """Every model of the latest report re-measured side by side (`miniaturize bench`)."""
    from components.classification import bench as component

    names = json.loads(ws.report.read_text())["models"]
    models = [m for m in evaluated_models(ws) if m.name in names and m.path.exists()]
    cfg = p.evaluate
    result = component.run(
        models,
        ws.prepared,
        repeats,
        cfg.threads,
        cfg.warmup,
        cfg.batch1_calls,
        min(cfg.batch32_calls, 50),
        p.teacher.max_length,
    )
    return result, component.render(result)


TASK = Task(
    name=NAME,
    params_file="params.yaml",
    stages=STAGES,
    workspace=ClassificationWorkspace,
    data_source="data.source",
    bundle_kind=KIND,
    dvc_prefix="",
    dvc_note=(),
    judging=Judging(
        quality="accuracy",
        settings=lambda p: p.register_.gate,
        against_teacher=lambda report, cfg: gate.decide(report["final_vs_teacher"], cfg),
        against_champion=gate.compare_to_champion,
        remeasure=remeasure,
    ),
    plots=Plots(
        curves=("train_loss", "val_accuracy"),
        models=(
            Axis("accuracy", "accuracy", higher_is_better=True),
            Axis("latency_ms.batch1_p50", "batch1_p50_ms", higher_is_better=False),
            Axis("size_bytes", "size_mb", higher_is_better=False, scale=1e-6),
        ),
    ),
    bundle_metrics=bundle_metrics,
    summary=summary,
    report_files=".json, compression_plot.png",
    preflight=preflight,
    bench=bench,
    warm_start=warm_start,
)
