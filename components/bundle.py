"""The edge bundle: a self-contained folder that predicts with onnxruntime, tokenizers and numpy only.

`package(model_dir, out_dir, source, metrics, max_length)` copies the ONNX model, `tokenizer.json` and
`labels.json` of an exported (or quantized) model folder, adds `predict.py` (the stand-alone script in
`components/classification/edge_predict.py`) and writes `manifest.json`: the sha256 of every file, the
metrics and the source it came from (registered version, run). Given a `card` (a registered version's model card,
`components.model_card.hugging_face`), the bundle holds it as `README.md`, listed and hashed like every file. `predict.py` checks the folder against the
manifest before it loads anything; `manifest_sha256(bundle)` is the value to pin the manifest itself with.

`out_dir` is judged before anything is built (`out_dir_problem`): a new or empty folder is written, a
folder that is already an edge bundle is replaced, and anything else (a file, a link, a folder with other
files, the current folder or one above it) is refused unless `force` is given for a folder with other files.
The bundle is built in a fresh temporary folder beside `out_dir` and moved into place at the end, so a
failure leaves no half bundle.

A causal-LM model folder (config.json names a `...LMHeadModel` / `...ForCausalLM`, or it has a
generation_config.json and no labels.json) gets a text-generation bundle instead: the ONNX decoder with its
key/value cache, `tokenizer.json`, `config.json` (head counts, positions, end token), generation_config.json
when there is one, and `components/causal_lm/edge_generate.py` as `predict.py`; its manifest's `task` is
that task's bundle kind (`components.causal_lm.KIND`).

A multitask model folder (config.json records `task_heads`, `components.kit.heads`) gets a classifier's
files and script, and its manifest's `task` is the multitask task's bundle kind (`components.multitask.KIND`):
its exported model has one output per task (`logits_<task>`), from which predict.py answers every task in one
call. A multitask folder whose model.onnx still has a single `logits` output is refused (export it again).
A classifier's manifest has no `task`, as before.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from components import causal_lm, classification, multitask
from components.causal_lm import edge_generate
from components.classification import edge_predict
from components.classification.edge_predict import sha256
from components.kit.latency import TASK_LOGITS_PREFIX

FORMAT = "miniaturize-edge-bundle/1"
FILES = tuple(name for name in edge_predict.BUNDLE_FILES if name != "predict.py")
PREDICT = Path(edge_predict.__file__)
WEIGHTS_FILE = edge_predict.WEIGHTS_FILE
LM_FILES = tuple(name for name in edge_generate.BUNDLE_FILES if name != "predict.py")
LM_OPTIONAL = edge_generate.OPTIONAL_FILES
GENERATE = Path(edge_generate.__file__)
MODEL_CARD = edge_predict.MODEL_CARD  # README.md, the same name in both scripts
CAUSAL_LM = causal_lm.KIND
MULTITASK = multitask.KIND
# `components.kit.heads.CONFIG_KEY` (a test keeps them equal), repeated so that importing this module, which
# the CLI does to report errors, does not import torch with the heads.
TASK_HEADS_KEY = "task_heads"
REQUIRES = ["onnxruntime", "tokenizers", "numpy"]
# What a bundle folder may hold besides the files its manifest lists (Python writes __pycache__ beside a
# script it imports).
BUNDLE_EXTRAS = {"manifest.json", *edge_predict.IGNORED}


class OutDirRefused(ValueError):
    """`out_dir` holds something that is not an edge bundle; nothing was written or removed."""


class BundleSourceError(ValueError):
    """The model folder lacks what a bundle needs."""


def task_of(model_dir: Path) -> str:
    """The bundle kind of a model folder: `causal_lm.KIND` (text generation), `multitask.KIND` (config.json
    records `task_heads`) or `classification.KIND`."""
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if any(a.endswith(("LMHeadModel", "ForCausalLM")) for a in config.get("architectures") or []):
        return CAUSAL_LM
    if config.get(TASK_HEADS_KEY):
        return MULTITASK
    if (model_dir / "generation_config.json").is_file() and not (model_dir / "labels.json").is_file():
        return CAUSAL_LM
    return classification.KIND


def is_edge_bundle(folder: Path) -> bool:
    """Whether `folder` is an edge bundle this module wrote: a manifest.json of our format, and nothing
    beside it but the files that manifest lists."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or not str(manifest.get("format", "")).startswith("miniaturize-edge-bundle/"):
        return False
    listed = manifest.get("files")
    return isinstance(listed, dict) and {p.name for p in folder.iterdir()} <= set(listed) | BUNDLE_EXTRAS


def out_dir_problem(out_dir: Path, force: bool = False) -> str | None:
    """Why writing a bundle to `out_dir` would destroy something it should not, or None when it may: a new
    path, an empty folder, an edge bundle (replaced), or, with `force`, any other folder. A file, a link
    and the current folder (or one above it) are refused even with `force`."""
    out_dir = Path(out_dir)
    absolute = Path(os.path.abspath(out_dir))
    if out_dir.is_symlink():
        return f"{out_dir} is a symbolic link: give the folder itself"
    if out_dir.exists() and not out_dir.is_dir():
        return f"{out_dir} is a file, not a folder: refusing to replace it"
    cwd = Path.cwd().resolve()
    if out_dir.exists() and (out_dir.resolve() == cwd or out_dir.resolve() in cwd.parents):
        return f"{out_dir} is the current folder or holds it: give a folder of its own for the bundle"
    if not out_dir.exists() or force or not any(out_dir.iterdir()) or is_edge_bundle(out_dir):
        return None
    return (
        f"{absolute} holds files and is not an edge bundle (no manifest.json of format "
        f"miniaturize-edge-bundle/..., or other files beside it): refusing to replace it; choose a new or "
        f"empty folder, or force the replacement (--force)"
    )


def manifest_sha256(bundle_dir: Path) -> str:
    """The sha256 of the bundle's manifest.json: what `predict.py --expect-manifest` pins."""
    return sha256(Path(bundle_dir) / "manifest.json")


def package(
    model_dir: Path,
    out_dir: Path,
    source: dict,
    metrics: dict,
    max_length: int = 64,
    force: bool = False,
    card: str | None = None,
) -> Path:
    """Write the edge bundle of `model_dir` to `out_dir`, with `card` as its README.md when given (see the module
    docstring for what may be replaced; OutDirRefused, with nothing touched, otherwise)."""
    model_dir, out_dir = Path(model_dir), Path(os.path.abspath(out_dir))
    problem = out_dir_problem(out_dir, force)
    if problem:
        raise OutDirRefused(problem)
    contents = CONTENTS.get(task_of(model_dir), classifier_contents)
    names, script, fields = contents(model_dir, max_length)
    weights = WEIGHTS_FILE if script == PREDICT else None
    fields |= {"requires": REQUIRES, "source": source, "metrics": metrics}
    return write_bundle(model_dir, out_dir, names, script, fields, card, weights)


def classifier_contents(model_dir: Path, max_length: int) -> tuple[tuple[str, ...], Path, dict]:
    """The files, script and task fields of a classifier's bundle."""
    require_files(model_dir, FILES, "model")
    pad_token = "[PAD]"
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("pad_token") or pad_token
        pad_token = value["content"] if isinstance(value, dict) else value
    return FILES, PREDICT, {"max_length": max_length, "pad_token": pad_token}


def multitask_contents(model_dir: Path, max_length: int) -> tuple[tuple[str, ...], Path, dict]:
    """A classifier's files and script, the manifest's `task` saying multitask; the model must have one
    output per task (`logits_<task>`), which predict.py reads the tasks from."""
    names, script, fields = classifier_contents(model_dir, max_length)
    outputs = onnx_output_names(model_dir / "model.onnx")
    if not outputs or not all(name.startswith(TASK_LOGITS_PREFIX) for name in outputs):
        raise BundleSourceError(
            f"{model_dir}/model.onnx has outputs {outputs}, not one logits_<task> per task: run this multitask "
            f"model through the export stage again before packaging it"
        )
    return names, script, {"task": MULTITASK} | fields


def onnx_output_names(path: Path) -> list[str]:
    import onnx  # the project's environment, not the bundle's: packaging runs there

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def lm_contents(model_dir: Path, max_length: int) -> tuple[tuple[str, ...], Path, dict]:
    """The files, script and task fields of a causal LM's text-generation bundle."""
    require_files(model_dir, LM_FILES, "causal-LM")
    names = (*LM_FILES, *(name for name in LM_OPTIONAL if (model_dir / name).is_file()))
    return names, GENERATE, {"task": CAUSAL_LM, "max_length": max_length}


# The bundle kinds with their own contents; any other folder is a classifier's.
CONTENTS = {CAUSAL_LM: lm_contents, MULTITASK: multitask_contents}


def require_files(model_dir: Path, names: tuple[str, ...], kind: str) -> None:
    """BundleSourceError naming the `names` that `model_dir` lacks; `kind` names the folder to package."""
    missing = [name for name in names if not (model_dir / name).is_file()]
    if missing:
        raise BundleSourceError(
            f"{model_dir} lacks {', '.join(missing)}: package an exported or quantized "
            f"{kind} folder (models/final) or a registered version"
        )


def weights_apart(model_path: Path, location: str) -> None:
    """Rewrite an ONNX file with its initializers in the file `location` beside it (ONNX external data).

    Why: ONNX Runtime maps an external-data file into memory and reads the weights from there, where an ONNX
    file holding them is parsed whole and its weights copied into the session, both held at once while the
    session is built. Measured on the default job's 5.6 MB int8 student: a process that loads it and predicts
    one sentence peaked at 71.6 MB resident with the weights inside model.onnx, 67.1 MB with them apart; the
    predictions are the same file's."""
    import onnx  # the project's environment, not the bundle's: packaging runs there

    model = onnx.load(str(model_path))
    onnx.save_model(
        model,
        str(model_path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=1024,  # small constants stay inline: shape inference reads them
    )
    data = model_path.parent / location
    if data.is_file():
        data.chmod(0o644)  # onnx writes it 0600, unreadable to a service running as another user


def write_bundle(
    model_dir: Path,
    out_dir: Path,
    names: tuple[str, ...],
    script: Path,
    fields: dict,
    card: str | None = None,
    weights: str | None = None,
) -> Path:
    """Copies `names` and `script` (as predict.py) into a fresh folder beside `out_dir`, with model.onnx's
    weights moved into the file `weights` when given (`weights_apart`), writes `card` as README.md when given
    and manifest.json (format, time, sha256 of every file, then `fields`), and moves the folder into place.
    `out_dir` has been judged replaceable by the caller."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A fresh, uniquely named folder: only what this call created is ever removed on the way out.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would leave the bundle unreadable to the service that runs it
    try:
        for name in names:
            shutil.copy2(model_dir / name, tmp / name)
        shutil.copy2(script, tmp / "predict.py")
        written = (*names, "predict.py")
        if weights is not None:
            weights_apart(tmp / "model.onnx", weights)
            written += (weights,) if (tmp / weights).is_file() else ()  # a graph with no weights writes none
        if card is not None:
            (tmp / MODEL_CARD).write_text(card, encoding="utf-8")
            written += (MODEL_CARD,)
        files = {name: sha256(tmp / name) for name in written}
        created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = {"format": FORMAT, "created_at": created_at, "files": files} | fields
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def move_into_place(built: Path, out_dir: Path) -> None:
    """Rename `built` to `out_dir`. A folder already there is first renamed into a fresh folder of ours and
    removed from there, so the only tree ever deleted is one this call moved aside."""
    if not out_dir.exists():
        built.rename(out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    try:
        out_dir.rename(old / out_dir.name)
        try:
            built.rename(out_dir)
        except OSError:
            (old / out_dir.name).rename(out_dir)  # the previous folder goes back where it was
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
