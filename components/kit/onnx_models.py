"""ONNX classifier folders as the export, quantize and seeds stages read and write them.

`onnx_logits` is the ONNX counterpart of `modeling.predict_logits` (sessions: `latency.load_onnx_session`):
one matrix, also from a multitask export's one output per task (`logits_<task>`), which `onnx_outputs`
returns one by one. A folder holds `model.onnx` (`ONNX_FILE`), the tokenizer and `labels.json`
(`copy_model_metadata`), so that it loads like a PyTorch model folder. ONNX Runtime is imported inside
functions only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from components.kit.latency import load_onnx_session, logit_outputs
from components.kit.modeling import Encoded, collate, length_bucketed_batches

ONNX_FILE = "model.onnx"


def onnx_outputs(session_or_path, encoded: Encoded, pad_id: int, batch_size: int = 64) -> dict[str, np.ndarray]:
    """{output: its logits (n, width, float32)} of an ONNX classifier over a tokenized split, batched by length,
    for each of its logit outputs (`latency.logit_outputs`: `logits`, or a multitask export's `logits_<task>`),
    in graph order.

    The session gets only the inputs it declares: token_type_ids is dropped for models that lack it.
    """
    session = session_or_path if hasattr(session_or_path, "run") else load_onnx_session(session_or_path)
    wanted = [i.name for i in session.get_inputs()]
    declared = {o.name: o for o in session.get_outputs()}
    names = logit_outputs(list(declared))
    out: dict[str, np.ndarray] = {}
    for index in length_bucketed_batches([len(x) for x in encoded.input_ids], batch_size, shuffle=False):
        batch = collate(encoded.input_ids, index, pad_id)
        missing = [name for name in wanted if name not in batch]
        if missing:
            raise ValueError(f"ONNX model wants inputs {missing} that a text classifier batch does not have")
        for name, logits in zip(names, session.run(names, {name: batch[name].numpy() for name in wanted})):
            if name not in out:
                out[name] = np.zeros((len(encoded), logits.shape[-1]), dtype=np.float32)
            out[name][index] = logits
    if not out:  # empty split: read the label counts from the declared output shapes when they are fixed
        widths = {name: declared[name].shape[-1] for name in names}
        out = {name: np.zeros((0, w if isinstance(w, int) else 0), dtype=np.float32) for name, w in widths.items()}
    return out


def onnx_logits(session_or_path, encoded: Encoded, pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Logits (n, num_labels, float32) of an ONNX classifier over a tokenized split (`onnx_outputs`): a
    multitask export's per-task outputs concatenated on the last axis in graph order, which is the order of
    the PyTorch model's logits."""
    return np.concatenate(list(onnx_outputs(session_or_path, encoded, pad_id, batch_size).values()), axis=-1)


def read_model_labels(model_dir: Path) -> list[str]:
    return json.loads((Path(model_dir) / "labels.json").read_text())


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def copy_model_metadata(src: Path, dst: Path, tokenizer) -> None:
    """Tokenizer files and labels.json next to an ONNX model, so that the folder is self-contained."""
    tokenizer.save_pretrained(dst)
    shutil.copy2(Path(src) / "labels.json", Path(dst) / "labels.json")
