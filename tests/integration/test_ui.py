"""Integration: the MLflow UI and the Prefect UI as a person sees them, in headless Chromium.

The session's smoke run (tests/integration/conftest.py) is opened in the UI that its `mlflow server` serves
and in the UI of the session's Prefect server (`prefect_api`, tests/conftest.py). Playwright drives Debian's
`chromium` (installed with apt-get when missing and the tests run as root); each test waits for what the page
shows, asserts on that text and saves a screenshot under reports/ui/ (the README's pictures).

Run with `make test-integration` (pytest -m integration tests/integration).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.flows.conftest import REPO
from tests.integration.conftest import TrackingServer

pytestmark = pytest.mark.integration
SHOTS = REPO / "reports" / "ui"
MODEL_NAME = "miniaturize-sentiment"
VIEWPORT = {"width": 1600, "height": 1000}


def ensure_chromium() -> str:
    """The chromium executable: on PATH, else installed from Debian's package (as root), else the test skips."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip("chromium is not installed and installing it needs root: apt-get install chromium")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium but it is not on PATH"
    return found


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # Chromium's sandbox refuses to start as root (CI runs as root); the pages are our own servers.
        chromium = pw.chromium.launch(executable_path=ensure_chromium(), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    # the single-page apps load their data after the first paint, from servers on two busy cores
    page.set_default_timeout(60_000)
    yield page
    context.close()


def screenshot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def close_mlflow_assistant(page) -> None:
    """MLflow 3's assistant panel opens beside a page (once per browser context) and covers a third of it."""
    close = page.get_by_role("button", name="Close")
    try:
        close.first.wait_for(timeout=5_000)
    except Exception:  # playwright's TimeoutError: the panel did not open
        return
    close.first.click()


def mlflow_get(server: TrackingServer, endpoint: str, **query: str) -> dict:
    url = f"{server.uri}/api/2.0/mlflow/{endpoint}?" + "&".join(f"{k}={v}" for k, v in query.items())
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def mlflow_search(server: TrackingServer, body: dict) -> dict:
    request = urllib.request.Request(
        f"{server.uri}/api/2.0/mlflow/runs/search",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def stage_run(server: TrackingServer, stage: str) -> tuple[str, str]:
    """(experiment id, run id) of the smoke run's child run for `stage`."""
    experiment = mlflow_get(server, "experiments/get-by-name", experiment_name="miniaturize")["experiment"]
    found = mlflow_search(
        server,
        {
            "experiment_ids": [experiment["experiment_id"]],
            "filter": f"tags.`miniaturize.stage` = '{stage}'",
            "max_results": 10,
        },
    ).get("runs", [])
    assert found, f"no MLflow run for stage {stage}"
    return experiment["experiment_id"], found[0]["info"]["run_id"]


def prefect_post(api: str, endpoint: str, body: dict) -> list[dict]:
    request = urllib.request.Request(
        f"{api}/{endpoint}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def pipeline_flow_run(api: str) -> dict:
    """The smoke run's flow run: the latest run of the `miniaturize` flow."""
    runs = prefect_post(
        api, "flow_runs/filter", {"flows": {"name": {"any_": ["miniaturize"]}}, "sort": "START_TIME_DESC", "limit": 1}
    )
    assert runs, "no run of the miniaturize flow on the Prefect server"
    return runs[0]


# --- MLflow --------------------------------------------------------------------------------------------------


def test_mlflow_experiment_lists_the_pipeline_run_its_stage_runs_and_their_datasets(smoke_run, tracking_server, page):
    experiment_id, _ = stage_run(tracking_server, "finetune")
    page.goto(f"{tracking_server.uri}/#/experiments/{experiment_id}/runs")
    pipeline_row = page.get_by_role("row").filter(has_text="pipeline-").first
    pipeline_row.wait_for()
    close_mlflow_assistant(page)
    pipeline_row.get_by_role("button").first.click()  # the stage runs nest under the pipeline run: unfold them
    page.get_by_role("link", name="finetune", exact=True).wait_for()
    text = page.inner_text("body")
    for stage in ("ingest", "validate", "finetune", "distill", "prune", "quantize", "evaluate", "register"):
        assert stage in text, f"stage run {stage} not shown"
    assert "data/prepared/" in text, "the Dataset column names no split"
    assert MODEL_NAME in text, "the register run does not show the model it registered"
    screenshot(page, "mlflow-experiment")


def test_mlflow_run_shows_the_datasets_it_read(smoke_run, tracking_server, page):
    experiment_id, run_id = stage_run(tracking_server, "finetune")
    page.goto(f"{tracking_server.uri}/#/experiments/{experiment_id}/runs/{run_id}")
    page.get_by_text("About this run").wait_for()
    close_mlflow_assistant(page)
    text = page.inner_text("body")
    assert "Datasets" in text and "data/prepared/" in text and ".parquet" in text, "the Datasets panel is empty"
    assert "test_accuracy" in text and "pipeline-" in text  # its metrics, and its parent run
    screenshot(page, "mlflow-run-datasets")


def test_mlflow_model_version_shows_alias_card_and_signature(smoke_run, tracking_server, page):
    registration = json.loads((smoke_run / "reports" / "registration.json").read_text())
    alias, version = registration["alias"], registration["version"]
    page.goto(f"{tracking_server.uri}/#/models/{MODEL_NAME}/versions/{version}")
    page.get_by_text("Intended use").first.wait_for()  # the model card, as the version's description
    close_mlflow_assistant(page)
    text = page.inner_text("body")
    assert re.search(rf"Aliases\W+@\W*{alias}", text), f"alias {alias} not shown"
    for heading in ("Data", "Compression chain", "Gate:", "Known limits"):
        assert heading in text, f"the card has no {heading!r}"
    screenshot(page, "mlflow-model-version")
    page.get_by_text(re.compile(r"^Inputs \(\d+\)$")).click()  # the signature, folded under Schema
    page.get_by_text("input_ids").first.wait_for()
    assert "attention_mask" in page.inner_text("body")


# --- Prefect -------------------------------------------------------------------------------------------------


def test_prefect_flow_run_shows_stage_progress_and_the_report_artifact(smoke_run, prefect_api, page):
    run = pipeline_flow_run(prefect_api)
    logs = prefect_post(prefect_api, "logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200})
    messages = [log["message"] for log in logs]
    assert any(m.startswith("[finetune] started") for m in messages), "no stage line in the flow run's logs"
    assert any("epoch 1/" in m and "batch" in m for m in messages), "no training progress line in the logs"
    assert not any("\r" in m for m in messages), "carriage-return progress fragments in the Prefect logs"
    artifacts = prefect_post(prefect_api, "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    assert [a["type"] for a in artifacts] == ["markdown"], artifacts

    ui = prefect_api.removesuffix("/api")
    page.goto(f"{ui}/runs/flow-run/{run['id']}")
    page.get_by_text("[finetune] started").first.wait_for()
    assert "[finetune] finished in" in page.inner_text("body")
    screenshot(page, "prefect-flow-run")
    page.goto(f"{ui}/artifacts/artifact/{artifacts[0]['id']}")
    page.get_by_text("Compression report").first.wait_for()
    text = page.inner_text("body")
    assert "Gate:" in text and MODEL_NAME in text and "MLflow run" in text
    screenshot(page, "prefect-artifact")
