"""The edge bundle: a self-contained folder that predicts with onnxruntime, tokenizers and numpy only.

`package(model_dir, out_dir, source, metrics, max_length)` copies the ONNX model, `tokenizer.json` and
`labels.json` of an exported (or quantized) model folder, adds `predict.py` (the stand-alone script in
`components/edge_predict.py`) and writes `manifest.json`: the sha256 of every file, the metrics and the
source it came from (registered version, run). `predict.py` checks the hashes before it loads anything.
The folder is built beside `out_dir` and moved into place at the end, so a failure leaves no half bundle.

A causal-LM model folder (config.json names a `...LMHeadModel` / `...ForCausalLM`, or it has a
generation_config.json and no labels.json) gets a text-generation bundle instead: the ONNX decoder with its
key/value cache, `tokenizer.json`, `config.json` (head counts, positions, end token), generation_config.json
when there is one, and `components/edge_generate.py` as `predict.py`; its manifest says
`"task": "causal-lm"`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from components.edge_predict import sha256

FILES = ("model.onnx", "tokenizer.json", "labels.json")
PREDICT = Path(__file__).with_name("edge_predict.py")
LM_FILES = ("model.onnx", "tokenizer.json", "config.json")
LM_OPTIONAL = ("generation_config.json",)
GENERATE = Path(__file__).with_name("edge_generate.py")
CAUSAL_LM = "causal-lm"
REQUIRES = ["onnxruntime", "tokenizers", "numpy"]


class BundleSourceError(ValueError):
    """The model folder lacks what a bundle needs."""


def task_of(model_dir: Path) -> str:
    """The task a model folder serves: "causal-lm" (text generation) or "classification"."""
    config = model_dir / "config.json"
    architectures = (json.loads(config.read_text()).get("architectures") or []) if config.is_file() else []
    if any(a.endswith(("LMHeadModel", "ForCausalLM")) for a in architectures):
        return CAUSAL_LM
    if (model_dir / "generation_config.json").is_file() and not (model_dir / "labels.json").is_file():
        return CAUSAL_LM
    return "classification"


def package(model_dir: Path, out_dir: Path, source: dict, metrics: dict, max_length: int = 64) -> Path:
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if task_of(model_dir) == CAUSAL_LM:
        return package_lm(model_dir, out_dir, source, metrics, max_length)
    missing = [name for name in FILES if not (model_dir / name).is_file()]
    if missing:
        raise BundleSourceError(f"{model_dir} lacks {', '.join(missing)}: package an exported or quantized "
                                f"model folder (models/final) or a registered version")
    pad_token = "[PAD]"
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("pad_token") or pad_token
        pad_token = value["content"] if isinstance(value, dict) else value
    return write_bundle(model_dir, out_dir, FILES, PREDICT,
                        {"max_length": max_length, "pad_token": pad_token, "requires": REQUIRES, "source": source,
                         "metrics": metrics})


def package_lm(model_dir: Path, out_dir: Path, source: dict, metrics: dict, max_length: int) -> Path:
    missing = [name for name in LM_FILES if not (model_dir / name).is_file()]
    if missing:
        raise BundleSourceError(f"{model_dir} lacks {', '.join(missing)}: package an exported or quantized "
                                f"causal-LM folder (models/final) or a registered version")
    names = (*LM_FILES, *(name for name in LM_OPTIONAL if (model_dir / name).is_file()))
    return write_bundle(model_dir, out_dir, names, GENERATE,
                        {"task": CAUSAL_LM, "max_length": max_length, "requires": REQUIRES, "source": source,
                         "metrics": metrics})


def write_bundle(model_dir: Path, out_dir: Path, names: tuple[str, ...], script: Path, fields: dict) -> Path:
    """Copies `names` and `script` (as predict.py) into a folder beside `out_dir`, writes manifest.json
    (format, time, sha256 of every file, then `fields`) and moves the folder into place."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in names:
            shutil.copy2(model_dir / name, tmp / name)
        shutil.copy2(script, tmp / "predict.py")
        files = {name: sha256(tmp / name) for name in (*names, "predict.py")}
        created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = {"format": "miniaturize-edge-bundle/1", "created_at": created_at, "files": files} | fields
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
