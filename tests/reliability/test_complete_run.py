"""One complete run of the tiny project (`tiny_run`: every stage, registered as champion, credentials planted
in its environment), and what must hold of it:

- nothing is left in staging, and an unchanged re-run skips every stage;
- the seeds stage re-trains the student chain with the extra seed, and the report gives the seed spread;
- the two tasks keep their own stage cache: a causal-lm run in the same project, then the unchanged
  classification run again, finds every classification stage unchanged (and the causal-lm run too);
- no planted credential is in any file of the project (MLflow store and artifacts, reports, models, stage
  records) or in anything the run printed;
- a second run from scratch gives the same prepared-data hash and test accuracy within 0.2 points;
- the champion alias moves only after the new version is fully registered (model, bundle, report and tags
  in the registry, status READY) and has passed the gate: a crash in between leaves the old champion in
  place (last: it registers a new version).
"""

from __future__ import annotations

import json

import pytest

from flows import cache
from flows.tasks.causal_lm import TASK as CAUSAL_LM
from flows.tasks.classification import TASK as CLASSIFICATION
from tests.conftest import lm_sentences
from tests.reliability.conftest import PLANTED_SECRETS, make_tiny_project, run_pipeline

TOLERANCE_POINTS = 0.2
# A corpus of generated sentences and a teacher trained in seconds: the causal-lm chain in about a minute.
TINY_LM = [
    "lm.data.max_sentences=400",
    "lm.data.vocab_size=300",
    "lm.teacher.epochs=1",
    "lm.teacher.architecture={n_layer: 2, n_embd: 32, n_head: 2, n_positions: 48}",
    "lm.distill.layers=[0]",
    "lm.distill.ablation=false",
    "lm.evaluate.rss_prompts=0",  # no peak-RSS probes: the causal-lm e2e run measures them
    "lm.evaluate.generation_prompts=2",
    "lm.evaluate.bleu_sentences=10",
    "retries.stage_delay_seconds=0",
]


def test_the_complete_run_left_nothing_staged_and_an_unchanged_rerun_skips_every_stage(
    tiny_run, prefect_api, monkeypatch
):
    project = tiny_run["project"]
    assert tiny_run["outcome"]["registration"]["alias"] == "champion"
    assert not any((CLASSIFICATION.workspace(project).state / "staging").glob("*/*")), "staging left behind"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    again = run_pipeline(project, prefect_api)
    assert all(stage["cache_hit"] for stage in again["stages"].values())


def test_the_seeds_stage_retrains_the_chain_and_the_report_gives_the_seed_spread(tiny_run):
    project = tiny_run["project"]
    report = json.loads((project / "reports" / "compression_report.json").read_text())
    final, ratios, seeds = report["models"]["final"], report["final_vs_teacher"], report["seeds"]
    assert [r["seed"] for r in seeds["runs"]] == [13, 14]  # the run's own seed first
    assert seeds["runs"][0]["accuracy"] == final["accuracy"]
    assert seeds["accuracy_drop_points"]["n"] == 2
    spread = seeds["accuracy_drop_points"]
    assert spread["min"] <= ratios["accuracy_drop_points_seed_mean"] <= spread["max"]
    assert (project / "models" / "seeds" / "14" / "final" / "model.onnx").exists()
    assert not (project / "models" / "seeds" / "14" / "student").exists()  # intermediate models removed


def test_with_rss_sentences_0_no_peak_rss_probe_runs_and_the_report_says_n_a(tiny_run):
    report = json.loads((tiny_run["project"] / "reports" / "compression_report.json").read_text())
    assert all(entry["peak_rss_mb"] is None for entry in report["models"].values())
    assert "peak RSS n/a MB" in tiny_run["printed"]


def run_lm(project, prefect_api: str) -> dict:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from components.config import load_params
    from flows.pipeline import pipeline

    corpus = project / "data" / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("\n".join(lm_sentences(300, 7)) + "\n")
    params = load_params(project / "configs" / "causal-lm.yaml", None, [*TINY_LM, f"lm.data.source={corpus}"])
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        return pipeline(params, root=str(project))


def test_a_causal_lm_run_in_the_same_project_keeps_both_stage_caches(tiny_run, prefect_api):
    project = tiny_run["project"]
    assert not any(stage["cache_hit"] for stage in run_lm(project, prefect_api)["stages"].values())
    again = run_pipeline(project, prefect_api)
    assert all(stage["cache_hit"] for stage in again["stages"].values()), "the causal-lm run invalidated them"
    assert all(stage["cache_hit"] for stage in run_lm(project, prefect_api)["stages"].values())
    assert (CLASSIFICATION.workspace(project).state / "stages" / "ingest.json").is_file()
    assert (CAUSAL_LM.workspace(project).state / "stages" / "ingest.json").is_file()


def test_no_planted_secret_in_any_file_the_run_wrote_or_in_its_output(tiny_run):
    project = tiny_run["project"]
    files = [p for p in project.rglob("*") if p.is_file() and ".git" not in p.parts]
    assert any(p.name == "mlflow.db" for p in files) and any("mlruns" in p.parts for p in files)
    for path in files:
        data = path.read_bytes()
        for name, secret in PLANTED_SECRETS.items():
            assert secret.encode() not in data, f"{name} leaked into {path.relative_to(project)}"
    for name, secret in PLANTED_SECRETS.items():
        assert secret not in tiny_run["printed"], f"{name} leaked into the run's output"


def test_a_second_run_from_scratch_gives_the_same_data_hash_and_accuracy(
    tiny_run, tmp_path, tiny_model_dir, prefect_api, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = tiny_run["project"]
    second = make_tiny_project(tmp_path / "again", tiny_model_dir)
    run_pipeline(second, prefect_api, until="distill")

    def record(project, stage):
        return json.loads(cache.StageCache(CLASSIFICATION.workspace(project).state).path(stage).read_text())

    assert record(first, "ingest")["outputs"] == record(second, "ingest")["outputs"]
    for stage in ("finetune", "distill"):
        a, b = record(first, stage)["metrics"], record(second, stage)["metrics"]
        assert abs(a["test_accuracy"] - b["test_accuracy"]) * 100 <= TOLERANCE_POINTS, (stage, a, b)


def test_a_crash_between_registration_and_the_alias_move_keeps_the_old_champion(tiny_run, prefect_api, monkeypatch):
    from mlflow.tracking import MlflowClient

    from flows import registry

    project = tiny_run["project"]
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    name = tiny_run["outcome"]["registration"]["model_name"]
    champion = client.get_model_version_by_alias(name, "champion").version
    seen = {}

    def crash(mlflow_client, root, model_name, version, alias, *args, **kwargs):
        registered = client.get_model_version(model_name, version)
        seen.update(version=version, status=registered.status, tags=dict(registered.tags))
        raise SystemExit("killed between registration and the alias move")

    monkeypatch.setattr(registry, "move_alias", crash)
    cache.StageCache(CLASSIFICATION.workspace(project).state).forget("register")  # register again, the same model
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(BaseException, match="killed between registration"):
        run_pipeline(project, prefect_api, "retries.stage_attempts=1")
    # The new version was complete when the alias was about to move ...
    assert seen["status"] == "READY" and seen["version"] != champion
    assert {"git_commit", "data_sha256", "params_hash", "gate_passed", "final.accuracy"} <= set(seen["tags"])
    # ... and the crash left the champion where it was, and the registration unrecorded.
    assert client.get_model_version_by_alias(name, "champion").version == champion
    assert "alias.champion.set_at" not in client.get_model_version(name, seen["version"]).tags
    assert not cache.StageCache(CLASSIFICATION.workspace(project).state).path("register").exists()
