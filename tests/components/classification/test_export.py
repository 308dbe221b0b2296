"""Export stage: ONNX matches PyTorch on the tiny model, pruned heads export, a failed check raises."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from components.classification import export
from components.config import ExportConfig
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
def exported(tiny_model_dir, tiny_prepared, tmp_path_factory) -> tuple[Path, RecordingTracker, object]:
    out = tmp_path_factory.mktemp("export") / "onnx"
    tracker = RecordingTracker()
    result = export.run(ExportConfig(), tiny_model_dir, tiny_prepared, out, tracker)
    return out, tracker, result


def test_export_matches_pytorch_and_writes_check(exported):
    out, tracker, result = exported
    assert result.outputs == {"model": out}
    assert {"model.onnx", "config.json", "labels.json", "tokenizer_config.json", "export_check.json"} <= {
        p.name for p in out.iterdir()
    }
    check = json.loads((out / "export_check.json").read_text())
    assert check["passed"] and check["n"] == 16 and check["mismatched_predictions"] == 0
    assert check["max_abs_logit_diff"] <= ExportConfig().max_abs_logit_diff
    assert check["opset"] >= 11
    assert tracker.metrics["max_abs_logit_diff"] == check["max_abs_logit_diff"]
    assert tracker.params["opset"] == check["opset"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def test_exported_folder_reloads_with_its_own_tokenizer(exported, tiny_prepared):
    from transformers import AutoTokenizer

    from components.kit.labelling import SingleLabel
    from components.kit.modeling import encode_split
    from components.kit.onnx_models import onnx_logits, read_model_labels

    out, _, _ = exported
    tokenizer = AutoTokenizer.from_pretrained(out)
    labels = read_model_labels(out)
    data = encode_split(tiny_prepared, "validation", tokenizer, SingleLabel(tuple(labels)), 64)
    logits = onnx_logits(out, data, tokenizer.pad_token_id, batch_size=5)
    assert logits.shape == (16, 2) and np.isfinite(logits).all()


def test_failed_check_raises_and_leaves_no_output(tiny_model_dir, tiny_prepared, tmp_path, monkeypatch):
    # Corrupt the reference (swap the two classes' logits) so that the check must fail, whatever the
    # numerical noise between the runtimes is.
    real = export.predict_logits
    monkeypatch.setattr(export, "predict_logits", lambda *a, **k: real(*a, **k)[:, ::-1].copy())
    out = tmp_path / "onnx"
    with pytest.raises(export.ExportCheckFailed, match=r"max \|delta logit\| = .* differing predictions"):
        export.run(ExportConfig(max_abs_logit_diff=1e-30), tiny_model_dir, tiny_prepared, out, NullTracker())
    assert list(tmp_path.iterdir()) == []  # neither out_dir nor the temporary folder


def test_pruned_heads_export(tiny_model_dir, tiny_prepared, tmp_path, exported):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    model.prune_heads({0: [0, 1], 1: [2]})
    pruned_dir = tmp_path / "pruned"
    model.save_pretrained(pruned_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(pruned_dir)
    (pruned_dir / "labels.json").write_text((tiny_model_dir / "labels.json").read_text())

    out = tmp_path / "onnx"
    export.run(ExportConfig(), pruned_dir, tiny_prepared, out, NullTracker())
    check = json.loads((out / "export_check.json").read_text())
    assert check["passed"] and check["mismatched_predictions"] == 0
    # Fewer heads means smaller Q/K/V/output matrices in the ONNX file, not just masked ones.
    assert (out / "model.onnx").stat().st_size < (exported[0] / "model.onnx").stat().st_size


def test_compare_logits_decides():
    ref = np.array([[0.0, 1.0], [2.0, -1.0]], dtype=np.float32)
    ok = export.compare_logits(ref, ref + 1e-6, tolerance=1e-4)
    assert ok.passed and ok.mismatched_predictions == 0 and ok.n == 2
    too_far = export.compare_logits(ref, ref + np.array([0.0, 0.01], dtype=np.float32), tolerance=1e-4)
    assert not too_far.passed and too_far.mismatched_predictions == 0
    assert too_far.max_abs_logit_diff == pytest.approx(0.01, rel=1e-3)
    flipped = export.compare_logits(ref, ref[:, ::-1], tolerance=10.0)
    assert not flipped.passed and flipped.mismatched_predictions == 2
    assert not export.compare_logits(ref, ref * np.nan, tolerance=1.0).passed


def test_import_does_not_load_runtimes():
    import subprocess

    code = (
        "import sys, components.classification.export, components.classification.quantize; "
        "print(any(m.split('.')[0] in ('optimum', 'onnxruntime', 'onnx') for m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[3]
    )
    assert done.stdout.strip() == "False", done.stderr
