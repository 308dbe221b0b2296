"""The multitask task (configs/multitask.yaml): one shared student answering several classification tasks
about a sentence; its workspace layout, its stages and its record, `TASK`.

ingest (one label column per task, `components.multitask.ingest`) -> validate (each task's labels on the rows
that have them) -> finetune (one teacher, a head per task) -> distill (fewer layers, every task at once) ->
prune (heads and neurons scored on every task together) -> trim -> export (ONNX, one output per task) ->
quantize -> singles (the single-task baseline: the same chain once per task) -> evaluate (every task's
accuracy and macro F1, size, latency, against the teacher and the single-task students; the gate) ->
register. The training stages are the classification components, which read the data card's tasks
(`components.kit.labelling`) and take the tasks' loss weights (`multitask.weights`); trim, export and
quantize are the classification task's own stages (`flows.tasks.chain`).

    miniaturize run --config configs/multitask.yaml [--profile smoke] [--data FILE]
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from components.config import GateConfig, Params
from components.kit import gate
from components.kit.tracking import StageResult, Tracker
from components.multitask import KIND, NAME
from flows import registry
from flows.preflight import require_layers, teacher_depth
from flows.stages import Axis, Judging, Plots, Stage, StageIO, Task
from flows.tasks.chain import PRUNE_BUDGET, export, prune_settings, quantize, soft_cache, student_chain, training, trim
from flows.workspace import Place, Workspace

if TYPE_CHECKING:  # the training loop imports torch, which the commands that train nothing never need
    from components.kit.training import TaskMix

CHAIN_STEPS = ("student", "pruned", "trimmed", "onnx_fp32", "final")


@dataclass(frozen=True)
class MultitaskWorkspace(Workspace):
    """The multitask task's paths: data/multitask/prepared, models/multitask/<stage>, reports/multitask/."""

    STATE: ClassVar[str] = KIND  # .miniaturize/multitask

    prepared = Place("root", "data", KIND, "prepared")
    models = Place("root", "models", KIND)
    teacher = Place("models", "teacher")
    student = Place("models", "student")
    pruned = Place("models", "pruned")
    trimmed = Place("models", "trimmed")
    onnx_fp32 = Place("models", "onnx_fp32")
    teacher_onnx_fp32 = Place("models", "teacher_onnx_fp32")
    final = Place("models", "final")
    baseline_teacher_int8 = Place("models", "baseline_teacher_int8")
    # singles/<task>/final: each task's single-task int8 student (and its data view), the baseline
    singles = Place("models", "single_tasks")
    # models/multitask/single_task_seeds/<seed>/<task>/final: the baseline re-trained per extra seed
    single_seeds = Place("models", "single_task_seeds")
    single_seed_report = Place("reports", "single_task_seeds.json")
    seeds = Place("models", "seeds")  # models/multitask/seeds/<seed>/final: the multitask chain per extra seed
    seed_report = Place("reports", "seeds.json")
    reports = Place("root", "reports", KIND)  # validation, the report, registration.json: the shared roles here


# ------------------------------------------------------------------ the stages


def ingest(p: Params, ws: MultitaskWorkspace, tracker: Tracker) -> StageResult:
    from components.multitask import ingest as component

    return component.run(p.data, p.multitask.tasks, ws.prepared, tracker, cache_dir=ws.raw, root=ws.root)


def validate(p: Params, ws: MultitaskWorkspace, tracker: Tracker) -> StageResult:
    from components import validate as component

    return component.run(p.section("validate"), ws.prepared, ws.validation, tracker)


def mix(p: Params, student: bool = True) -> TaskMix:
    """How the tasks share a training stage: their loss weights (the student's over the teacher's), balanced
    drawing of rows."""
    from components.kit.training import TaskMix

    weights = p.multitask.weights | (p.multitask.student_weights if student else {})
    return TaskMix(dict(weights), p.multitask.balanced_sampling)


def finetune(p: Params, ws: MultitaskWorkspace, tracker: Tracker) -> StageResult:
    from components.classification import finetune as component

    return component.run(
        p.teacher, ws.prepared, ws.teacher, tracker, seed=p.seed, dist=p.distributed, mix=mix(p, student=False)
    )


def distill(p: Params, ws: MultitaskWorkspace, tracker: Tracker) -> StageResult:
    from components.classification import distill as component

    args = training(p, ws) | {"mix": mix(p)}
    return component.run(p.distill, ws.teacher, ws.prepared, ws.student, tracker, **args)


def prune(p: Params, ws: MultitaskWorkspace, tracker: Tracker) -> StageResult:
    from components.classification import prune as component

    args = training(p, ws) | {"mix": mix(p)}
    return component.run(prune_settings(p), ws.student, ws.teacher, ws.prepared, ws.pruned, tracker, **args)


def chain_settings(p: Params) -> tuple:
    """The student chain's settings (distill without its ablation, prune, trim, quantize): the same for the
    multitask student and every single-task one, so the comparison changes only what is shared."""
    return p.distill.model_copy(update={"ablation": False}), prune_settings(p), p.trim, p.quantize


def multitask_chain(p: Params, ws: MultitaskWorkspace, out: Path, seed: int, prefix: str, tracker: Tracker) -> Path:
    """The multitask student chain from the teacher, with `seed`, into `out`; returns its final model."""
    final, _ = student_chain(
        p,
        ws.teacher,
        ws.prepared,
        {step: out / step for step in CHAIN_STEPS},
        tracker,
        prefix,
        seed,
        soft_cache(ws),
        *chain_settings(p),
        mix(p),
    )
    return final


def single_task_chains(
    p: Params, ws: MultitaskWorkspace, out: Path, seed: int, prefix: str, tracker: Tracker
) -> dict[str, Path]:
    """For each task, its rows of the data and the teacher's head for it (`components.multitask.singles`),
    then the classification student chain with the multitask student's settings and `seed`, into
    `out/<task>/`; only each task's final model (and its data view) is kept. Returns {task: final}."""
    from components.multitask import singles as component

    finals = {}
    for task in p.multitask.tasks:
        folder = out / task
        print(f"  singles: the compression chain for task {task} alone (seed {seed})", flush=True)
        component.project_data(ws.prepared, task, folder / "prepared")
        component.teacher_view(ws.teacher, task, folder / "teacher")
        component.carry_soft_targets(
            ws.teacher, ws.prepared, folder / "teacher", folder / "prepared", task, p.distill.max_length
        )
        finals[task], shipped = student_chain(
            p,
            folder / "teacher",
            folder / "prepared",
            {step: folder / step for step in CHAIN_STEPS},
            tracker,
            f"{prefix}{task}.",
            seed,
            soft_cache(ws),
            *chain_settings(p),
        )
        for step in ("student", "pruned", "trimmed", "onnx_fp32", "teacher"):
            shutil.rmtree(folder / step, ignore_errors=True)
        print(f"  singles: {task} done ({shipped})", flush=True)
    return finals


def singles(p: Params, ws: MultitaskWorkspace, tracker: Tracker) -> StageResult:
    """The single-task baseline: the same chain once per task (`single_task_chains`)."""
    shutil.rmtree(ws.singles, ignore_errors=True)
    ws.singles.mkdir(parents=True)
    if p.multitask.single_task_baselines:
        single_task_chains(p, ws, ws.singles, p.seed, "", tracker)
    return StageResult(metrics={}, outputs={"singles": ws.singles})


def write_seed_rows(path: Path, seed: int, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"seed": seed, "extra": rows}, indent=2))


def single_seeds(p: Params, ws: MultitaskWorkspace, tracker: Tracker) -> StageResult:
    """The single-task chains again for each of `seeds.extra` (teacher and data fixed), each task's test
    accuracy measured into reports/multitask/single_task_seeds.json. A stage of its own, keyed on the
    baseline's settings only: tuning the multitask student re-runs none of it."""
    from components.multitask.evaluate import seed_accuracies

    shutil.rmtree(ws.single_seeds, ignore_errors=True)
    ws.single_seeds.mkdir(parents=True)  # an output even when there is nothing to re-train
    rows, metrics = [], {}
    for seed in p.seeds.extra if p.multitask.single_task_baselines else ():
        print(f"  single seeds: re-training the single-task chains with seed {seed}", flush=True)
        finals = single_task_chains(p, ws, ws.single_seeds / str(seed), seed, f"seed{seed}.", tracker)
        row = {"seed": seed, **seed_accuracies(None, finals, ws.prepared, p.evaluate.threads, p.teacher.max_length)}
        print(f"  single seeds: seed {seed}: {row}", flush=True)
        rows.append(row)
        metrics |= {f"seed{seed}.single_tasks.accuracy.{t}": a for t, a in row["single_tasks"].items()}
    write_seed_rows(ws.single_seed_report, p.seed, rows)
    tracker.log_metrics(metrics)
    return StageResult(metrics=metrics, outputs={"seeds": ws.single_seeds, "report": ws.single_seed_report})


def seeds(p: Params, ws: MultitaskWorkspace, tracker: Tracker) -> StageResult:
    """The multitask student chain again for each of `seeds.extra` (teacher and data fixed), each final
    model's test accuracy per task measured; reports/multitask/seeds.json holds the rows, which the evaluate
    stage joins with the single-task ones (`single_seeds`) into each task's mean over seeds."""
    from components.multitask.evaluate import seed_accuracies

    shutil.rmtree(ws.seeds, ignore_errors=True)
    ws.seeds.mkdir(parents=True)  # an output even when seeds.extra is empty
    rows, metrics = [], {}
    for seed in p.seeds.extra:
        out = ws.seeds / str(seed)
        print(f"  seeds: re-training the multitask chain with seed {seed}", flush=True)
        final = multitask_chain(p, ws, out, seed, f"seed{seed}.", tracker)
        row = {"seed": seed, **seed_accuracies(final, None, ws.prepared, p.evaluate.threads, p.teacher.max_length)}
        print(f"  seeds: seed {seed}: {row}", flush=True)
        for step in CHAIN_STEPS[:-1]:
            shutil.rmtree(out / step, ignore_errors=True)
        rows.append(row)
        metrics |= {f"seed{seed}.final.accuracy.{t}": a for t, a in row["final"].items()}
    write_seed_rows(ws.seed_report, p.seed, rows)
    tracker.log_metrics(metrics)
    return StageResult(metrics=metrics, outputs={"seeds": ws.seeds, "report": ws.seed_report})


def seed_rows(ws: MultitaskWorkspace) -> list[dict]:
    """The seeds stage's rows, each with the same seed's single-task figures (when the baseline ran)."""
    from components.multitask.evaluate import SINGLES

    def rows(path: Path) -> list[dict]:
        return json.loads(path.read_text())["extra"] if path.exists() else []

    singles = {r["seed"]: r[SINGLES] for r in rows(ws.single_seed_report)}
    return [r | ({SINGLES: singles[r["seed"]]} if r["seed"] in singles else {}) for r in rows(ws.seed_report)]


def single_finals(p: Params, ws: MultitaskWorkspace) -> dict[str, Path] | None:
    if not p.multitask.single_task_baselines:
        return None
    return {task: ws.singles / task / "final" for task in p.multitask.tasks}


def evaluated_models(ws: MultitaskWorkspace) -> list:
    from components.kit.report import ModelSpec

    return [
        ModelSpec("teacher", ws.teacher, "pytorch"),
        ModelSpec("onnx_fp32", ws.onnx_fp32, "onnxruntime"),
        ModelSpec("final", ws.final, "onnxruntime"),
        ModelSpec("baseline_teacher_int8", ws.baseline_teacher_int8, "onnxruntime"),
    ]


def evaluate(p: Params, ws: MultitaskWorkspace, tracker: Tracker) -> StageResult:
    from components.multitask import evaluate as component

    return component.run(
        p.evaluate,
        p.register_.gate,
        p.multitask.max_drop_vs_single_points,
        ws.prepared,
        evaluated_models(ws),
        single_finals(p, ws),
        ws.report.parent,
        tracker,
        max_length=p.teacher.max_length,
        seed=p.seed,
        seed_runs=seed_rows(ws),
    )


def register(p: Params, ws: MultitaskWorkspace, tracker: Tracker) -> StageResult:
    return registry.register(TASK, p, ws, tracker)


_TRAIN = (
    "kit.training",
    "kit.modeling",
    "kit.losses",
    "kit.distributed",
    "kit.soft_targets",
    "kit.heads",
    "kit.labelling",
)
_EXPORT = ("classification.export", "kit.onnx_models", "kit.files", "kit.modeling", "kit.heads", "kit.labelling")
_QUANTIZE = (
    "classification.quantize",
    "kit.quantization",
    "kit.onnx_models",
    "kit.files",
    "kit.latency",
    "kit.labelling",
)
_CHAIN = (
    "classification.distill",
    "classification.prune",
    "classification.trim",
    "classification.export",
    "classification.quantize",
    "kit.pruning",
    "kit.budget",
    "kit.vocab",
    "kit.quantization",
    "kit.onnx_models",
    "kit.files",
    "kit.latency",
    *_TRAIN,
)
_MAX_LENGTH = "teacher.max_length"
# what the single-task baseline depends on (the multitask student's own settings are not among them)
_SINGLES = (
    "multitask.tasks",
    "multitask.single_task_baselines",
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
)
STAGES: dict[str, Stage] = {
    "ingest": Stage(
        ingest,
        StageIO((), ("prepared",), ("multitask.ingest", "kit.splits", "kit.data", "kit.hashing", "kit.text")),
        ("data", "multitask.tasks"),
        reads_data_source=True,
    ),
    "validate": Stage(validate, StageIO(("prepared",), ("validation",), ("validate", "kit.text")), ("validate",)),
    "finetune": Stage(
        finetune,
        StageIO(("prepared", "validation"), ("teacher",), ("classification.finetune", *_TRAIN)),
        ("teacher", "multitask.weights", "multitask.balanced_sampling", "seed", "distributed"),
        data_parallel=True,
    ),
    "distill": Stage(
        distill,
        StageIO(("prepared", "teacher"), ("student",), ("classification.distill", *_TRAIN)),
        (
            "distill",
            "multitask.weights",
            "multitask.student_weights",
            "multitask.balanced_sampling",
            "seed",
            "distributed",
        ),
        data_parallel=True,
    ),
    "prune": Stage(
        prune,
        StageIO(
            ("prepared", "teacher", "student"),
            ("pruned",),
            ("classification.prune", "kit.pruning", "kit.budget", *_TRAIN),
        ),
        (
            "prune",
            *PRUNE_BUDGET,
            "multitask.weights",
            "multitask.student_weights",
            "multitask.balanced_sampling",
            "seed",
            "distributed",
        ),
        data_parallel=True,
    ),
    "trim": Stage(
        trim, StageIO(("prepared", "pruned"), ("trimmed",), ("classification.trim", "kit.vocab")), ("trim", _MAX_LENGTH)
    ),
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
    "singles": Stage(
        singles,
        StageIO(("prepared", "teacher"), ("singles",), ("multitask.singles", *_CHAIN)),
        _SINGLES,
        trains=True,
        # it reads only the data and the teacher: tuning the multitask student does not re-run the baseline
        after="finetune",
    ),
    "seeds": Stage(
        seeds,
        StageIO(("prepared", "teacher"), ("seeds", "seed_report"), ("multitask.evaluate", *_CHAIN)),
        (
            "seeds.extra",
            "seed",
            "multitask.weights",
            "multitask.student_weights",
            "multitask.balanced_sampling",
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
        after="finetune",  # it reads only the data and the teacher
    ),
    "single_seeds": Stage(
        single_seeds,
        StageIO(
            ("prepared", "teacher"),
            ("single_seeds", "single_seed_report"),
            ("multitask.singles", "multitask.evaluate", *_CHAIN),
        ),
        ("seeds.extra", *_SINGLES),
        trains=True,
        after="finetune",  # like the singles stage: the multitask student's settings do not re-run it
    ),
    "evaluate": Stage(
        evaluate,
        StageIO(
            (
                "prepared",
                "teacher",
                "onnx_fp32",
                "final",
                "baseline_teacher_int8",
                "singles",
                "seed_report",
                "single_seed_report",
            ),
            ("report", "report_md"),
            ("multitask.evaluate", "kit.latency", "kit.gate", "kit.heads", "kit.report", "kit.files"),
        ),
        (
            "evaluate",
            "register.gate",
            "multitask.max_drop_vs_single_points",
            "multitask.single_task_baselines",
            "multitask.tasks",
            _MAX_LENGTH,
            "seed",
        ),
    ),
    "register": Stage(
        register,
        StageIO(
            ("final", "report", "teacher", "prepared"),
            ("registration",),
            ("kit.gate", "kit.promotion", "flows.registry"),
        ),
        ("register", "data.source", "seed"),
        registers=True,
    ),
}


# ------------------------------------------------------------------ what else differs from another task


class GateSettings(NamedTuple):
    """What the registry judges a multitask version with: the classification gate and the single-task limit."""

    gate: GateConfig
    max_drop_vs_single_points: float


def against_teacher(report: dict, settings: GateSettings) -> gate.GateDecision:
    return gate.decide_multitask(
        report["final_vs_teacher"],
        report.get("final_vs_single_tasks"),
        settings.gate,
        settings.max_drop_vs_single_points,
    )


def remeasure(model: Path, prepared: Path, split: str, p: Params) -> float | None:
    """The mean over tasks of an ONNX multitask model's accuracy on one split."""
    from components.multitask.evaluate import split_accuracy

    return split_accuracy(model, prepared, split, p.evaluate.threads, p.teacher.max_length)


def bundle_metrics(final: dict) -> dict:
    metrics = {k: final[k] for k in ("accuracy", "size_bytes") if k in final}
    metrics |= {f"accuracy.{t}": s["accuracy"] for t, s in final.get("tasks", {}).items()}
    if "batch1_p50" in final.get("latency_ms", {}):
        metrics["batch1_p50_ms"] = final["latency_ms"]["batch1_p50"]
    return metrics


def summary(report: dict) -> list[str]:
    from components.kit.report import fmt

    final, teacher = report["models"]["final"], report["models"]["teacher"]
    lines = [
        f"  {task}: teacher accuracy {fmt(teacher['tasks'][task]['accuracy'], '.4f')} -> final "
        f"{fmt(scores['accuracy'], '.4f')}"
        + (
            f" (single-task student {fmt(report['models']['single_tasks']['tasks'][task]['accuracy'], '.4f')})"
            if "single_tasks" in report["models"]
            else ""
        )
        for task, scores in final["tasks"].items()
    ]
    ratios = report["final_vs_teacher"]
    lines.append(
        f"  size {ratios['size_ratio']:.2f}x smaller than the teacher, batch-1 p50 {ratios['speedup_batch1_p50']:.2f}x faster"
    )
    if "final_vs_single_tasks" in report:
        vs = report["final_vs_single_tasks"]
        lines.append(
            f"  against the single-task students together: {vs['size_ratio']:.2f}x smaller, all tasks "
            f"{vs['speedup_batch1_p50']:.2f}x faster at batch 1"
        )
    return lines


def preflight(params: Params, root: Path, search: bool = False) -> None:
    """The teacher can be read and has the layers the student keeps."""
    if search:
        from components.config import ConfigError

        raise ConfigError("the search runs on the classification task; the multitask task has none")
    depth = teacher_depth("teacher.model", params.teacher.model, root)
    require_layers("distill.layers", params.distill.layers, depth, params.teacher.model)


TASK = Task(
    name=NAME,
    params_file="configs/multitask.yaml",
    stages=STAGES,
    workspace=MultitaskWorkspace,
    data_source="data.source",
    bundle_kind=KIND,
    dvc_prefix="multitask-",
    dvc_note=("# The multitask task: `miniaturize run --config configs/multitask.yaml` (or `dvc repro` of these).",),
    judging=Judging(
        quality="accuracy",
        settings=lambda p: GateSettings(p.register_.gate, p.multitask.max_drop_vs_single_points),
        against_teacher=against_teacher,
        against_champion=lambda candidate, champion, settings: gate.compare_to_champion(
            candidate, champion, settings.gate
        ),
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
    report_files=".json",
    preflight=preflight,
    more_data_sources=lambda p: {
        f"multitask.tasks.{name}.source": task.source for name, task in p.multitask.tasks.items() if task.source
    },
)
