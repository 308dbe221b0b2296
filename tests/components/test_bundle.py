"""Edge bundle: files and hashes, predictions equal to the pipeline's, tamper detection, and predict.py in
a fresh virtual environment that holds only onnxruntime, tokenizers and numpy (from the package index)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from components import bundle, export
from components.config import ExportConfig
from components.edge_predict import BundleError, Predictor, verify
from components.tracking import NullTracker

TEXTS = ["a wonderful, moving film", "a dull, lifeless mess", "great acting and a sharp script number 7"]


@pytest.fixture(scope="module")
def packaged(tiny_model_dir, tiny_prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    onnx_dir = root / "onnx"
    export.run(ExportConfig(), tiny_model_dir, tiny_prepared, onnx_dir, NullTracker(), max_length=32)
    out = bundle.package(onnx_dir, root / "edge", {"path": str(onnx_dir)}, {"accuracy": 0.5}, max_length=32)
    return onnx_dir, out


def test_bundle_holds_the_model_tokenizer_labels_script_and_hashes(packaged):
    _, out = packaged
    assert sorted(p.name for p in out.iterdir()) == ["labels.json", "manifest.json", "model.onnx", "predict.py",
                                                     "tokenizer.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.onnx", "tokenizer.json", "labels.json", "predict.py"}
    assert manifest["metrics"] == {"accuracy": 0.5} and manifest["max_length"] == 32
    assert verify(out) == manifest


def test_bundle_predictions_match_the_pipelines_onnx_logits(packaged):
    from transformers import AutoTokenizer

    from components.modeling import encode

    onnx_dir, out = packaged
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    labels = json.loads((onnx_dir / "labels.json").read_text())
    data = encode(tokenizer, TEXTS, [labels[0]] * len(TEXTS), labels, 32)
    logits = export.onnx_logits(onnx_dir, data, tokenizer.pad_token_id)
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert np.allclose(Predictor(out).scores(TEXTS), expected, atol=1e-5)
    rows = Predictor(out).predict(TEXTS[:1])
    assert rows[0]["label"] in labels and set(rows[0]["scores"]) == set(labels)


def test_a_changed_file_is_refused_before_loading(packaged, tmp_path):
    import shutil

    _, out = packaged
    copy = shutil.copytree(out, tmp_path / "edge")
    (copy / "labels.json").write_text('["positive", "negative"]')
    with pytest.raises(BundleError, match="labels.json does not match manifest.json"):
        Predictor(copy)
    (copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx is missing"):
        verify(copy)


def test_package_refuses_a_folder_without_an_onnx_model(tiny_model_dir, tmp_path):
    with pytest.raises(bundle.BundleSourceError, match="model.onnx"):
        bundle.package(tiny_model_dir, tmp_path / "edge", {}, {})
    assert not (tmp_path / "edge").exists()


def test_predict_py_runs_in_a_fresh_environment(packaged, edge_python, tmp_path):
    _, out = packaged
    one = subprocess.run([str(edge_python), str(out / "predict.py"), TEXTS[0]], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    row = json.loads(one.stdout)
    assert row["text"] == TEXTS[0] and abs(sum(row["scores"].values()) - 1) < 1e-4
    assert row["scores"] == pytest.approx(Predictor(out).predict(TEXTS[:1])[0]["scores"], abs=1e-5)

    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text("\n".join(json.dumps(t if i % 2 else {"text": t}) for i, t in enumerate(TEXTS)) + "\n")
    batch = subprocess.run([str(edge_python), str(out / "predict.py"), "--jsonl", str(jsonl)], capture_output=True,
                           text=True)
    assert batch.returncode == 0, batch.stderr
    assert [json.loads(line)["text"] for line in batch.stdout.splitlines()] == TEXTS

    (out / "model.onnx").write_bytes((out / "model.onnx").read_bytes() + b"\0")
    try:
        tampered = subprocess.run([str(edge_python), str(out / "predict.py"), "x"], capture_output=True, text=True)
        assert tampered.returncode == 2 and "model.onnx does not match manifest.json" in tampered.stderr
        assert tampered.stdout == ""
    finally:
        (out / "model.onnx").write_bytes((out / "model.onnx").read_bytes()[:-1])
