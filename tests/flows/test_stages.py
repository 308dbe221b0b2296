from pathlib import Path

import pytest

from components.config import build_params, load_params
from components.kit.tracking import NullTracker, PrefixedTracker, StageResult
from flows.pipeline import stage_key
from flows.stages import merge, stage_config
from flows.tasks import TASKS
from flows.tasks.classification import TASK as CLASSIFICATION
from flows.tracking import flatten

REPO = Path(__file__).resolve().parents[2]

STAGES = CLASSIFICATION.stages


def task_of(dvc_name: str):
    """The task whose dvc.yaml stage this is: the longest prefix that matches (the classification's is "")."""
    return max((t for t in TASKS.values() if dvc_name.startswith(t.dvc_prefix)), key=lambda t: len(t.dvc_prefix))


def test_every_stage_has_a_config_slice_and_dvc_stage():
    import yaml

    dvc = yaml.safe_load(open("dvc.yaml"))["stages"]
    for task in TASKS.values():
        mine = [n for n in dvc if task_of(n) is task]
        assert mine == [task.dvc_prefix + n for n in task.stages], task.name
        config = "" if task.params_file == "params.yaml" else f" --config {task.params_file}"
        assert all(dvc[n]["cmd"] == f"miniaturize stage {n[len(task.dvc_prefix) :]}{config}" for n in mine)


def test_dvc_yaml_declares_the_inputs_outputs_and_code_that_stage_keys_hash():
    import yaml

    from flows import dvc_yaml, stage_metrics
    from flows.stages import code_files, stage_paths

    def names(items):
        return {n for item in items for n in (item if isinstance(item, dict) else [item])}

    dvc = yaml.safe_load(open("dvc.yaml"))["stages"]
    assert [task.dvc_prefix for task in TASKS.values()] == ["", "lm-", "multitask-"]
    for task in TASKS.values():
        prefix, ws = task.dvc_prefix, task.workspace(Path.cwd())
        for name, declared in task.stages.items():
            io, sections = declared.io, declared.sections
            stage = dvc[prefix + name]
            assert names(stage.get("deps", [])) == set(stage_paths(ws, io.inputs)) | set(code_files(io.code)), name
            # and the metrics and plot data every stage writes (flows/stage_metrics.py)
            written = set(stage_paths(ws, io.outputs)) | set(stage_metrics.paths(task, name, ws))
            assert names(stage["outs"]) | names(stage.get("metrics", [])) == written, name
            if prefix:  # these stages read their task's config file, the same sections as their keys
                params = dict(item for entry in stage.get("params", []) for item in entry.items())
                keys = [*sections, *dvc_yaml.PROFILE_PARAMS]
                assert params == ({task.params_file: keys} if sections else {}), name


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


def test_a_stage_that_chains_to_an_earlier_one_survives_a_change_in_between():
    import yaml

    from flows.tasks.multitask import TASK as MULTITASK

    def keys(params):
        done = {}
        for name, stage in MULTITASK.stages.items():
            parent = done[stage.after] if stage.after else (list(done.values()) or ["root"])[-1]
            done[name] = stage_key(name, params, parent)
        return done

    assert all(
        list(task.stages).index(s.after) < list(task.stages).index(n)
        for task in TASKS.values()
        for n, s in task.stages.items()
        if s.after
    )
    raw = yaml.safe_load(open("configs/multitask.yaml"))
    a, b = keys(build_params(raw)), keys(build_params(raw, overrides=["multitask.student_weights={sentiment: 3}"]))
    # the teacher and the baseline (at every seed) stay
    assert a["finetune"] == b["finetune"] and a["singles"] == b["singles"] and a["single_seeds"] == b["single_seeds"]
    # (evaluate chains to single_seeds; the student's change reaches its key through the files it reads)
    assert all(a[n] != b[n] for n in ("distill", "prune", "quantize", "seeds"))


def test_stage_config_holds_only_the_stage_sections():
    params = build_params({})
    assert set(stage_config(params, STAGES["prune"].sections)) == {
        "prune",
        "register.gate.max_drop_vs_teacher_points",
        "quantize.max_drop_vs_fp32_points",
        "seed",
        "distributed",
    }
    assert stage_config(params, STAGES["ingest"].sections)["data"]["source"] == "vader-movie"


def test_the_runner_learns_from_the_records_which_stage_registers_reads_data_or_trains():
    for task in TASKS.values():
        assert [n for n, s in task.stages.items() if s.registers] == ["register"]
        assert [n for n, s in task.stages.items() if s.reads_data_source] == ["ingest"]
        assert [n for n, s in task.stages.items() if s.data_parallel] == ["finetune", "distill", "prune"]


def test_the_task_names_are_the_ones_the_config_accepts():
    from components.config import TASK_NAMES

    assert tuple(TASKS) == TASK_NAMES
    assert all(name == task.name for name, task in TASKS.items())


def test_a_user_data_file_is_an_input_of_the_stage_that_reads_it(tmp_path):
    for task in TASKS.values():
        (tmp_path / "mine.csv").write_text("text,label\na,b\n")
        params = build_params({"task": task.name}, overrides=[f"{task.data_source}=mine.csv"])
        keys = [stage_key("ingest", params, "root", task.workspace(tmp_path))]
        (tmp_path / "mine.csv").write_text("text,label\na,c\n")
        keys.append(stage_key("ingest", params, "root", task.workspace(tmp_path)))
        assert keys[0] != keys[1], task.name


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


def test_each_task_names_the_bundle_kind_its_edge_script_checks():
    from components import causal_lm, classification, multitask
    from components.causal_lm import edge_generate
    from components.classification import edge_predict

    assert classification.KIND == edge_predict.KIND and causal_lm.KIND == edge_generate.KIND
    assert [task.bundle_kind for task in TASKS.values()] == [classification.KIND, causal_lm.KIND, multitask.KIND]


def test_the_multitask_students_weights_go_over_the_teachers():
    from flows.tasks.multitask import mix

    p = build_params(
        {"task": "multitask", "multitask": {"weights": {"source": 0.5}, "student_weights": {"sentiment": 2}}}
    )
    assert mix(p, student=False).weights == {"source": 0.5}
    assert mix(p).weights == {"source": 0.5, "sentiment": 2.0}


def test_the_prune_budget_is_the_gates_tolerance_less_quantization_and_a_margin():
    from flows.tasks.chain import prune_settings

    def budget(path="params.yaml", *overrides):
        return prune_settings(load_params(REPO / path, overrides=list(overrides))).accuracy_budget_points

    assert budget() == pytest.approx(2.0 - 0.5 - 0.25)
    assert budget("configs/multitask.yaml") is None  # fixed ratios, like its single-task baselines
    assert budget(
        "params.yaml", "register.gate.max_drop_vs_teacher_points=1.0", "quantize.max_drop_vs_fp32_points=0.2"
    ) == pytest.approx(0.55)
    assert budget("params.yaml", "register.gate.max_drop_vs_teacher_points=0.3") == 0.0
    assert budget("params.yaml", "prune.accuracy_budget_points=0.8") == 0.8
    assert budget("params.yaml", "prune.accuracy_budget_points=null") is None
