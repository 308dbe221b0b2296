"""The federate flow end to end on the tiny project: a full run registers a champion with its warm start, then
`flows.federate.federate` federates its student over three clients (shards from a vaderSentiment-shaped
archive, real Flower processes), exports, quantizes, measures, gates and registers a new version whose tags
name the federation and every client's data hash, with a step per round in MLflow and the report in
reports/federated/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.config import FederatedConfig
from components.kit import data
from components.kit.hashing import file_sha256
from tests.components.federated.test_shards import WORDS, ratings
from tests.components.kit.test_data import fake_sdist
from tests.conftest import tiny_bert
from tests.reliability.conftest import load, make_tiny_project, run_pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.federation]  # `make test-federation`: needs the Flower environment

LEARN = {"teacher.epochs": 3, "teacher.lr": 1.0e-2, "teacher.patience": 3, "distill.lr": 1.0e-3, "prune.lr": 1.0e-3}
FEDERATED = FederatedConfig(
    clients=["movie", "amazon", "tweets"],
    rounds=2,
    lr=1e-3,
    batch_size=8,
    max_length=32,
    min_available_clients=3,
    min_clients=2,
    straggler_grace_s=1.0,
    round_timeout_s=300.0,
    evaluate_on_clients=False,
    max_pooled_drop_points=100.0,
    max_client_drop_points=100.0,
)


@pytest.fixture(scope="module")
def federated(tmp_path_factory, prefect_api, flower_env):
    monkeypatch = pytest.MonkeyPatch()
    try:
        root = tmp_path_factory.mktemp("federate")
        project = make_tiny_project(root / "project", tiny_bert(root / "learner", dropout=0.0), LEARN)
        archive = fake_sdist(
            project / "data" / "raw" / data.VADER_ARCHIVE, root / "ran", {m: ratings(m) for m in WORDS}
        )
        monkeypatch.setattr(data, "VADER_SHA256", file_sha256(archive))
        first = run_pipeline(project, prefect_api)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from flows.federate import federate

        with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
            outcome = federate(load(project), FEDERATED, root=str(project), flower_venv=str(flower_env.bin.parent))
        yield project, first, outcome
    finally:
        monkeypatch.undo()


def test_the_federated_student_is_registered_with_its_lineage(federated):
    project, first, outcome = federated
    import mlflow

    from flows import tracking

    assert outcome["parent_version"] == first["registration"]["version"]
    client = tracking.client(project)
    version = client.get_model_version(outcome["model_name"], outcome["version"])
    tags = version.tags
    assert tags["source"] == "federate" and tags["federated.parent_version"] == outcome["parent_version"]
    assert set(json.loads(tags["federated.clients"])) == {"movie", "amazon", "tweets"}
    assert tags["federated.key"] == outcome["report"]["federation"]["key"]
    assert tags["federated.weighting"] == "equal"
    history = client.get_metric_history(outcome["run_id"], "pooled_accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert mlflow.get_tracking_uri()


def test_the_report_compares_champion_federated_and_central(federated):
    project, _, outcome = federated
    report = json.loads(Path(outcome["report_md"]).with_suffix(".json").read_text())
    assert {"champion", "federated", "federated_fp32", "central_fp32"} <= set(report["accuracy"])
    assert set(report["accuracy"]["federated"]) == {"movie", "amazon", "tweets", "pooled"}
    assert report["federation"]["bytes_per_round_per_client"] > 0 and report["quantization"]
    assert report["federation"]["weighting"] == "equal"
    markdown = Path(outcome["report_md"]).read_text()
    assert "(fedavg, equal-weighted, 3 clients, 2 rounds)" in markdown
    gap = -report["federated_vs_central_points"]["pooled"]
    assert f"- federated minus central training (fp32, pooled): {gap:+.2f} points" in markdown
    assert (project / "data" / "federated" / "tweets" / "test.parquet").exists()
    assert not (project / ".miniaturize" / "classification" / "federate").exists()  # staging removed once registered
