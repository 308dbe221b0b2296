"""The stage table: each pipeline stage as a call of its component with its config slice and paths.

Both the Prefect flow and `miniaturize stage NAME` (what dvc.yaml runs) go through `run_stage`, so a
stage does the same thing whichever way it is started. The register stage lives in `flows.registry`
because it acts on the MLflow model registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from components.config import Params
from components.kit.tracking import PrefixedTracker, StageResult, Tracker
from flows.workspace import Workspace

StageFn = Callable[[Params, Workspace, Tracker], StageResult]


def ingest(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from components.classification import ingest as component

    return component.run(p.data, ws.prepared, tracker, cache_dir=ws.raw, root=ws.root)


def validate(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from components import validate as component

    return component.run(p.section("validate"), ws.prepared, ws.validation, tracker, expected_labels=p.data.labels)


def soft_cache(ws: Workspace) -> Path:
    """Teacher soft targets the teacher's folder lacks, computed once (beside the stage cache, not a DVC output)."""
    return ws.root / ".miniaturize" / "soft_targets"


def finetune(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from components.classification import finetune as component

    return component.run(p.teacher, ws.prepared, ws.teacher, tracker, seed=p.seed, dist=p.distributed)


def distill(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from components.classification import distill as component

    return component.run(p.distill, ws.teacher, ws.prepared, ws.student, tracker, seed=p.seed, dist=p.distributed,
                         soft_cache=soft_cache(ws))


def prune(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from components.classification import prune as component

    return component.run(p.prune, ws.student, ws.teacher, ws.prepared, ws.pruned, tracker, seed=p.seed,
                         dist=p.distributed, soft_cache=soft_cache(ws))


def trim(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from components.classification import trim as component

    return component.run(p.trim, ws.pruned, ws.prepared, ws.trimmed, tracker, max_length=p.teacher.max_length)


def export(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    """The compressed model, and the teacher as the quantize-only baseline's starting point."""
    from components.classification import export as component

    final = component.run(p.export, ws.trimmed, ws.prepared, ws.onnx_fp32, tracker, max_length=p.teacher.max_length)
    baseline = component.run(p.export, ws.teacher, ws.prepared, ws.teacher_onnx_fp32, PrefixedTracker(tracker, "teacher."),
                             max_length=p.teacher.max_length)
    return merge(final, baseline, "teacher.")


def quantize(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from components.classification import quantize as component

    final = component.run(p.quantize, ws.onnx_fp32, ws.prepared, ws.final, tracker, max_length=p.teacher.max_length)
    # The baseline is what quantizing alone gives: Optimum's plain dynamic int8 of the teacher.
    plain = p.quantize.model_copy(update={"candidates": ["int8"], "per_channel": [False],
                                         "max_accuracy_drop_points": 100.0})
    baseline = component.run(plain, ws.teacher_onnx_fp32, ws.prepared, ws.baseline_teacher_int8,
                             PrefixedTracker(tracker, "teacher."), max_length=p.teacher.max_length)
    return merge(final, baseline, "teacher.")


def seeds(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    """The student chain again for each of `seeds.extra` (teacher and data fixed), each final model measured.

    Intermediate models of a seed are removed once its final model exists; reports/seeds.json holds the rows.
    """
    import json
    import shutil

    from components.classification import distill, export, prune, quantize, trim
    from components.kit.seeds import measure_final

    length = p.teacher.max_length
    rows, metrics = [], {}
    shutil.rmtree(ws.seeds, ignore_errors=True)
    for seed in p.seeds.extra:
        out = ws.seeds / str(seed)
        t = {name: PrefixedTracker(tracker, f"seed{seed}.{name}.") for name in ("distill", "prune", "trim", "export",
                                                                                "quantize")}
        print(f"  seeds: re-training the student chain with seed {seed}", flush=True)
        distill.run(p.distill.model_copy(update={"ablation": False}), ws.teacher, ws.prepared, out / "student",
                    t["distill"], seed=seed, dist=p.distributed, soft_cache=soft_cache(ws))
        prune.run(p.prune, out / "student", ws.teacher, ws.prepared, out / "pruned", t["prune"], seed=seed,
                  dist=p.distributed, soft_cache=soft_cache(ws))
        trim.run(p.trim, out / "pruned", ws.prepared, out / "trimmed", t["trim"], max_length=length)
        export.run(p.export, out / "trimmed", ws.prepared, out / "onnx_fp32", t["export"], max_length=length)
        chosen = quantize.run(p.quantize, out / "onnx_fp32", ws.prepared, out / "final", t["quantize"], max_length=length)
        row = {"seed": seed, "quantization": chosen.info["chosen"],
               **measure_final(out / "final", ws.teacher, ws.prepared, length)}
        print(f"  seeds: seed {seed} final model test acc {row['accuracy']:.4f}, "
              f"agreement with the teacher {row['agreement_with_teacher']:.4f}", flush=True)
        for stage_dir in ("student", "pruned", "trimmed", "onnx_fp32"):
            shutil.rmtree(out / stage_dir)
        rows.append(row)
        metrics |= {f"seed{seed}.accuracy": row["accuracy"],
                    f"seed{seed}.agreement_with_teacher": row["agreement_with_teacher"]}
    ws.seeds.mkdir(parents=True, exist_ok=True)  # an output even when seeds.extra is empty
    ws.seed_report.parent.mkdir(parents=True, exist_ok=True)
    ws.seed_report.write_text(json.dumps({"seed": p.seed, "extra": rows}, indent=2))
    tracker.log_metrics(metrics)
    return StageResult(metrics=metrics, outputs={"seeds": ws.seeds, "report": ws.seed_report})


def evaluated_models(ws: Workspace) -> list:
    """Every model the report covers, each in its deployable runtime."""
    from components.kit.report import ModelSpec

    return [ModelSpec("teacher", ws.teacher, "pytorch"), ModelSpec("student", ws.student, "pytorch"),
            ModelSpec("pruned", ws.pruned, "pytorch"), ModelSpec("trimmed", ws.trimmed, "pytorch"),
            ModelSpec("onnx_fp32", ws.onnx_fp32, "onnxruntime"), ModelSpec("final", ws.final, "onnxruntime"),
            ModelSpec("baseline_teacher_int8", ws.baseline_teacher_int8, "onnxruntime")]


def evaluate(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    import json

    from components.classification import evaluate as component

    extra = json.loads(ws.seed_report.read_text())["extra"] if ws.seed_report.exists() else []
    return component.run(p.evaluate, p.register_.gate, ws.prepared, evaluated_models(ws), ws.report.parent, tracker,
                         max_length=p.teacher.max_length, seed=p.seed, seed_runs=extra)


def register(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    from flows import registry

    return registry.register(p, ws, tracker)


STAGES: dict[str, StageFn] = {
    "ingest": ingest, "validate": validate, "finetune": finetune, "distill": distill, "prune": prune,
    "trim": trim, "export": export, "quantize": quantize, "seeds": seeds, "evaluate": evaluate,
    "register": register,
}


# The params each stage reads (and whose change should re-run it): its own section, plus what it borrows,
# exactly (tests/flows/test_dvc_yaml.py); dvc.yaml's params are generated from it (flows/dvc_yaml.py).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "ingest": ("data",), "validate": ("validate", "data.labels"), "finetune": ("teacher", "seed", "distributed"),
    "distill": ("distill", "seed", "distributed"), "prune": ("prune", "seed", "distributed"),
    "trim": ("trim", "teacher.max_length"), "export": ("export", "teacher.max_length"),
    "quantize": ("quantize", "teacher.max_length"),
    "seeds": ("seeds.extra", "seed", "distill", "prune", "trim", "export", "quantize", "teacher.max_length",
              "distributed"),
    "evaluate": ("evaluate", "register.gate", "teacher.max_length", "seed"), "register": ("register",),
}


@dataclass(frozen=True)
class StageIO:
    """Workspace paths a stage reads and writes (names of `Workspace` properties) and the components it runs:
    what its content-addressed key hashes. dvc.yaml declares the same deps and outs."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    code: tuple[str, ...]


# Module names under components/ (a task's stage module, a kit module, a top-level one) or full dotted names:
# the stage's module and the kit modules it imports, whose source the stage key hashes.
_TRAIN = ("kit.training", "kit.modeling", "kit.losses", "kit.distributed", "kit.soft_targets")
_EXPORT = ("classification.export", "kit.onnx_models", "kit.files", "kit.modeling")
_QUANTIZE = ("classification.quantize", "kit.quantization", "kit.onnx_models", "kit.files", "kit.latency")
STAGE_IO: dict[str, StageIO] = {
    "ingest": StageIO((), ("prepared",), ("classification.ingest", "kit.data", "kit.hashing", "kit.text")),
    "validate": StageIO(("prepared",), ("validation",), ("validate", "kit.text")),
    "finetune": StageIO(("prepared", "validation"), ("teacher",), ("classification.finetune", *_TRAIN)),
    "distill": StageIO(("prepared", "teacher"), ("student",), ("classification.distill", *_TRAIN)),
    "prune": StageIO(("prepared", "teacher", "student"), ("pruned",), ("classification.prune", "kit.pruning", *_TRAIN)),
    "trim": StageIO(("prepared", "pruned"), ("trimmed",), ("classification.trim",)),
    "export": StageIO(("prepared", "trimmed", "teacher"), ("onnx_fp32", "teacher_onnx_fp32"), _EXPORT),
    "quantize": StageIO(("prepared", "onnx_fp32", "teacher_onnx_fp32"), ("final", "baseline_teacher_int8"),
                        _QUANTIZE),
    "seeds": StageIO(("prepared", "teacher"), ("seeds", "seed_report"),
                     ("kit.seeds", "classification.distill", "classification.prune", "classification.trim",
                      "classification.export", "classification.quantize", "kit.pruning", "kit.onnx_models",
                      "kit.quantization", "kit.files", "kit.latency", *_TRAIN)),
    "evaluate": StageIO(("prepared", "teacher", "student", "pruned", "trimmed", "onnx_fp32", "final",
                         "baseline_teacher_int8", "seed_report"), ("report", "report_md", "report_plot"),
                        ("classification.evaluate", "kit.latency", "kit.rss_probe", "kit.gate", "kit.seeds",
                         "kit.report", "kit.files")),
    "register": StageIO(("final", "report"), ("registration",), ("kit.gate", "kit.promotion", "flows.registry")),
}


def stage_paths(ws: Workspace, names: tuple[str, ...]) -> dict[str, Path]:
    """{path relative to the root: path} for the named workspace properties."""
    paths = [getattr(ws, name) for name in names]
    return {path.relative_to(ws.root).as_posix(): path for path in paths}


def code_files(modules: tuple[str, ...]) -> dict[str, Path]:
    """The source file of each module: a name under components/ ("validate", "kit.gate",
    "classification.prune") or a full dotted module name ("flows.registry", "components.config")."""
    import importlib.util

    names = [m if m.split(".")[0] in ("components", "flows") else f"components.{m}" for m in modules]
    return {name.replace(".", "/") + ".py": Path(importlib.util.find_spec(name).origin) for name in names}


@dataclass(frozen=True)
class StageTable:
    """A task's stages in run order, with what each reads, writes and runs, and its config sections."""

    stages: dict[str, StageFn]
    io: dict[str, StageIO]
    sections: dict[str, tuple[str, ...]]


def stage_table(task: str) -> StageTable:
    """The task's table; its training stages run on `distributed.processes` processes (`flows.launch`)."""
    from flows.launch import DATA_PARALLEL_STAGES, data_parallel

    if task == "causal-lm":
        from flows import lm_stages

        stages, io, sections = lm_stages.STAGES, lm_stages.stage_io(), lm_stages.STAGE_SECTIONS
    else:
        stages, io, sections = STAGES, STAGE_IO, STAGE_SECTIONS
    stages = {name: data_parallel(name, fn) if name in DATA_PARALLEL_STAGES else fn for name, fn in stages.items()}
    return StageTable(stages, io, sections)


def stage_config(params: Params, name: str) -> dict:
    """The params a stage sees, by section name (dotted names reach into a section, e.g. lm.teacher)."""
    tree = params.as_dict()
    out = {}
    for section in stage_table(params.task).sections[name]:
        node = tree
        for part in section.split("."):
            node = node[part]
        out[section] = node
    return out


def merge(main: StageResult, extra: StageResult, prefix: str) -> StageResult:
    return StageResult(metrics=main.metrics | {prefix + k: v for k, v in extra.metrics.items()},
                       outputs=main.outputs | {prefix + k: v for k, v in extra.outputs.items()},
                       info=main.info | {prefix.rstrip("."): extra.info})
