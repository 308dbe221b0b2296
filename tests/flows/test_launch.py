from dataclasses import replace
from pathlib import Path

from components.config import build_params
from components.kit.tracking import NullTracker, StageResult
from flows import launch
from flows.tasks import TASKS
from flows.tasks.classification import TASK as CLASSIFICATION
from flows.workspace import StagedWorkspace


class RunTracker(NullTracker):
    run_id = "run-1"


def test_training_stages_launch_on_several_processes_and_the_others_do_not(monkeypatch, tmp_path):
    launched = []
    monkeypatch.setattr(
        launch,
        "launch",
        lambda task, name, p, ws, run_id: (
            launched.append((name, ws.root, run_id)) or StageResult(metrics={"val_accuracy": 1.0})
        ),
    )
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for task in TASKS.values():
        params = build_params({"task": task.name, "distributed": {"processes": 4}})
        result = launch.run(task, "distill", params, task.workspace(tmp_path), RunTracker())
        assert result.metrics == {"val_accuracy": 1.0}
        assert launch.training_stages(task) == ["finetune", "distill", "prune"]
    assert launched == [("distill", tmp_path, "run-1")] * len(TASKS)


def test_a_launched_process_runs_the_stage_itself(monkeypatch, tmp_path):
    called = []
    monkeypatch.setattr(launch, "launch", lambda *a: called.append("launch"))
    stages = dict(CLASSIFICATION.stages)
    stages["finetune"] = replace(stages["finetune"], run=lambda p, ws, t: called.append("stage") or StageResult())
    task = replace(CLASSIFICATION, stages=stages)
    monkeypatch.setenv("WORLD_SIZE", "4")  # already one of the four processes
    launch.run(
        task, "finetune", build_params({"distributed": {"processes": 4}}), task.workspace(tmp_path), NullTracker()
    )
    monkeypatch.delenv("WORLD_SIZE")
    launch.run(task, "finetune", build_params({}), task.workspace(tmp_path), NullTracker())  # one process asked for
    assert called == ["stage", "stage"]


def test_launch_command_runs_the_stage_cli_under_torchrun_with_the_callers_paths(tmp_path):
    command = launch.launch_command("prune", 8, Path("/tmp/p.yaml"), Path("/tmp/r.json"), "abc", {"pruned": "/s/p"})
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=8", "-m"]
    assert command[6:] == [
        "flows.cli",
        "stage",
        "prune",
        "--config",
        "/tmp/p.yaml",
        "--result",
        "/tmp/r.json",
        "--run-id",
        "abc",
        "--workspace-path",
        "pruned=/s/p",
    ]

    ws = CLASSIFICATION.workspace(tmp_path)
    staged = StagedWorkspace(ws, {"pruned": tmp_path / "staging" / "pruned"})  # as a pipeline run stages outputs
    assert staged.teacher == ws.teacher and staged.root == ws.root
    assert launch.moved_paths(CLASSIFICATION, "prune", staged) == {"pruned": str(tmp_path / "staging" / "pruned")}
    assert launch.moved_paths(CLASSIFICATION, "prune", ws) == {}


def test_a_result_survives_the_round_trip(tmp_path):
    result = StageResult(metrics={"test_accuracy": 0.9}, outputs={"model": tmp_path / "m"}, info={"history": [1]})
    launch.write_result(result, tmp_path / "r.json")
    import json

    back = json.loads((tmp_path / "r.json").read_text())
    assert back == {
        "metrics": {"test_accuracy": 0.9},
        "outputs": {"model": str(tmp_path / "m")},
        "info": {"history": [1]},
    }


def test_a_training_stage_in_this_process_trains_on_the_threads_param(monkeypatch, tmp_path):
    import torch

    seen = []
    stages = dict(CLASSIFICATION.stages)
    stages["finetune"] = replace(
        stages["finetune"], run=lambda p, ws, t: seen.append(torch.get_num_threads()) or StageResult()
    )
    task = replace(CLASSIFICATION, stages=stages)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    try:
        launch.run(task, "finetune", build_params({"threads": 1}), task.workspace(tmp_path), NullTracker())
        torch.set_num_threads(2)
        launch.run(task, "finetune", build_params({}), task.workspace(tmp_path), NullTracker())  # None: as it was
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2]
