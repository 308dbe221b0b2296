"""ONNX classifier folders as the export, quantize and seeds stages read and write them.

`onnx_logits` is the ONNX counterpart of `modeling.predict_logits` (sessions: `latency.load_onnx_session`). A
folder holds `model.onnx` (`ONNX_FILE`), the tokenizer and `labels.json` (`copy_model_metadata`), so that it
loads like a PyTorch model folder. ONNX Runtime is imported inside functions only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from components.kit.latency import load_onnx_session
from components.kit.modeling import Encoded, collate, length_bucketed_batches

ONNX_FILE = "model.onnx"


def onnx_logits(session_or_path, encoded: Encoded, pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Logits (n, num_labels, float32) of an ONNX classifier over a tokenized split, batched by length.

    The session gets only the inputs it declares: token_type_ids is dropped for models that lack it.
    """
    session = session_or_path if hasattr(session_or_path, "run") else load_onnx_session(session_or_path)
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


def read_model_labels(model_dir: Path) -> list[str]:
    return json.loads((Path(model_dir) / "labels.json").read_text())


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def copy_model_metadata(src: Path, dst: Path, tokenizer) -> None:
    """Tokenizer files and labels.json next to an ONNX model, so that the folder is self-contained."""
    tokenizer.save_pretrained(dst)
    shutil.copy2(Path(src) / "labels.json", Path(dst) / "labels.json")
