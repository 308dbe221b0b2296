import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from components import evaluate
from components.config import EvaluateConfig, GateConfig
from components.evaluate import ModelSpec
from components.gate import RATIO_KEYS, compare_to_teacher, decide
from components.tracking import NullTracker

TINY = EvaluateConfig(threads=1, warmup=1, batch1_calls=3, batch32_calls=3, rss_sentences=4)
MODEL_KEYS = {"runtime", "accuracy", "f1_macro", "size_bytes", "params", "latency_ms", "peak_rss_mb",
              "agreement_with_teacher"}


class RecordingTracker(NullTracker):
    def __init__(self):
        self.metrics, self.artifacts, self.params = {}, [], {}

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(Path(path))

    def log_params(self, params):
        self.params.update(params)


@pytest.fixture(scope="module")
def tiny_onnx_dirs(tiny_model_dir, tmp_path_factory):
    """The tiny model exported to ONNX fp32, and a dynamic int8 quantization of that export."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.exporters.onnx import main_export

    root = tmp_path_factory.mktemp("eval_models")
    fp32, int8 = root / "onnx_fp32", root / "int8"
    main_export(str(tiny_model_dir), str(fp32), task="text-classification", do_validation=False)
    shutil.copy2(tiny_model_dir / "labels.json", fp32 / "labels.json")
    shutil.copytree(fp32, int8, ignore=shutil.ignore_patterns("*.onnx"))
    quantize_dynamic(str(fp32 / "model.onnx"), str(int8 / "model.onnx"), weight_type=QuantType.QInt8)
    return {"fp32": fp32, "int8": int8}


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tiny_onnx_dirs, tiny_prepared, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("evaluate") / "reports"
    tracker = RecordingTracker()
    models = [ModelSpec("teacher", tiny_model_dir, "pytorch"),
              ModelSpec("final", tiny_onnx_dirs["fp32"], "onnxruntime"),
              ModelSpec("baseline_teacher_int8", tiny_onnx_dirs["int8"], "onnxruntime")]
    result = evaluate.run(TINY, GateConfig(), tiny_prepared, models, out_dir, tracker, max_length=32, seed=13,
                          seed_runs=[{"seed": 14, "accuracy": 0.5, "agreement_with_teacher": 0.75}])
    return result, out_dir, tracker


def strict_json(path: Path) -> dict:
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=reject)


def test_report_schema(evaluated, tiny_prepared):
    result, out_dir, _ = evaluated
    report = strict_json(out_dir / "compression_report.json")
    assert set(report) == {"task", "dataset", "models", "final_vs_teacher", "final_vs_baseline_teacher_int8",
                           "gate", "environment", "seeds"}
    assert report["task"] == "sequence-classification"
    card = json.loads((tiny_prepared / "data_card.json").read_text())
    assert report["dataset"] == {"source": card["source"], "sha256": card["sha256"],
                                 "rows": {"train": 48, "validation": 16, "test": 16}}

    assert list(report["models"]) == ["teacher", "final", "baseline_teacher_int8"]
    for name, m in report["models"].items():
        assert set(m) == MODEL_KEYS, name
        assert isinstance(m["runtime"], str)
        for key in ("accuracy", "f1_macro", "agreement_with_teacher"):
            assert isinstance(m[key], float) and 0.0 <= m[key] <= 1.0, (name, key)
        assert isinstance(m["size_bytes"], int) and m["size_bytes"] > 0
        assert isinstance(m["params"], int) and m["params"] > 0
        assert set(m["latency_ms"]) == {"batch1_p50", "batch1_p95", "batch32_p50"}
        assert all(isinstance(v, float) and v > 0 for v in m["latency_ms"].values())
        assert m["latency_ms"]["batch1_p95"] >= m["latency_ms"]["batch1_p50"]
        assert isinstance(m["peak_rss_mb"], float) and m["peak_rss_mb"] > 0

    seed_keys = {"accuracy_drop_points_seed_mean", "accuracy_drop_points_seed_std"}
    assert set(report["final_vs_teacher"]) == set(RATIO_KEYS) | seed_keys | {"agreement_with_teacher"}
    assert set(report["final_vs_baseline_teacher_int8"]) == set(RATIO_KEYS) | seed_keys
    for section in ("final_vs_teacher", "final_vs_baseline_teacher_int8"):
        assert all(isinstance(v, float) for v in report[section].values())
    seeds = report["seeds"]
    assert [r["seed"] for r in seeds["runs"]] == [13, 14]
    assert seeds["runs"][1]["accuracy_drop_points"] == pytest.approx(100 * (report["models"]["teacher"]["accuracy"] - 0.5))
    assert report["final_vs_teacher"]["accuracy_drop_points_seed_mean"] == seeds["accuracy_drop_points"]["mean"]

    assert isinstance(report["gate"]["passed"], bool)
    assert set(report["gate"]["checks"]) == {"accuracy_drop_points", "size_ratio", "speedup_batch1_p50"}
    for check in report["gate"]["checks"].values():
        assert set(check) == {"value", "threshold", "passed"}
        assert isinstance(check["value"], float) and isinstance(check["threshold"], float)
        assert isinstance(check["passed"], bool)

    env = report["environment"]
    assert set(env) == {"cpu", "threads", "torch", "onnxruntime", "transformers", "python"}
    assert env["threads"] == 1 and all(isinstance(env[k], str) and env[k] for k in env if k != "threads")


def test_model_entries_are_consistent(evaluated, tiny_onnx_dirs):
    from components.modeling import dir_size_bytes

    report = strict_json(evaluated[1] / "compression_report.json")
    teacher, final, int8 = (report["models"][n] for n in ("teacher", "final", "baseline_teacher_int8"))
    assert teacher["runtime"] == "pytorch fp32"
    assert final["runtime"] == "onnxruntime fp32" and int8["runtime"] == "onnxruntime int8"
    assert teacher["agreement_with_teacher"] == 1.0
    # The fp32 export computes the same function: same predictions, same scores.
    assert final["agreement_with_teacher"] == 1.0 and final["accuracy"] == teacher["accuracy"]
    assert final["size_bytes"] == dir_size_bytes(tiny_onnx_dirs["fp32"])
    assert int8["size_bytes"] < final["size_bytes"] / 2
    # The untrained model's identical tensors (zero biases, unit LayerNorm weights) are merged on export.
    assert 0.99 * teacher["params"] <= final["params"] <= teacher["params"]
    assert teacher["peak_rss_mb"] > final["peak_rss_mb"]  # torch is loaded for one, not the other


def test_ratios_and_gate_follow_from_the_entries(evaluated):
    result, out_dir, _ = evaluated
    report = strict_json(out_dir / "compression_report.json")
    models = report["models"]
    expected = compare_to_teacher(models["teacher"], models["final"])
    assert {k: report["final_vs_teacher"][k] for k in RATIO_KEYS} == pytest.approx(expected)
    assert report["final_vs_teacher"]["size_ratio"] == pytest.approx(
        models["teacher"]["size_bytes"] / models["final"]["size_bytes"])
    assert report["final_vs_teacher"]["accuracy_drop_points"] == pytest.approx(
        100 * (models["teacher"]["accuracy"] - models["final"]["accuracy"]))
    assert {k: report["final_vs_baseline_teacher_int8"][k] for k in RATIO_KEYS} == pytest.approx(
        compare_to_teacher(models["baseline_teacher_int8"], models["final"]))
    assert report["gate"] == decide(expected, GateConfig()).as_dict()
    assert result.metrics["gate_passed"] == float(report["gate"]["passed"])
    assert {k: result.metrics[k] for k in RATIO_KEYS} == pytest.approx({k: report["final_vs_teacher"][k] for k in RATIO_KEYS})


def test_markdown_plot_outputs_and_tracking(evaluated):
    result, out_dir, tracker = evaluated
    assert result.outputs == {"report": out_dir / "compression_report.json",
                              "markdown": out_dir / "compression_report.md",
                              "plot": out_dir / "compression_plot.png"}
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(p.name for p in result.outputs.values())
    markdown = result.outputs["markdown"].read_text()
    for text in ("| teacher |", "| final |", "| baseline_teacher_int8 |", "final vs teacher", "Gate:"):
        assert text in markdown
    assert result.outputs["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.info["report"]["models"].keys() == {"teacher", "final", "baseline_teacher_int8"}
    assert sorted(tracker.artifacts) == sorted(result.outputs.values())
    for key in ("final.accuracy", "final.batch1_p50_ms", "teacher.batch32_p50_ms", "final.peak_rss_mb",
                "final_vs_teacher.size_ratio", "final_vs_baseline_teacher_int8.speedup_batch1_p50", "gate.passed"):
        assert key in tracker.metrics and np.isfinite(tracker.metrics[key]), key


def test_requires_teacher_and_final(tiny_model_dir, tiny_prepared, tmp_path):
    with pytest.raises(ValueError, match="'final'"):
        evaluate.run(TINY, GateConfig(), tiny_prepared, [ModelSpec("teacher", tiny_model_dir, "pytorch")],
                     tmp_path, NullTracker())
    with pytest.raises(ValueError, match="unknown runtime"):
        evaluate.run(TINY, GateConfig(), tiny_prepared, [ModelSpec("teacher", tiny_model_dir, "pytorch"),
                                                         ModelSpec("final", tiny_model_dir, "tflite")],
                     tmp_path, NullTracker())
    assert not any(tmp_path.iterdir())


def test_pure_helpers():
    assert evaluate.agreement(np.array(["a", "b", "a"]), np.array(["a", "a", "a"])) == pytest.approx(2 / 3)
    assert evaluate.agreement(np.array([]), np.array([])) == 1.0
    scores = evaluate.classification_scores(np.array([0, 0, 0, 0]), np.array([0, 0, 1, 1]), n_labels=2)
    assert scores["accuracy"] == 0.5 and scores["f1_macro"] == pytest.approx((2 / 3 + 0) / 2)
    assert evaluate.json_safe({"a": [1.0, math.nan], "b": {"c": math.inf}, "d": "x"}) == \
        {"a": [1.0, None], "b": {"c": None}, "d": "x"}


def test_write_atomic_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def broken(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        evaluate.write_atomic(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
