import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from components.classification import evaluate
from components.config import EvaluateConfig, GateConfig
from components.kit.gate import compare_to_teacher, decide
from components.kit.report import ModelSpec, json_safe
from components.kit.tracking import NullTracker

TINY = EvaluateConfig(threads=1, warmup=1, rounds=2, batch1_calls=3, batch32_calls=3, rss_sentences=4)
MODEL_KEYS = {
    "runtime",
    "accuracy",
    "f1_macro",
    "size_bytes",
    "params",
    "latency_ms",
    "latency_rounds_ms",
    "peak_rss_mb",
    "agreement_with_teacher",
}
# The medians the gate reads (batch1_p50, batch1_p95, batch32_p50), batch-32 p95, and the spreads.
LATENCY_KEYS = {
    "batch1_p50",
    "batch1_p95",
    "batch32_p50",
    "batch32_p95",
    "batch1_p50_spread",
    "batch32_p50_spread",
}
# What `compare_to_teacher` returns (the report's final_vs_teacher section, before the seed figures).
RATIO_KEYS = ("size_ratio", "speedup_batch1_p50", "speedup_batch32_p50", "accuracy_drop_points")


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
    models = [
        ModelSpec("teacher", tiny_model_dir, "pytorch"),
        ModelSpec("final", tiny_onnx_dirs["fp32"], "onnxruntime"),
        ModelSpec("baseline_teacher_int8", tiny_onnx_dirs["int8"], "onnxruntime"),
    ]
    result = evaluate.run(
        TINY,
        GateConfig(),
        tiny_prepared,
        models,
        out_dir,
        tracker,
        max_length=32,
        seed=13,
        seed_runs=[{"seed": 14, "accuracy": 0.5, "agreement_with_teacher": 0.75}],
    )
    return result, out_dir, tracker


def strict_json(path: Path) -> dict:
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=reject)


def test_report_schema(evaluated, tiny_prepared):
    result, out_dir, _ = evaluated
    report = strict_json(out_dir / "compression_report.json")
    assert set(report) == {
        "task",
        "dataset",
        "models",
        "final_vs_teacher",
        "final_vs_baseline_teacher_int8",
        "gate",
        "environment",
        "timing",
        "seeds",
    }
    assert report["task"] == "sequence-classification"
    card = json.loads((tiny_prepared / "data_card.json").read_text())
    assert report["dataset"] == {
        "source": card["source"],
        "sha256": card["sha256"],
        "rows": {"train": 48, "validation": 16, "test": 16},
    }

    assert list(report["models"]) == ["teacher", "final", "baseline_teacher_int8"]
    for name, m in report["models"].items():
        assert set(m) == MODEL_KEYS, name
        assert isinstance(m["runtime"], str)
        for key in ("accuracy", "f1_macro", "agreement_with_teacher"):
            assert isinstance(m[key], float) and 0.0 <= m[key] <= 1.0, (name, key)
        assert isinstance(m["size_bytes"], int) and m["size_bytes"] > 0
        assert isinstance(m["params"], int) and m["params"] > 0
        lat, rounds = m["latency_ms"], m["latency_rounds_ms"]
        assert set(lat) == LATENCY_KEYS
        assert all(isinstance(v, float) and v >= 0 for v in lat.values())
        assert lat["batch1_p95"] >= lat["batch1_p50"] > 0 and lat["batch32_p95"] >= lat["batch32_p50"] > 0
        # two rounds (3 calls each: 2 + 1): the median is their mean, the spread their difference
        assert set(rounds) == {"batch1_p50", "batch1_p95", "batch32_p50", "batch32_p95"}
        assert all(len(r) == 2 for r in rounds.values())
        assert lat["batch1_p50"] == pytest.approx(sum(rounds["batch1_p50"]) / 2)
        assert lat["batch1_p50_spread"] == pytest.approx(max(rounds["batch1_p50"]) - min(rounds["batch1_p50"]))
        assert isinstance(m["peak_rss_mb"], float) and m["peak_rss_mb"] > 0

    seed_keys = {"accuracy_drop_points_seed_mean", "accuracy_drop_points_seed_std"}
    assert set(report["final_vs_teacher"]) == set(RATIO_KEYS) | seed_keys | {"agreement_with_teacher"}
    assert set(report["final_vs_baseline_teacher_int8"]) == set(RATIO_KEYS) | seed_keys
    for section in ("final_vs_teacher", "final_vs_baseline_teacher_int8"):
        assert all(isinstance(v, float) for v in report[section].values())
    seeds = report["seeds"]
    assert [r["seed"] for r in seeds["runs"]] == [13, 14]
    assert seeds["runs"][1]["accuracy_drop_points"] == pytest.approx(
        100 * (report["models"]["teacher"]["accuracy"] - 0.5)
    )
    assert report["final_vs_teacher"]["accuracy_drop_points_seed_mean"] == seeds["accuracy_drop_points"]["mean"]

    assert isinstance(report["gate"]["passed"], bool)
    assert set(report["gate"]["checks"]) == {"accuracy_drop_points", "size_ratio", "speedup_batch1_p50"}
    for check in report["gate"]["checks"].values():
        assert set(check) == {"value", "threshold", "passed", "note"}
        assert isinstance(check["value"], float) and isinstance(check["threshold"], float)
        assert isinstance(check["passed"], bool)

    env = report["environment"]
    assert set(env) == {"cpu", "logical_cpus", "threads", "torch", "onnxruntime", "transformers", "python"}
    assert env["threads"] == 1 and env["logical_cpus"] >= 1
    assert all(isinstance(env[k], str) and env[k] for k in env if k not in ("threads", "logical_cpus"))
    assert report["timing"] == {
        "rounds": 2,
        "warmup": 1,
        "batch1_calls_per_round": [2, 1],
        "batch32_calls_per_round": [2, 1],
        "statistic": "median over rounds of each round's percentile",
        "spread": evaluate.SPREAD,
    }


def test_model_entries_are_consistent(evaluated, tiny_onnx_dirs):
    from components.kit.modeling import dir_size_bytes

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
        models["teacher"]["size_bytes"] / models["final"]["size_bytes"]
    )
    assert report["final_vs_teacher"]["accuracy_drop_points"] == pytest.approx(
        100 * (models["teacher"]["accuracy"] - models["final"]["accuracy"])
    )
    assert {k: report["final_vs_baseline_teacher_int8"][k] for k in RATIO_KEYS} == pytest.approx(
        compare_to_teacher(models["baseline_teacher_int8"], models["final"])
    )
    assert report["gate"] == decide(expected, GateConfig()).as_dict()
    assert result.metrics["gate_passed"] == float(report["gate"]["passed"])
    assert {k: result.metrics[k] for k in RATIO_KEYS} == pytest.approx(
        {k: report["final_vs_teacher"][k] for k in RATIO_KEYS}
    )


def test_markdown_plot_outputs_and_tracking(evaluated):
    result, out_dir, tracker = evaluated
    assert result.outputs == {
        "report": out_dir / "compression_report.json",
        "markdown": out_dir / "compression_report.md",
        "plot": out_dir / "compression_plot.png",
    }
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(p.name for p in result.outputs.values())
    markdown = result.outputs["markdown"].read_text()
    for text in ("| teacher |", "| final |", "| baseline_teacher_int8 |", "final vs teacher", "Gate:"):
        assert text in markdown
    env = result.info["report"]["environment"]
    assert f"on {env['cpu']} ({env['logical_cpus']} logical CPUs), 1 intra-op thread(s)" in markdown
    assert f"onnxruntime {env['onnxruntime']}, torch {env['torch']}" in markdown
    assert "timed in 2 alternating rounds" in markdown and "batch 1 [2, 1]" in markdown
    final = result.info["report"]["models"]["final"]["latency_ms"]
    final_row = next(line for line in markdown.splitlines() if line.startswith("| final |"))
    assert f"| {final['batch1_p50']:.2f} ({final['batch1_p50_spread']:.2f}) |" in final_row
    assert result.outputs["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.info["report"]["models"].keys() == {"teacher", "final", "baseline_teacher_int8"}
    assert sorted(tracker.artifacts) == sorted(result.outputs.values())
    for key in (
        "final.accuracy",
        "final.batch1_p50_ms",
        "final.batch1_p50_spread_ms",
        "teacher.batch32_p50_ms",
        "teacher.batch32_p95_ms",
        "final.peak_rss_mb",
        "final_vs_teacher.size_ratio",
        "final_vs_baseline_teacher_int8.speedup_batch1_p50",
        "gate.passed",
    ):
        assert key in tracker.metrics and np.isfinite(tracker.metrics[key]), key


def test_requires_teacher_and_final(tiny_model_dir, tiny_prepared, tmp_path):
    with pytest.raises(ValueError, match="'final'"):
        evaluate.run(
            TINY,
            GateConfig(),
            tiny_prepared,
            [ModelSpec("teacher", tiny_model_dir, "pytorch")],
            tmp_path,
            NullTracker(),
        )
    with pytest.raises(ValueError, match="unknown runtime"):
        evaluate.run(
            TINY,
            GateConfig(),
            tiny_prepared,
            [ModelSpec("teacher", tiny_model_dir, "pytorch"), ModelSpec("final", tiny_model_dir, "tflite")],
            tmp_path,
            NullTracker(),
        )
    assert not any(tmp_path.iterdir())


def test_pure_helpers():
    assert evaluate.agreement(np.array(["a", "b", "a"]), np.array(["a", "a", "a"])) == pytest.approx(2 / 3)
    scores = evaluate.classification_scores(np.array([0, 0, 0, 0]), np.array([0, 0, 1, 1]), n_labels=2)
    assert scores["accuracy"] == 0.5 and scores["f1_macro"] == pytest.approx((2 / 3 + 0) / 2)
    assert json_safe({"a": [1.0, math.nan], "b": {"c": math.inf}, "d": "x"}) == {
        "a": [1.0, None],
        "b": {"c": None},
        "d": "x",
    }


# ---------------------------------------------------------------- figures that cannot be measured


def entry(accuracy, agreement=1.0, scale=1.0) -> dict:
    return {
        "runtime": "onnxruntime fp32",
        "accuracy": accuracy,
        "f1_macro": accuracy,
        "size_bytes": int(scale * 1_000_000),
        "params": 1000,
        "latency_ms": {"batch1_p50": scale, "batch1_p95": 1.5 * scale, "batch32_p50": 10.0 * scale},
        "peak_rss_mb": 100.0,
        "agreement_with_teacher": agreement,
    }


def test_an_empty_split_is_not_available_never_a_number(tmp_path):
    """No rows: accuracy, F1 and agreement are None (null in the JSON, n/a in the markdown), and the gate
    check that needs them fails with a note instead of crashing or passing on a 0."""
    empty = np.array([], dtype=np.int64)
    assert evaluate.classification_scores(empty, empty, n_labels=2) == {"accuracy": None, "f1_macro": None}
    assert evaluate.agreement(np.array([]), np.array([])) is None

    entries = {"teacher": entry(0.9, scale=10.0), "final": entry(None, None)}  # 10x smaller and faster
    ratios = compare_to_teacher(entries["teacher"], entries["final"])
    decision = decide(ratios, GateConfig())
    card = {"source": "fixture", "sha256": "0" * 64, "rows": {"test": 0}}
    report = evaluate.build_report(card, entries, decision, {"cpu": "cpu", "threads": 1})
    text = json.dumps(json_safe(report), allow_nan=False)
    assert json.loads(text)["models"]["final"]["accuracy"] is None
    assert json.loads(text)["final_vs_teacher"]["accuracy_drop_points"] is None
    assert decision.failed() == ["accuracy_drop_points"]
    assert report["gate"]["checks"]["accuracy_drop_points"]["note"].startswith("not available")
    markdown = evaluate.render_markdown(report)
    final_row = next(line for line in markdown.splitlines() if line.startswith("| final |"))
    assert final_row.split("|")[3].strip() == "n/a" and final_row.split("|")[5].strip() == "n/a"
    assert "| accuracy_drop_points | n/a | 2.000 | FAIL | not available" in markdown
    logged = evaluate.metrics_to_log(report)
    assert "final.accuracy" not in logged and "teacher.accuracy" in logged
    evaluate.save_plot(report, tmp_path / "plot.png")  # the unmeasured model is left off the plot


def test_a_skipped_check_shows_as_skipped_with_its_reason():
    from components.kit.gate import compare_to_champion

    decision = compare_to_champion(
        {"accuracy": 0.8, "size_bytes": 1.0, "data_sha256": "a", "split": "test"},
        {"accuracy": 0.9, "size_bytes": 1.0, "data_sha256": "b", "split": "test"},
        GateConfig(),
    )
    lines = evaluate.gate_lines(decision.as_dict())
    assert (
        "| vs_champion.accuracy_drop_points | n/a | 0.500 | skipped | champion measured on other data: "
        "not compared |" in lines
    )


def test_split_accuracy_scores_an_onnx_folder_as_the_report_does(evaluated, tiny_onnx_dirs, tiny_prepared):
    """How the gate re-measures a champion on a candidate's data: the same figure the evaluate stage gives."""
    report = strict_json(evaluated[1] / "compression_report.json")
    measured = evaluate.split_accuracy(tiny_onnx_dirs["fp32"], tiny_prepared, "test", threads=1, max_length=32)
    assert measured == report["models"]["final"]["accuracy"]


# ---------------------------------------------------------------- the distillation ablation


def write_metrics(folder: Path, metrics: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_the_ablation_separates_distillation_from_the_transfer_set(tmp_path):
    """Three students: labels only, distilled on the train split, distilled on train + transfer set; each
    gain is measured against the student that differs by that one factor."""
    folder = write_metrics(
        tmp_path / "student",
        {
            "test_accuracy": 0.90,
            "transfer_rows": 13485,
            "ablation.labels_only.test_accuracy": 0.86,
            "ablation.kd_train_only.test_accuracy": 0.88,
        },
    )
    ablation = evaluate.distillation_ablation(folder)
    assert ablation["labels_only"] == 0.86 and ablation["kd_train_only"] == 0.88
    assert ablation["kd_with_transfer"] == 0.90 and ablation["transfer_rows"] == 13485
    assert ablation["kd_gain_points"] == pytest.approx(2.0)
    assert ablation["transfer_gain_points"] == pytest.approx(2.0)
    lines = evaluate.ablation_lines(ablation)
    assert "| labels only (no teacher) | 0.8600 | - |" in lines
    assert "| distilled, train split | 0.8800 | +2.00 |" in lines
    assert "| distilled, train split + transfer set (13,485 sentences) | 0.9000 | +2.00 |" in lines


def test_without_a_transfer_set_the_student_is_the_kd_train_only_one(tmp_path):
    folder = write_metrics(
        tmp_path / "student", {"test_accuracy": 0.88, "transfer_rows": 0, "ablation.labels_only.test_accuracy": 0.86}
    )
    ablation = evaluate.distillation_ablation(folder)
    assert ablation["kd_train_only"] == 0.88 and ablation["kd_with_transfer"] is None
    assert ablation["transfer_gain_points"] is None and ablation["kd_gain_points"] == pytest.approx(2.0)
    assert not any("transfer set" in line for line in evaluate.ablation_lines(ablation))
    assert evaluate.distillation_ablation(write_metrics(tmp_path / "plain", {"test_accuracy": 0.88})) is None


def test_the_accuracy_budget_says_what_each_technique_spent(tmp_path):
    """Validation points from teacher to shipped model, split by technique: the prune stage's own figures,
    trim and export from the pruned model to the fp32 export, quantization from fp32 to the shipped model."""
    pruned = write_metrics(
        tmp_path / "pruned",
        {
            "budget_points": 1.25,
            "teacher_val_accuracy": 0.90,
            "val_accuracy": 0.885,
            "budget_spent_distill_points": 0.5,
            "budget_spent_prune_points": 1.0,
            "steps_taken": 1,
            "step_undone": 2,
            "budget_margin_points": 0.25,
            "budget_confidence": 0.95,
            "budget_spent_bound_points": 1.4,
        },
    )
    final = tmp_path / "final"
    final.mkdir()
    (final / "quantize_report.json").write_text(
        json.dumps({"accuracy_fp32_validation": 0.885, "accuracy_int8_validation": 0.883})
    )
    budget = evaluate.accuracy_budget(pruned, final)
    spent = budget["spent_points"]
    assert spent["distill"] == 0.5 and spent["prune"] == 1.0 and spent["trim_and_export"] == pytest.approx(0.0)
    assert spent["quantize"] == pytest.approx(0.2) and budget["total_spent_points"] == pytest.approx(1.7)
    lines = evaluate.budget_lines(budget)
    assert any("undid step 2" in line for line in lines) and "| quantization | +0.20 |" in lines
    assert any("upper bound of +1.40 at 95% confidence" in line and "within 1.50" in line for line in lines)
    logged = evaluate.metrics_to_log({"models": {}, "gate": {"passed": True}, "accuracy_budget": budget})
    assert logged["budget.spent.prune_points"] == 1.0 and logged["budget.spent.total_points"] == pytest.approx(1.7)
    assert evaluate.accuracy_budget(write_metrics(tmp_path / "fixed", {"val_accuracy": 0.88}), final) is None


# ---------------------------------------------------------------- timing in alternating rounds (fakes)


def test_models_are_timed_in_alternating_rotated_rounds_with_the_calls_split():
    """Fake runners record who runs when: the warm-ups first, then rounds in a rotated order, each model with
    its share of the total calls, batch 1 then batch 32; each model's figures are the medians of its rounds."""
    calls = []

    def runner(name):
        return lambda batch: calls.append((name, len(batch)))

    timed = {
        name: evaluate.Timed(runner(name), {1: [[0]], evaluate.BATCH_SIZE: [[0] * evaluate.BATCH_SIZE]})
        for name in ("teacher", "final", "baseline_teacher_int8")
    }
    cfg = EvaluateConfig(warmup=1, rounds=3, batch1_calls=7, batch32_calls=3)
    figures = evaluate.time_models(timed, cfg)

    def turns(order: list[str], share: int) -> list[str]:
        return [name for name in order for _ in range(share)]

    t, f, b = "teacher", "final", "baseline_teacher_int8"
    batch1 = [name for name, size in calls if size == 1]
    assert batch1 == (
        [t, f, b]  # one warm-up call each, before the first round
        + turns([t, f, b], 3)  # round 1: 3 of the 7 calls each
        + turns([f, b, t], 2)  # round 2, the order rotated: 2 calls each
        + turns([b, t, f], 2)  # round 3, rotated again
    )
    assert [size for _, size in calls] == [1] * len(batch1) + [evaluate.BATCH_SIZE] * (3 + 3 * 3)
    assert sum(1 for name, size in calls if name == "final" and size == 1) == 1 + 7  # the total is kept
    for latency_ms, rounds_ms in figures.values():
        assert len(rounds_ms["batch1_p50"]) == 3 and len(rounds_ms["batch32_p50"]) == 3
        assert latency_ms["batch1_p50"] == pytest.approx(float(np.median(rounds_ms["batch1_p50"])))
        assert latency_ms["batch32_p50_spread"] == pytest.approx(
            max(rounds_ms["batch32_p50"]) - min(rounds_ms["batch32_p50"])
        )


def test_evaluate_config_rounds_default_and_bounds():
    from pydantic import ValidationError

    assert EvaluateConfig().rounds == 5
    with pytest.raises(ValidationError, match="rounds"):
        EvaluateConfig(rounds=0)
    # fewer calls than rounds: each call its own round, the total kept (the report's timing says so)
    timing = evaluate.timing_section(EvaluateConfig(rounds=5, batch1_calls=12, batch32_calls=2))
    assert timing["batch1_calls_per_round"] == [3, 3, 2, 2, 2] and timing["batch32_calls_per_round"] == [1, 1]


def test_markdown_shows_the_median_with_its_spread():
    lat = {"batch1_p50": 1.234, "batch1_p50_spread": 0.056}
    assert evaluate.with_spread(lat, "batch1_p50") == "1.23 (0.06)"
    assert evaluate.with_spread({"batch32_p50": 9.0}, "batch32_p50") == "9.00"  # no spread recorded
