import json
import math

import pytest

from components.causal_lm import export
from components.causal_lm.export import LMExportCheckFailed, continuation_agreement
from components.kit.generation import greedy, load, load_tokenizer
from components.kit.tracking import NullTracker


@pytest.fixture(scope="module")
def exported(tiny_gpt2_dir, tiny_lm_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_export") / "onnx"
    return export.export(tiny_gpt2_dir, tiny_lm_data_dir, out, NullTracker(), prompts=6, max_new_tokens=12)


@pytest.fixture(scope="module")
def quantized(exported, tiny_lm_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_quantize") / "int8"
    return export.quantize(
        exported.outputs["model"], tiny_lm_data_dir, out, NullTracker(), prompts=6, max_new_tokens=12
    )


def test_export_generates_like_pytorch(exported, tiny_gpt2_dir, tiny_lm_data_dir):
    out = exported.outputs["model"]
    assert {"model.onnx", "config.json", "tokenizer.json", "export_check.json"} <= {p.name for p in out.iterdir()}
    assert exported.metrics["prompts_equal"] == exported.metrics["prompts_checked"] == 6
    assert exported.metrics["onnx_bytes"] > 0
    check = json.loads((out / "export_check.json").read_text())
    assert check["passed"] and len(check["continuations"]) == 6
    # the trained fixture continues prompts with more than one distinct token
    assert any(len(set(c["pytorch"])) > 2 for c in check["continuations"])

    # the same agreement through every way of running it, and batched generation
    tokenizer = load_tokenizer(out)
    prompts = export.fixed_prompts(tiny_lm_data_dir, tokenizer, 6)
    reference = greedy(load(tiny_gpt2_dir, "pytorch"), tokenizer, prompts, 12)
    assert greedy(load(out, "onnxruntime", threads=1), tokenizer, prompts, 12, batch_size=3) == reference
    from components.kit.latency import load_onnx_session

    assert greedy(load_onnx_session(out, 1), tokenizer, prompts, 12) == reference


def test_greedy_min_new_tokens_gives_exact_count(exported):
    out = exported.outputs["model"]
    tokenizer = load_tokenizer(out)
    from components.kit.latency import load_onnx_session

    for model in (load(out, "onnxruntime"), load_onnx_session(out, 1)):
        rows = greedy(model, tokenizer, [[tokenizer.eos_token_id], [5, 6, 7]], 20, min_new_tokens=20)
        assert [len(r) for r in rows] == [20, 20]


def test_export_fails_clearly_when_generation_differs(tiny_gpt2_dir, tiny_lm_data_dir, tmp_path, monkeypatch):
    real = export.greedy
    calls = []

    def diverging(model, tokenizer, prompts, max_new_tokens, **kwargs):
        calls.append(1)
        rows = real(model, tokenizer, prompts, max_new_tokens, **kwargs)
        return rows if len(calls) == 1 else [r[:-1] + [r[-1] + 1 if r else 1] for r in rows]

    monkeypatch.setattr(export, "greedy", diverging)
    out = tmp_path / "onnx"
    with pytest.raises(LMExportCheckFailed, match="generates differently from PyTorch on 2 of 2 prompts"):
        export.export(tiny_gpt2_dir, tiny_lm_data_dir, out, NullTracker(), prompts=2, max_new_tokens=4)
    assert not out.exists() and not list(tmp_path.glob(".onnx.tmp-*"))


def test_int8_loads_generates_and_reports_agreement(quantized, exported):
    from optimum.onnxruntime import ORTModelForCausalLM

    out = quantized.outputs["model"]
    model = ORTModelForCausalLM.from_pretrained(out)
    tokenizer = load_tokenizer(out)
    rows = greedy(model, tokenizer, [[5, 6, 7, 8]], 8, min_new_tokens=8)
    assert len(rows[0]) == 8
    report = json.loads((out / "quantize_report.json").read_text())
    from components.kit.latency import onnx_precision

    assert onnx_precision(out) == "int8" and onnx_precision(exported.outputs["model"]) == "fp32"
    for key in ("sequence_agreement", "token_agreement"):
        assert 0.0 <= quantized.metrics[key] <= 1.0 and report[key] == quantized.metrics[key]
    assert quantized.metrics["token_agreement"] >= quantized.metrics["sequence_agreement"]
    assert quantized.metrics["onnx_bytes"] < exported.metrics["onnx_bytes"]
    assert math.isclose(
        quantized.metrics["size_ratio"], exported.metrics["onnx_bytes"] / quantized.metrics["onnx_bytes"]
    )
    assert report["preset"] in ("avx512_vnni", "avx512", "avx2", "arm64")


def test_continuation_agreement():
    assert continuation_agreement([], []) == {"sequence_agreement": 1.0, "token_agreement": 1.0}
    got = continuation_agreement([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 6, 7]])
    assert got["sequence_agreement"] == 0.5
    assert got["token_agreement"] == pytest.approx(4 / 6)  # 3 + 1 identical positions out of 3 + 3
    with pytest.raises(ValueError):
        continuation_agreement([[1]], [])
