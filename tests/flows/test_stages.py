from pathlib import Path

from components.config import build_params
from components.kit.tracking import NullTracker, PrefixedTracker, StageResult
from flows.pipeline import stage_key
from flows.stages import STAGE_SECTIONS, STAGES, merge, stage_config
from flows.tracking import flatten


def test_every_stage_has_a_config_slice_and_dvc_stage():
    import yaml

    dvc = yaml.safe_load(open("dvc.yaml"))["stages"]
    classification = {n: s for n, s in dvc.items() if not n.startswith("lm-")}
    assert list(STAGES) == list(STAGE_SECTIONS) == list(classification)
    assert all(stage["cmd"] == f"miniaturize stage {name}" for name, stage in classification.items())
    assert all(stage["cmd"] == f"miniaturize stage {name[3:]} --config configs/causal-lm.yaml"
               for name, stage in dvc.items() if name.startswith("lm-"))


def test_dvc_yaml_declares_the_inputs_outputs_and_code_that_stage_keys_hash():
    import yaml

    from flows.stages import code_files, stage_paths, stage_table
    from flows.workspace import workspace_for

    def names(items):
        return {n for item in items for n in (item if isinstance(item, dict) else [item])}

    dvc = yaml.safe_load(open("dvc.yaml"))["stages"]
    for task, prefix in (("sequence-classification", ""), ("causal-lm", "lm-")):
        ws, table = workspace_for(task, Path.cwd()), stage_table(task)
        assert [n for n in dvc if n.startswith("lm-") == bool(prefix)] == [prefix + n for n in table.stages]
        for name, io in table.io.items():
            stage = dvc[prefix + name]
            assert names(stage.get("deps", [])) == set(stage_paths(ws, io.inputs)) | set(code_files(io.code)), name
            assert names(stage["outs"]) | names(stage.get("metrics", [])) == set(stage_paths(ws, io.outputs)), name
            if prefix:  # the causal-lm stages read configs/causal-lm.yaml, the same sections as their keys
                declared = dict(item for entry in stage.get("params", []) for item in entry.items())
                assert declared == ({"configs/causal-lm.yaml": list(table.sections[name])}
                                    if table.sections[name] else {}), name


def test_stage_key_changes_only_downstream_of_a_changed_slice():
    base, changed = build_params({}), build_params({}, overrides=["distill.alpha=0.9"])
    keys = {}
    for params, label in ((base, "a"), (changed, "b")):
        parent = "root"
        for name in STAGES:
            parent = keys[(label, name)] = stage_key(name, params, parent)
    order = list(STAGES)
    for name in order:
        same = keys[("a", name)] == keys[("b", name)]
        assert same == (order.index(name) < order.index("distill")), name


def test_stage_config_holds_only_the_stage_sections():
    params = build_params({})
    assert set(stage_config(params, "distill")) == {"distill", "seed", "distributed"}
    assert stage_config(params, "ingest")["data"]["source"] == "vader-movie"


class Recorder(NullTracker):
    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step=None):
        self.calls.append(("metrics", metrics))

    def log_artifact(self, path, artifact_path=None):
        self.calls.append(("artifact", artifact_path))


def test_named_tracker_prefixes_and_merge_keeps_both_results():
    inner = Recorder()
    named = PrefixedTracker(inner, "teacher.")
    named.log_metrics({"acc": 1.0})
    named.log_artifact("x.json")
    assert inner.calls == [("metrics", {"teacher.acc": 1.0}), ("artifact", "teacher")]
    merged = merge(StageResult({"acc": 0.5}), StageResult({"acc": 0.9}), "teacher.")
    assert merged.metrics == {"acc": 0.5, "teacher.acc": 0.9}


def test_flatten_nested_params():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
