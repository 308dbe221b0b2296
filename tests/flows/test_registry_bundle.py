"""A registered version's edge bundle: logged at registration with its manifest sha256 as the version tag
`bundle.manifest_sha256`, and `miniaturize serve-model models:/...` serving it only while its manifest
still has that sha256 (a sqlite MLflow store in a temporary workspace; the server itself is not started)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest

from components.config import build_params
from flows.tasks.classification import TASK as CLASSIFICATION


def one_node_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), path)


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    """Version 1 of a packageable model folder (model, tokenizer, labels) and version 2 of a folder with the
    model alone, registered in a workspace of their own; the current folder is that workspace."""
    import mlflow

    from flows import tracking
    from flows.registry import log_version

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = CLASSIFICATION.workspace(tmp_path / "project")
    ws.root.mkdir()
    monkeypatch.chdir(ws.root)
    mlflow.set_tracking_uri(tracking.tracking_uri(ws.root))
    client = tracking.client(ws.root)
    experiment = tracking.experiment_id(client, ws.root)
    full, bare = tmp_path / "full", tmp_path / "bare"
    for folder in (full, bare):
        folder.mkdir()
        one_node_onnx(folder / "model.onnx")
    (full / "tokenizer.json").write_text('{"version": "1.0"}')
    (full / "labels.json").write_text('["negative", "positive"]')
    report = tmp_path / "compression_report.json"
    report.write_text(
        json.dumps(
            {"final_vs_teacher": {"size_ratio": 5.0}, "models": {"final": {"accuracy": 0.9, "size_bytes": 1000}}}
        )
    )
    params = build_params({})
    for folder in (full, bare):
        run_id = tracking.start_run(client, experiment, "register")
        log_version(
            CLASSIFICATION, params, run_id, folder, report, {"final_vs_teacher.size_ratio": "5", "git_commit": "abc"}
        )
        tracking.end_run(client, run_id, True)
    return params, ws, client


def stored_manifest(client, name: str, version: str) -> Path:
    """manifest.json of the version's edge bundle where the artifact store keeps it (a local folder here)."""
    run = client.get_run(client.get_model_version(name, version).run_id)
    return Path(urlparse(run.info.artifact_uri).path) / "edge_bundle" / "manifest.json"


def serve_model(monkeypatch, *args: str) -> tuple[object, list]:
    """`miniaturize serve-model ARGS` with the server replaced by the bundle check alone."""
    from typer.testing import CliRunner

    from components import serve
    from components.classification.edge_predict import verify
    from flows.cli import app

    checked = []

    def check_only(folder, *_, expect_manifest=None, **__):
        checked.append((Path(folder).name, verify(Path(folder), expect_manifest)))

    monkeypatch.setattr(serve, "serve", check_only)
    return CliRunner().invoke(app, ["serve-model", *args]), checked


def test_registration_logs_the_edge_bundle_and_tags_its_manifest_sha256(registry, tmp_path):
    from components.bundle import manifest_sha256
    from components.classification.edge_predict import verify
    from flows.registry import MANIFEST_TAG, registered_bundle

    params, ws, client = registry
    name = params.registered_model_name()
    tag = client.get_model_version(name, "1").tags[MANIFEST_TAG]
    folder, expected = registered_bundle(ws.root, f"models:/{name}/1", tmp_path / "download")
    assert expected == tag == manifest_sha256(folder)
    manifest = verify(folder, tag)
    assert manifest["source"]["model_uri"] == f"models:/{name}/1" and manifest["source"]["version"] == "1"
    assert manifest["metrics"] == {"final_vs_teacher.size_ratio": 5.0, "accuracy": 0.9, "size_bytes": 1000}
    assert MANIFEST_TAG not in client.get_model_version(name, "2").tags  # nothing to package: no tag


def test_serve_model_serves_a_registered_bundle_only_while_its_manifest_matches_the_tag(registry, monkeypatch):
    params, ws, client = registry
    name = params.registered_model_name()
    client.set_registered_model_alias(name, "champion", "1")
    done, checked = serve_model(monkeypatch, f"models:/{name}@champion")
    assert done.exit_code == 0, done.output
    assert [folder for folder, _ in checked] == ["edge_bundle"]

    stored = stored_manifest(client, name, "1")
    manifest = json.loads(stored.read_text())
    stored.write_text(json.dumps(manifest | {"metrics": {"accuracy": 0.99}}))  # edited alone, still consistent
    refused, checked = serve_model(monkeypatch, f"models:/{name}/1")
    assert refused.exit_code == 2 and not checked
    assert "refusing to serve" in refused.output and "not the bundle that was pinned" in refused.output


def test_serve_model_refuses_a_version_without_a_bundle_tag_or_another_pin(registry, monkeypatch):
    from flows.registry import MANIFEST_TAG

    params, ws, client = registry
    name = params.registered_model_name()
    untagged, checked = serve_model(monkeypatch, f"models:/{name}/2")
    assert untagged.exit_code == 2 and f"has no {MANIFEST_TAG} tag" in untagged.output and not checked
    other, checked = serve_model(monkeypatch, f"models:/{name}/1", "--expect-manifest", "0" * 64)
    assert other.exit_code == 2 and f"is not its registered {MANIFEST_TAG}" in other.output and not checked
    missing, _ = serve_model(monkeypatch, f"models:/{name}/9")
    assert missing.exit_code == 2 and "cannot find the edge bundle" in missing.output
