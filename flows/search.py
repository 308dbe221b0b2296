"""`miniaturize search`: the accuracy-aware compression search as a Prefect flow.

Each candidate of `search` in params.yaml (kept layers x prune ratio x vocabulary x quantization) is a
Prefect task and an MLflow child run of one `search-...` parent run, with its accuracy, latency and size.
The search needs the prepared data and the fine-tuned teacher; when the workspace lacks them it runs the
pipeline's ingest, validate and finetune stages first. Outputs, under reports/search/: search.json (every
candidate, the Pareto front, the choice and why), search.md, pareto.png, and compression_report.json for
the chosen model (its ratios against the teacher and the gate), which goes to the registry with it.

The chosen candidate becomes `champion` when it is within the accuracy tolerance and passes the release
gate, `challenger` otherwise; the run says which constraint failed. Candidates build on each other's
students and pruned models (models/search/), so the cost is one distillation per layer choice and one
pruning per prune ratio.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.classification import search as component
from components.config import Params, data_source_id, section_hash
from components.kit.gate import decide
from flows import tracking
from flows.lock import workspace_lock
from flows.pipeline import RunContext, run_stage
from flows.run_log import printed_to_run_log
from flows.tasks.classification import TASK, ClassificationWorkspace, student_chain


def search_root(ws: ClassificationWorkspace) -> Path:
    return ws.root / "models" / "search"


def search_reports(ws: ClassificationWorkspace) -> Path:
    return ws.reports / "search"


def build(
    c: component.Candidate, p: Params, teacher_dir: Path, prepared: Path, root: Path, tracker
) -> tuple[Path, str]:
    """The candidate's final ONNX folder under root/candidates and what it ships (int8 or fp32), reusing
    students, pruned and exported models already under root (`student_chain`). Training stages run at
    `p.search.epochs` epochs."""
    from components.kit.training import use_threads

    use_threads(p.threads)
    epochs = p.search.epochs
    out = {
        "student": root / "students" / c.student_key,
        "pruned": root / "pruned" / c.pruned_key,
        "trimmed": root / "trimmed" / c.export_key,
        "onnx_fp32": root / "onnx" / c.export_key,
        "final": root / "candidates" / c.name,
    }
    # Every candidate learns from the teacher's soft targets, stored once (by finetune, or here on a miss).
    # Quantization: one method, per tensor; quantize still ships fp32 if the int8 graph is slower or too
    # inaccurate.
    return student_chain(
        p,
        teacher_dir,
        prepared,
        out,
        tracker,
        "",
        p.seed,
        root / "soft_targets",
        p.distill.model_copy(update={"layers": list(c.layers), "epochs": epochs, "ablation": False}),
        p.prune.model_copy(
            # a candidate is its ratio: the search itself weighs accuracy against size and speed
            update={
                "head_ratio": c.prune_ratio,
                "ffn_ratio": c.prune_ratio,
                "epochs": epochs,
                "accuracy_budget_points": None,
            }
        )
        if c.prune_ratio > 0
        else None,
        p.trim.model_copy(update={"enabled": True}) if c.trim else None,
        p.quantize.model_copy(update={"candidates": [c.quantize], "per_channel": [False]})
        if c.quantize != "fp32"
        else None,
    )


@task(task_run_name="teacher reference", cache_policy=NO_CACHE)
def teacher_reference(ctx: RunContext) -> dict:
    p, ws = ctx.params, ctx.workspace
    ref = component.measure(
        ws.teacher, "pytorch", ws.prepared, p.evaluate.threads, p.search.latency_calls, p.teacher.max_length
    )
    print(
        f"[search] teacher: val acc {ref['val_accuracy']:.4f}, batch-1 p50 {ref['latency_ms']:.2f} ms, "
        f"{ref['size_bytes'] / 1e6:.1f} MB",
        flush=True,
    )
    return ref


@task(task_run_name="candidate {candidate.name}", cache_policy=NO_CACHE)
def try_candidate(candidate: component.Candidate, ctx: RunContext, index: int, total: int) -> dict:
    """Build and measure one candidate in its own MLflow child run; a failure is recorded, not raised."""
    p, ws = ctx.params, ctx.workspace
    client = tracking.client(ws.root)
    run_id = tracking.start_run(
        client,
        ctx.experiment_id,
        candidate.name,
        ctx.parent_run_id,
        tags={"miniaturize.search_candidate": candidate.name},
    )
    tracker = tracking.MlflowTracker(client, run_id)
    tracker.log_params(candidate.as_params())
    print(f"[search] candidate {index}/{total}: {candidate.name}", flush=True)
    started, row = time.perf_counter(), {"name": candidate.name, **candidate.as_params(), "run_id": run_id}
    ok = False
    try:
        final, row["shipped"] = build(candidate, p, ws.teacher, ws.prepared, search_root(ws), tracker)
        row["model_dir"] = str(final)
        row |= component.measure(
            final, "onnxruntime", ws.prepared, p.evaluate.threads, p.search.latency_calls, p.teacher.max_length
        )
        tracker.log_metrics(
            {
                k: float(row[k])
                for k in ("val_accuracy", "test_accuracy", "latency_ms", "size_bytes")
                if row[k] is not None
            }
        )
        print(
            f"[search]   {candidate.name}: val acc {component.shown(row['val_accuracy'])}, "
            f"batch-1 p50 {row['latency_ms']:.2f} ms, "
            f"{row['size_bytes'] / 1e6:.1f} MB ({row['shipped']})",
            flush=True,
        )
        ok = True
    except Exception as err:  # noqa: BLE001 - one failed candidate must not end the search
        row["error"] = f"{type(err).__name__}: {err}"[:500]
        print(f"[search]   {candidate.name} FAILED: {row['error']}", flush=True)
    finally:
        row["seconds"] = time.perf_counter() - started
        tracker.log_metrics({"candidate_seconds": row["seconds"]})
        tracking.end_run(client, run_id, ok)
    return row


def chosen_report(row: dict, teacher: dict, p: Params, summary: dict) -> dict:
    """The compression report of the chosen candidate, in the pipeline report's terms (validation split)."""
    ratios = {
        "size_ratio": teacher["size_bytes"] / row["size_bytes"],
        "speedup_batch1_p50": teacher["latency_ms"] / row["latency_ms"],
        "accuracy_drop_points": row["accuracy_drop_points"],
    }
    return {
        "task": TASK.name,
        "source": "search",
        "split": "validation",
        "final_vs_teacher": ratios,
        "gate": decide(ratios, p.register_.gate).as_dict(),
        "candidate": row,
        "search": {k: summary[k] for k in ("chosen", "reason", "within_tolerance", "front")},
    }


def register_choice(
    p: Params, ws: ClassificationWorkspace, ctx: RunContext, row: dict, report_path: Path, within: bool, reason: str
) -> dict:
    import mlflow

    from flows import registry

    report = json.loads(report_path.read_text())
    mlflow.set_tracking_uri(tracking.tracking_uri(ws.root))
    tags = {
        "git_commit": registry.git_commit(ws.root),
        "params_hash": section_hash(p.as_dict()),
        "parent_run_id": ctx.parent_run_id,
        "source": "search",
        "search_candidate": row["name"],
        "within_tolerance": str(within).lower(),
        # final.* are test-split figures, like a pipeline version's, so the champion check compares like
        # with like; the ratios against the teacher come from the validation split the search selects on
        "data_sha256": registry.workspace_data_sha256(ws) or "",
        registry.DATA_SOURCE_TAG: data_source_id(p.data_source()),
        "metrics_split": "test",
        "ratios_split": report["split"],
        **({"final.accuracy": f"{row['test_accuracy']:.6g}"} if row["test_accuracy"] is not None else {}),
        "final.size_bytes": str(int(row["size_bytes"])),
        **{f"final_vs_teacher.{k}": f"{v:.6g}" for k, v in report["final_vs_teacher"].items()},
    }
    # the card's chain is the candidate's own (its layers, pruning, vocabulary, quantization), not the params'
    chosen = {k: row[k] for k in ("layers", "prune_ratio", "trim", "quantize", "shipped") if k in row}
    name = p.registered_model_name()
    chain = {"search": chosen | {"epochs": p.search.epochs}}
    version = registry.log_version(TASK, p, row["run_id"], Path(row["model_dir"]), report_path, tags, name, chain)
    client = tracking.client(ws.root)
    decision = registry.judge(TASK, p, ws, client, client.get_model_version(name, version), report)
    failed = decision.failed()
    for key, value in {"gate_passed": str(decision.passed).lower(), "gate_failed_checks": ",".join(failed)}.items():
        client.set_model_version_tag(name, version, key, value)
    champion = within and decision.passed
    alias = registry.CHAMPION if champion else registry.CHALLENGER
    why = (
        reason
        if not within
        else ("search choice, gate passed" if decision.passed else "search choice, gate failed: " + ", ".join(failed))
    )
    registry.move_alias(
        client, ws.root, name, version, alias, reason=why, by="miniaturize search", failed_checks=failed
    )
    return {
        "model_name": name,
        "version": version,
        "alias": alias,
        "reason": why,
        "model_uri": f"models:/{name}/{version}",
    }


# Prints reach the Prefect run log through `printed_to_run_log`, standard output unchanged (flows/run_log.py).
@flow(name="miniaturize-search", log_prints=False)
def search(params: Params, root: str = ".", run_name: str | None = None, wait_seconds: float = 0.0) -> dict:
    """Every candidate, the Pareto front, the chosen one registered. It holds the workspace like a pipeline
    run does (`flows.lock`): it reads the teacher and data a concurrent run would rewrite."""
    ws = TASK.workspace(Path(root).resolve())
    with printed_to_run_log(), workspace_lock(ws.root, "miniaturize search", wait_seconds):
        return run_search(params, ws, run_name)


def run_search(params: Params, ws: ClassificationWorkspace, run_name: str | None) -> dict:
    cfg = params.search
    client = tracking.client(ws.root)
    experiment = tracking.experiment_id(client, ws.root)
    parent = tracking.start_run(
        client,
        experiment,
        run_name or time.strftime("search-%Y%m%d-%H%M%S"),
        tags={"miniaturize.params_hash": section_hash(params.as_dict()), "miniaturize.kind": "search"},
    )
    tracking.MlflowTracker(client, parent).log_params({"search": cfg.model_dump()})
    ctx = RunContext(params, ws, experiment, parent)
    ok = False
    try:
        if not (ws.teacher / "config.json").exists() or not (ws.prepared / "data_card.json").exists():
            print(
                "[search] no fine-tuned teacher in this workspace: running ingest, validate, finetune first", flush=True
            )
            key = "root"
            for name in ("ingest", "validate", "finetune"):
                key = run_stage(name, ctx, key)["key"]
        teacher = teacher_reference(ctx)
        shutil.rmtree(search_root(ws), ignore_errors=True)
        space = component.candidates(cfg)
        rows, skipped, started = [], [], time.perf_counter()
        for i, candidate in enumerate(space, start=1):
            if time.perf_counter() - started > 60 * cfg.budget_minutes:
                skipped.append(candidate.name)
                continue
            rows.append(try_candidate(candidate, ctx, i, len(space)))
        choice = component.choose(rows, teacher["val_accuracy"], cfg.max_drop_vs_teacher_points)
        summary = component.summary(rows, teacher, choice, cfg, skipped)

        out = search_reports(ws)
        out.mkdir(parents=True, exist_ok=True)
        (out / "search.json").write_text(json.dumps(summary, indent=2, default=component.json_default))
        (out / "search.md").write_text(component.render_markdown(summary))
        component.save_plot(rows, summary["front"], choice.name, teacher, out / "pareto.png")
        parent_tracker = tracking.MlflowTracker(client, parent)
        for name in ("search.json", "search.md", "pareto.png"):
            parent_tracker.log_artifact(out / name, artifact_path="search")
        print(f"[search] Pareto front: {', '.join(summary['front']) or 'empty'}", flush=True)
        if choice.name is None:
            raise RuntimeError(f"search found nothing to register: {choice.reason}")
        row = next(r for r in rows if r["name"] == choice.name)
        report_path = out / "compression_report.json"
        report_path.write_text(
            json.dumps(chosen_report(row, teacher, params, summary), indent=2, default=component.json_default)
        )
        registration = register_choice(params, ws, ctx, row, report_path, choice.within_tolerance, choice.reason)
        (out / "registration.json").write_text(json.dumps(registration, indent=2))
        ok = True
    finally:
        tracking.end_run(client, parent, ok)
    return {
        "parent_run_id": parent,
        "chosen": choice.name,
        "within_tolerance": choice.within_tolerance,
        "reason": choice.reason,
        "registration": registration,
        "front": summary["front"],
        "reports": str(search_reports(ws)),
        "tracking_uri": tracking.tracking_uri(ws.root),
    }
