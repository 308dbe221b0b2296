"""What an incremental update registers, without running one (tests/flows/test_update_e2e.py runs them): its
version continues the champion's model and data source, never one named after the new batch."""

from types import SimpleNamespace

import pytest

from components.config import build_params
from flows import registry, update
from flows.tasks.classification import TASK


def report(batch: str) -> dict:
    return {
        "dataset": {"sha256": "ab" * 32},
        "gate": {"passed": True, "checks": {}},
        "mean_accuracy": 0.9,
        "models": {"final": {"size_bytes": 1000}},
        "method": "replay_kd",
        "batch": batch,
        "forgetting_points": 0.5,
        "cost": {"examples": 10, "seconds": 1.0},
    }


def test_an_update_keeps_its_champions_data_source_and_model_name(tmp_path):
    params = build_params({"data": {"source": "data/reviews.csv"}})
    champion = SimpleNamespace(name="miniaturize-reviews", version="1", tags={registry.DATA_SOURCE_TAG: "reviews"})
    tags = update.version_tags(params, TASK.workspace(tmp_path), champion, report("gadgets"), [], "run")
    assert tags[registry.DATA_SOURCE_TAG] == "reviews" and tags["incremental.batch"] == "gadgets"
    # a champion registered before the tag: the params' data source
    older = SimpleNamespace(name="miniaturize-reviews", version="1", tags={})
    assert (
        update.version_tags(params, TASK.workspace(tmp_path), older, report("food"), [], "run")[
            registry.DATA_SOURCE_TAG
        ]
        == "reviews"
    )


def test_the_champions_shipped_variant_is_read_from_its_quantize_report(tmp_path):
    import json

    assert update.shipped_variant(tmp_path) is None
    (tmp_path / "quantize_report.json").write_text(json.dumps({"chosen": "fused_int8_emb4", "preset": "avx2"}))
    assert update.shipped_variant(tmp_path) == "fused_int8_emb4"


def test_the_report_says_whether_the_updated_student_is_within_the_budget():
    assert update.budget_lines(None) == []
    (within,) = update.budget_lines({"spent_points": 0.4, "bound": 1.1, "within": True})
    assert "+0.40 points (upper bound 1.10), within the accuracy budget" in within
    (over,) = update.budget_lines({"spent_points": 2.1, "bound": None, "within": False})
    assert "+2.10 points, over the accuracy budget" in over and "may no longer fit every batch" in over


def test_the_report_says_whether_the_champion_student_grew():
    assert update.growth_lines(None) == []
    (kept,) = update.growth_lines({"spent_points": 0.5, "within": True, "layer": None, "params_ratio": None})
    assert "+0.50 points, within the accuracy budget: its architecture kept" in kept
    (grown,) = update.growth_lines({"spent_points": 2.2, "within": False, "layer": 3, "params_ratio": 1.1})
    assert "over the accuracy budget: grown by the teacher's layer 3 (1.10x the parameters)" in grown
    (full,) = update.growth_lines({"spent_points": 2.2, "within": False, "layer": None, "params_ratio": None})
    assert "not grown (distill.deeper_layers has no layer left to add" in full


def test_a_grown_student_may_grow_the_model_by_its_new_layer_too(tmp_path):
    (tmp_path / "champion").mkdir()
    (tmp_path / "final").mkdir()
    (tmp_path / "champion" / "model.onnx").write_bytes(b"x" * 1000)
    (tmp_path / "final" / "model.onnx").write_bytes(b"x" * 1150)
    assert not update.size_check(tmp_path / "final", tmp_path / "champion", 1.10).passed
    # a grown student may also add its new layer's weights at one byte each
    check = update.size_check(tmp_path / "final", tmp_path / "champion", 1.10, grown_params=60)
    assert check.passed and check.threshold == pytest.approx(1.16)
    assert not update.size_check(tmp_path / "final", tmp_path / "champion", 1.10, grown_params=40).passed


def test_no_champion_names_the_models_here_that_have_one(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = build_params({"data": {"source": "data/reviews.csv"}})
    with pytest.raises(update.NoWarmStart, match=r"no @champion version to update; run the pipeline first") as plain:
        update.fetch_champion.fn(params, client, None, tmp_path / "out")
    assert "models with a @champion here" not in str(plain.value)
    # another model of this store has a champion (the demonstration's stream): the error names it
    client.create_registered_model("miniaturize-sentiment-stream")
    run = client.create_run(client.create_experiment("e")).info.run_id
    version = client.create_model_version("miniaturize-sentiment-stream", f"runs:/{run}/model", run_id=run)
    client.set_registered_model_alias("miniaturize-sentiment-stream", "champion", version.version)
    with pytest.raises(update.NoWarmStart, match=r"--from models:/miniaturize-sentiment-stream@champion"):
        update.fetch_champion.fn(params, client, None, tmp_path / "out")


def test_a_passed_gate_says_what_it_read():
    checks = {
        "forgetting": {"value": 0.7, "threshold": 1.0},
        "size_growth_vs_champion": {"value": 1.24, "threshold": 1.25},
    }
    passed = {"gate": {"passed": True, "checks": checks}, "reason": "passed"}
    assert update.gate_detail(passed) == "forgetting 0.70 against 1.00, size_growth_vs_champion 1.24 against 1.25"
    refused = {"gate": {"passed": False, "checks": checks}, "reason": "forgetting: 1.49 points on movie > 1.00 allowed"}
    assert update.gate_detail(refused) == refused["reason"]


def markdown_report(per_batch: list[dict]) -> dict:
    return report("gadgets") | {
        "parent_version": "1",
        "per_batch": per_batch,
        "cost": {"seconds": 1.0, "examples": 10, "teacher_examples": 6, "student_examples": 4},
        "wordpieces_restored": 0,
        "restored_examples": [],
        "quantization": "fused_int8",
        "dropped_seen_in_earlier_batches": 0,
    }


def test_the_report_gives_each_batch_its_sentences_right_to_wrong_and_back():
    pair = {"n": 1006, "lost": 50, "gained": 33, "p_value": 0.0785}
    rows = [
        {"batch": "reviews", "before": 0.8847, "after": 0.8678, "change_points": -1.69, "new": False, "paired": pair},
        {"batch": "gadgets", "before": None, "after": 0.8, "change_points": None, "new": True, "paired": None},
    ]
    text = update.render_markdown(markdown_report(rows))
    assert (
        "| batch | champion acc | updated acc | change (points) | right to wrong | wrong to right | McNemar p |" in text
    )
    assert "| reviews | 88.47 | 86.78 | -1.69 | 50 | 33 | 0.08 |" in text
    assert "| gadgets (new) | - | 80.00 | - | - | - | - |" in text
    # a report written before paired outcomes were kept has no "paired" key at all
    del rows[0]["paired"]
    assert "| reviews | 88.47 | 86.78 | -1.69 | - | - | - |" in update.render_markdown(markdown_report(rows))
