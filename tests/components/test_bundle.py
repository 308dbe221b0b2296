"""Edge bundle: files and hashes, predictions equal to the pipeline's, tamper detection, and predict.py in
a fresh virtual environment that holds only onnxruntime, tokenizers and numpy (from the package index);
where a bundle may be written (never over a folder or file that is not one), its fixed file set, and the
manifest pinned by its sha256; a multitask bundle answers every task in one call, in that fresh
environment too."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components import bundle
from components.classification import edge_predict, export
from components.classification.edge_predict import BundleError, Predictor, verify
from components.config import ExportConfig
from components.kit.tracking import NullTracker

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["a wonderful, moving film", "a dull, lifeless mess", "great acting and a sharp script number 7"]


@pytest.fixture(scope="module")
def packaged(tiny_model_dir, tiny_prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    onnx_dir = root / "onnx"
    export.run(ExportConfig(), tiny_model_dir, tiny_prepared, onnx_dir, NullTracker(), max_length=32)
    out = bundle.package(onnx_dir, root / "edge", {"path": str(onnx_dir)}, {"accuracy": 0.5}, max_length=32)
    return onnx_dir, out


def test_bundle_holds_the_model_tokenizer_labels_script_and_hashes(packaged):
    _, out = packaged
    assert sorted(p.name for p in out.iterdir()) == [
        "labels.json",
        "manifest.json",
        "model.onnx",
        "model.onnx.data",
        "predict.py",
        "tokenizer.json",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.onnx", "model.onnx.data", "tokenizer.json", "labels.json", "predict.py"}
    assert manifest["metrics"] == {"accuracy": 0.5} and manifest["max_length"] == 32
    assert verify(out) == manifest


def test_the_weights_sit_beside_the_graph_and_predictions_are_the_exports(packaged):
    import onnx
    import onnxruntime as ort

    onnx_dir, out = packaged
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    external = [t.name for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert any("word_embeddings" in name for name in external)
    assert (out / "model.onnx").stat().st_size * 10 < (out / "model.onnx.data").stat().st_size
    assert (out / "model.onnx.data").stat().st_mode & 0o777 == 0o644  # readable like the other files
    ids = np.array([[101, 2054, 2003, 102]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    a, b = (ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"]) for d in (onnx_dir, out))
    names = {i.name for i in a.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    np.testing.assert_array_equal(a.run(None, feeds)[0], b.run(None, feeds)[0])


def test_an_earlier_bundle_with_the_weights_inside_model_onnx_still_verifies(packaged, tmp_path):
    import shutil

    _, out = packaged
    old = tmp_path / "old"
    shutil.copytree(out, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "model.onnx.data").unlink()
    del manifest["files"]["model.onnx.data"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert verify(old)["files"].keys() == {"model.onnx", "tokenizer.json", "labels.json", "predict.py"}


def test_a_model_card_is_the_bundles_readme_listed_and_hashed(packaged, tmp_path):
    """A registered version's bundle carries its model card as README.md: listed in the manifest with its sha256,
    so predict.py accepts the bundle, and refuses it once the card is edited."""
    from components.causal_lm import edge_generate

    onnx_dir, _ = packaged
    card = "---\nlibrary_name: onnx\n---\n\n# m, version 1\n"
    out = bundle.package(onnx_dir, tmp_path / "edge", {"path": str(onnx_dir)}, {}, max_length=32, card=card)
    manifest = verify(out)
    assert set(manifest["files"]) == {
        "model.onnx",
        "model.onnx.data",
        "tokenizer.json",
        "labels.json",
        "predict.py",
        "README.md",
    }
    assert (out / "README.md").read_text() == card and manifest["files"]["README.md"] == edge_predict.sha256(
        out / "README.md"
    )
    assert bundle.MODEL_CARD == edge_predict.MODEL_CARD == edge_generate.MODEL_CARD == "README.md"
    (out / "README.md").write_text(card + "edited\n")
    with pytest.raises(BundleError, match="README.md does not match manifest.json"):
        verify(out)


def test_bundle_predictions_match_the_pipelines_onnx_logits(packaged):
    from transformers import AutoTokenizer

    from components.kit.modeling import encode
    from components.kit.onnx_models import onnx_logits

    onnx_dir, out = packaged
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    labels = json.loads((onnx_dir / "labels.json").read_text())
    data = encode(tokenizer, TEXTS, [labels[0]] * len(TEXTS), labels, 32)
    logits = onnx_logits(onnx_dir, data, tokenizer.pad_token_id)
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert np.allclose(Predictor(out).scores(TEXTS), expected, atol=1e-5)
    rows = Predictor(out).predict(TEXTS[:1])
    assert rows[0]["label"] in labels and set(rows[0]["scores"]) == set(labels)


def test_a_changed_file_is_refused_before_loading(packaged, tmp_path):
    import shutil

    _, out = packaged
    copy = shutil.copytree(out, tmp_path / "edge")
    (copy / "labels.json").write_text('["positive", "negative"]')
    with pytest.raises(BundleError, match="labels.json does not match manifest.json"):
        Predictor(copy)
    (copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx is missing"):
        verify(copy)


def test_package_refuses_a_folder_without_an_onnx_model(tiny_model_dir, tmp_path):
    with pytest.raises(bundle.BundleSourceError, match="model.onnx"):
        bundle.package(tiny_model_dir, tmp_path / "edge", {}, {})
    assert not (tmp_path / "edge").exists()


def test_predict_py_runs_in_a_fresh_environment(packaged, edge_python, tmp_path):
    _, out = packaged
    one = subprocess.run([str(edge_python), str(out / "predict.py"), TEXTS[0]], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    row = json.loads(one.stdout)
    assert row["text"] == TEXTS[0] and abs(sum(row["scores"].values()) - 1) < 1e-4
    assert row["scores"] == pytest.approx(Predictor(out).predict(TEXTS[:1])[0]["scores"], abs=1e-5)

    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text("\n".join(json.dumps(t if i % 2 else {"text": t}) for i, t in enumerate(TEXTS)) + "\n")
    batch = subprocess.run(
        [str(edge_python), str(out / "predict.py"), "--jsonl", str(jsonl)], capture_output=True, text=True
    )
    assert batch.returncode == 0, batch.stderr
    assert [json.loads(line)["text"] for line in batch.stdout.splitlines()] == TEXTS

    (out / "model.onnx").write_bytes((out / "model.onnx").read_bytes() + b"\0")
    try:
        tampered = subprocess.run([str(edge_python), str(out / "predict.py"), "x"], capture_output=True, text=True)
        assert tampered.returncode == 2 and "model.onnx does not match manifest.json" in tampered.stderr
        assert tampered.stdout == ""
    finally:
        (out / "model.onnx").write_bytes((out / "model.onnx").read_bytes()[:-1])


def test_predict_py_hashes_with_pythons_own_sha256_not_openssl(packaged, edge_python):
    import hashlib

    from components.classification import edge_predict

    _, out = packaged
    # hashlib would load OpenSSL's libcrypto, 3.5 MB of resident memory on the device, for one hash
    code = "import runpy, sys; runpy.run_path(sys.argv[1]); print('_hashlib' in sys.modules)"
    loaded = subprocess.run([str(edge_python), "-c", code, str(out / "predict.py")], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "False"
    model = out / "model.onnx"
    assert edge_predict.sha256(model) == hashlib.sha256(model.read_bytes()).hexdigest()


# ---------------------------------------------------------------- where a bundle may be written


def bundle_at(packaged, out, force: bool = False):
    onnx_dir, _ = packaged
    return bundle.package(onnx_dir, out, {"path": str(onnx_dir)}, {"accuracy": 0.5}, max_length=32, force=force)


def test_an_out_folder_holding_other_files_is_refused_and_left_untouched(packaged, tmp_path):
    work = tmp_path / "work"
    (work / "notes").mkdir(parents=True)
    (work / "notes" / "draft.txt").write_text("a week of work")
    (work / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(bundle.OutDirRefused, match="is not an edge bundle"):
        bundle_at(packaged, work)
    assert (work / "notes" / "draft.txt").read_text() == "a week of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # no temporary folder left beside it


def test_a_bundle_with_a_foreign_file_beside_it_is_not_ours_to_replace(packaged, tmp_path):
    out = bundle_at(packaged, tmp_path / "edge")
    (out / "results.csv").write_text("mine")
    with pytest.raises(bundle.OutDirRefused):
        bundle_at(packaged, out)
    assert (out / "results.csv").read_text() == "mine"


def test_a_new_an_empty_and_an_earlier_bundle_folder_are_written(packaged, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert verify(bundle_at(packaged, empty))["files"]
    first = json.loads((empty / "manifest.json").read_text())
    (empty / "__pycache__").mkdir()  # what Python may leave beside predict.py
    again = bundle_at(packaged, empty)
    assert verify(again)["files"] == first["files"] and not (again / "__pycache__").exists()
    assert verify(bundle_at(packaged, tmp_path / "a" / "new" / "edge"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "empty"]


def test_force_replaces_a_foreign_folder_but_never_a_file_or_the_current_folder(packaged, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "draft.txt").write_text("x")
    assert verify(bundle_at(packaged, work, force=True)) and not (work / "draft.txt").exists()
    file = tmp_path / "model.bin"
    file.write_text("keep")
    with pytest.raises(bundle.OutDirRefused, match="is a file"):
        bundle_at(packaged, file, force=True)
    assert file.read_text() == "keep"
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    monkeypatch.chdir(project / "src")
    for out in (Path("."), Path("..")):
        with pytest.raises(bundle.OutDirRefused, match="current folder"):
            bundle_at(packaged, out, force=True)
    assert (project / "src").is_dir()
    link = tmp_path / "link"
    link.symlink_to(work)
    with pytest.raises(bundle.OutDirRefused, match="symbolic link"):
        bundle_at(packaged, link, force=True)


def test_a_folder_named_like_the_old_temporary_one_is_not_removed(packaged, tmp_path):
    """Only the temporary folder a call creates is ever removed: not a `.edge.tmp` the user owns."""
    theirs = tmp_path / ".edge.tmp"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine")
    bundle_at(packaged, tmp_path / "edge")
    assert (theirs / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".edge.tmp", "edge"]


def run_package(*args: str):
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, ["package", *args, "--params", str(REPO / "params.yaml")])


def test_package_command_refuses_with_exit_2_and_prints_the_manifest_sha256(packaged, tmp_path):
    onnx_dir, _ = packaged
    work = tmp_path / "work"
    work.mkdir()
    (work / "draft.txt").write_text("x")
    refused = run_package("--out", str(work), "--model", str(onnx_dir))
    assert refused.exit_code == 2 and "is not an edge bundle" in refused.output and "--force" in refused.output
    assert sorted(p.name for p in work.iterdir()) == ["draft.txt"]
    file = tmp_path / "a-file"
    file.write_text("keep")
    assert run_package("--out", str(file), "--model", str(onnx_dir), "--force").exit_code == 2
    assert file.read_text() == "keep"

    done = run_package("--out", str(work), "--model", str(onnx_dir), "--force")
    assert done.exit_code == 0, done.output
    assert f"manifest sha256: {bundle.manifest_sha256(work)}" in done.output
    assert verify(work, bundle.manifest_sha256(work))


# ---------------------------------------------------------------- the bundle's file set is fixed


def rewrite_manifest(folder, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture()
def copy(packaged, tmp_path):
    import shutil

    return shutil.copytree(packaged[1], tmp_path / "edge")


def test_a_manifest_listing_no_files_is_refused(copy):
    rewrite_manifest(copy, lambda m: m.update(files={}))
    with pytest.raises(BundleError, match="does not list labels.json, model.onnx, predict.py, tokenizer.json"):
        verify(copy)
    with pytest.raises(BundleError):
        Predictor(copy)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda m: m["files"].pop("model.onnx"), "does not list model.onnx"),
        (lambda m: m["files"].update({"extra.onnx": "0" * 64}), "lists extra.onnx, which a classification bundle"),
        (lambda m: m["files"].update({"../model.onnx": "0" * 64}), "lists ../model.onnx: a bundle's file names"),
        (lambda m: m["files"].update({"sub/model.onnx": "0" * 64}), "lists sub/model.onnx"),
        (lambda m: m.update(files=["model.onnx"]), 'has no "files" table'),
    ],
)
def test_a_manifest_listing_another_set_is_refused(copy, change, words):
    rewrite_manifest(copy, change)
    with pytest.raises(BundleError, match=re.escape(words)):
        verify(copy)


@pytest.mark.parametrize("name", ["model_quantized.onnx", "README.md", ".hidden"])
def test_a_file_the_manifest_does_not_list_is_refused(copy, name):
    (copy / name).write_bytes(b"anything")
    with pytest.raises(BundleError, match=f"{re.escape(name)} is in the bundle folder but not in manifest.json"):
        verify(copy)


def test_pycache_beside_predict_py_is_allowed(copy):
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "predict.cpython-311.pyc").write_bytes(b"\0")
    assert verify(copy)["files"]


def test_expect_manifest_refuses_a_manifest_rewritten_with_a_swapped_file(copy, tmp_path):
    pinned = bundle.manifest_sha256(copy)
    assert verify(copy, pinned) and verify(copy, pinned.upper())
    (copy / "labels.json").write_text('["positive", "negative"]')  # swapped, and the manifest made to match
    rewrite_manifest(copy, lambda m: m["files"].update({"labels.json": bundle.sha256(copy / "labels.json")}))
    assert verify(copy)  # consistent on its own: only the pin tells
    with pytest.raises(BundleError, match=f"not the expected {pinned}"):
        verify(copy, pinned)
    refused = subprocess.run(
        [sys.executable, str(copy / "predict.py"), "--expect-manifest", pinned, "x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert refused.returncode == 2 and "not the bundle that was pinned" in refused.stderr and refused.stdout == ""
    fresh = bundle.manifest_sha256(copy)
    done = subprocess.run(
        [sys.executable, str(copy / "predict.py"), "--expect-manifest", fresh, "x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- a multitask bundle: every task in one call

TASKS = {"sentiment": ["negative", "positive"], "length": ["long", "short"]}  # conftest's MULTITASK_TASKS


@pytest.fixture(scope="module")
def multitask_packaged(tiny_model_dir, tiny_multitask_prepared, tmp_path_factory):
    from tests.components.classification.test_export import multitask_export

    root = tmp_path_factory.mktemp("multitask_bundle")
    onnx_dir = multitask_export(root, tiny_model_dir, tiny_multitask_prepared)
    out = bundle.package(onnx_dir, root / "edge", {"path": str(onnx_dir)}, {"accuracy": 0.5}, max_length=32)
    return onnx_dir, out


def test_a_multitask_bundle_holds_the_same_files_and_says_multitask(multitask_packaged):
    from components import multitask
    from components.kit.heads import CONFIG_KEY
    from components.kit.latency import TASK_LOGITS_PREFIX

    _, out = multitask_packaged
    manifest = verify(out)
    assert manifest["task"] == multitask.KIND == bundle.MULTITASK
    assert set(manifest["files"]) == {"model.onnx", "model.onnx.data", "tokenizer.json", "labels.json", "predict.py"}
    # the stand-alone script and bundle.py repeat these names: they must not drift from their sources
    assert edge_predict.MULTITASK == multitask.KIND and edge_predict.TASK_LOGITS_PREFIX == TASK_LOGITS_PREFIX
    assert bundle.TASK_HEADS_KEY == CONFIG_KEY


def test_a_multitask_bundle_predicts_every_task_as_the_pipelines_outputs(multitask_packaged):
    from transformers import AutoTokenizer

    from components.kit.modeling import encode
    from components.kit.onnx_models import onnx_outputs

    onnx_dir, out = multitask_packaged
    predictor = Predictor(out)
    assert predictor.tasks == TASKS
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    data = encode(tokenizer, TEXTS, None, [], 32)
    expected = [np.exp(x) / np.exp(x).sum(-1, keepdims=True) for x in onnx_outputs(onnx_dir, data, 0).values()]
    np.testing.assert_allclose(predictor.scores(TEXTS), np.concatenate(expected, axis=-1), atol=1e-5)
    rows = predictor.predict(TEXTS)
    assert [row["text"] for row in rows] == TEXTS and all(set(row) == {"text", "tasks"} for row in rows)
    for row, sentiment, length in zip(rows, *expected):
        assert list(row["tasks"]) == ["sentiment", "length"]
        for task, probs in (("sentiment", sentiment), ("length", length)):
            answer = row["tasks"][task]
            assert answer["label"] == TASKS[task][int(probs.argmax())]
            assert answer["scores"] == pytest.approx(dict(zip(TASKS[task], probs.tolist())), abs=1e-5)


def test_multitask_predict_py_runs_in_a_fresh_environment(multitask_packaged, edge_python):
    _, out = multitask_packaged
    done = subprocess.run([str(edge_python), str(out / "predict.py"), *TEXTS[:2]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]  # one line per text, every task in it
    for row, want in zip(rows, Predictor(out).predict(TEXTS[:2]), strict=True):
        assert row["text"] == want["text"] and list(row["tasks"]) == ["sentiment", "length"]
        for task, answer in row["tasks"].items():
            assert answer["scores"] == pytest.approx(want["tasks"][task]["scores"], abs=1e-5)
            assert abs(sum(answer["scores"].values()) - 1) < 1e-4


def test_a_manifest_task_that_the_model_does_not_have_is_refused(multitask_packaged, packaged, tmp_path):
    import shutil

    multi = shutil.copytree(multitask_packaged[1], tmp_path / "multi")
    rewrite_manifest(multi, lambda m: m.pop("task"))
    with pytest.raises(BundleError, match=r"says task 'classification' but model.onnx has one output per task"):
        Predictor(multi)
    single = shutil.copytree(packaged[1], tmp_path / "single")
    rewrite_manifest(single, lambda m: m.update(task="multitask"))
    with pytest.raises(BundleError, match="says task 'multitask' but model.onnx has one logits output"):
        Predictor(single)


def test_output_tasks_reads_the_tasks_and_checks_labels_json():
    from components.classification.edge_predict import output_tasks

    labels = ["sentiment:negative", "sentiment:positive", "length:long", "length:short"]
    assert output_tasks(["logits_sentiment", "logits_length"], [2, "batch"], labels) == TASKS
    assert output_tasks(["logits"], [2], ["negative", "positive"]) is None
    with pytest.raises(BundleError, match="output logits_length .2 logits. but labels.json names 1"):
        output_tasks(["logits_sentiment", "logits_length"], [2, 2], labels[:3])
    with pytest.raises(BundleError, match="in order"):
        output_tasks(["logits_length", "logits_sentiment"], [2, 2], labels)


def test_a_multitask_folder_exported_with_one_logits_output_is_refused(multitask_packaged, packaged, tmp_path):
    import shutil

    old = shutil.copytree(multitask_packaged[0], tmp_path / "old")
    shutil.copy2(packaged[0] / "model.onnx", old / "model.onnx")  # one `logits` output
    with pytest.raises(bundle.BundleSourceError, match="not one logits_<task> per task"):
        bundle.package(old, tmp_path / "edge", {}, {})
    assert not (tmp_path / "edge").exists()
