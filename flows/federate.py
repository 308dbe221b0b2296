"""Federated fine-tuning as a Prefect flow: the @champion's compressed student learns on clients' private shards.

    miniaturize federate [--from models:/NAME@champion] [--profile smoke] [--set federated.rounds=10]

extract:   the version to start from (default the champion) and its warm start (`teacher/`, `student/`); the
           clients' shards, one per vader source, prepared by the classification ingest component
           (`components.federated.shards`); the Flower environment (`flows.federation.env`).
transform: the federation on Flower's runtime on loopback (`flows.federation.stage.run_federation`: a
           SuperLink, one SuperNode per shard, FedAvg or FedProx; every process stopped at the end); the
           central baseline (the same student fine-tuned on the union of the shards); the federated student
           exported and quantized by the classification components, like any student.
load:      the federated int8 model and the champion on every client's test split and the pooled one; the gate
           (`components.federated.judge`); one MLflow run with a step per round; a registered version tagged
           with the federation's key and run, its parent version and every client's data hash, @champion when
           the gate passes, else @challenger; the report in reports/federated/; the shards recorded by DVC.

The federation's key (start weights, shards, settings but the number of rounds, seed) makes it a stage like
any other: a finished federation with the same key is reused, an interrupted one (a server restart) resumes
from its last completed round. The staging folder `.miniaturize/classification/federate/` is kept until the
version is registered.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.config import FederatedConfig, Params, section_hash
from components.kit.secrets import redact
from components.kit.tracking import PrefixedTracker, Tracker
from flows import prefect_api, registry, tracking
from flows.lock import note, workspace_lock
from flows.pipeline import settle_killed_runs
from flows.retries import RetryPolicy
from flows.run_log import printed_to_run_log
from flows.tasks.classification import TASK, ClassificationWorkspace
from flows.update import export_and_quantize, fetch_champion
from flows.versioning import dvc

REPORT_DIR = "federated"  # reports/federated/: one report per federated version
FLOWER_VENV = ".venv-flower"


def staging(ws: ClassificationWorkspace) -> Path:
    return ws.state / "federate"


# ---------------------------------------------------------------- the steps (Prefect tasks)


@task(name="shards", cache_policy=NO_CACHE)
def prepare_shards(p: Params, cfg: FederatedConfig, ws: ClassificationWorkspace, out: Path, tracker: Tracker):
    from components.federated import shards

    return shards.build(
        p.data, cfg.clients, cfg.max_rows_per_client, out, ws.raw, ws.root, PrefixedTracker(tracker, "shards.")
    )


@task(name="flower-env", cache_policy=NO_CACHE)
def flower_environment(root: Path, venv: str | None):
    from flows.federation import env

    return env.ensure(Path(venv) if venv else root / FLOWER_VENV)


@task(name="federation", cache_policy=NO_CACHE)
def federation(cfg: FederatedConfig, warm: Path, shards: dict, out: Path, flower, seed: int) -> dict:
    from components.federated.shards import POOLED
    from flows.federation.stage import run_federation

    pooled = next(iter(shards.values())).parent / POOLED / "test.parquet"
    teachers = {name: warm / "teacher" for name in shards} if cfg.distill else {}
    return run_federation(cfg, warm / "student", shards, out, flower, seed, teachers, pooled)


@task(name="central-baseline", cache_policy=NO_CACHE)
def central_baseline(cfg: FederatedConfig, warm: Path, shards: dict, out: Path, seed: int, threads: int | None) -> dict:
    from components.federated import local
    from components.kit.training import use_threads

    use_threads(threads)

    settings = local.LocalSettings.from_config(cfg.local_settings())
    teacher = warm / "teacher" if cfg.distill else None
    return local.finetune_central(
        warm / "student", list(shards.values()), settings, cfg.rounds * cfg.local_epochs, seed, out, teacher
    )


@task(name="evaluate-clients", cache_policy=NO_CACHE)
def evaluate_clients(p: Params, cfg: FederatedConfig, models: dict[str, Path], shards: dict, pooled: Path) -> dict:
    """{model: {client or "pooled": test accuracy}}: int8 models through ONNX Runtime, PyTorch folders as they
    are (the federated and central students before export, compared at fp32)."""
    from components.classification.evaluate import split_accuracy
    from components.federated import local

    splits = shards | {"pooled": pooled}
    out = {}
    for name, model in models.items():
        if (model / "model.onnx").exists():
            out[name] = {
                s: split_accuracy(model, f, "test", p.evaluate.threads, cfg.max_length) for s, f in splits.items()
            }
        else:
            out[name] = {s: local.evaluate_folder(model, f, cfg.max_length)["accuracy"] for s, f in splits.items()}
    return out


# ---------------------------------------------------------------- the report


def build_report(
    cfg: FederatedConfig,
    champion,
    record: dict,
    accuracy: dict,
    decision,
    chosen: str,
    size_bytes: int,
    prepared_sha: str,
    seconds: float,
) -> dict:
    from components.federated.judge import versus_central
    from flows.federation.stage import rounds_to_reach

    central = accuracy.get("central_fp32", {}).get("pooled")
    return {
        "task": TASK.name,
        "kind": "federated",
        "method": cfg.strategy,
        "parent_version": str(champion.version),
        "batch": "federated:" + ",".join(cfg.clients),
        "dataset": {
            "sha256": prepared_sha,
            "source": "federated:" + ",".join(cfg.clients),
            "clients": record["clients"],
        },
        "federation": {
            k: record[k]
            for k in (
                "key",
                "bytes_per_round_per_client",
                "bytes_total",
                "refused",
                "failed",
                "travelling_params_fp32_bytes",
                "seconds",
            )
        }
        | {"wire_dtype": cfg.wire_dtype, "weighting": cfg.weighting, "server_lr": cfg.server_lr},
        "rounds": record["rounds"],
        "accuracy": accuracy,
        "federated_vs_central_points": versus_central(accuracy["federated_fp32"], accuracy["central_fp32"])
        if "central_fp32" in accuracy
        else None,
        "rounds_to_within_1_point_of_central": rounds_to_reach(record["rounds"], central) if central else None,
        "head_calibration": record.get("head"),
        "gate": decision.as_dict(),
        "quantization": chosen,
        "cost": {"seconds": seconds},
        "models": {"final": {"accuracy": accuracy["federated"]["pooled"], "size_bytes": size_bytes}},
    }


def head_line(head: dict | None) -> str:
    if not head:
        return "as aggregated (no calibration asked)"
    used = ", ".join(head["clients"]) or "none"
    if not head["calibrated"]:
        return f"as aggregated: too few usable statistics (from {used}; refused {head['refused'] or '-'})"
    pooled = ""
    if "pooled_accuracy_before" in head:
        pooled = f"; pooled {100 * head['pooled_accuracy_before']:.2f} -> {100 * head['pooled_accuracy_after']:.2f}"
    return f"refitted (CCVR) from the statistics of {used} ({head['bytes_up']:,} bytes up){pooled}"


def render_markdown(report: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"

    acc = report["accuracy"]
    columns = [c for c in ("champion", "federated", "federated_fp32", "central_fp32") if c in acc]
    fed = report["federation"]
    rounds = len(report["rounds"]) - 1
    aggregation = f"{fed['weighting']}-weighted" + (
        f", server step {fed['server_lr']:g}" if fed["server_lr"] != 1 else ""
    )
    reached = report["rounds_to_within_1_point_of_central"]
    gap = (report["federated_vs_central_points"] or {}).get("pooled")
    lines = [
        f"# Federated fine-tuning of version {report['parent_version']} ({report['method']}, {aggregation}, "
        f"{len(report['dataset']['clients'])} clients, {rounds} rounds)",
        "",
        "| test split | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for split in acc["federated"]:
        lines.append(f"| {split} | " + " | ".join(pct(acc[c].get(split)) for c in columns) + " |")
    lines += [
        "",
        "| round | pooled acc | seconds | accepted | refused | bytes moved |",
        "|---:|---:|---:|---|---|---:|",
    ]
    for r in report["rounds"]:
        if r["round"] == 0:
            continue
        refused = ", ".join(x["client"] for x in r.get("refused", [])) or "-"
        lines.append(
            f"| {r['round']} | {pct(r.get('pooled_accuracy'))} | {r.get('seconds', 0):.0f} | "
            f"{', '.join(r.get('accepted', []))} | {refused} | {r.get('bytes_down', 0) + r.get('bytes_up', 0):,} |"
        )
    lines += [
        "",
        f"- bytes per round per client: {fed['bytes_per_round_per_client']:,} (down and up, {fed['wire_dtype']}); "
        f"in all {fed['bytes_total']:,}",
        "- federated minus central training (fp32, pooled): "
        + ("not measured" if gap is None else f"{-gap:+.2f} points"),
        "- rounds to reach within 1 point of central training: "
        + (f"not reached in {rounds}" if reached is None else str(reached)),
        "- classifier layer after the last round: " + head_line(report.get("head_calibration")),
        f"- gate: {'passed' if report['gate']['passed'] else 'refused'}",
        f"- quantization shipped: {report['quantization']}",
    ]
    return "\n".join(lines) + "\n"


def version_tags(p: Params, ws, champion, report: dict, run_id: str) -> dict[str, str]:
    fed = report["federation"]
    return {
        "git_commit": registry.git_commit(ws.root),
        "data_sha256": report["dataset"]["sha256"],
        registry.DATA_SOURCE_TAG: champion.tags.get(registry.DATA_SOURCE_TAG, ""),
        "params_hash": section_hash(p.as_dict()),
        "parent_run_id": run_id,
        "task": TASK.name,
        "source": "federate",
        "metrics_split": registry.METRICS_SPLIT,
        "gate_passed": str(report["gate"]["passed"]).lower(),
        "gate_failed_checks": ",".join(k for k, c in report["gate"]["checks"].items() if not c["passed"]),
        "final.accuracy": f"{report['models']['final']['accuracy']:.6g}",
        "final.size_bytes": str(int(report["models"]["final"]["size_bytes"])),
        "federated.parent_version": str(champion.version),
        "federated.parent_model": champion.name,
        "federated.run_id": run_id,
        "federated.key": fed["key"],
        "federated.strategy": report["method"],
        "federated.weighting": fed["weighting"],
        "federated.clients": json.dumps(report["dataset"]["clients"]),  # name -> sha256 of its shard
        "federated.bytes_per_round_per_client": str(fed["bytes_per_round_per_client"]),
    }


def record_shards(ws: ClassificationWorkspace, shards: dict[str, Path]) -> str:
    """The shards into data/federated/<client>, recorded with `dvc add` when the project uses DVC."""
    target = ws.root / "data" / "federated"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name, folder in shards.items():
        shutil.copytree(folder, target / name, ignore=shutil.ignore_patterns(".cache"))
    rel = target.relative_to(ws.root).as_posix()
    if not (ws.root / ".dvc").is_dir():
        return f"DVC: no .dvc/ here; {rel} written, not recorded"
    done = dvc(ws.root, "add", "--quiet", rel)
    return f"DVC: {rel} recorded" if done.returncode == 0 else f"DVC: add failed: {(done.stderr or '')[-300:]}"


def log_rounds(tracker: Tracker, rounds: list[dict]) -> None:
    """One MLflow step per round: pooled and per-client accuracy and loss, bytes moved, round seconds."""
    for r in rounds:
        figures = {k: v for k, v in r.items() if isinstance(v, (int, float)) and k != "round"}
        for client, c in r.get("clients", {}).items():
            for key in ("test_accuracy", "test_loss", "received_test_accuracy", "train_loss", "norm_ratio"):
                if isinstance(c.get(key), (int, float)):
                    figures[f"client.{client}.{key}"] = c[key]
        figures["refused"] = len(r.get("refused", []))
        tracker.log_metrics({k: float(v) for k, v in figures.items()}, step=int(r["round"]))


# ---------------------------------------------------------------- the flow


@flow(name="miniaturize-federate", log_prints=False)
def federate(
    params: Params,
    cfg: FederatedConfig | None = None,
    root: str = ".",
    run_name: str | None = None,
    wait_seconds: float = 0.0,
    start: str | None = None,
    flower_venv: str | None = None,
) -> dict:
    """Federate the champion's (or `start`'s) compressed student over the clients of `cfg` (default
    `params.federated`), register the result; one run, update or federation at a time per workspace."""
    cfg = cfg if cfg is not None else params.federated
    ws = TASK.workspace(Path(root).resolve())
    with printed_to_run_log(), workspace_lock(ws.root, "miniaturize federate", wait_seconds):
        settle_killed_runs(ws.root, params)
        note(ws.root, **prefect_api.this_flow_run())
        return run_federate(params, cfg, ws, run_name, start, flower_venv)


def run_federate(p: Params, cfg: FederatedConfig, ws, run_name, start, flower_venv) -> dict:
    import mlflow

    started = time.perf_counter()
    client = tracking.client(ws.root, RetryPolicy(p.retries.tracking_attempts, p.retries.tracking_backoff_seconds))
    mlflow.set_tracking_uri(tracking.tracking_uri(ws.root))
    work = staging(ws)  # kept across a crash: the federation's checkpoint lives here
    work.mkdir(parents=True, exist_ok=True)
    champion, warm, champion_model = fetch_champion(p, client, start, work / "champion")
    run_id = tracking.start_run(
        client,
        tracking.experiment_id(client, ws.root),
        run_name or time.strftime("federate-%Y%m%d-%H%M%S"),
        tags={"miniaturize.federation_of": str(champion.version), "miniaturize.params_hash": section_hash(p.as_dict())},
    )
    note(ws.root, mlflow_run_id=run_id)
    tracker = tracking.MlflowTracker(client, run_id, root=ws.root)
    ok = False
    try:
        result = federate_steps(p, cfg, ws, champion, warm, champion_model, work, run_id, tracker, started, flower_venv)
        ok = True
        return result
    finally:
        tracking.end_run(client, run_id, ok)
        if ok:
            shutil.rmtree(work, ignore_errors=True)


def federate_steps(p, cfg, ws, champion, warm, champion_model, work, run_id, tracker, started, flower_venv) -> dict:
    from components.classification.update import read_labels
    from components.federated import judge
    from components.federated.shards import POOLED, union_prepared
    from components.kit.modeling import dir_size_bytes

    # extract: the shards, the Flower environment
    shards = prepare_shards(p, cfg, ws, work / "shards", tracker)
    flower = flower_environment(ws.root, flower_venv)
    tracker.log_params({"federated." + k: v for k, v in cfg.model_dump(mode="json").items()})

    # transform: the federation, the central baseline, export and quantize
    record = federation(cfg, warm, shards, work / "federation", flower, p.seed)
    log_rounds(tracker, record["rounds"])
    head = record.get("head") or {}
    figures = {
        f"head.{k}": float(v) for k, v in head.items() if k.startswith("pooled_") or k in ("bytes_up", "seconds")
    }
    if figures:
        tracker.log_metrics(figures)
    models = {"federated_fp32": work / "federation" / "student"}
    if cfg.central_baseline:
        central_baseline(cfg, warm, shards, work / "central", p.seed, p.threads)
        models["central_fp32"] = work / "central"
    prepared = union_prepared(shards, work / "prepared", read_labels(warm / "teacher"))
    chosen = export_and_quantize(p, models["federated_fp32"], prepared, work / "models", tracker)
    final = work / "models" / "final"

    # load: measured, judged, registered
    models |= {"federated": final, "champion": champion_model}
    pooled = work / "shards" / POOLED
    accuracy = evaluate_clients(p, cfg, models, shards, pooled)
    decision = judge.decide(
        cfg,
        (accuracy["champion"]["pooled"], accuracy["federated"]["pooled"]),
        {name: (accuracy["champion"][name], accuracy["federated"][name]) for name in shards},
    )
    report = build_report(
        cfg,
        champion,
        record,
        accuracy,
        decision,
        chosen,
        dir_size_bytes(final),
        json.loads((prepared / "data_card.json").read_text())["sha256"],
        time.perf_counter() - started,
    )
    report_path = work / "federation_report.json"
    report_path.write_text(json.dumps(report, indent=2))
    model_name = p.registered_model_name(continuing=champion.name)
    version = registry.log_version(
        TASK, p, run_id, final, report_path, version_tags(p, ws, champion, report, run_id), model_name
    )
    why = "federated gate passed" if decision.passed else f"federated gate refused: {', '.join(decision.failed())}"
    alias = registry.settle_version(tracker, ws.root, model_name, version, decision, why, by="miniaturize federate")
    tracker.log_metrics(
        {f"accuracy.{m}.{s}": v for m, row in accuracy.items() for s, v in row.items() if v is not None}
    )
    report_md = registry.write_version_report(
        ws.reports / REPORT_DIR, version, alias, report, render_markdown(report), tracker
    )
    return {
        "model_name": model_name,
        "version": version,
        "alias": alias,
        "parent_version": str(champion.version),
        "reason": why,
        "report": report,
        "report_md": report_md,
        "run_id": run_id,
        "dvc": record_shards(ws, shards),
        "tracking_uri": redact(tracking.tracking_uri(ws.root)),
    }
