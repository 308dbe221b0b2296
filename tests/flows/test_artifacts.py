"""The Prefect markdown artifact of a run: built from the report files a run writes (small ones here), the
MLflow links, nothing for a run that registered nothing, never a failed run; and one artifact created on the
session's Prefect server and read back."""

from __future__ import annotations

import json
from pathlib import Path

from flows.artifacts import (
    artifact_key,
    mlflow_ui_url,
    publish,
    publish_run_report,
    report_body,
    run_report,
    update_report,
)

REPORT_MD = """# Compression report

Dataset `fixture` (sha256 `000000000000`), test rows: 16.

| model | runtime | accuracy |
|---|---|---:|
| teacher | torch | 0.9375 |
| final | onnx-int8 | 0.8750 |

## final vs teacher

| size ratio | accuracy drop (points) |
|---:|---:|
| 12.00x | -6.25 |

## Gate: PASSED

| check | value | threshold | result | note |
|---|---:|---:|---|---|
| accuracy_drop_points | 6.250 | 8.000 | pass |  |

## Seed spread (2 training seeds, teacher and data fixed)

| seed | final accuracy |
|---|---:|
| 13 | 0.8750 |
"""


def gate(passed: bool) -> dict:
    return {
        "passed": passed,
        "checks": {
            "accuracy_drop_points": {"value": 6.25, "threshold": 8.0, "passed": True, "note": ""},
            "vs_champion.accuracy_drop_points": {"value": 2.5, "threshold": 1.0, "passed": passed, "note": ""},
        },
    }


def write_run_files(reports: Path, passed: bool = True) -> tuple[Path, Path]:
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "compression_report.md").write_text(REPORT_MD)
    registration = {
        "model_name": "miniaturize-sentiment",
        "version": "3",
        "alias": "champion" if passed else "challenger",
        "gate_passed": passed,
        "run_id": "reg-run",
        "parent_run_id": "old-parent",
        "model_uri": "models:/miniaturize-sentiment/3",
        "failed_checks": [] if passed else ["vs_champion.accuracy_drop_points"],
        "gate": gate(passed),
    }
    (reports / "registration.json").write_text(json.dumps(registration))
    return reports / "compression_report.md", reports / "registration.json"


def outcome(registration: dict | None, tracking_uri: str = "sqlite:////p/mlflow.db", cached: bool = False) -> dict:
    stages = {"ingest": {"cache_hit": True}, "evaluate": {"cache_hit": False}, "register": {"cache_hit": cached}}
    return {
        "parent_run_id": "parent123",
        "experiment_id": "7",
        "stages": stages,
        "registration": registration,
        "tracking_uri": tracking_uri,
    }


def test_the_run_report_holds_the_tables_the_registry_gate_and_links_to_mlflow(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIATURIZE_MLFLOW_UI_URL", raising=False)
    report_md, registration = write_run_files(tmp_path / "reports")
    text = run_report("sequence-classification", report_md, registration, outcome({"version": "3"}), cached=False)
    assert text.startswith("# miniaturize sequence-classification: miniaturize-sentiment version 3\n")
    assert "Gate passed: miniaturize-sentiment version 3 is now @champion." in text
    assert "[parent123](http://127.0.0.1:5000/#/experiments/7/runs/parent123)" in text
    assert (
        "(http://127.0.0.1:5000/#/models/miniaturize-sentiment/versions/3) (`models:/miniaturize-sentiment/3`)" in text
    )
    assert "- Unchanged, skipped: ingest (1 of 3 stages)" in text
    # The register stage's gate (with the champion's checks) replaces the report's own; the tables stay.
    assert text.count("## Gate: ") == 1 and "| vs_champion.accuracy_drop_points | 2.500 | 1.000 | pass |" in text
    assert "## Compression report" in text and "| final | onnx-int8 | 0.8750 |" in text
    assert "### final vs teacher" in text and "### Seed spread" in text and "| 13 | 0.8750 |" in text


def test_a_failed_gate_and_an_unchanged_registration_say_so(tmp_path):
    report_md, registration = write_run_files(tmp_path / "failed", passed=False)
    text = run_report("sequence-classification", report_md, registration, outcome({"version": "3"}), cached=False)
    assert "Gate FAILED (vs_champion.accuracy_drop_points): miniaturize-sentiment version 3 is @challenger." in text
    assert "## Gate: FAILED" in text and "| FAIL |" in text
    report_md, registration = write_run_files(tmp_path / "cached")
    text = run_report("sequence-classification", report_md, registration, outcome({}, cached=True), cached=True)
    assert "Unchanged model: already registered as miniaturize-sentiment version 3 (@champion then)." in text


def test_a_run_stopped_by_until_or_without_its_report_has_no_artifact(tmp_path):
    report_md, registration = write_run_files(tmp_path / "reports")
    assert run_report("t", report_md, registration, outcome(None), cached=False) is None  # --until
    report_md.unlink()
    assert run_report("t", report_md, registration, outcome({"version": "3"}), cached=False) is None


def test_the_mlflow_ui_url_comes_from_the_variable_the_tracking_server_or_make_ui():
    assert mlflow_ui_url("sqlite:////p/mlflow.db", {}) == "http://127.0.0.1:5000"
    assert mlflow_ui_url("https://bob:s3cret@mlflow.example:8443/base/", {}) == "https://mlflow.example:8443/base"
    assert mlflow_ui_url("http://mlflow:5000", {"MINIATURIZE_MLFLOW_UI_URL": "https://ui.example/"}) == (
        "https://ui.example"
    )


def test_keys_are_lowercase_letters_digits_and_dashes_and_report_headings_move_down():
    assert (
        artifact_key("miniaturize", "Sequence_Classification", "report") == "miniaturize-sequence-classification-report"
    )
    assert artifact_key("miniaturize", "causal-lm", "update-report") == "miniaturize-causal-lm-update-report"
    assert report_body("# T\n\n## Gate: PASSED\n\n| a |\n\n## Next\n\ntext\n") == "## T\n\n### Next\n\ntext"


def test_the_update_report_links_its_run_and_version(tmp_path):
    md = tmp_path / "v4.md"
    md.write_text("# Incremental update: batch gadgets on version 3 (replay_kd)\n\n| batch | champion acc |\n")
    done = {
        "skipped": False,
        "model_name": "m",
        "version": "4",
        "alias": "challenger",
        "parent_version": "3",
        "batch": "gadgets",
        "reason": "forgetting gate refused: forgetting 3.10 points",
        "report_md": md,
        "run_id": "u1",
        "tracking_uri": "http://user:***@tracker:5000",
    }
    text = update_report("sequence-classification", done)
    assert (
        "Forgetting gate refused: forgetting 3.10 points: m version 4 (from version 3, batch gadgets) is @challenger."
        in text
    )
    assert "[u1](http://tracker:5000/#/runs/u1)" in text and "(http://tracker:5000/#/models/m/versions/4)" in text
    assert "## Incremental update: batch gadgets" in text
    assert update_report("t", {"skipped": True, "version": "3"}) is None


def test_publishing_never_fails_the_run(capsys):
    def broken():
        raise ValueError("unreadable report")

    publish("miniaturize-t-report", broken, "d")
    assert "Prefect artifact miniaturize-t-report not created: ValueError: unreadable report" in capsys.readouterr().out
    publish("miniaturize-t-report", lambda: None, "d")  # nothing to show: no artifact, no line
    assert capsys.readouterr().out == ""


def test_the_artifact_is_created_on_the_prefect_server_and_reads_back(tmp_path, prefect_api):
    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.tasks.classification import TASK

    ws = TASK.workspace(tmp_path)
    write_run_files(ws.reports)

    @flow(name="artifact-check")
    def finish() -> str:
        publish_run_report(TASK.name, ws, outcome({"version": "3"}), cached=False)
        from prefect.runtime import flow_run

        return flow_run.id

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        flow_run_id = finish()
        key = f"miniaturize-{TASK.name}-report"
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    mine = [a for a in found if str(a.flow_run_id) == flow_run_id]
    assert len(mine) == 1 and mine[0].type == "markdown"
    assert "Gate passed: miniaturize-sentiment version 3 is now @champion." in mine[0].data
