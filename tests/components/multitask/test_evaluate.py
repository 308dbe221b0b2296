"""The multitask report's arithmetic: each task scored on its labelled rows, the worst task's drop as the
report's drop, the gate against the teacher and against the single-task students, the flat metrics."""

from __future__ import annotations

import numpy as np
import pytest

from components.config import GateConfig
from components.kit.gate import decide_multitask
from components.kit.heads import MISSING
from components.multitask import evaluate


def entry(acc: dict[str, float], size: int, batch1: float) -> dict:
    return {
        "runtime": "onnxruntime int8",
        "accuracy": float(np.mean(list(acc.values()))),
        "f1_macro": None,
        "tasks": {t: {"accuracy": a, "f1_macro": a - 0.01} for t, a in acc.items()},
        "size_bytes": size,
        "params": 1,
        "latency_ms": {"batch1_p50": batch1, "batch1_p95": batch1, "batch32_p50": 10 * batch1},
    }


TEACHER = entry({"sentiment": 0.90, "source": 0.80}, 90_000_000, 12.0)
FINAL = entry({"sentiment": 0.89, "source": 0.78}, 10_000_000, 2.0)
SINGLES = entry({"sentiment": 0.895, "source": 0.775}, 30_000_000, 6.0)


def test_task_scores_read_only_the_rows_with_a_label():
    gold = np.array([0, 1, MISSING, 1])
    scores = evaluate.task_scores(np.array([0, 0, 1, 1]), gold, 2)
    assert scores["accuracy"] == pytest.approx(2 / 3)
    assert evaluate.task_scores(np.array([0]), np.array([MISSING]), 2) == {"accuracy": None, "f1_macro": None}


def test_compare_reports_every_tasks_drop_and_the_worst():
    ratios = evaluate.compare(TEACHER, FINAL)
    assert ratios["accuracy_drop_points.sentiment"] == pytest.approx(1.0)
    assert ratios["accuracy_drop_points.source"] == pytest.approx(2.0)
    assert ratios["accuracy_drop_points"] == pytest.approx(2.0)
    assert ratios["size_ratio"] == pytest.approx(9.0) and ratios["speedup_batch1_p50"] == pytest.approx(6.0)


def test_gate_checks_the_teacher_and_the_single_task_students():
    cfg = GateConfig(max_drop_vs_teacher_points=2.0, min_size_ratio=3.0, min_speedup=3.0)
    vs_singles = evaluate.compare(SINGLES, FINAL)  # sentiment +0.5 points lost, source 0.5 gained
    passed = decide_multitask(evaluate.compare(TEACHER, FINAL), vs_singles, cfg, max_drop_vs_single_points=1.0)
    assert passed.passed and "accuracy_drop_vs_single_task_points" in passed.checks
    refused = decide_multitask(evaluate.compare(TEACHER, FINAL), vs_singles, cfg, max_drop_vs_single_points=0.25)
    assert refused.failed() == ["accuracy_drop_vs_single_task_points"]
    without = decide_multitask(evaluate.compare(TEACHER, FINAL), None, cfg, 0.25)
    assert without.passed and "accuracy_drop_vs_single_task_points" not in without.checks


def test_report_metrics_and_markdown_name_every_task():
    cfg = GateConfig()
    decision = decide_multitask(evaluate.compare(TEACHER, FINAL), evaluate.compare(SINGLES, FINAL), cfg, 1.0)
    card = {
        "source": "fixture",
        "sha256": "0" * 64,
        "rows": {"train": 8, "validation": 2, "test": 2},
        "tasks": {"sentiment": {"labels": ["negative", "positive"]}, "source": {"labels": ["a", "b"]}},
    }
    entries = {"teacher": TEACHER, "final": FINAL, "single_tasks": SINGLES}
    report = evaluate.build_report(card, entries, {"sentiment": {}, "source": {}}, decision, {"cpu": "x", "threads": 2})
    assert report["final_vs_single_tasks"]["size_ratio"] == pytest.approx(3.0)
    metrics = evaluate.metrics_to_log(report)
    assert metrics["final.accuracy.source"] == pytest.approx(0.78)
    assert metrics["final_vs_single_tasks.speedup_batch1_p50"] == pytest.approx(3.0)
    text = evaluate.render_markdown(report)
    assert "sentiment acc" in text and "Final vs the single-task students together" in text
    assert "Measured on x, 2 intra-op thread(s) for every model." in text


def test_seed_spread_and_the_gate_read_each_tasks_mean_over_seeds():
    entries = {"teacher": TEACHER, "final": FINAL, "single_tasks": SINGLES}
    runs = [
        {"seed": 14, "final": {"sentiment": 0.88, "source": 0.79}, "single_tasks": {"sentiment": 0.90, "source": 0.77}},
        {"seed": 15, "final": {"sentiment": 0.90, "source": 0.78}, "single_tasks": {"sentiment": 0.89, "source": 0.78}},
    ]
    seeds = evaluate.seed_spread(entries, 13, runs)
    assert [r["seed"] for r in seeds["runs"]] == [13, 14, 15]
    sentiment = seeds["tasks"]["sentiment"]
    assert sentiment["final_accuracy"]["mean"] == pytest.approx((0.89 + 0.88 + 0.90) / 3)
    assert sentiment["drop_vs_single_task_points"]["mean"] == pytest.approx((0.5 + 2.0 - 1.0) / 3)
    versus = evaluate.compare(SINGLES, FINAL)
    evaluate.add_seed_means(versus, seeds)
    assert versus["accuracy_drop_points_seed_mean"] == pytest.approx(0.5)  # sentiment; source gains on average
    cfg = GateConfig(max_drop_vs_teacher_points=2.0, min_size_ratio=3.0, min_speedup=3.0)
    decision = decide_multitask(evaluate.compare(TEACHER, FINAL), versus, cfg, max_drop_vs_single_points=0.6)
    assert decision.checks["accuracy_drop_vs_single_task_points"].value == pytest.approx(0.5) and decision.passed
    assert evaluate.seed_spread(entries, 13, []) is None


def test_final_and_single_task_students_take_turns_in_rounds():
    """Fake runners: the final model and the three single-task students (run one after another per call)
    alternate in `cfg.rounds` rounds, the order rotated, each with its share of the calls."""
    from components.config import EvaluateConfig

    calls = []

    def loaded(name: str) -> evaluate.Loaded:
        return evaluate.Loaded(lambda batch: calls.append(name), [[5, 6, 7]] * 40, 0, "onnxruntime int8", 1, 1)

    singles = {task: loaded(task) for task in ("sentiment", "source", "topic")}
    cfg = EvaluateConfig(warmup=1, rounds=2, batch1_calls=4, batch32_calls=2)
    timings = evaluate.alternate(loaded("final"), singles, cfg)

    def turns(share: int) -> dict[str, list[str]]:
        return {"final": ["final"] * share, "singles": ["sentiment", "source", "topic"] * share}

    one, two = turns(1), turns(2)
    expected_batch1 = one["final"] + one["singles"] + two["final"] + two["singles"] + two["singles"] + two["final"]
    assert calls[: len(expected_batch1)] == expected_batch1  # warm-up; round 1: final first; round 2: singles first
    assert set(timings) == {"final", "single_tasks"}
    for lat in timings.values():
        assert {"batch1_p50", "batch1_p95", "batch32_p50", "batch1_p50_spread", "batch32_p50_spread"} <= set(lat)
