import json
from pathlib import Path

import pytest

from components.config import build_params
from flows.registry import CHALLENGER, CHAMPION, alias_for, version_tags
from flows.tasks.classification import TASK as CLASSIFICATION

REPORT = {
    "task": "sequence-classification",
    "dataset": {"sha256": "ab" * 32},
    "models": {"final": {"accuracy": 0.875, "size_bytes": 8_000_000}},
    "final_vs_teacher": {"size_ratio": 5.0, "speedup_batch1_p50": 9.0, "accuracy_drop_points": 0.5},
    "gate": {"passed": False, "checks": {"size_ratio": {"passed": True}, "speedup_batch1_p50": {"passed": False}}},
}


def test_gate_result_picks_the_alias():
    assert alias_for(True) == CHAMPION and alias_for(False) == CHALLENGER


def test_version_tags_trace_the_version():
    tags = version_tags(CLASSIFICATION, build_params({}), CLASSIFICATION.workspace(Path(".")), REPORT, "parent123")
    assert tags["data_sha256"] == "ab" * 32 and tags["parent_run_id"] == "parent123"
    assert tags["gate_passed"] == "false" and tags["gate_failed_checks"] == "speedup_batch1_p50"
    assert len(tags["params_hash"]) == 16 and tags["git_commit"]
    assert tags["final_vs_teacher.size_ratio"] == "5"
    assert tags["final.accuracy"] == "0.875" and tags["final.size_bytes"] == "8000000"


def test_version_tags_say_which_split_the_figures_come_from():
    tags = version_tags(CLASSIFICATION, build_params({}), CLASSIFICATION.workspace(Path(".")), REPORT, "parent123")
    assert tags["metrics_split"] == "test" and tags["ratios_split"] == "test"
    searched = version_tags(
        CLASSIFICATION, build_params({}), CLASSIFICATION.workspace(Path(".")), REPORT | {"split": "validation"}, None
    )
    assert searched["metrics_split"] == "test" and searched["ratios_split"] == "validation"


MEASURED = {"data_sha256": "ab" * 32, "metrics_split": "test"}


@pytest.fixture()
def registry_ws(tmp_path, monkeypatch):
    """A workspace with its own sqlite MLflow store and three registered versions of a one-node ONNX model:
    v1 accuracy 0.90, v2 0.88 (2 points worse), v3 0.90, all on the test split of the same data; every one
    5x smaller and 9x faster than its teacher."""
    import mlflow
    import onnx
    from onnx import TensorProto, helper

    from flows import tracking
    from flows.registry import log_version

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = CLASSIFICATION.workspace(tmp_path)
    mlflow.set_tracking_uri(tracking.tracking_uri(ws.root))
    client = tracking.client(ws.root)
    experiment = tracking.experiment_id(client, ws.root)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), model_dir / "model.onnx")
    params = build_params({})
    ratios = {"size_ratio": 5.0, "speedup_batch1_p50": 9.0, "accuracy_drop_points": 0.5}
    for accuracy in (0.90, 0.88, 0.90):
        report = tmp_path / "compression_report.json"
        report.write_text(json.dumps({"final_vs_teacher": ratios, "models": {"final": {"accuracy": accuracy}}}))
        run_id = tracking.start_run(client, experiment, "register")
        log_version(
            CLASSIFICATION,
            params,
            run_id,
            model_dir,
            report,
            {
                "final.accuracy": str(accuracy),
                "final.size_bytes": "1000",
                "git_commit": "abc",
                "lineage.train.key": "k",
                **MEASURED,
            },
        )
        tracking.end_run(client, run_id, True)
    return params, ws, client


def test_promotion_lifecycle_gate_vs_champion_force_and_rollback(registry_ws):
    from components.kit.promotion import RollbackError
    from flows import registry

    params, ws, client = registry_ws
    name = params.registered_model_name()
    registry.move_alias(client, ws.root, name, "1", CHAMPION, reason="gate passed", by="pipeline")
    with pytest.raises(registry.GateRejected, match="vs_champion.accuracy_drop_points: 2 vs threshold 0.5"):
        registry.promote(CLASSIFICATION, params, ws, "2")
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"

    forced = registry.promote(CLASSIFICATION, params, ws, "2", force=True, reason="hotfix for a data bug")
    assert forced["forced"] and forced["previous"] == "1"
    tags = client.get_model_version(name, "2").tags
    assert tags["alias.champion.forced"] == "true" and "hotfix for a data bug" in tags["alias.champion.reason"]
    assert "miniaturize promote" in tags["alias.champion.by"]

    done = registry.promote(CLASSIFICATION, params, ws, "3")  # 2 points better than the forced champion: passes
    assert not done["forced"] and done["previous"] == "2"
    assert registry.rollback(params, ws, "latency regression")["version"] == "2"
    assert registry.rollback(params, ws, "again")["version"] == "1"
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    with pytest.raises(RollbackError, match="first champion"):
        registry.rollback(params, ws, "once more")

    history = registry.read_history(client, name)
    assert [(e["version"], e["action"], e["forced"]) for e in history] == [
        ("1", "set", False),
        ("2", "set", True),
        ("3", "set", False),
        ("2", "rollback", False),
        ("1", "rollback", False),
    ]
    assert all(e["at"] and e["by"] and e["reason"] for e in history)
    chain = registry.lineage(CLASSIFICATION, params, ws, "2")
    assert chain["git_commit"] == "abc" and [e["action"] for e in chain["alias_history"]] == ["set", "rollback"]
    # another model of the store, by name (the incremental demonstration registers `<name>-stream`)
    other = f"{params.registered_model_name()}-stream"
    client.create_registered_model(other)
    client.create_model_version(
        other, "runs:/x/model", run_id=client.get_model_version(params.registered_model_name(), "2").run_id
    )
    assert registry.lineage(CLASSIFICATION, params, ws, "1", model=other)["model_name"] == other


def test_a_champion_measured_on_other_data_is_not_compared(registry_ws):
    """v2 is 2 points below v1, but v1 was measured on other data and the workspace holds neither: the
    accuracy check is skipped with its reason, not failed on numbers from two datasets."""
    from flows import registry

    params, ws, client = registry_ws
    name = params.registered_model_name()
    client.set_model_version_tag(name, "1", "data_sha256", "cd" * 32)
    registry.move_alias(client, ws.root, name, "1", CHAMPION, reason="gate passed", by="pipeline")
    done = registry.promote(CLASSIFICATION, params, ws, "2")
    check = done["checks"]["checks"]["vs_champion.accuracy_drop_points"]
    assert not done["forced"] and check["passed"] and check["value"] is None
    assert check["note"] == "champion measured on other data: not compared"
    assert done["checks"]["checks"]["vs_champion.size_growth"]["value"] == 1.0  # size is still compared


def test_the_champion_is_remeasured_on_the_candidates_data(registry_ws, tiny_model_dir, tiny_prepared, tmp_path):
    """The champion's stored 0.99 comes from other data; the workspace holds the candidate's data, so the
    champion's registered ONNX model is scored on that test split, and the candidate is judged against it."""
    import shutil

    from optimum.exporters.onnx import main_export

    from components.classification.evaluate import split_accuracy
    from flows import registry, tracking

    params, ws, client = registry_ws
    name = params.registered_model_name()
    shutil.copytree(tiny_prepared, ws.prepared)  # its data card's sha256 is "0" * 64
    onnx_dir = tmp_path / "champion"
    main_export(str(tiny_model_dir), str(onnx_dir), task="text-classification", do_validation=False)
    shutil.copy2(tiny_model_dir / "labels.json", onnx_dir / "labels.json")
    truth = split_accuracy(onnx_dir, tiny_prepared, "test", params.evaluate.threads, params.teacher.max_length)
    report = tmp_path / "compression_report.json"
    report.write_text(
        json.dumps({"final_vs_teacher": {"size_ratio": 5.0, "speedup_batch1_p50": 9.0, "accuracy_drop_points": 0.5}})
    )
    versions = {}
    experiment = tracking.experiment_id(client, ws.root)
    for role, folder, accuracy, data in (
        ("champion", onnx_dir, 0.99, "cd" * 32),
        ("candidate", onnx_dir, truth - 0.002, "0" * 64),
    ):
        run_id = tracking.start_run(client, experiment, role)
        versions[role] = registry.log_version(
            CLASSIFICATION,
            params,
            run_id,
            folder,
            report,
            {"final.accuracy": str(accuracy), "final.size_bytes": "1000", "data_sha256": data, "metrics_split": "test"},
        )
        tracking.end_run(client, run_id, True)
    registry.move_alias(client, ws.root, name, versions["champion"], CHAMPION, reason="gate passed", by="pipeline")

    done = registry.promote(CLASSIFICATION, params, ws, versions["candidate"])
    check = done["checks"]["checks"]["vs_champion.accuracy_drop_points"]
    assert check["passed"] and check["note"] == ""
    assert check["value"] == pytest.approx(100 * (truth - (truth - 0.002)))  # against the re-measured figure


def test_a_champion_of_another_data_source_is_refused_not_compared(registry_ws):
    """Two datasets never share a champion: a version of another data source (its `data_source` tag) is refused
    by the gate, with the reason, and the champion stays; one of the same source (a grown file) is compared."""
    from flows import registry

    params, ws, client = registry_ws
    name = params.registered_model_name()
    client.set_model_version_tag(name, "1", registry.DATA_SOURCE_TAG, "topics")
    client.set_model_version_tag(name, "3", registry.DATA_SOURCE_TAG, "vader-movie")
    registry.move_alias(client, ws.root, name, "1", CHAMPION, reason="gate passed", by="pipeline")
    with pytest.raises(
        registry.GateRejected, match="the champion learned data source 'topics', this version 'vader-movie'"
    ):
        registry.promote(CLASSIFICATION, params, ws, "3")
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"

    client.set_model_version_tag(name, "1", registry.DATA_SOURCE_TAG, "vader-movie")  # same source, other sha
    client.set_model_version_tag(name, "1", "data_sha256", "cd" * 32)
    done = registry.promote(CLASSIFICATION, params, ws, "3")
    assert "vs_champion.data_source" not in done["checks"]["checks"] and not done["forced"]


def test_every_tasks_data_key_is_the_one_its_model_is_named_after():
    from components.config import MODEL_NAMES
    from flows.tasks import TASKS

    assert {name: MODEL_NAMES[name].data_key for name in TASKS} == {n: t.data_source for n, t in TASKS.items()}


# ---------------------------------------------------------------- what MLflow shows of a version


@pytest.fixture(scope="module")
def onnx_classifier(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny BERT classifier exported to ONNX, with its tokenizer and labels."""
    import shutil

    from optimum.exporters.onnx import main_export

    out = tmp_path_factory.mktemp("onnx_classifier")
    main_export(str(tiny_model_dir), str(out), task="text-classification", do_validation=False)
    shutil.copy2(tiny_model_dir / "labels.json", out / "labels.json")
    return out


@pytest.fixture(scope="module")
def onnx_decoder(tmp_path_factory, tiny_lm_data_dir) -> Path:
    """A random 2-layer GPT-2 exported as the causal-lm task exports (decoder with its key/value cache)."""
    import torch
    from optimum.exporters.onnx import main_export
    from transformers import AutoTokenizer

    from components.causal_lm.train import scratch_model
    from components.config import LMArchitecture, LMTeacherConfig

    torch.manual_seed(0)
    model_dir = tmp_path_factory.mktemp("gpt2")
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_data_dir / "tokenizer")
    architecture = LMArchitecture(n_layer=2, n_head=4, n_embd=32, n_positions=64)
    scratch_model(LMTeacherConfig(architecture=architecture), tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path_factory.mktemp("onnx_decoder")
    main_export(str(model_dir), str(out), task="text-generation-with-past", do_validation=False)
    return out


@pytest.fixture()
def multitask_graph(tmp_path, tiny_model_dir) -> Path:
    """A stand-in multitask export: input_ids and attention_mask in, one logits_<task> output per task (each a
    constant projection of the summed ids), with the tiny model's tokenizer."""
    import shutil

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["ids", "axes"], ["summed"], keepdims=1),
    ]
    weights = [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")]
    outputs = []
    for task, width in (("sentiment", 2), ("source", 4)):
        weights.append(numpy_helper.from_array(np.ones((1, width), dtype=np.float32), f"w_{task}"))
        nodes.append(helper.make_node("MatMul", ["summed", f"w_{task}"], [f"logits_{task}"]))
        outputs.append(helper.make_tensor_value_info(f"logits_{task}", TensorProto.FLOAT, ["batch_size", width]))
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch_size", "sequence_length"])
        for name in ("input_ids", "attention_mask")
    ]
    graph = helper.make_graph(nodes, "multitask", inputs, outputs, initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = tmp_path / "multitask"
    folder.mkdir()
    onnx.save(model, folder / "model.onnx")
    shutil.copy2(tiny_model_dir / "tokenizer.json", folder / "tokenizer.json")
    return folder


CARD_REPORT = {
    "task": "sequence-classification",
    "dataset": {"source": "vaderSentiment==3.3.2:movie", "sha256": "ab" * 32, "rows": {"test": 16}},
    "models": {
        "teacher": {"accuracy": 0.9, "size_bytes": 9_000_000, "latency_ms": {"batch1_p50": 9.0}},
        "final": {"accuracy": 0.875, "size_bytes": 1_000_000, "latency_ms": {"batch1_p50": 1.0}},
    },
    "final_vs_teacher": {"size_ratio": 9.0, "speedup_batch1_p50": 9.0, "accuracy_drop_points": 2.5},
    "gate": {
        "passed": False,
        "checks": {"accuracy_drop_points": {"value": 2.5, "threshold": 2.0, "passed": False, "note": ""}},
    },
}


def register_folder(task, params, ws, client, folder: Path, report: dict) -> tuple[str, str]:
    """(name, version) of `folder` logged as a new version, as the register stage logs a final model."""
    from flows import registry, tracking

    path = ws.root / "report.json"
    path.write_text(json.dumps(report))
    run_id = tracking.start_run(client, tracking.experiment_id(client, ws.root), "register")
    tags = registry.version_tags(task, params, ws, report, None) | {"git_commit": "abc"}
    version = registry.log_version(task, params, run_id, folder, path, tags)
    tracking.end_run(client, run_id, True)
    return params.registered_model_name(), version


def test_a_registered_classifier_shows_its_signature_example_card_and_bundle_readme(
    registry_ws, onnx_classifier, tmp_path
):
    import mlflow
    import numpy as np
    import yaml

    from components.classification.edge_predict import verify
    from flows import registry

    params, ws, client = registry_ws
    name, version = register_folder(CLASSIFICATION, params, ws, client, onnx_classifier, CARD_REPORT)
    uri = f"models:/{name}/{version}"

    info = mlflow.models.get_model_info(uri)
    inputs = {s.name: (s.type, s.shape) for s in info.signature.inputs.inputs}
    assert inputs == {n: (np.dtype("int64"), (-1, -1)) for n in ("input_ids", "attention_mask", "token_type_ids")}
    assert [(s.name, s.shape) for s in info.signature.outputs.inputs] == [("logits", (-1, 2))]
    example = mlflow.models.Model.load(uri).load_input_example()
    assert set(example) == set(inputs) and np.asarray(example["input_ids"]).shape[0] == 1
    logits = mlflow.pyfunc.load_model(uri).predict({k: np.asarray(v, dtype=np.int64) for k, v in example.items()})
    assert np.asarray(logits["logits"]).shape == (1, 2)

    found = client.get_model_version(name, version)
    assert found.description.startswith(f"# {name}, version {version}\n")
    assert (
        "## Gate: FAILED" in found.description
        and "| accuracy_drop_points | 2.500 | 2.000 | FAIL |" in found.description
    )
    assert "labels: negative, positive" in found.description and "ab" * 32 in found.description
    assert "shipped.num_hidden_layers=2" in found.description  # the student's depth as shipped, not as asked
    assert found.tags[registry.DATA_SOURCE_TAG] == "vader-movie"
    card = Path(client.download_artifacts(found.run_id, registry.MODEL_CARD, str(tmp_path)))
    assert card.read_text() == found.description

    bundle, pinned = registry.registered_bundle(ws.root, uri, tmp_path / "bundle")
    manifest = verify(bundle, pinned)  # README.md is listed and hashed like every file of the bundle
    assert "README.md" in manifest["files"]
    readme = (bundle / "README.md").read_text()
    front = yaml.safe_load(readme.split("---\n")[1])
    result = front["model-index"][0]["results"][0]
    assert front["model-index"][0]["name"] == name and result["task"]["type"] == "text-classification"
    assert result["metrics"] == [{"type": "accuracy", "value": 0.875, "name": "test accuracy"}]
    assert readme.split("---\n", 2)[2].lstrip() == found.description


@pytest.mark.parametrize("kind", ["causal-lm", "multitask"])
def test_every_tasks_signature_and_example_are_read_from_its_graph(
    kind, registry_ws, onnx_decoder, multitask_graph, tmp_path
):
    """A decoder's inputs and outputs include its key/value cache, a multitask model's one logits per task: both
    read from the graph, and the input example runs through mlflow.pyfunc as MLflow stores it."""
    import mlflow
    import numpy as np
    import onnx

    from flows.tasks import TASKS

    params, ws, client = registry_ws
    folder = onnx_decoder if kind == "causal-lm" else multitask_graph
    graph = onnx.load(str(folder / "model.onnx")).graph
    report = {
        "task": kind,
        "dataset": {"sha256": "ef" * 32},
        "models": {"final": {"size_bytes": 1}},
        "final_vs_teacher": {},
        "gate": {"passed": True, "checks": {}},
    }
    name, version = register_folder(TASKS[kind], params, ws, client, folder, report)
    uri = f"models:/{name}/{version}"

    signature = mlflow.models.get_model_info(uri).signature
    assert signature.inputs.input_names() == [v.name for v in graph.input]
    assert signature.outputs.input_names() == [v.name for v in graph.output]
    example = mlflow.models.Model.load(uri).load_input_example()
    types = {s.name: s.type for s in signature.inputs.inputs}
    outputs = mlflow.pyfunc.load_model(uri).predict({k: np.asarray(v, dtype=types[k]) for k, v in example.items()})
    if kind == "causal-lm":
        assert any(n.startswith("past_key_values.") for n in types) and "present.0.key" in outputs
        assert np.asarray(example["attention_mask"])[0, 0] == 0  # the one cached position, masked out
        assert np.asarray(outputs["logits"]).shape[:2] == np.asarray(example["input_ids"]).shape
    else:
        assert set(outputs) == {"logits_sentiment", "logits_source"}
        assert np.asarray(outputs["logits_source"]).shape == (1, 4)
