"""Register the final ONNX model in the MLflow model registry and move aliases through the gate.

Decide, then act: `components.gate.decide` judges the report's ratios against the gate config; this module
only logs the model, tags the version and moves the alias: `champion` when the gate passes, `challenger`
when it fails (the champion stays where it was). `promote` re-runs the same gate for an existing version.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from components.config import Params, section_hash
from components.gate import decide
from components.tracking import StageResult, Tracker
from flows.workspace import Workspace

CHAMPION, CHALLENGER = "champion", "challenger"
# What the registered ONNX model needs to run through mlflow.pyfunc; given explicitly because
# inferring requirements costs 5-10 s per model.
PIP_REQUIREMENTS = ["onnx", "onnxruntime", "numpy"]


class GateRejected(RuntimeError):
    """A manual promotion the gate refused; the message lists the failed checks."""


def git_commit(root: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def alias_for(gate_passed: bool) -> str:
    return CHAMPION if gate_passed else CHALLENGER


def version_tags(p: Params, ws: Workspace, report: dict, parent_run_id: str | None) -> dict[str, str]:
    gate = report["gate"]
    return {
        "git_commit": git_commit(ws.root),
        "data_sha256": report["dataset"]["sha256"],
        "params_hash": section_hash(p.as_dict()),
        "parent_run_id": parent_run_id or "",
        "gate_passed": str(gate["passed"]).lower(),
        "gate_failed_checks": ",".join(k for k, c in gate["checks"].items() if not c["passed"]),
        "task": report["task"],
        **{f"final_vs_teacher.{k}": f"{v:.6g}" for k, v in report["final_vs_teacher"].items()},
    }


def log_version(p: Params, run_id: str, model_dir: Path, report: Path, tags: dict[str, str]) -> str:
    """Log the ONNX model of model_dir under the MLflow run as a new registered version, with its folder
    (tokenizer, labels) as the `bundle` artifact, the report and the tags; returns the version."""
    import mlflow
    import onnx

    with mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(onnx.load(str(model_dir / "model.onnx")), name="model",
                                     registered_model_name=p.register_.model_name,
                                     onnx_execution_providers=["CPUExecutionProvider"],
                                     pip_requirements=PIP_REQUIREMENTS, save_as_external_data=False)
        mlflow.log_artifacts(str(model_dir), artifact_path="bundle")
        mlflow.log_artifact(str(report), artifact_path="report")
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()  # the tracking URI the caller set
    for key, value in tags.items():
        client.set_model_version_tag(p.register_.model_name, version, key, value)
    return version


def register(p: Params, ws: Workspace, tracker: Tracker) -> StageResult:
    import mlflow

    from flows.tracking import tracking_uri

    report = json.loads(ws.report.read_text())
    run_id = getattr(tracker, "run_id", None)
    if run_id is None:
        raise RuntimeError("the register stage needs an MLflow tracker")
    mlflow.set_tracking_uri(tracking_uri(ws.root))
    client = tracker.client
    parent = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
    version = log_version(p, run_id, ws.final, ws.report, version_tags(p, ws, report, parent))

    gate_passed = bool(report["gate"]["passed"])
    alias = alias_for(gate_passed)
    move_alias(client, p.register_.model_name, version, alias, reason="gate passed" if gate_passed else
               "gate failed: " + ", ".join(k for k, c in report["gate"]["checks"].items() if not c["passed"]),
               by="pipeline")
    result = {"model_name": p.register_.model_name, "version": version, "alias": alias,
              "gate_passed": gate_passed, "run_id": run_id, "parent_run_id": parent,
              "model_uri": f"models:/{p.register_.model_name}/{version}",
              "failed_checks": [k for k, c in report["gate"]["checks"].items() if not c["passed"]]}
    ws.registration.write_text(json.dumps(result, indent=2))
    tracker.set_tags({"miniaturize.registered_version": version, "miniaturize.alias": alias})
    return StageResult(metrics={"version": float(version), "gate_passed": float(gate_passed)},
                       outputs={"registration": ws.registration}, info=result)


def move_alias(client, model_name: str, version: str, alias: str, reason: str, by: str) -> None:
    client.set_registered_model_alias(model_name, alias, version)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    client.set_model_version_tag(model_name, version, f"alias.{alias}.set_at", stamp)
    client.set_model_version_tag(model_name, version, f"alias.{alias}.reason", reason)
    client.set_model_version_tag(model_name, version, f"alias.{alias}.by", by)


def promote(p: Params, ws: Workspace, version: str) -> dict:
    """Promote an existing version to champion through the same gate, judged with the current gate config."""
    from flows.tracking import client as make_client

    client = make_client(ws.root)
    name = p.register_.model_name
    found = client.get_model_version(name, version)
    local = Path(client.download_artifacts(found.run_id, "report/compression_report.json"))
    report = json.loads(local.read_text())
    decision = decide(report["final_vs_teacher"], p.register_.gate)
    if not decision.passed:
        details = "; ".join(f"{k}: {decision.checks[k].value:.4g} vs threshold {decision.checks[k].threshold:.4g}"
                            for k in decision.failed())
        raise GateRejected(f"version {version} of {name} fails the gate ({details}); champion unchanged")
    move_alias(client, name, version, CHAMPION, reason="manual promotion, gate passed", by="miniaturize promote")
    return {"model_name": name, "version": version, "alias": CHAMPION, "checks": decision.as_dict()}


def bundle_source(p: Params, ws: Workspace, model: str | None, download_to: Path) -> tuple[Path, dict, dict]:
    """(model folder, source, metrics) for `miniaturize package`: a registered version given as
    models:/NAME@ALIAS or models:/NAME/VERSION (default: the champion), downloaded from MLflow, or a
    local model folder."""
    from flows.tracking import client as make_client

    model = model or f"models:/{p.register_.model_name}@{CHAMPION}"
    if not model.startswith("models:/"):
        path = Path(model)
        if not path.is_dir():
            raise FileNotFoundError(f"{model} is neither a models:/ URI nor a model folder")
        return path, {"path": str(path.resolve())}, {}
    client = make_client(ws.root)
    ref = model.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, number = ref.rsplit("/", 1)
        version = client.get_model_version(name, number)
    folder = Path(client.download_artifacts(version.run_id, "bundle", str(download_to)))
    metrics = {k: float(v) for k, v in version.tags.items() if k.startswith("final_vs_teacher.")}
    try:
        report = json.loads(Path(client.download_artifacts(version.run_id, "report/compression_report.json",
                                                           str(download_to))).read_text())
        final = report.get("models", {}).get("final")
        if final:
            metrics |= {"accuracy": final["accuracy"], "size_bytes": final["size_bytes"],
                        "batch1_p50_ms": final["latency_ms"]["batch1_p50"]}
    except Exception:  # noqa: BLE001 - a version without a report still packages; its tags carry the ratios
        pass
    source = {"model_uri": model, "name": name, "version": str(version.version), "run_id": version.run_id,
              "git_commit": version.tags.get("git_commit", ""), "data_sha256": version.tags.get("data_sha256", "")}
    return folder, source, metrics
