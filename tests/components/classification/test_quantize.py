"""Quantize stage: int8 ONNX is smaller than fp32 and its agreement is reported; preset choice by CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.classification import export, quantize
from components.config import ExportConfig, QuantizeConfig
from components.kit.tracking import NullTracker


class RecordingTracker(NullTracker):
    def __init__(self):
        self.metrics: dict[str, float] = {}
        self.params: dict = {}

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_params(self, params):
        self.params.update(params)


@pytest.fixture(scope="module")
def onnx_dir(tiny_model_dir, tiny_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantize_input") / "onnx"
    export.run(ExportConfig(), tiny_model_dir, tiny_prepared, out, NullTracker())
    return out


def test_quantized_model_is_smaller_and_reports_agreement(onnx_dir, tiny_prepared, tmp_path):
    out = tmp_path / "int8"
    tracker = RecordingTracker()
    result = quantize.run(QuantizeConfig(), onnx_dir, tiny_prepared, out, tracker)

    assert result.outputs == {"model": out}
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "config.json", "labels.json", "tokenizer_config.json", "quantize_report.json"} <= names
    assert "model_quantized.onnx" not in names
    report = json.loads((out / "quantize_report.json").read_text())
    # Every int8 candidate is smaller than fp32; which one ships depends on timing (fp32 ships when every
    # candidate is slower), so the shipped size is only bounded by fp32's.
    fp32_file = (onnx_dir / "model.onnx").stat().st_size
    assert all(c["size_bytes"] < fp32_file for c in report["candidates"].values())
    assert report["size_int8_bytes"] <= report["size_fp32_bytes"] and report["size_ratio"] >= 1
    assert (report["size_int8_bytes"] < report["size_fp32_bytes"]) == (report["chosen"] != "fp32")
    for key in ("agreement_test", "agreement_validation", "accuracy_fp32_test", "accuracy_int8_test"):
        assert 0.0 <= report[key] <= 1.0
    assert report["n_test"] == 16
    assert tracker.params["preset"] in ("avx512_vnni", "avx512", "avx2", "arm64")
    assert tracker.params["per_channel"] == "False,True"
    # every method is built per tensor and per channel, and each is measured or its failure recorded
    assert set(report["candidates"]) == {
        "int8",
        "int8_per_channel",
        "fused_int8",
        "fused_int8_per_channel",
        "static_int8",
        "static_int8_per_channel",
    }
    static = report["candidates"]["static_int8"]
    assert "error" not in static and 0.0 <= static["accuracy"] <= 1.0 and static["size_bytes"] > 0
    assert tracker.metrics["agreement_test"] == report["agreement_test"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"

    # The int8 folder is loaded like the export folder.
    from transformers import AutoTokenizer

    from components.kit.labelling import SingleLabel
    from components.kit.modeling import encode_split
    from components.kit.onnx_models import onnx_logits, read_model_labels

    tokenizer = AutoTokenizer.from_pretrained(out)
    data = encode_split(tiny_prepared, "test", tokenizer, SingleLabel(tuple(read_model_labels(out))), 64)
    assert onnx_logits(out, data, tokenizer.pad_token_id).shape == (16, 2)


def test_explicit_preset_per_channel_replaces_previous_output(onnx_dir, tiny_prepared, tmp_path, monkeypatch):
    out = tmp_path / "int8"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    threads_seen = []
    real_session = quantize.load_onnx_session

    def recording_session(path, threads=2, spinning=True):
        threads_seen.append(threads)
        return real_session(path, threads, spinning)

    monkeypatch.setattr(quantize, "load_onnx_session", recording_session)
    tracker = RecordingTracker()
    result = quantize.run(
        QuantizeConfig(preset="avx2", per_channel=[True], candidates=["int8"]),
        onnx_dir,
        tiny_prepared,
        out,
        tracker,
        threads=1,
    )
    assert result.info["preset"] == "avx2"
    assert not (out / "stale.txt").exists()
    report = json.loads((out / "quantize_report.json").read_text())
    assert report["per_channel"] == [True]
    # every session, fp32 and each candidate, timed at the thread count the flows pass (evaluate.threads)
    assert threads_seen == [1, 1, 1] and report["timing"] == {"threads": 1} and tracker.params["threads"] == 1


def test_agreement():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    b = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.4, 0.6]])
    assert quantize.agreement(a, b) == 0.75
    assert quantize.agreement(a[:0], b[:0]) == 1.0
    with pytest.raises(ValueError):
        quantize.agreement(a, b[:2])


def test_choose_candidate_takes_the_fastest_within_tolerance():
    from components.classification.quantize import choose_candidate

    fp32 = {"accuracy": 0.90, "latency_ms": 2.0}
    candidates = {
        "int8": {"accuracy": 0.899, "latency_ms": 1.5},
        "fused_int8": {"accuracy": 0.898, "latency_ms": 1.1},
        "broken": {"accuracy": float("nan"), "latency_ms": float("inf"), "error": "boom"},
    }
    chosen, reasons = choose_candidate(fp32, candidates, max_drop_points=0.5)
    assert chosen == "fused_int8" and reasons["int8"] == "eligible" and "boom" in reasons["broken"]
    chosen, reasons = choose_candidate(fp32, candidates, max_drop_points=0.15)
    assert chosen == "int8" and "loses 0.20" in reasons["fused_int8"]


def test_choose_candidate_never_ships_a_slower_or_worse_int8():
    from components.classification.quantize import choose_candidate

    fp32 = {"accuracy": 0.90, "latency_ms": 1.0}
    chosen, reasons = choose_candidate(
        fp32, {"int8": {"accuracy": 0.90, "latency_ms": 1.2}, "fused_int8": {"accuracy": 0.80, "latency_ms": 0.5}}, 0.5
    )
    assert chosen is None and "slower" in reasons["int8"] and "loses" in reasons["fused_int8"]


# ---------------------------------------------------------------- a multitask export (one output per task)


def test_agreement_of_a_multitask_model_is_the_mean_over_its_tasks():
    a = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0]])
    b = np.array([[0.9, 0.1, 1.0, 0.0], [0.2, 0.8, 0.0, 1.0]])  # the first task always agrees, the second half
    assert quantize.agreement(a, b, [slice(0, 2), slice(2, 4)]) == 0.75
    assert quantize.agreement(a, b) == 0.0  # one argmax over the whole row mixes the tasks' logits


def test_a_multitask_export_quantizes_keeping_its_outputs_and_per_task_scores(
    tiny_model_dir, tiny_multitask_prepared, tmp_path, monkeypatch
):
    """Every candidate (Optimum's dynamic int8, the fused graph's dynamic int8, static int8) is built and
    measured on the split-output graph, each keeps one output per task, and so does the shipped model."""
    from tests.components.classification.test_export import multitask_export

    onnx_dir = multitask_export(tmp_path / "export", tiny_model_dir, tiny_multitask_prepared)
    opened: dict[str, list[str]] = {}  # the output names of every model the stage opens, by folder

    def recording(path, *args, **kwargs):
        session = real_load(path, *args, **kwargs)
        opened[Path(path).parent.name] = [o.name for o in session.get_outputs()]
        return session

    real_load = quantize.load_onnx_session
    monkeypatch.setattr(quantize, "load_onnx_session", recording)
    cfg = QuantizeConfig(per_channel=[False], calibration_sentences=16, latency_sentences=10)
    tracker = RecordingTracker()
    quantize.run(cfg, onnx_dir, tiny_multitask_prepared, tmp_path / "int8", tracker, max_length=32)

    report = json.loads((tmp_path / "int8" / "quantize_report.json").read_text())
    assert set(report["candidates"]) == {"int8", "fused_int8", "static_int8"}
    for name, candidate in report["candidates"].items():
        assert "error" not in candidate, (name, candidate)
        assert 0.0 <= candidate["accuracy"] <= 1.0 and 0.0 <= candidate["agreement"] <= 1.0
    for split in ("test", "validation"):
        for figure in ("agreement", "accuracy_fp32", "accuracy_int8"):
            per_task = [report[f"{figure}_{split}.{task}"] for task in ("sentiment", "length")]
            assert report[f"{figure}_{split}"] == pytest.approx(np.mean(per_task))
    assert tracker.metrics["accuracy_int8_test.length"] == report["accuracy_int8_test.length"]
    # the fp32 export, the three candidates and the shipped copy (in a temporary folder beside int8)
    assert {"onnx", "int8", "fused_int8", "static_int8"} <= set(opened) and len(opened) == 5
    assert all(names == ["logits_sentiment", "logits_length"] for names in opened.values()), opened
