import json
from pathlib import Path

import pytest

from components.config import build_params
from flows.registry import CHALLENGER, CHAMPION, alias_for, version_tags
from flows.tasks.classification import TASK as CLASSIFICATION

REPORT = {
    "task": "sequence-classification",
    "dataset": {"sha256": "ab" * 32},
    "models": {"final": {"accuracy": 0.875, "size_bytes": 8_000_000}},
    "final_vs_teacher": {"size_ratio": 5.0, "speedup_batch1_p50": 9.0, "accuracy_drop_points": 0.5},
    "gate": {"passed": False, "checks": {"size_ratio": {"passed": True}, "speedup_batch1_p50": {"passed": False}}},
}


def test_gate_result_picks_the_alias():
    assert alias_for(True) == CHAMPION and alias_for(False) == CHALLENGER


def test_version_tags_trace_the_version():
    tags = version_tags(CLASSIFICATION, build_params({}), CLASSIFICATION.workspace(Path(".")), REPORT, "parent123")
    assert tags["data_sha256"] == "ab" * 32 and tags["parent_run_id"] == "parent123"
    assert tags["gate_passed"] == "false" and tags["gate_failed_checks"] == "speedup_batch1_p50"
    assert len(tags["params_hash"]) == 16 and tags["git_commit"]
    assert tags["final_vs_teacher.size_ratio"] == "5"
    assert tags["final.accuracy"] == "0.875" and tags["final.size_bytes"] == "8000000"


def test_version_tags_say_which_split_the_figures_come_from():
    tags = version_tags(CLASSIFICATION, build_params({}), CLASSIFICATION.workspace(Path(".")), REPORT, "parent123")
    assert tags["metrics_split"] == "test" and tags["ratios_split"] == "test"
    searched = version_tags(
        CLASSIFICATION, build_params({}), CLASSIFICATION.workspace(Path(".")), REPORT | {"split": "validation"}, None
    )
    assert searched["metrics_split"] == "test" and searched["ratios_split"] == "validation"


MEASURED = {"data_sha256": "ab" * 32, "metrics_split": "test"}


@pytest.fixture()
def registry_ws(tmp_path, monkeypatch):
    """A workspace with its own sqlite MLflow store and three registered versions of a one-node ONNX model:
    v1 accuracy 0.90, v2 0.88 (2 points worse), v3 0.90, all on the test split of the same data; every one
    5x smaller and 9x faster than its teacher."""
    import mlflow
    import onnx
    from onnx import TensorProto, helper

    from flows import tracking
    from flows.registry import log_version

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = CLASSIFICATION.workspace(tmp_path)
    mlflow.set_tracking_uri(tracking.tracking_uri(ws.root))
    client = tracking.client(ws.root)
    experiment = tracking.experiment_id(client, ws.root)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), model_dir / "model.onnx")
    params = build_params({})
    ratios = {"size_ratio": 5.0, "speedup_batch1_p50": 9.0, "accuracy_drop_points": 0.5}
    for accuracy in (0.90, 0.88, 0.90):
        report = tmp_path / "compression_report.json"
        report.write_text(json.dumps({"final_vs_teacher": ratios, "models": {"final": {"accuracy": accuracy}}}))
        run_id = tracking.start_run(client, experiment, "register")
        log_version(
            CLASSIFICATION,
            params,
            run_id,
            model_dir,
            report,
            {
                "final.accuracy": str(accuracy),
                "final.size_bytes": "1000",
                "git_commit": "abc",
                "lineage.train.key": "k",
                **MEASURED,
            },
        )
        tracking.end_run(client, run_id, True)
    return params, ws, client


def test_promotion_lifecycle_gate_vs_champion_force_and_rollback(registry_ws):
    from components.kit.promotion import RollbackError
    from flows import registry

    params, ws, client = registry_ws
    name = params.register_.model_name
    registry.move_alias(client, ws.root, name, "1", CHAMPION, reason="gate passed", by="pipeline")
    with pytest.raises(registry.GateRejected, match="vs_champion.accuracy_drop_points: 2 vs threshold 0.5"):
        registry.promote(CLASSIFICATION, params, ws, "2")
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"

    forced = registry.promote(CLASSIFICATION, params, ws, "2", force=True, reason="hotfix for a data bug")
    assert forced["forced"] and forced["previous"] == "1"
    tags = client.get_model_version(name, "2").tags
    assert tags["alias.champion.forced"] == "true" and "hotfix for a data bug" in tags["alias.champion.reason"]
    assert "miniaturize promote" in tags["alias.champion.by"]

    done = registry.promote(CLASSIFICATION, params, ws, "3")  # 2 points better than the forced champion: passes
    assert not done["forced"] and done["previous"] == "2"
    assert registry.rollback(params, ws, "latency regression")["version"] == "2"
    assert registry.rollback(params, ws, "again")["version"] == "1"
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    with pytest.raises(RollbackError, match="first champion"):
        registry.rollback(params, ws, "once more")

    history = registry.read_history(client, name)
    assert [(e["version"], e["action"], e["forced"]) for e in history] == [
        ("1", "set", False),
        ("2", "set", True),
        ("3", "set", False),
        ("2", "rollback", False),
        ("1", "rollback", False),
    ]
    assert all(e["at"] and e["by"] and e["reason"] for e in history)
    chain = registry.lineage(CLASSIFICATION, params, ws, "2")
    assert chain["git_commit"] == "abc" and [e["action"] for e in chain["alias_history"]] == ["set", "rollback"]


def test_a_champion_measured_on_other_data_is_not_compared(registry_ws):
    """v2 is 2 points below v1, but v1 was measured on other data and the workspace holds neither: the
    accuracy check is skipped with its reason, not failed on numbers from two datasets."""
    from flows import registry

    params, ws, client = registry_ws
    name = params.register_.model_name
    client.set_model_version_tag(name, "1", "data_sha256", "cd" * 32)
    registry.move_alias(client, ws.root, name, "1", CHAMPION, reason="gate passed", by="pipeline")
    done = registry.promote(CLASSIFICATION, params, ws, "2")
    check = done["checks"]["checks"]["vs_champion.accuracy_drop_points"]
    assert not done["forced"] and check["passed"] and check["value"] is None
    assert check["note"] == "champion measured on other data: not compared"
    assert done["checks"]["checks"]["vs_champion.size_growth"]["value"] == 1.0  # size is still compared


def test_the_champion_is_remeasured_on_the_candidates_data(registry_ws, tiny_model_dir, tiny_prepared, tmp_path):
    """The champion's stored 0.99 comes from other data; the workspace holds the candidate's data, so the
    champion's registered ONNX model is scored on that test split, and the candidate is judged against it."""
    import shutil

    from optimum.exporters.onnx import main_export

    from components.classification.evaluate import split_accuracy
    from flows import registry, tracking

    params, ws, client = registry_ws
    name = params.register_.model_name
    shutil.copytree(tiny_prepared, ws.prepared)  # its data card's sha256 is "0" * 64
    onnx_dir = tmp_path / "champion"
    main_export(str(tiny_model_dir), str(onnx_dir), task="text-classification", do_validation=False)
    shutil.copy2(tiny_model_dir / "labels.json", onnx_dir / "labels.json")
    truth = split_accuracy(onnx_dir, tiny_prepared, "test", params.evaluate.threads, params.teacher.max_length)
    report = tmp_path / "compression_report.json"
    report.write_text(
        json.dumps({"final_vs_teacher": {"size_ratio": 5.0, "speedup_batch1_p50": 9.0, "accuracy_drop_points": 0.5}})
    )
    versions = {}
    experiment = tracking.experiment_id(client, ws.root)
    for role, folder, accuracy, data in (
        ("champion", onnx_dir, 0.99, "cd" * 32),
        ("candidate", onnx_dir, truth - 0.002, "0" * 64),
    ):
        run_id = tracking.start_run(client, experiment, role)
        versions[role] = registry.log_version(
            CLASSIFICATION,
            params,
            run_id,
            folder,
            report,
            {"final.accuracy": str(accuracy), "final.size_bytes": "1000", "data_sha256": data, "metrics_split": "test"},
        )
        tracking.end_run(client, run_id, True)
    registry.move_alias(client, ws.root, name, versions["champion"], CHAMPION, reason="gate passed", by="pipeline")

    done = registry.promote(CLASSIFICATION, params, ws, versions["candidate"])
    check = done["checks"]["checks"]["vs_champion.accuracy_drop_points"]
    assert check["passed"] and check["note"] == ""
    assert check["value"] == pytest.approx(100 * (truth - (truth - 0.002)))  # against the re-measured figure
