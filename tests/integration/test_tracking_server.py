"""Integration: the smoke pipeline against a real MLflow tracking server whose backend store is PostgreSQL.

The session's servers and smoke run come from tests/integration/conftest.py: a throwaway PostgreSQL cluster,
`mlflow server` on it, and `miniaturize run` (smoke values in params.yaml) logging to it through
MLFLOW_TRACKING_URI. The checks read the server back over plain HTTP (MLflow's REST API), look for the
artifact files on disk and count rows in PostgreSQL's `runs` table with psql.

Run with `make test-integration` (pytest -m integration tests/integration); a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import DB_NAME, TrackingServer

pytestmark = pytest.mark.integration
STAGES = {
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
}
MODEL_NAME = "miniaturize-sentiment"


# --- reading the server back -----------------------------------------------------------------------------


def api(server: TrackingServer, endpoint: str, body: dict | None = None, **query: str) -> dict:
    """One call to MLflow's REST API: GET with query parameters, or POST with a JSON body."""
    url = f"{server.uri}/api/2.0/mlflow/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def tags(entity: dict) -> dict[str, str]:
    """REST entities carry tags as a list of {key, value}; runs keep them under data."""
    raw = entity.get("data", entity).get("tags", [])
    return {t["key"]: t.get("value", "") for t in raw}


def local_path(server: TrackingServer, uri: str) -> Path:
    """Where the server keeps an mlflow-artifacts:/ URI on its artifacts destination."""
    parsed = urllib.parse.urlparse(uri)
    assert parsed.scheme == "mlflow-artifacts", f"artifacts are not proxied by the server: {uri}"
    return server.artifacts / parsed.path.lstrip("/")


def experiment_runs(server: TrackingServer) -> tuple[str, list[dict]]:
    experiment = api(server, "experiments/get-by-name", experiment_name="miniaturize")["experiment"]
    runs = api(server, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000})
    return experiment["experiment_id"], runs.get("runs", [])


def pipeline_runs(runs: list[dict]) -> tuple[dict, list[dict]]:
    """The pipeline's parent run and its children. The experiment also holds bookkeeping runs without
    children (the registered model's alias history), which are not pipeline runs."""
    children_of: dict[str, list[dict]] = {}
    for run in runs:
        if "mlflow.parentRunId" in tags(run):
            children_of.setdefault(tags(run)["mlflow.parentRunId"], []).append(run)
    parents = [r for r in runs if r["info"]["run_id"] in children_of]
    assert len(parents) == 1, f"expected one pipeline run, found {len(parents)}"
    return parents[0], children_of[parents[0]["info"]["run_id"]]


def test_parent_run_and_one_finished_child_run_per_stage(smoke_run, tracking_server):
    _, runs = experiment_runs(tracking_server)
    parent, children = pipeline_runs(runs)
    assert "mlflow.parentRunId" not in tags(parent) and parent["info"]["status"] == "FINISHED"
    assert len(children) == 11
    assert {tags(r)["miniaturize.stage"] for r in children} == STAGES
    assert all(r["info"]["status"] == "FINISHED" for r in children)


def test_version_one_is_registered_with_lineage_tags_and_the_gate_alias(smoke_run, tracking_server):
    registration = json.loads((smoke_run / "reports" / "registration.json").read_text())
    alias = "champion" if registration["gate_passed"] else "challenger"
    assert registration["alias"] == alias and registration["version"] == "1"

    model = api(tracking_server, "registered-models/get", name=MODEL_NAME)["registered_model"]
    assert model["name"] == MODEL_NAME
    version = api(tracking_server, "model-versions/get", name=MODEL_NAME, version="1")["model_version"]
    version_tags = tags(version)
    assert len(version_tags["data_sha256"]) == 64 and version_tags["git_commit"]
    assert version_tags["gate_passed"] == str(registration["gate_passed"]).lower()
    assert version["run_id"] == registration["run_id"]
    by_alias = api(tracking_server, "registered-models/alias", name=MODEL_NAME, alias=alias)["model_version"]
    assert by_alias["version"] == "1"


def test_version_artifacts_are_files_under_the_artifacts_destination(smoke_run, tracking_server):
    version = api(tracking_server, "model-versions/get", name=MODEL_NAME, version="1")["model_version"]
    run = api(tracking_server, "runs/get", run_id=version["run_id"])["run"]
    run_artifacts = local_path(tracking_server, run["info"]["artifact_uri"])
    assert (run_artifacts / "report" / "compression_report.json").stat().st_size > 0
    assert (run_artifacts / "bundle" / "model.onnx").stat().st_size > 0
    # MLflow 3 keeps the logged model apart from the run (under the experiment's models/ folder); the
    # version's source names it as models:/<model id>.
    source = version["source"]
    if source.startswith("models:/"):
        logged = api(tracking_server, f"logged-models/{source.removeprefix('models:/')}")["model"]
        source = logged["info"]["artifact_uri"]
    model_files = local_path(tracking_server, source)
    assert (model_files / "MLmodel").is_file() and (model_files / "model.onnx").stat().st_size > 0


def test_backend_store_is_postgresql(smoke_run, tracking_server):
    """The runs the server answers with are rows of PostgreSQL's `runs` table, read directly with psql."""
    experiment_id, runs = experiment_runs(tracking_server)
    parent, children = pipeline_runs(runs)
    pg = tracking_server.postgres
    rows = pg.psql(f"SELECT run_uuid, status FROM runs WHERE experiment_id = {int(experiment_id)}", database=DB_NAME)
    in_postgres = dict(line.split("|") for line in rows.splitlines())
    assert set(in_postgres) == {r["info"]["run_id"] for r in runs}
    assert all(in_postgres[r["info"]["run_id"]] == "FINISHED" for r in [parent, *children])
    assert int(pg.psql(f"SELECT count(*) FROM model_versions WHERE name = '{MODEL_NAME}'", database=DB_NAME)) == 1
