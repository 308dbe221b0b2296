"""End to end: `miniaturize run` at smoke scale with the real teacher, against a real Prefect server,
then the MLflow runs, the registered version and its alias, the report schema, `dvc status`, and that the
same data, params and seed repeat the run's prepared data and teacher."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from components.config import SPLITS
from tests.flows.conftest import BIN, make_project, run_cli

pytestmark = pytest.mark.e2e
STAGES = [
    "ingest",
    "validate",
    "finetune",
    "distill",
    "prune",
    "trim",
    "export",
    "quantize",
    "seeds",
    "evaluate",
    "register",
]
MODELS = ["teacher", "student", "pruned", "trimmed", "onnx_fp32", "final", "baseline_teacher_int8"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, prefect_api):
    # half the smoke profile's rows (and transfer sentences): every stage still runs on the real teacher
    project = make_project(tmp_path_factory.mktemp("e2e") / "project", {"data.max_rows": 200})
    done = run_cli(["run"], project, prefect_api)
    return project, done


def test_smoke_run_completes_and_says_where_things_are(smoke_run):
    project, done = smoke_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for stage in STAGES:
        assert f"[{stage}] started" in out and f"[{stage}] finished in" in out
    assert "compression_report.md" in out and "models:/miniaturize-sentiment/1" in out
    assert "@champion" in out


def test_report_has_the_promised_schema(smoke_run):
    project, _ = smoke_run
    report = json.loads((project / "reports" / "compression_report.json").read_text())
    assert report["task"] == "sequence-classification"
    assert set(report["dataset"]["rows"]) == set(SPLITS) and len(report["dataset"]["sha256"]) == 64
    for name in MODELS:
        entry = report["models"][name]
        assert 0.0 <= entry["accuracy"] <= 1.0 and 0.0 <= entry["f1_macro"] <= 1.0
        assert entry["size_bytes"] > 0 and entry["params"] > 0
        # peak memory of what is served or compared; the chain's intermediates are not measured for it
        intermediate = name in ("student", "pruned", "trimmed")
        assert entry["peak_rss_mb"] is None if intermediate else entry["peak_rss_mb"] > 0
        assert 0 < entry["latency_ms"]["batch1_p50"] <= entry["latency_ms"]["batch1_p95"]
        assert entry["latency_ms"]["batch32_p50"] > 0
    teacher, final = report["models"]["teacher"], report["models"]["final"]
    ratios = report["final_vs_teacher"]
    assert ratios["size_ratio"] == pytest.approx(teacher["size_bytes"] / final["size_bytes"])
    assert ratios["speedup_batch1_p50"] == pytest.approx(
        teacher["latency_ms"]["batch1_p50"] / final["latency_ms"]["batch1_p50"]
    )
    assert ratios["accuracy_drop_points"] == pytest.approx(100 * (teacher["accuracy"] - final["accuracy"]))
    # The pruned and distilled model is physically smaller than the student and the teacher.
    assert report["models"]["pruned"]["params"] < report["models"]["student"]["params"] < teacher["params"]
    assert set(report["gate"]["checks"]) >= {"accuracy_drop_points", "size_ratio", "speedup_batch1_p50"}
    assert {"cpu", "threads", "torch", "onnxruntime"} <= set(report["environment"])
    assert (project / "reports" / "compression_plot.png").stat().st_size > 1000
    ablation = report["ablation"]
    assert 0.0 <= ablation["labels_only"] <= 1.0 and 0.0 <= ablation["kd_train_only"] <= 1.0
    assert ablation["kd_with_transfer"] == pytest.approx(report["models"]["student"]["accuracy"], abs=0.01)
    # The smoke profile re-trains no extra seed (tests/reliability/test_complete_run.py covers the seed rows).
    assert "seeds" not in report and "accuracy_drop_points_seed_mean" not in ratios
    assert 0.0 <= ratios["agreement_with_teacher"] <= 1.0


def test_mlflow_has_parent_child_runs_and_the_registered_champion(smoke_run):
    from mlflow.tracking import MlflowClient

    project, _ = smoke_run
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("miniaturize")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert sorted(children) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" and r.data.tags["miniaturize.stage_key"] for r in children.values())
    assert "val_accuracy" in children["finetune"].data.metrics
    assert [m.step for m in client.get_metric_history(children["finetune"].info.run_id, "val_accuracy")] == [1]

    version = client.get_model_version_by_alias("miniaturize-sentiment", "champion")
    assert str(version.version) == "1" and version.run_id == children["register"].info.run_id
    for tag in ("git_commit", "data_sha256", "params_hash", "parent_run_id"):
        assert version.tags[tag]
    assert version.tags["parent_run_id"] == parents[0].info.run_id
    registration = json.loads((project / "reports" / "registration.json").read_text())
    assert registration["version"] == "1" and registration["alias"] == "champion"


def test_transfer_set_never_holds_held_out_texts(smoke_run):
    import pandas as pd

    from components.kit.text import text_key

    prepared = smoke_run[0] / "data" / "prepared"
    transfer = set(pd.read_parquet(prepared / "transfer.parquet")["text"].map(text_key))
    assert len(transfer) > 100
    for split in SPLITS:
        assert not transfer & set(pd.read_parquet(prepared / f"{split}.parquet")["text"].map(text_key))


def test_the_same_data_params_and_seed_repeat_the_prepared_data_and_the_teacher(smoke_run, tmp_path):
    """Determinism: the built-in data ingested again gives the run's prepared files byte for byte, and the real
    teacher fine-tuned again in this process with the run's params reaches the run's test accuracy (within
    0.2 points)."""
    from components.classification import finetune, ingest
    from components.config import load_params
    from components.kit.tracking import NullTracker
    from components.kit.training import use_threads
    from flows import cache

    project, _ = smoke_run
    params = load_params(project / "params.yaml")
    prepared = tmp_path / "prepared"
    ingest.run(params.data, prepared, NullTracker(), cache_dir=project / "data" / "raw", root=project)
    assert cache.tree_sha256(prepared) == cache.tree_sha256(project / "data" / "prepared")
    use_threads(params.threads)
    again = finetune.run(params.teacher, prepared, tmp_path / "teacher", NullTracker(), seed=params.seed)
    first = json.loads((project / "models" / "teacher" / "metrics.json").read_text())
    assert abs(again.metrics["test_accuracy"] - first["test_accuracy"]) * 100 <= 0.2, (again.metrics, first)


def test_dvc_records_the_run(smoke_run):
    project, _ = smoke_run
    assert (project / "dvc.lock").is_file()
    done = subprocess.run([str(BIN / "dvc"), "status", *STAGES], cwd=project, capture_output=True, text=True)
    assert done.returncode == 0 and "up to date" in done.stdout, done.stdout + done.stderr


def test_dvc_push_then_pull_in_a_fresh_clone_restores_the_champion(smoke_run, tmp_path):
    """What `make push` stores is what a teammate's clone gets back: every output of dvc.lock, byte for byte,
    and the registered champion's model among them."""
    import yaml
    from mlflow.tracking import MlflowClient

    from flows.cache import tree_sha256

    project, _ = smoke_run
    dvc = str(BIN / "dvc")
    pushed = subprocess.run([dvc, "push", "--quiet"], cwd=project, capture_output=True, text=True)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost"]
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "smoke run"], cwd=project, check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    assert not (clone / "models").exists()
    pulled = subprocess.run([dvc, "pull", "--quiet", *STAGES], cwd=clone, capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    outs = {
        out["path"]
        for stage in yaml.safe_load((project / "dvc.lock").read_text())["stages"].values()
        for out in stage.get("outs", [])
    }
    assert {"data/prepared", "models/teacher", "models/final"} <= outs
    for out in sorted(outs):
        assert tree_sha256(clone / out) == tree_sha256(project / out), out
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("miniaturize-sentiment", "champion")
    bundle = Path(client.download_artifacts(champion.run_id, "bundle", str(tmp_path / "champion")))
    assert tree_sha256(bundle) == tree_sha256(clone / "models" / "final")


def test_promote_goes_through_the_same_gate(smoke_run, prefect_api):
    from mlflow.tracking import MlflowClient

    project, _ = smoke_run
    refused = run_cli(["promote", "--version", "1", "--set", "register.gate.min_size_ratio=1000"], project, prefect_api)
    assert refused.returncode == 4 and "size_ratio" in refused.stderr and "champion unchanged" in refused.stderr
    done = run_cli(["promote", "--version", "1"], project, prefect_api)
    assert done.returncode == 0 and "is now @champion" in done.stdout, done.stderr[-2000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    version = client.get_model_version("miniaturize-sentiment", "1")
    assert version.tags["alias.champion.by"].endswith("(miniaturize promote)")


def onnx_digest(path: Path) -> tuple[list, dict]:
    """An ONNX model's nodes and the sha256 of each weight, wherever the file keeps its weights."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {t.name: hashlib.sha256(numpy_helper.to_array(t).tobytes()).hexdigest() for t in model.graph.initializer}
    return [n.SerializeToString() for n in model.graph.node], weights


def test_package_bundles_the_registered_champion(smoke_run, prefect_api, tmp_path):
    project, _ = smoke_run
    out = tmp_path / "edge"
    done = run_cli(["package", "--out", str(out)], project, prefect_api)
    assert done.returncode == 0 and "bundle written" in done.stdout, done.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["model_uri"] == "models:/miniaturize-sentiment@champion"
    assert manifest["source"]["version"] == "1" and "git_commit" in manifest["source"]
    assert 0.0 <= manifest["metrics"]["accuracy"] <= 1.0
    final = project / "models" / "final" / "model.onnx"
    # the same graph and weights; the bundle keeps the weights apart, in model.onnx.data
    assert onnx_digest(out / "model.onnx") == onnx_digest(final) and (out / "model.onnx.data").is_file()
    predicted = subprocess.run(
        [str(BIN / "python"), str(out / "predict.py"), "a wonderful film"], capture_output=True, text=True
    )
    assert predicted.returncode == 0 and json.loads(predicted.stdout)["label"] in ("negative", "positive")
    missing = run_cli(
        ["package", "--out", str(tmp_path / "x"), "--model", "models:/miniaturize-sentiment@nope"], project, prefect_api
    )
    assert missing.returncode == 2 and "alias nope not found" in missing.stderr


def stage_runs(client, parent_id: str) -> dict:
    experiment = client.get_experiment_by_name("miniaturize")
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {c.data.tags["miniaturize.stage"]: c for c in children}


def pipeline_parents(client) -> list:
    experiment = client.get_experiment_by_name("miniaturize")
    runs = client.search_runs(
        [experiment.experiment_id], "tags.`miniaturize.params_hash` != ''", order_by=["attributes.start_time ASC"]
    )
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags and "miniaturize.kind" not in r.data.tags]


def test_an_unchanged_rerun_skips_every_stage(smoke_run, prefect_api):
    from mlflow.tracking import MlflowClient

    project, _ = smoke_run
    files = sorted(p for p in (project / "models").rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}
    done = run_cli(["run"], project, prefect_api)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in STAGES:
        assert f"[{stage}] unchanged (key " in done.stdout and f"[{stage}] started" not in done.stdout, stage
    assert f"unchanged, skipped: {', '.join(STAGES)} (11 of 11 stages" in done.stdout
    assert "already registered as miniaturize-sentiment version 1" in done.stdout
    assert {p: p.stat().st_mtime_ns for p in files} == before  # nothing rewritten

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    first, second = pipeline_parents(client)
    old, new = stage_runs(client, first.info.run_id), stage_runs(client, second.info.run_id)
    for stage in STAGES:
        tags = new[stage].data.tags
        assert tags["miniaturize.cache_hit"] == "true" and old[stage].data.tags["miniaturize.cache_hit"] == "false"
        assert tags["miniaturize.stage_key"] == old[stage].data.tags["miniaturize.stage_key"]
        assert tags["miniaturize.source_run_id"] == old[stage].info.run_id
    assert new["finetune"].data.tags["miniaturize.parent_key"] == new["validate"].data.tags["miniaturize.stage_key"]
    assert len(client.search_model_versions("name = 'miniaturize-sentiment'")) == 1
    status = subprocess.run([str(BIN / "dvc"), "status", *STAGES], cwd=project, capture_output=True, text=True)
    assert "up to date" in status.stdout


def test_changing_one_stage_param_reruns_that_stage_and_later_ones_only(smoke_run, prefect_api):
    project, _ = smoke_run
    # a param of evaluate that also spares this re-run the peak-memory probes (a fresh process per model)
    done = run_cli(["run", "--set", "evaluate.rss_sentences=0"], project, prefect_api)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in STAGES[: STAGES.index("evaluate")]:
        assert f"[{stage}] unchanged (key " in done.stdout, stage
    for stage in ("evaluate", "register"):
        assert f"[{stage}] started" in done.stdout and f"[{stage}] finished in" in done.stdout
    assert "models:/miniaturize-sentiment/2" in done.stdout


def test_lineage_traces_a_version_to_commit_data_params_teacher_and_stage_keys(smoke_run, prefect_api):
    from mlflow.tracking import MlflowClient

    project, _ = smoke_run
    done = run_cli(["lineage", "2", "--json"], project, prefect_api)
    assert done.returncode == 0, done.stderr[-2000:]
    chain = json.loads(done.stdout)
    report = json.loads((project / "reports" / "compression_report.json").read_text())
    assert chain["data_sha256"] == report["dataset"]["sha256"] and len(chain["params_hash"]) == 16
    assert chain["git_commit"]
    assert [row["stage"] for row in chain["stages"]] == STAGES
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    first, *_, last = pipeline_parents(client)
    assert chain["pipeline_run"] == last.info.run_id
    # unchanged stages trace back to the run that produced their outputs: the teacher of the first run
    assert chain["teacher_run"] == stage_runs(client, first.info.run_id)["finetune"].info.run_id
    latest = stage_runs(client, last.info.run_id)
    assert {r["stage"]: r["key"] for r in chain["stages"]} == {
        s: c.data.tags["miniaturize.stage_key"] for s, c in latest.items()
    }
    text = run_cli(["lineage", "2"], project, prefect_api)
    assert text.returncode == 0 and "teacher run" in text.stdout and "finetune" in text.stdout
    missing = run_cli(["lineage", "99"], project, prefect_api)
    assert missing.returncode == 2 and "error" in missing.stderr


def test_promotion_lifecycle_gate_vs_champion_force_rollback_and_history(smoke_run, prefect_api):
    from mlflow.tracking import MlflowClient

    project, _ = smoke_run
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("miniaturize-sentiment", "champion").version) == "2"
    strict = ["--set", "register.gate.max_size_growth_vs_champion=0.5"]
    refused = run_cli(["promote", "--version", "1", *strict], project, prefect_api)
    assert refused.returncode == 4 and "vs_champion.size_growth" in refused.stderr, refused.stderr[-2000:]
    no_reason = run_cli(["promote", "--version", "1", "--force", *strict], project, prefect_api)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    forced = run_cli(
        ["promote", "--version", "1", "--force", "--reason", "pin v1 for the demo", *strict], project, prefect_api
    )
    assert forced.returncode == 0 and "FORCED past vs_champion.size_growth" in forced.stdout, forced.stderr[-2000:]
    tags = client.get_model_version("miniaturize-sentiment", "1").tags
    assert tags["alias.champion.forced"] == "true" and "pin v1 for the demo" in tags["alias.champion.reason"]
    back = run_cli(["rollback", "--reason", "demo over"], project, prefect_api)
    assert back.returncode == 0 and "rolled back from version 1 to 2" in back.stdout, back.stderr[-2000:]
    assert str(client.get_model_version_by_alias("miniaturize-sentiment", "champion").version) == "2"
    chain = json.loads(run_cli(["lineage", "1", "--json"], project, prefect_api).stdout)
    assert [(e["action"], e["forced"]) for e in chain["alias_history"]][-1] == ("set", True)
    history = json.loads(run_cli(["lineage", "2", "--json"], project, prefect_api).stdout)["alias_history"]
    assert history[-1]["action"] == "rollback" and history[-1]["reason"].endswith("demo over")


def test_until_stops_after_a_stage_and_records_nothing_in_dvc(smoke_run, prefect_api):
    project, _ = smoke_run
    done = run_cli(["run", "--until", "trim"], project, prefect_api)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[trim] unchanged (key " in done.stdout and "[export]" not in done.stdout
    assert "stopped after trim as asked" in done.stdout and "DVC: not recorded" in done.stdout
    bad = run_cli(["run", "--until", "polish"], project, prefect_api)
    assert bad.returncode == 2 and "unknown stage 'polish'" in bad.stderr


def test_search_measures_every_candidate_and_registers_one(smoke_run, prefect_api):
    """Runs last: it registers a new version. The smoke profile's space is 2 students, one quantization."""
    from mlflow.tracking import MlflowClient

    project, _ = smoke_run
    done = run_cli(["search"], project, prefect_api)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "search finished" in done.stdout and "pareto.png" in done.stdout
    assert "running ingest, validate, finetune first" not in done.stdout  # the pipeline's teacher is reused
    result = json.loads((project / "reports" / "search" / "search.json").read_text())
    rows = result["candidates"]
    assert len(rows) == 2 and not [r for r in rows if "error" in r]
    for r in rows:
        assert 0.0 <= r["val_accuracy"] <= 1.0 and r["latency_ms"] > 0 and r["size_bytes"] > 0
    assert result["front"] and set(result["front"]) <= {r["name"] for r in rows}
    assert result["chosen"] in {r["name"] for r in rows}
    assert (project / "reports" / "search" / "pareto.png").stat().st_size > 1000
    # one distilled student per layer choice, shared by its candidates
    assert sorted(p.name for p in (project / "models" / "search" / "students").iterdir()) == ["L0-2-4", "L0-5"]

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("miniaturize")
    parent = client.search_runs([experiment.experiment_id], "tags.`miniaturize.kind` = 'search'")[0]
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == sorted(r["name"] for r in rows)
    assert all({"val_accuracy", "latency_ms", "size_bytes"} <= set(c.data.metrics) for c in children)
    registration = json.loads((project / "reports" / "search" / "registration.json").read_text())
    assert registration["alias"] in ("champion", "challenger")
    version = client.get_model_version("miniaturize-sentiment", registration["version"])
    assert version.tags["source"] == "search" and version.tags["search_candidate"] == result["chosen"]


def log_tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def test_deploy_serves_a_cron_deployment_whose_triggered_run_completes(smoke_run, prefect_api, tmp_path):
    """Runs after the search: `miniaturize deploy` serves the smoke project on a real Prefect server with the
    override of the last full run, so a triggered run finds every stage unchanged and completes."""
    import os
    import time

    from mlflow.tracking import MlflowClient
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project, _ = smoke_run
    name = "miniaturize-scheduled/nightly"
    log = tmp_path / "serve.log"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PREFECT_API_URL": prefect_api}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "miniaturize"), "deploy", "--cron", "0 3 * * *", "--set", "evaluate.rss_sentences=0"],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, f"deploy exited with {proc.returncode}:\n{log_tail(log)}"
                try:
                    deployment = client.read_deployment_by_name(name)
                    break
                except ObjectNotFound:
                    assert time.monotonic() < deadline, f"{name} not registered in 120 s:\n{log_tail(log)}"
                    time.sleep(1)
            [schedule] = deployment.schedules
            assert schedule.schedule.cron == "0 3 * * *" and schedule.schedule.timezone == "UTC" and schedule.active
            assert deployment.parameters == {"until": None}  # the folder and params are bound when deploying
            assert deployment.entrypoint == "flows.deploy.scheduled_pipeline"
            flow_run = run_deployment(name=name, timeout=900, poll_interval=1)
            assert flow_run.state.is_completed(), f"{flow_run.state!r}\n{log_tail(log)}"
            # Ctrl-C or SIGTERM stops serving and pauses the schedule.
            proc.terminate()
            assert proc.wait(timeout=60) is not None
            assert client.read_deployment_by_name(name).paused
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert all(f"[{stage}] unchanged (key " in out for stage in STAGES), log_tail(log)
    assert "already registered" in out and "DVC: not recorded" in out, log_tail(log)
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("miniaturize")
    [parent] = client.search_runs([experiment.experiment_id], "attributes.run_name LIKE 'scheduled-%'")
    assert parent.info.status == "FINISHED"
    assert all(c.data.tags["miniaturize.cache_hit"] == "true" for c in stage_runs(client, parent.info.run_id).values())
