"""The MLflow tracking server goes away: at the start of a run, or while a stage is computing.

Every MLflow call is retried with exponential backoff, then the run stops with a clear message. A stage
that finishes while MLflow is down keeps its outputs and its logs on disk; the next run logs them into the
same MLflow run without computing the stage again.
"""

from __future__ import annotations

import json

import pytest

from flows import cache
from flows.retries import TrackingUnavailable
from flows.tasks.classification import TASK as CLASSIFICATION
from tests.reliability.conftest import run_pipeline


def test_mlflow_down_at_the_start_fails_clearly_after_retries_and_computes_nothing(
    tiny_project, prefect_api, mlflow_server, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)  # never started
    with pytest.raises(TrackingUnavailable) as caught:
        run_pipeline(tiny_project, prefect_api, until="validate")
    message = str(caught.value)
    assert f"MLflow at {mlflow_server.uri} did not answer" in message and "after 3 attempts" in message
    assert not (tiny_project / "data" / "prepared").exists()


def test_mlflow_down_mid_stage_keeps_outputs_and_logs_and_the_next_run_replays_them(
    tiny_project, prefect_api, mlflow_server, monkeypatch
):
    from dataclasses import replace

    from mlflow.tracking import MlflowClient

    from flows.tasks.classification import STAGES

    mlflow_server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    real = STAGES["validate"]

    def server_dies_then_validate(p, ws, tracker):
        mlflow_server.stop()
        return real.run(p, ws, tracker)

    monkeypatch.setitem(STAGES, "validate", replace(real, run=server_dies_then_validate))
    with pytest.raises(TrackingUnavailable) as caught:
        run_pipeline(tiny_project, prefect_api, "retries.stage_attempts=1", until="validate")
    message = str(caught.value)
    assert (
        "the validate stage finished and its outputs are in place (reports/validation, reports/metrics/validate.json)"
        in message
    )
    assert "the next run logs them without computing it again" in message
    record = cache.StageCache(CLASSIFICATION.workspace(tiny_project).state).path("validate")
    assert record.is_file() and (tiny_project / "reports" / "validation" / "validation.json").is_file()
    kept = cache.Record(**json.loads(record.read_text()))
    assert {e["kind"] for e in kept.journal} >= {"metrics", "artifact", "end"}

    monkeypatch.setitem(STAGES, "validate", real)
    mlflow_server.start()
    again = run_pipeline(tiny_project, prefect_api, until="validate")
    assert again["stages"]["validate"]["cache_hit"], "validate was computed again"
    original = MlflowClient(mlflow_server.uri).get_run(kept.run_id)
    assert original.info.status == "FINISHED"
    assert set(kept.metrics) <= set(original.data.metrics)
    artifacts = [a.path for a in MlflowClient(mlflow_server.uri).list_artifacts(kept.run_id)]
    assert "validation.json" in artifacts
    assert not (tiny_project / ".miniaturize" / "pending" / kept.run_id).exists()
