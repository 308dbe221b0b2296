"""Stage, export: turn a PyTorch sequence classifier into an ONNX model, and prove it computes the same.

`run(cfg, model_dir, prepared, out_dir, tracker)` exports `model_dir` (safetensors + tokenizer +
`labels.json`, possibly a BERT with pruned heads) with `optimum.exporters.onnx.main_export`, copies the
tokenizer and `labels.json` beside `model.onnx`, then runs ONNX Runtime and PyTorch over the whole test
split and compares logits. A max |delta logit| above `cfg.max_abs_logit_diff`, or any differing prediction,
raises `ExportCheckFailed` and leaves no `out_dir` behind: everything is written to a temporary sibling
folder that is renamed into place only once the check passed. `out_dir/export_check.json` records the check.

`onnx_session` and `onnx_logits` are the ONNX counterparts of `modeling.predict_logits`; the quantize and
evaluate stages use them too. Optimum, ONNX and ONNX Runtime are imported inside functions only.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from components.config import ExportConfig
from components.modeling import (
    Encoded,
    collate,
    dir_size_bytes,
    encode,
    length_bucketed_batches,
    predict_logits,
    read_split,
    require_safetensors,
)
from components.tracking import StageResult, Tracker

ONNX_FILE = "model.onnx"


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


def onnx_session(path: str | Path, threads: int = 2):
    """A CPU-only InferenceSession with `threads` intra-op threads and one inter-op thread.

    `path` is an .onnx file or a model folder holding `model.onnx`.
    """
    import onnxruntime as ort

    path = Path(path)
    if path.is_dir():
        path = path / ONNX_FILE
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_logits(session_or_path, encoded: Encoded, pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Logits (n, num_labels, float32) of an ONNX classifier over a tokenized split, batched by length.

    The session gets only the inputs it declares: token_type_ids is dropped for models that lack it.
    """
    session = session_or_path if hasattr(session_or_path, "run") else onnx_session(session_or_path)
    wanted = [i.name for i in session.get_inputs()]
    output = session.get_outputs()[0].name
    out: np.ndarray | None = None
    for index in length_bucketed_batches([len(x) for x in encoded.input_ids], batch_size, shuffle=False):
        batch = collate(encoded.input_ids, index, pad_id)
        missing = [name for name in wanted if name not in batch]
        if missing:
            raise ValueError(f"ONNX model wants inputs {missing} that a text classifier batch does not have")
        logits = session.run([output], {name: batch[name].numpy() for name in wanted})[0]
        if out is None:
            out = np.zeros((len(encoded), logits.shape[-1]), dtype=np.float32)
        out[index] = logits
    if out is None:  # empty split: read the label count from the declared output shape when it is fixed
        width = session.get_outputs()[0].shape[-1]
        out = np.zeros((0, width if isinstance(width, int) else 0), dtype=np.float32)
    return out


def onnx_opset(path: Path) -> int:
    """The default-domain (ai.onnx) opset of an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), -1)


def read_model_labels(model_dir: Path) -> list[str]:
    return json.loads((Path(model_dir) / "labels.json").read_text())


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def copy_model_metadata(src: Path, dst: Path, tokenizer) -> None:
    """Tokenizer files and labels.json next to an ONNX model, so that the folder is self-contained."""
    tokenizer.save_pretrained(dst)
    shutil.copy2(Path(src) / "labels.json", Path(dst) / "labels.json")


def temp_sibling(out_dir: Path) -> Path:
    """A fresh folder beside out_dir (same filesystem, so the final rename is atomic)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"


def move_into_place(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def encode_split(prepared: Path, name: str, tokenizer, labels: list[str], max_length: int) -> Encoded:
    frame = read_split(prepared, name)
    return encode(tokenizer, frame["text"].tolist(), frame["label"].tolist(), labels, max_length)


def run(cfg: ExportConfig, model_dir: Path, prepared: Path, out_dir: Path, tracker: Tracker,
        max_length: int = 64) -> StageResult:
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

        test = encode_split(prepared, "test", tokenizer, read_model_labels(model_dir), max_length)
        # Re-applies pruned_heads.
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
        reference = predict_logits(model, test, pad_id_of(tokenizer))
        candidate = onnx_logits(onnx_session(tmp / ONNX_FILE), test, pad_id_of(tokenizer))
        check = compare_logits(reference, candidate, cfg.max_abs_logit_diff)
        opset = onnx_opset(tmp / ONNX_FILE)

        report = asdict(check) | {"opset": opset, "tolerance": cfg.max_abs_logit_diff}
        (tmp / "export_check.json").write_text(json.dumps(report, indent=2))
        metrics = {"max_abs_logit_diff": check.max_abs_logit_diff,
                   "mismatched_predictions": float(check.mismatched_predictions),
                   "n_checked": float(check.n), "onnx_bytes": float(dir_size_bytes(tmp))}
        tracker.log_params(cfg.model_dump() | {"opset": opset, "max_length": max_length})
        tracker.log_metrics(metrics)
        if not check.passed:
            raise ExportCheckFailed(
                f"ONNX export of {model_dir} differs from PyTorch on {check.n} test sentences: "
                f"max |delta logit| = {check.max_abs_logit_diff:.3g} (tolerance {cfg.max_abs_logit_diff:.3g}), "
                f"{check.mismatched_predictions} differing predictions")
        move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    tracker.log_artifact(out_dir / "export_check.json")
    return StageResult(metrics=metrics, outputs={"model": out_dir}, info={"opset": opset})
