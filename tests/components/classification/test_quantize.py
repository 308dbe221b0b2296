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
        "fused_int8_emb4",
        "fused_int8_emb4_per_channel",
        "static_int8",
        "static_int8_per_channel",
    }
    static = report["candidates"]["static_int8"]
    assert "error" not in static and 0.0 <= static["accuracy"] <= 1.0 and static["size_bytes"] > 0
    # 4-bit word embeddings: the tiny model's 30,522 x 32 table is most of it, so the file shrinks by about
    # a third against int8 embeddings
    emb4, fused = report["candidates"]["fused_int8_emb4"], report["candidates"]["fused_int8"]
    assert "error" not in emb4 and 0.0 <= emb4["accuracy"] <= 1.0
    assert emb4["size_bytes"] < 0.75 * fused["size_bytes"]
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


def test_choose_candidate_takes_the_smallest_of_those_tied_with_the_fastest():
    from components.classification.quantize import choose_candidate

    fp32 = {"accuracy": 0.90, "latency_ms": 2.0}
    candidates = {
        "fused_int8": {"accuracy": 0.90, "latency_ms": 1.00, "size_bytes": 8_000_000},
        "fused_int8_emb4": {"accuracy": 0.90, "latency_ms": 1.04, "size_bytes": 6_000_000},
        "int8": {"accuracy": 0.90, "latency_ms": 1.20, "size_bytes": 5_000_000},
    }
    chosen, reasons = choose_candidate(fp32, candidates, 0.5, tie_share=0.05)
    assert chosen == "fused_int8_emb4" and "smallest of 2 within 5%" in reasons["fused_int8_emb4"]
    # no tie allowed: the fastest, whatever its size; a tie share wide enough takes in the smallest
    assert choose_candidate(fp32, candidates, 0.5)[0] == "fused_int8"
    assert choose_candidate(fp32, candidates, 0.5, tie_share=0.25)[0] == "int8"


def test_an_update_keeps_the_variant_it_was_given_while_it_is_eligible():
    from components.classification.quantize import choose_candidate

    fp32 = {"accuracy": 0.90, "latency_ms": 2.0}
    candidates = {
        "int8_per_channel": {"accuracy": 0.90, "latency_ms": 1.00, "size_bytes": 9_000_000},
        "fused_int8_emb4": {"accuracy": 0.90, "latency_ms": 1.10, "size_bytes": 6_000_000},
        "static_int8": {"accuracy": 0.85, "latency_ms": 0.90, "size_bytes": 9_000_000},
    }
    chosen, reasons = choose_candidate(fp32, candidates, 0.5, tie_share=0.05, keep="fused_int8_emb4")
    assert chosen == "fused_int8_emb4" and "kept" in reasons["fused_int8_emb4"]
    # not eligible any more (too inaccurate), or not measured: the smallest eligible one
    chosen, reasons = choose_candidate(fp32, candidates, 0.5, keep="static_int8")
    assert chosen == "fused_int8_emb4" and "the smallest" in reasons[chosen]
    assert choose_candidate(fp32, candidates, 0.5, keep="fp32")[0] == "fused_int8_emb4"
    # a full run (nothing to keep): the fastest
    assert choose_candidate(fp32, candidates, 0.5)[0] == "int8_per_channel"


def test_word_embeddings_in_4_bits(onnx_dir, tmp_path):
    import onnx
    import onnxruntime as ort

    from components.classification.quantize import fuse_transformer, quantize_word_embeddings, word_embedding_gather

    fused = fuse_transformer(onnx_dir, tmp_path / "fused.onnx", fuse_embeddings=False)
    word = word_embedding_gather(onnx.load(str(fused)))
    assert "word_embeddings" in word
    out = quantize_word_embeddings(fused, tmp_path / "emb4.onnx")
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    # only the word table: the position and token-type lookups stay plain Gathers
    assert ops.count("GatherBlockQuantized") == 1 and "EmbedLayerNormalization" not in ops
    ids = np.array([[101, 2054, 2003, 102]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    before, after = (ort.InferenceSession(str(p)) for p in (fused, out))
    names = {i.name for i in before.get_inputs()}
    a, b = (s.run(None, {k: v for k, v in feeds.items() if k in names})[0] for s in (before, after))
    assert a.shape == b.shape and np.abs(a - b).max() < 0.05 * np.abs(a).max() + 1e-3


def test_choose_candidate_never_ships_a_slower_or_worse_int8():
    from components.classification.quantize import choose_candidate

    fp32 = {"accuracy": 0.90, "latency_ms": 1.0}
    chosen, reasons = choose_candidate(
        fp32, {"int8": {"accuracy": 0.90, "latency_ms": 1.2}, "fused_int8": {"accuracy": 0.80, "latency_ms": 0.5}}, 0.5
    )
    assert chosen is None and "slower" in reasons["int8"] and "loses" in reasons["fused_int8"]


# ---------------------------------------------------------------- the fused graph of a pruned model


def test_attention_shape_is_the_shared_head_count_or_left_to_the_graph():
    config = {"num_attention_heads": 4, "hidden_size": 32, "num_hidden_layers": 2}
    assert quantize.attention_shape(config) == (4, 32)
    # every layer keeps 2 heads of width 8: the attention is 16 wide, the hidden states still 32
    assert quantize.attention_shape(config | {"pruned_heads": {"0": [0, 1], "1": [1, 3]}}) == (2, 16)
    assert quantize.attention_shape(config | {"pruned_heads": {"0": [0], "1": [0, 1, 2]}}) == (0, 0)
    assert quantize.attention_shape(config | {"pruned_heads": {"0": [0, 1]}}) == (0, 0)  # layer 1 keeps 4
    assert quantize.attention_shape({"n_heads": 12, "dim": 768}) == (0, 0)  # distilbert's keys: ORT reads the graph


def pruned_export(root: Path, prepared: Path, plan: dict[int, list[int]]) -> Path:
    """The tiny BERT with `plan` pruned, exported. Its weights are redrawn wider (std 0.3) so attention is
    peaked and the logits spread: a fused graph with a wrong head count then moves them by about 1, not 1e-5."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tests.conftest import tiny_bert

    model_dir = tiny_bert(root / "model")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    model.prune_heads(plan)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 0.3)
    model.save_pretrained(model_dir, safe_serialization=True)
    export.run(ExportConfig(), model_dir, prepared, root / "onnx", NullTracker())
    return root / "onnx"


@pytest.mark.parametrize(
    "plan, heads",
    [
        ({0: [0, 1], 1: [1, 3]}, [2, 2]),  # prune.uniform_heads: 16 wide attention on 32 wide hidden states
        ({0: [0], 1: [0, 1, 2]}, [3, 1]),  # the global ranking: each layer its own head count
    ],
    ids=["uniform", "per-layer"],
)
def test_pruned_attention_fuses_with_each_layers_head_count(plan, heads, tiny_prepared, tmp_path):
    """ONNX Runtime reads each layer's head count from the export's query Reshape, so pruned layers fuse
    into one Attention node each, with that layer's heads, computing what the unfused graph computes."""
    import onnx
    from transformers import AutoTokenizer

    from components.kit.labelling import SingleLabel
    from components.kit.latency import load_onnx_session
    from components.kit.modeling import encode_split
    from components.kit.onnx_models import onnx_logits

    onnx_dir = pruned_export(tmp_path, tiny_prepared, plan)
    fused = quantize.fuse_transformer(onnx_dir, tmp_path / "fused.onnx")

    attention = [n for n in onnx.load(str(fused)).graph.node if n.op_type == "Attention"]
    assert [next(a.i for a in n.attribute if a.name == "num_heads") for n in attention] == heads
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    test = encode_split(tiny_prepared, "test", tokenizer, SingleLabel(("negative", "positive")), 64)
    unfused_logits = onnx_logits(load_onnx_session(onnx_dir / "model.onnx"), test, tokenizer.pad_token_id)
    fused_logits = onnx_logits(load_onnx_session(fused), test, tokenizer.pad_token_id)
    assert unfused_logits.std() > 0.1  # spread enough that a wrong head split would show
    assert np.abs(fused_logits - unfused_logits).max() < 1e-4
    assert (fused_logits.argmax(-1) == unfused_logits.argmax(-1)).all()
    # and the fused_int8 candidate keeps them fused, as int8 attention
    int8 = quantize.fuse_then_quantize(onnx_dir, tmp_path / "fused_int8", per_channel=False)
    assert sum(n.op_type == "QAttention" for n in onnx.load(str(int8)).graph.node) == len(heads)


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
    assert set(report["candidates"]) == {"int8", "fused_int8", "fused_int8_emb4", "static_int8"}
    for name, candidate in report["candidates"].items():
        assert "error" not in candidate, (name, candidate)
        assert 0.0 <= candidate["accuracy"] <= 1.0 and 0.0 <= candidate["agreement"] <= 1.0
    for split in ("test", "validation"):
        for figure in ("agreement", "accuracy_fp32", "accuracy_int8"):
            per_task = [report[f"{figure}_{split}.{task}"] for task in ("sentiment", "length")]
            assert report[f"{figure}_{split}"] == pytest.approx(np.mean(per_task))
    assert tracker.metrics["accuracy_int8_test.length"] == report["accuracy_int8_test.length"]
    # the fp32 export, the four candidates and the shipped copy (in a temporary folder beside int8)
    assert {"onnx", "int8", "fused_int8", "fused_int8_emb4", "static_int8"} <= set(opened) and len(opened) == 6
    assert all(names == ["logits_sentiment", "logits_length"] for names in opened.values()), opened


def test_fused_layer_norms_are_split_and_stay_split_when_a_session_loads_them(onnx_dir, tmp_path):
    import onnx
    import onnxruntime as ort

    from components.classification.quantize import fuse_then_quantize

    fused = fuse_then_quantize(onnx_dir, tmp_path / "fused", per_channel=False, split_layer_norms=False)
    split = fuse_then_quantize(onnx_dir, tmp_path / "split", per_channel=False)
    fused_ops = [n.op_type for n in onnx.load(str(fused)).graph.node]
    assert fused_ops.count("SkipLayerNormalization") == 4  # 2 layers x (attention, FFN)
    split_ops = [n.op_type for n in onnx.load(str(split)).graph.node]
    assert "SkipLayerNormalization" not in split_ops and split_ops.count("LayerNormalization") == 4
    assert "QAttention" in split_ops  # the other fusions stay
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "as_loaded.onnx")
    ort.InferenceSession(str(split), options, providers=["CPUExecutionProvider"])
    loaded = [n.op_type for n in onnx.load(str(tmp_path / "as_loaded.onnx")).graph.node]
    assert "SkipLayerNormalization" not in loaded  # ONNX Runtime's load-time fusion did not put it back
    ids = np.array([[101, 2054, 2003, 1037, 2143, 102]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fused, split))
    names = {i.name for i in a.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    np.testing.assert_allclose(a.run(None, feeds)[0], b.run(None, feeds)[0], atol=1e-4)
