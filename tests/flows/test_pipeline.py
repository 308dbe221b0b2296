"""The generic runner (flows/pipeline.py) with stand-in stage functions: one stage run on its own goes
through the same lifecycle as a pipeline's stage; the runner learns from the task's record, not from names."""

import json
from dataclasses import replace

from components.config import build_params
from components.kit.tracking import StageResult
from flows import cache, pipeline, stage_metrics
from flows.tasks.classification import STAGES, TASK
from tests.conftest import make_frame


def writes_validation(p, ws, tracker):
    ws.validation.mkdir(parents=True)
    (ws.validation / "validation.json").write_text("{}")
    tracker.log_metrics({"checks": 1.0})
    return StageResult(metrics={"checks": 1.0}, info={"not": "kept"})


def test_a_stage_run_on_its_own_is_staged_recorded_and_tracked_like_a_pipeline_stage(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setitem(STAGES, "validate", replace(STAGES["validate"], run=writes_validation))
    ws = TASK.workspace(tmp_path)
    cache.StageCache(ws.state).store("ingest", "key-of-ingest", {}, "run-0", {}, {})
    ws.prepared.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        make_frame(2).to_parquet(ws.prepared / f"{split}.parquet")
    params = build_params({})

    done = pipeline.run_one_stage(params, "validate", tmp_path)

    assert (ws.validation / "validation.json").is_file() and not (ws.state / "staging" / "validate").exists()
    assert done["key"] == pipeline.stage_key("validate", params, "key-of-ingest", ws)  # chained to ingest's record
    assert done["info"] == {} and done["metrics"] == {"checks": 1.0}  # only a registering stage keeps its info
    # its metrics file for DVC is one of the outputs its record covers
    assert json.loads((tmp_path / "reports/metrics/validate.json").read_text()) == {"checks": 1.0}
    outputs = {"reports/validation": ws.validation} | stage_metrics.paths(TASK, "validate", ws)
    record = cache.StageCache(ws.state).lookup("validate", done["key"], outputs)
    assert record is not None and record.run_id == done["run_id"]
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(done["run_id"])
    assert run.info.run_name == "stage-validate" and run.info.status == "FINISHED"
    assert run.data.tags["miniaturize.parent_key"] == "key-of-ingest" and "mlflow.parentRunId" not in run.data.tags
    # the splits it reads, in the run's Datasets panel: one input per split, its context the split's name
    datasets = {i.dataset.name: {t.key: t.value for t in i.tags} for i in run.inputs.dataset_inputs}
    assert datasets == {
        f"data/prepared/{split}.parquet": {"mlflow.data.context": split} for split in ("test", "train", "validation")
    }


def test_the_registration_of_a_run_comes_from_the_stage_that_registers():
    outcome = {"stages": {"evaluate": {"cache_hit": True}, "register": {"cache_hit": True}}}
    assert pipeline.registration_cached(TASK, outcome)
    assert not pipeline.registration_cached(TASK, {"stages": {"evaluate": {"cache_hit": True}}})


def test_a_multitask_tasks_own_label_file_is_an_input_of_ingest(tmp_path):
    from flows.pipeline import external_inputs
    from flows.tasks.multitask import TASK as MULTITASK

    (tmp_path / "data").mkdir()
    for name in ("rows.csv", "tones.csv"):
        (tmp_path / "data" / name).write_text("text,x\n")
    params = build_params(
        {
            "task": "multitask",
            "data": {"source": "data/rows.csv"},
            "multitask": {
                "tasks": {"topic": {"column": "topic"}, "tone": {"column": "tone", "source": "data/tones.csv"}}
            },
        }
    )
    inputs = external_inputs(MULTITASK, MULTITASK.stages["ingest"], params, tmp_path)
    assert inputs == {
        "data.source": tmp_path / "data" / "rows.csv",
        "multitask.tasks.tone.source": tmp_path / "data" / "tones.csv",
    }
    assert external_inputs(MULTITASK, MULTITASK.stages["validate"], params, tmp_path) == {}
