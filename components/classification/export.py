"""Stage, export: turn a PyTorch sequence classifier into an ONNX model, and prove it computes the same.

`run(cfg, model_dir, prepared, out_dir, tracker)` exports `model_dir` (safetensors + tokenizer +
`labels.json`, possibly a BERT with pruned heads) with `optimum.exporters.onnx.main_export`, copies the
tokenizer and `labels.json` beside `model.onnx`, then runs ONNX Runtime and PyTorch over the whole test
split and compares logits. A max |delta logit| above `cfg.max_abs_logit_diff`, or any differing prediction,
raises `ExportCheckFailed` and leaves no `out_dir` behind: everything is written to a temporary sibling
folder that is renamed into place only once the check passed. `out_dir/export_check.json` records the check.

The ONNX helpers it shares with the quantize and seeds stages (`onnx_logits`, the folder's metadata) are in
`components.kit.onnx_models`, its sessions from `components.kit.latency.load_onnx_session`. Optimum, ONNX and
ONNX Runtime are imported inside functions only.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from components.config import ExportConfig
from components.kit.files import move_into_place, temp_sibling
from components.kit.labelling import model_labelling
from components.kit.latency import load_onnx_session
from components.kit.modeling import dir_size_bytes, encode_split, predict_logits, require_safetensors
from components.kit.onnx_models import (
    ONNX_FILE,
    copy_model_metadata,
    onnx_logits,
    pad_id_of,
)
from components.kit.tracking import StageResult, Tracker


class ExportCheckFailed(RuntimeError):
    """The exported ONNX model does not reproduce the PyTorch logits within tolerance."""


@dataclass(frozen=True)
class LogitCheck:
    max_abs_logit_diff: float
    mismatched_predictions: int
    n: int
    passed: bool


def compare_logits(reference: np.ndarray, candidate: np.ndarray, tolerance: float) -> LogitCheck:
    """Pass when every logit is within `tolerance` of the reference and every argmax is identical."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    n = len(reference)
    max_diff = float(np.abs(reference - candidate).max()) if reference.size else 0.0
    mismatched = int((reference.argmax(-1) != candidate.argmax(-1)).sum()) if n else 0
    # `<=` is False for NaN, so a NaN difference fails too.
    return LogitCheck(max_diff, mismatched, n, passed=bool(max_diff <= tolerance) and mismatched == 0)


def onnx_opset(path: Path) -> int:
    """The default-domain (ai.onnx) opset of an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), -1)


def run(
    cfg: ExportConfig, model_dir: Path, prepared: Path, out_dir: Path, tracker: Tracker, max_length: int = 64
) -> StageResult:
    from optimum.exporters.onnx import main_export
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir, prepared, out_dir = Path(model_dir), Path(prepared), Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tmp = temp_sibling(out_dir)
    try:
        # Optimum's own validation feeds a few random inputs; ours below runs the real test split,
        # so its pass is skipped rather than run twice.
        require_safetensors(model_dir)  # main_export would load a pickle checkpoint as readily
        main_export(str(model_dir), tmp, task="text-classification", do_validation=False)
        copy_model_metadata(model_dir, tmp, tokenizer)

        test = encode_split(prepared, "test", tokenizer, model_labelling(model_dir, prepared), max_length)
        # Re-applies pruned_heads.
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
        reference = predict_logits(model, test, pad_id_of(tokenizer))
        candidate = onnx_logits(load_onnx_session(tmp / ONNX_FILE), test, pad_id_of(tokenizer))
        check = compare_logits(reference, candidate, cfg.max_abs_logit_diff)
        opset = onnx_opset(tmp / ONNX_FILE)

        report = asdict(check) | {"opset": opset, "tolerance": cfg.max_abs_logit_diff}
        (tmp / "export_check.json").write_text(json.dumps(report, indent=2))
        metrics = {
            "max_abs_logit_diff": check.max_abs_logit_diff,
            "mismatched_predictions": float(check.mismatched_predictions),
            "n_checked": float(check.n),
            "onnx_bytes": float(dir_size_bytes(tmp)),
        }
        tracker.log_params(cfg.model_dump() | {"opset": opset, "max_length": max_length})
        tracker.log_metrics(metrics)
        if not check.passed:
            raise ExportCheckFailed(
                f"ONNX export of {model_dir} differs from PyTorch on {check.n} test sentences: "
                f"max |delta logit| = {check.max_abs_logit_diff:.3g} (tolerance {cfg.max_abs_logit_diff:.3g}), "
                f"{check.mismatched_predictions} differing predictions"
            )
        move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    tracker.log_artifact(out_dir / "export_check.json")
    return StageResult(metrics=metrics, outputs={"model": out_dir}, info={"opset": opset})
