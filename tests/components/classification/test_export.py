"""Export stage: ONNX matches PyTorch on the tiny model, pruned heads export, a failed check raises; a
multitask model exports with one output per task (`logits_<task>`), each checked on its own, and a failing
output is named."""

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
    # a single-task export keeps its one `logits` output and its figures, with nothing per output
    assert output_names(out / "model.onnx") == ["logits"] and "outputs" not in check
    assert set(tracker.metrics) == {"max_abs_logit_diff", "mismatched_predictions", "n_checked", "onnx_bytes"}
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


# ---------------------------------------------------------------- a multitask model: one output per task


def output_names(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def tiny_multitask_model(out: Path, base: Path, prepared: Path) -> Path:
    """`base` (the tiny BERT) with one block of logits per task of `prepared`'s data card, saved as the
    finetune stage saves a multitask teacher (config.json's task_heads, labels.json's task:label names). Its
    heads are random, as finetune starts them: the export and bundle checks need no training."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from components.kit.labelling import labelling_of
    from components.kit.modeling import save_model

    heads = labelling_of(prepared)
    torch.manual_seed(0)
    config = heads.configure(AutoConfig.from_pretrained(base))
    model = AutoModelForSequenceClassification.from_pretrained(
        base, config=config, use_safetensors=True, ignore_mismatched_sizes=True
    )
    save_model(model, AutoTokenizer.from_pretrained(base), heads.names, out, {})
    return out


def multitask_export(root: Path, base: Path, prepared: Path, tracker=None) -> Path:
    """The tiny multitask model (`tiny_multitask_model`) exported to root/onnx (max_length 32)."""
    model_dir = tiny_multitask_model(root / "model", base, prepared)
    export.run(ExportConfig(), model_dir, prepared, root / "onnx", tracker or NullTracker(), max_length=32)
    return root / "onnx"


@pytest.fixture(scope="module")
def multitask_exported(tiny_model_dir, tiny_multitask_prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("multitask_export")
    tracker = RecordingTracker()
    return multitask_export(root, tiny_model_dir, tiny_multitask_prepared, tracker), tracker


def test_multitask_export_has_one_output_per_task_each_checked(multitask_exported, tiny_multitask_prepared):
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from components.kit.labelling import model_labelling
    from components.kit.modeling import encode_split, predict_logits
    from components.kit.onnx_models import onnx_logits, onnx_outputs

    out, tracker = multitask_exported
    assert output_names(out / "model.onnx") == ["logits_sentiment", "logits_length"]  # task order
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.shape for o in session.get_outputs()] == [["batch_size", 2], ["batch_size", 2]]  # batch stays dynamic
    assert json.loads((out / "labels.json").read_text()) == [
        "sentiment:negative",
        "sentiment:positive",
        "length:long",
        "length:short",
    ]

    check = json.loads((out / "export_check.json").read_text())
    assert check["passed"] and check["n"] == 16 and set(check["outputs"]) == {"logits_sentiment", "logits_length"}
    for name, figures in check["outputs"].items():
        task = name.removeprefix("logits_")
        assert figures["passed"] and figures["n"] == 16 and figures["mismatched_predictions"] == 0
        assert tracker.metrics[f"max_abs_logit_diff.{task}"] == figures["max_abs_logit_diff"]
        assert tracker.metrics[f"mismatched_predictions.{task}"] == 0
    assert check["max_abs_logit_diff"] == max(f["max_abs_logit_diff"] for f in check["outputs"].values())
    assert tracker.metrics["max_abs_logit_diff"] == check["max_abs_logit_diff"]

    # onnx_logits gives the PyTorch model's one matrix back: the outputs concatenated in graph order
    tokenizer = AutoTokenizer.from_pretrained(out)
    data = encode_split(tiny_multitask_prepared, "test", tokenizer, model_labelling(out, tiny_multitask_prepared), 32)
    pytorch = predict_logits(AutoModelForSequenceClassification.from_pretrained(out.parent / "model"), data, 0)
    np.testing.assert_allclose(onnx_logits(out, data, tokenizer.pad_token_id, batch_size=5), pytorch, atol=1e-4)
    per_output = onnx_outputs(out, data, tokenizer.pad_token_id)
    assert list(per_output) == ["logits_sentiment", "logits_length"]
    np.testing.assert_allclose(per_output["logits_length"], pytorch[:, 2:], atol=1e-4)


def test_a_failing_output_is_named_and_leaves_no_output(tiny_model_dir, tiny_multitask_prepared, tmp_path, monkeypatch):
    # Swap the two logits of the `length` block only: that output must fail, `sentiment` must not.
    real = export.predict_logits

    def swapped_length(*args, **kwargs):
        logits = real(*args, **kwargs)
        return np.concatenate([logits[:, :2], logits[:, 2:][:, ::-1]], axis=1)

    monkeypatch.setattr(export, "predict_logits", swapped_length)
    with pytest.raises(export.ExportCheckFailed, match=r"in output logits_length: max \|delta logit\| = ") as failed:
        multitask_export(tmp_path / "run", tiny_model_dir, tiny_multitask_prepared)
    assert "logits_sentiment" not in str(failed.value)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model"]  # no onnx, no temporary folder


def test_split_logits_output_gives_each_block_its_own_output(tmp_path):
    """A hand-made graph (logits = Identity(x), 5 wide, between two other outputs): split into a (2) and b (3)
    at opset 13+ (sizes as an input) and before (an attribute); each new output keeps the dynamic batch axis,
    and takes the place of `logits` among the outputs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    for opset in (11, 17):
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], [name]) for name in ("first", "logits", "last")],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5])],
            [
                helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 5])
                for name in ("first", "logits", "last")
            ],
        )
        path = tmp_path / f"opset{opset}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
        assert export.split_logits_output(path, {"logits_a": 2, "logits_b": 3}) == ["logits_a", "logits_b"]
        onnx.checker.check_model(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [(o.name, o.shape) for o in session.get_outputs()] == [
            ("first", ["batch", 5]),
            ("logits_a", ["batch", 2]),
            ("logits_b", ["batch", 3]),
            ("last", ["batch", 5]),
        ]
        a, b = session.run(["logits_a", "logits_b"], {"x": x})
        np.testing.assert_array_equal(a, x[:, :2])
        np.testing.assert_array_equal(b, x[:, 2:])
        with pytest.raises(ValueError, match="no `logits` output"):
            export.split_logits_output(path, {"logits_a": 5})


def test_output_checks_decide_per_output():
    ref = np.array([[0.0, 1.0, 2.0, 0.0], [1.0, 0.0, 0.0, 2.0]], dtype=np.float32)
    blocks = {"logits_a": slice(0, 2), "logits_b": slice(2, 4)}
    ok = {"logits_a": ref[:, :2] + 1e-6, "logits_b": ref[:, 2:]}
    checks = export.check_outputs(ref, ok, blocks, tolerance=1e-4)
    assert all(c.passed for c in checks.values()) and export.overall(checks).passed
    flipped = {"logits_a": ref[:, :2], "logits_b": ref[:, 2:][:, ::-1]}
    checks = export.check_outputs(ref, flipped, blocks, tolerance=10.0)
    assert checks["logits_a"].passed and checks["logits_b"].mismatched_predictions == 2
    total = export.overall(checks)
    assert not total.passed and total.mismatched_predictions == 2 and total.n == 2
    message = export.failure_message(Path("m"), checks, 10.0, per_task=True)
    assert "output logits_b: max |delta logit| = 2" in message and "logits_a" not in message
    missing = export.check_outputs(ref, {"logits_a": ref[:, :2]}, blocks, tolerance=1.0)
    assert not missing["logits_b"].passed and not export.overall(missing).passed
    nan = export.check_outputs(ref, {"logits_a": ref[:, :2] * np.nan, "logits_b": ref[:, 2:]}, blocks, 1.0)
    assert np.isnan(export.overall(nan).max_abs_logit_diff)
    one = {"logits": export.compare_logits(ref, ref, 1e-4)}
    assert export.overall(one) == one["logits"]


def test_output_blocks_name_one_output_per_task():
    from components.kit.heads import Heads
    from components.kit.labelling import SingleLabel

    assert export.output_blocks(SingleLabel(("a", "b"))) == {"logits": slice(None)}
    heads = Heads.of({"sentiment": ["negative", "positive"], "source": ["a", "b", "c"]})
    assert export.output_blocks(heads) == {"logits_sentiment": slice(0, 2), "logits_source": slice(2, 5)}
