"""The edge bundle: a self-contained folder that predicts with onnxruntime, tokenizers and numpy only.

`package(model_dir, out_dir, source, metrics, max_length)` copies the ONNX model, `tokenizer.json` and
`labels.json` of an exported (or quantized) model folder, adds `predict.py` (the stand-alone script in
`components/edge_predict.py`) and writes `manifest.json`: the sha256 of every file, the metrics and the
source it came from (registered version, run). `predict.py` checks the hashes before it loads anything.
The folder is built beside `out_dir` and moved into place at the end, so a failure leaves no half bundle.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from components.edge_predict import sha256

FILES = ("model.onnx", "tokenizer.json", "labels.json")
PREDICT = Path(__file__).with_name("edge_predict.py")


class BundleSourceError(ValueError):
    """The model folder lacks what a bundle needs."""


def package(model_dir: Path, out_dir: Path, source: dict, metrics: dict, max_length: int = 64) -> Path:
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    missing = [name for name in FILES if not (model_dir / name).is_file()]
    if missing:
        raise BundleSourceError(f"{model_dir} lacks {', '.join(missing)}: package an exported or quantized "
                                f"model folder (models/final) or a registered version")
    pad_token = "[PAD]"
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("pad_token") or pad_token
        pad_token = value["content"] if isinstance(value, dict) else value
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in FILES:
            shutil.copy2(model_dir / name, tmp / name)
        shutil.copy2(PREDICT, tmp / "predict.py")
        files = {name: sha256(tmp / name) for name in (*FILES, "predict.py")}
        manifest = {"format": "miniaturize-edge-bundle/1", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "files": files, "max_length": max_length, "pad_token": pad_token,
                    "requires": ["onnxruntime", "tokenizers", "numpy"], "source": source, "metrics": metrics}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
