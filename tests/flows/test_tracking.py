import json

from flows import tracking


def test_mlflow_tracker_logs_to_the_given_child_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = tracking.client(tmp_path)
    experiment = tracking.experiment_id(client, tmp_path)
    assert tracking.experiment_id(client, tmp_path) == experiment  # found, not created twice
    parent = tracking.start_run(client, experiment, "pipeline")
    child = tracking.start_run(client, experiment, "distill", parent_run_id=parent, tags={"miniaturize.stage": "distill"})
    tracker = tracking.MlflowTracker(client, child)
    tracker.log_params({"distill": {"alpha": 0.5, "layers": [0, 2]}})
    tracker.log_metrics({"val_accuracy": 0.8, "note": "not a number", "flag": True}, step=2)
    (tmp_path / "card.json").write_text(json.dumps({"rows": 3}))
    tracker.log_artifact(tmp_path / "card.json")
    tracker.set_tags({"miniaturize.cache_hit": "false"})
    tracking.end_run(client, child, ok=True)

    run = client.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params == {"distill.alpha": "0.5", "distill.layers": "[0, 2]"}
    assert run.data.metrics == {"val_accuracy": 0.8}
    assert [m.step for m in client.get_metric_history(child, "val_accuracy")] == [2]
    assert [a.path for a in client.list_artifacts(child)] == ["card.json"]
    assert run.info.status == "FINISHED"
    assert (tmp_path / "mlflow.db").is_file()
