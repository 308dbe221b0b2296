"""Safety: models load only from safetensors and ONNX, never from a pickle; a changed edge bundle is refused.

A model folder whose weights are a malicious `pytorch_model.bin` (unpickling it would create a marker file)
is refused by every loading path of the pipeline with a message, and the marker never appears. A scan of
components/ and flows/ keeps pickle loaders out of the code. A bundle with one byte of its model flipped
stops `predict.py` with exit code 2 and the name of the file, before any prediction.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/reliability/test_safety.py
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components import bundle
from components.causal_lm import train as lm_train
from components.classification import distill, export, finetune, prune
from components.config import DistillConfig, ExportConfig, PruneConfig, TeacherConfig, load_params
from components.kit.sources import ModelSourceError
from components.kit.tracking import NullTracker
from flows.tasks import task_for

REPO = Path(__file__).resolve().parents[2]
NO_SAFETENSORS = r"has no \.safetensors weights \(only pytorch_model\.bin, a pickle checkpoint, which is never loaded\)"
TRANSFORMERS_REFUSAL = r"no file named model\.safetensors"


class CreatesMarker:
    """Unpickling this calls open(marker, "w"): the file appearing is the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_the_planted_pickle_does_run_code_when_unpickled(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(CreatesMarker(marker)))
    assert marker.exists()


@pytest.fixture
def poisoned(tiny_model_dir, tmp_path) -> tuple[Path, Path]:
    """(model folder with config, tokenizer, labels and only a malicious pytorch_model.bin; its marker path)."""
    folder = shutil.copytree(tiny_model_dir, tmp_path / "poisoned", ignore=shutil.ignore_patterns("*.safetensors"))
    marker = tmp_path / "pickle_code_ran"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(CreatesMarker(marker)))
    return folder, marker


def load_teacher_for_finetune(folder: Path, prepared: Path, out: Path) -> None:
    cfg = TeacherConfig(model=str(folder), epochs=1, batch_size=8, max_length=32)
    finetune.run(cfg, prepared, out, NullTracker(), seed=0)


def preflight_check(folder: Path, prepared: Path, out: Path) -> None:
    params = load_params(REPO / "params.yaml", overrides=[f"teacher.model={folder}"])
    task_for(params).preflight(params, out, False)


def lm_pretrained_preflight(folder: Path, prepared: Path, out: Path) -> None:
    overrides = ["lm.teacher.init=pretrained", f"lm.teacher.model={folder}", "lm.distill.layers=[0]"]
    params = load_params(REPO / "configs" / "causal-lm.yaml", overrides=overrides)
    task_for(params).preflight(params, out, False)


def distill_from(folder: Path, prepared: Path, out: Path) -> None:
    distill.run(
        DistillConfig(layers=[0], epochs=1, max_length=32, ablation=False), folder, prepared, out, NullTracker(), seed=0
    )


def prune_from(folder: Path, prepared: Path, out: Path) -> None:
    prune.run(
        PruneConfig(epochs=1, steps=1, max_length=32, accuracy_budget_points=None),
        folder,
        folder,
        prepared,
        out,
        NullTracker(),
        seed=0,
    )


def export_from(folder: Path, prepared: Path, out: Path) -> None:
    export.run(ExportConfig(), folder, prepared, out, NullTracker(), max_length=32)


def lm_load(folder: Path, prepared: Path, out: Path) -> None:
    lm_train.load_model(folder)


LOADERS = [
    (load_teacher_for_finetune, ModelSourceError, NO_SAFETENSORS),
    (preflight_check, ValueError, rf"teacher\.model: model directory .* {NO_SAFETENSORS}"),
    (lm_pretrained_preflight, ValueError, rf"lm\.teacher\.model: model directory .* {NO_SAFETENSORS}"),
    (distill_from, OSError, TRANSFORMERS_REFUSAL),
    (prune_from, OSError, TRANSFORMERS_REFUSAL),
    (export_from, ModelSourceError, NO_SAFETENSORS),
    (lm_load, OSError, TRANSFORMERS_REFUSAL),
]


@pytest.mark.parametrize("load, error, message", LOADERS, ids=[loader[0].__name__ for loader in LOADERS])
def test_a_pickle_checkpoint_is_refused_and_never_unpickled(load, error, message, poisoned, tiny_prepared, tmp_path):
    folder, marker = poisoned
    with pytest.raises(error, match=message):
        load(folder, tiny_prepared, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out" / "model.safetensors").exists()


def calls_and_imports(root: Path):
    """(file, line, node) of every call and import in the Python files under root."""
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Call, ast.Import, ast.ImportFrom)):
                yield path.relative_to(REPO), node.lineno, node


def keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def receiver(call: ast.Call) -> str:
    target = call.func.value if isinstance(call.func, ast.Attribute) else None
    return target.id if isinstance(target, ast.Name) else ast.unparse(target) if target is not None else ""


PICKLE_MODULES = {"pickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve"}


def test_no_pickle_loader_in_components_or_flows():
    found = []
    for root in (REPO / "components", REPO / "flows"):
        for path, line, node in calls_and_imports(root):
            where = f"{path}:{line}"
            if isinstance(node, ast.Import):
                found += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
            elif isinstance(node, ast.ImportFrom):
                if (node.module or "").split(".")[0] in PICKLE_MODULES:
                    found.append(f"{where} from {node.module} import")
            elif isinstance(node.func, ast.Attribute):
                name, owner = node.func.attr, receiver(node)
                if name == "load" and owner == "torch" and not keyword_is_true(node, "weights_only"):
                    found.append(f"{where} torch.load without weights_only=True")
                if name == "read_pickle" or keyword_is_true(node, "allow_pickle"):
                    found.append(f"{where} {owner}.{name} reads a pickle")
                # Tokenizers, configs and ONNX Runtime models hold no pickle; every PyTorch model must come
                # from safetensors.
                if (
                    name == "from_pretrained"
                    and "Model" in owner
                    and not owner.startswith("ORT")
                    and not keyword_is_true(node, "use_safetensors")
                ):
                    found.append(f"{where} {owner}.from_pretrained without use_safetensors=True")
    assert not found, "\n".join(found)


@pytest.fixture(scope="module")
def edge_bundle(tiny_model_dir, tiny_prepared, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safety_bundle")
    export.run(ExportConfig(), tiny_model_dir, tiny_prepared, root / "onnx", NullTracker(), max_length=32)
    return bundle.package(root / "onnx", root / "edge", {"path": str(root / "onnx")}, {"accuracy": 0.5}, max_length=32)


def predict(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(folder / "predict.py"), *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json"])
def test_a_flipped_byte_stops_predict_py_before_any_prediction(edge_bundle, name, tmp_path):
    intact = predict(edge_bundle, "a wonderful film")
    assert intact.returncode == 0 and json.loads(intact.stdout)["text"] == "a wonderful film", intact.stderr

    copy = shutil.copytree(edge_bundle, tmp_path / "edge")
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    texts = tmp_path / "texts.jsonl"
    texts.write_text('"a wonderful film"\n"a dull mess"\n')
    for args in (["a wonderful film"], ["--jsonl", str(texts)]):
        done = predict(copy, *args)
        assert done.returncode == 2
        assert done.stderr.strip() == (
            f"error: {name} does not match manifest.json (sha256 differs): the bundle was changed"
        )
        assert done.stdout == ""
